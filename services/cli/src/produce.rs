//! `adpipe produce`: JSON lines in, Avro records (Confluent framing, schema
//! registered under `<topic>-value`) out, keyed by user_id.
//!
//! A line that is not valid JSON for the chosen event type is reported with
//! its line number and skipped; every other line still goes through.

use std::io::{BufRead, Write};
use std::time::Duration;

use adpipe_codec::{Codec, Encoder, value_subject};
use adpipe_events::{
    Click, Conversion, Event, EventKind, Impression, JoinedClick, JoinedConversion,
};
use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::target::{KafkaTarget, RegistryTarget};

/// Deliveries awaited at once; bounds memory on large inputs.
const MAX_IN_FLIGHT: usize = 10_000;

/// Arguments of `adpipe produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaTarget,
    #[command(flatten)]
    pub registry: RegistryTarget,
    /// Topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Event type of every line: impression, click, conversion, joined-click, joined-conversion.
    #[arg(long = "type")]
    pub kind: EventKind,
    /// File of JSON lines; `-` reads standard input.
    #[arg(long, default_value = "-")]
    pub input: String,
}

/// What a produce run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProduceReport {
    /// Records acknowledged by Kafka.
    pub produced: u64,
    /// Lines not produced: (line number, reason).
    pub rejected: Vec<(usize, String)>,
}

/// Reads JSON lines from `input` and produces them; reports rejected lines
/// on `errors` as they happen.
pub async fn run(
    args: &ProduceArgs,
    input: &mut dyn BufRead,
    errors: &mut dyn Write,
) -> anyhow::Result<ProduceReport> {
    let producer: FutureProducer =
        adpipe_runtime::producer_config(&args.kafka.bootstrap_servers()?)
            .create()
            .context("creating the Kafka producer")?;
    let codec = Codec::new(args.registry.client()?);
    match args.kind {
        EventKind::Impression => {
            produce_lines::<Impression>(args, &codec, &producer, input, errors).await
        }
        EventKind::Click => produce_lines::<Click>(args, &codec, &producer, input, errors).await,
        EventKind::Conversion => {
            produce_lines::<Conversion>(args, &codec, &producer, input, errors).await
        }
        EventKind::JoinedClick => {
            produce_lines::<JoinedClick>(args, &codec, &producer, input, errors).await
        }
        EventKind::JoinedConversion => {
            produce_lines::<JoinedConversion>(args, &codec, &producer, input, errors).await
        }
        EventKind::StatsTotal => anyhow::bail!(
            "stats totals are written by the stats-counter (topic stats.totals), not produced by hand"
        ),
    }
}

async fn produce_lines<T: Event + Serialize + DeserializeOwned>(
    args: &ProduceArgs,
    codec: &Codec,
    producer: &FutureProducer,
    input: &mut dyn BufRead,
    errors: &mut dyn Write,
) -> anyhow::Result<ProduceReport> {
    let subject = value_subject(&args.topic);
    let encoder: Encoder<T> = codec
        .encoder(&subject, T::KIND.schema())
        .await
        .with_context(|| format!("registering the {} schema under {subject}", T::KIND))?;
    let mut report = ProduceReport::default();
    let mut in_flight = FuturesUnordered::new();
    for (index, line) in input.lines().enumerate() {
        let line_number = index + 1;
        let line = line.with_context(|| format!("reading line {line_number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let encoded = serde_json::from_str::<T>(&line)
            .map_err(|error| format!("not a valid {} JSON object: {error}", T::KIND))
            .and_then(|event| {
                let bytes = encoder.encode(&event).map_err(|error| error.to_string())?;
                Ok((event.user_id().to_owned(), bytes))
            });
        let (key, value) = match encoded {
            Ok(encoded) => encoded,
            Err(reason) => {
                writeln!(errors, "line {line_number}: {reason}")?;
                report.rejected.push((line_number, reason));
                continue;
            }
        };
        let topic = args.topic.clone();
        in_flight.push(async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            let result = producer.send(record, Duration::from_secs(30)).await;
            (
                line_number,
                result.map(drop).map_err(|(error, _)| error.to_string()),
            )
        });
        if in_flight.len() >= MAX_IN_FLIGHT {
            settle(in_flight.next().await, &mut report, errors)?;
        }
    }
    while let Some(outcome) = in_flight.next().await {
        settle(Some(outcome), &mut report, errors)?;
    }
    Ok(report)
}

fn settle(
    outcome: Option<(usize, Result<(), String>)>,
    report: &mut ProduceReport,
    errors: &mut dyn Write,
) -> anyhow::Result<()> {
    match outcome {
        Some((_, Ok(()))) => report.produced += 1,
        Some((line_number, Err(reason))) => {
            writeln!(errors, "line {line_number}: delivery failed: {reason}")?;
            report
                .rejected
                .push((line_number, format!("delivery failed: {reason}")));
        }
        None => {}
    }
    Ok(())
}
