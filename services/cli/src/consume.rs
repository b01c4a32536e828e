//! `adpipe consume`: Avro records (any schema the registry knows) out as JSON
//! lines, from the beginning, the end, an offset or a point in time.
//!
//! A record that does not decode (a dead letter, say) is reported on stderr
//! with its coordinates, and shown with its raw bytes in base64 when
//! `--metadata` is on; the rest go on.

use std::collections::BTreeSet;
use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adpipe_codec::Codec;
use adpipe_kafka_client::EofReader;
use anyhow::{Context, bail};
use base64::Engine;
use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::target::{KafkaTarget, RegistryTarget};

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record kept.
    Beginning,
    /// Only records produced from now on.
    End,
    /// This offset in every selected partition.
    Offset(i64),
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
}

impl FromStr for StartAt {
    type Err = String;

    /// `beginning`, `end`, `offset:N`, `time:2026-11-21T10:00:00Z`,
    /// `time:<epoch ms>` or `ago:1h`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = match text.split_once(':') {
            None if text == "beginning" => StartAt::Beginning,
            None if text == "end" => StartAt::End,
            Some(("offset", offset)) => StartAt::Offset(
                offset
                    .parse()
                    .map_err(|_| format!("bad offset {offset:?}"))?,
            ),
            Some(("time", time)) => StartAt::Time(match time.parse::<i64>() {
                Ok(ms) => ms,
                Err(_) => millis(
                    humantime::parse_rfc3339_weak(time)
                        .map_err(|error| format!("bad time {time:?}: {error}"))?,
                ),
            }),
            Some(("ago", ago)) => {
                let span = humantime::parse_duration(ago)
                    .map_err(|error| format!("bad duration {ago:?}: {error}"))?;
                StartAt::Time(millis(SystemTime::now() - span))
            }
            _ => {
                return Err(format!(
                    "unknown start {text:?}; use beginning, end, offset:N, time:RFC3339|ms or ago:DURATION"
                ));
            }
        };
        Ok(parsed)
    }
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
}

/// Arguments of `adpipe consume`.
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub kafka: KafkaTarget,
    #[command(flatten)]
    pub registry: RegistryTarget,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Where to start: beginning, end, offset:N, time:RFC3339|ms, ago:DURATION.
    #[arg(long, default_value = "beginning")]
    pub from: StartAt,
    /// Only this partition (all by default).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    pub follow: bool,
    /// Wrap each value with topic, partition, offset, timestamp, key, headers and schema id.
    #[arg(long)]
    pub metadata: bool,
}

/// What a consume run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConsumeReport {
    /// Records written as JSON.
    pub decoded: u64,
    /// Records that did not decode.
    pub undecodable: u64,
}

/// Reads the topic and writes one JSON line per record to `out`.
pub async fn run(
    args: &ConsumeArgs,
    out: &mut dyn Write,
    errors: &mut dyn Write,
) -> anyhow::Result<ConsumeReport> {
    let consumer: StreamConsumer<EofReader> =
        adpipe_kafka_client::env_client_config(&args.kafka.bootstrap_servers()?)
            // Assigned partitions, nothing committed: looking never moves a group.
            .set("group.id", "adpipe-cli-consume")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(EofReader)
            .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .context("reading topic metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.name() == args.topic && topic.error().is_none())
        .flat_map(|topic| topic.partitions().iter().map(|partition| partition.id()))
        .filter(|id| args.partition.is_none_or(|only| only == *id))
        .collect();
    if partitions.is_empty() {
        bail!(
            "topic {} does not exist or has no partition {:?}",
            args.topic,
            args.partition
        );
    }
    consumer.assign(&start_positions(
        &consumer,
        &args.topic,
        &partitions,
        args.from,
    )?)?;

    let codec = Codec::new(args.registry.client()?);
    let mut report = ConsumeReport::default();
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    loop {
        if args
            .max
            .is_some_and(|max| report.decoded + report.undecodable >= max)
        {
            break;
        }
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                at_end.insert(partition);
                if !args.follow && at_end.len() == partitions.len() {
                    break;
                }
                continue;
            }
            Err(error) => bail!("reading {}: {error}", args.topic),
        };
        at_end.remove(&message.partition());
        if adpipe_runtime::heartbeat::is_heartbeat(&message) {
            continue; // in-band progress of a DC topic, not an event
        }
        let payload = message.payload().unwrap_or_default();
        let decoded = codec.decode_json(payload).await;
        let (schema_id, value) = match decoded {
            Ok((schema_id, value)) => {
                report.decoded += 1;
                (Some(schema_id), value)
            }
            Err(error) => {
                report.undecodable += 1;
                writeln!(
                    errors,
                    "partition {} offset {}: {error}",
                    message.partition(),
                    message.offset()
                )?;
                if !args.metadata {
                    continue;
                }
                (
                    None,
                    json!({"undecodable": error.to_string(), "raw_base64": base64::engine::general_purpose::STANDARD.encode(payload)}),
                )
            }
        };
        let line = if args.metadata {
            let headers: serde_json::Map<String, Value> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| {
                            let text = header
                                .value
                                .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
                            (header.key.to_owned(), json!(text))
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "timestamp": message.timestamp().to_millis(),
                "key": message.key().map(|key| String::from_utf8_lossy(key).into_owned()),
                "headers": headers,
                "schema_id": schema_id,
                "value": value,
            })
        } else {
            value
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(report)
}

fn start_positions(
    consumer: &StreamConsumer<EofReader>,
    topic: &str,
    partitions: &[i32],
    from: StartAt,
) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let offset = match from {
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
            StartAt::Offset(offset) => Offset::Offset(offset),
            StartAt::Time(ms) => Offset::Offset(ms),
        };
        list.add_partition_offset(topic, *partition, offset)?;
    }
    if let StartAt::Time(_) = from {
        // offsets_for_times takes the timestamp in the offset field and
        // answers the first offset at or after it (End if there is none).
        return Ok(consumer.offsets_for_times(list, Duration::from_secs(10))?);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_positions() {
        assert_eq!("beginning".parse(), Ok(StartAt::Beginning));
        assert_eq!("offset:42".parse(), Ok(StartAt::Offset(42)));
        assert_eq!(
            "time:1700000000000".parse(),
            Ok(StartAt::Time(1_700_000_000_000))
        );
        assert_eq!(
            "time:2023-11-14T22:13:20Z".parse(),
            Ok(StartAt::Time(1_700_000_000_000))
        );
        assert!(matches!("ago:1h".parse(), Ok(StartAt::Time(_))));
        assert!("yesterday".parse::<StartAt>().is_err());
    }
}
