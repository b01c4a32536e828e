//! `adpipe demo`: the project's main job on its embedded default.
//!
//! With no servers at all it starts librdkafka's in-process mock cluster and
//! adpipe's schema registry (storing its schemas in that cluster), publishes
//! impressions, clicks and conversions as Avro through the registry, reads
//! them back, and checks every event arrived intact. `--brokers` runs the
//! same against a real cluster. Later issues grow this into the full
//! pipeline demo.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, Encoder, RegistryClient, value_subject};
use adpipe_events::{Event, samples};
use adpipe_schema_registry::RegistrySettings;
use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Partitions of the demo topics (the pipeline's keyed-topic count).
const PARTITIONS: i32 = 12;

/// Arguments of `adpipe demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Impressions to publish (clicks are 1% of them, conversions 0.4%).
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    /// Real Kafka bootstrap servers instead of the in-process mock cluster.
    #[arg(long)]
    pub brokers: Option<String>,
}

/// Per event type: published, read back, identical to what was published.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KindTally {
    /// Event type.
    pub kind: String,
    /// Acknowledged by Kafka.
    pub published: u64,
    /// Read back and decoded.
    pub received: u64,
    /// Read back equal to the published event.
    pub identical: u64,
}

/// Runs the demo and prints its progress and result table to `out`.
pub async fn run(args: &DemoArgs, out: &mut dyn Write) -> anyhow::Result<Vec<KindTally>> {
    let run_id = &uuid_suffix();
    let topics = [
        format!("demo-{run_id}.impressions"),
        format!("demo-{run_id}.clicks"),
        format!("demo-{run_id}.conversions"),
    ];
    // The mock cluster must outlive everything that talks to it.
    let (_mock, bootstrap) = match &args.brokers {
        Some(brokers) => {
            create_topics(brokers, &topics).await?;
            (None, brokers.clone())
        }
        None => {
            let mock = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
            for topic in &topics {
                mock.create_topic(topic, PARTITIONS, 1)?;
            }
            mock.create_topic("_schemas", 1, 1)?;
            let bootstrap = mock.bootstrap_servers();
            (Some(mock), bootstrap)
        }
    };
    writeln!(
        out,
        "kafka: {}",
        if args.brokers.is_some() {
            bootstrap.as_str()
        } else {
            "in-process mock cluster"
        }
    )?;

    let registry_topic = if args.brokers.is_some() {
        format!("_schemas-demo-{run_id}")
    } else {
        "_schemas".to_owned()
    };
    let registry =
        adpipe_schema_registry::start(RegistrySettings::local(&bootstrap, &registry_topic))
            .await
            .context("starting the schema registry")?;
    writeln!(
        out,
        "schema registry: {} (schemas in topic {registry_topic})",
        registry.url()
    )?;
    let codec = Codec::new(RegistryClient::new(&registry.url())?);

    let started = Instant::now();
    let clicks = args.events / 100;
    let conversions = args.events / 250;
    let tallies = vec![
        round_trip(
            &codec,
            &bootstrap,
            &topics[0],
            (0..args.events).map(samples::impression),
            out,
        )
        .await?,
        round_trip(
            &codec,
            &bootstrap,
            &topics[1],
            (0..clicks).map(samples::click),
            out,
        )
        .await?,
        round_trip(
            &codec,
            &bootstrap,
            &topics[2],
            (0..conversions).map(samples::conversion),
            out,
        )
        .await?,
    ];
    registry.stop().await;

    writeln!(
        out,
        "\n{:<12} {:>10} {:>10} {:>10}",
        "event", "published", "received", "identical"
    )?;
    for tally in &tallies {
        writeln!(
            out,
            "{:<12} {:>10} {:>10} {:>10}",
            tally.kind, tally.published, tally.received, tally.identical
        )?;
    }
    let ok = tallies
        .iter()
        .all(|tally| tally.published == tally.received && tally.received == tally.identical);
    writeln!(
        out,
        "\n{} in {:.1?}",
        if ok {
            "every event round-tripped intact"
        } else {
            "MISMATCH"
        },
        started.elapsed()
    )?;
    if !ok {
        bail!("some events were lost or changed");
    }
    Ok(tallies)
}

async fn round_trip<T>(
    codec: &Codec,
    bootstrap: &str,
    topic: &str,
    events: impl Iterator<Item = T>,
    out: &mut dyn Write,
) -> anyhow::Result<KindTally>
where
    T: Event + Serialize + DeserializeOwned + PartialEq,
{
    let encoder: Encoder<T> = codec
        .encoder(&value_subject(topic), T::KIND.schema())
        .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut sent: HashMap<String, T> = HashMap::new();
    let mut deliveries = FuturesUnordered::new();
    let mut tally = KindTally {
        kind: T::KIND.to_string(),
        ..KindTally::default()
    };
    for event in events {
        let value = encoder.encode(&event)?;
        let key = event.user_id().to_owned();
        sent.insert(event.event_id().to_owned(), event);
        let producer = &producer;
        deliveries.push(async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
        });
        if deliveries.len() >= 10_000
            && let Some(result) = deliveries.next().await
        {
            result.map_err(|(error, _)| error)?;
            tally.published += 1;
        }
    }
    while let Some(result) = deliveries.next().await {
        result.map_err(|(error, _)| error)?;
        tally.published += 1;
    }
    producer.flush(Duration::from_secs(10))?;
    writeln!(out, "published {} {}s to {topic}", tally.published, T::KIND)?;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "adpipe-demo")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.received < tally.published && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let decoded: T = codec.decode(message.payload().unwrap_or_default()).await?;
        tally.received += 1;
        let keyed_right = message.key() == Some(decoded.user_id().as_bytes());
        if keyed_right && sent.get(decoded.event_id()) == Some(&decoded) {
            tally.identical += 1;
        }
    }
    writeln!(out, "read back {} {}s", tally.received, T::KIND)?;
    Ok(tally)
}

async fn create_topics(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topics: Vec<_> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}", nanos % 0xffff_ffff)
}
