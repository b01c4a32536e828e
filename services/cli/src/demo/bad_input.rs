//! Bad input in the demo's chain: one record of each class the pipeline
//! must survive — bytes that are not Avro, an unknown schema id, a record
//! whose schema lacks `event_time`, an event time far in the future, one
//! in seconds instead of milliseconds (before 2001), an impression too
//! large for the merger's output — published into dc1's impressions with
//! the bidders' traffic. Each must end in the merger's dead-letter topic
//! with its reason (found by its bytes, or by its size where the dead
//! letter had to omit them: MirrorMaker 2 keeps neither offsets nor a
//! trace of the DC's coordinates), be explained
//! by the reconciliation, and leave everything else untouched (the ground
//! truth checks see none of them: they are not in the simulation).
//!
//! And one a store refuses ([`add_store_refused`]): a well-formed
//! impression whose event id is longer than Elasticsearch takes as a
//! document's `_id`. It is part of the simulation — every stage and every
//! other store must hold it once — and must end in the loader's
//! dead-letter topic, found by its id.

use std::time::Duration;

use adpipe_codec::{Codec, value_subject};
use adpipe_events::EventKind;
use adpipe_loadtest::{GroundTruth, Publication, SimEvent};
use adpipe_runtime::dead_letter;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::names::Names;

/// The merger's producer refuses records larger than this (bytes), so an
/// impression above it is the "oversize record".
pub const MERGER_MAX_RECORD_BYTES: usize = 600_000;

/// One injected record and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Its class.
    pub class: &'static str,
    /// How its dead letter is recognised.
    pub trace: Trace,
    /// The service that must dead-letter it (into `dlq.<service>`).
    pub service: &'static str,
    /// The reason it must give, where one reason is right (several
    /// loaders share `dlq.loader`).
    pub reason: Option<&'static str>,
    /// The dead letter found for it: (service, reason).
    pub dead_letter: Option<(String, String)>,
}

impl BadRecord {
    /// Whether the service it was meant for dead-lettered it.
    pub fn ended_where_it_should(&self) -> bool {
        self.dead_letter.as_ref().is_some_and(|(service, reason)| {
            service == self.service && self.reason.is_none_or(|wanted| reason == wanted)
        })
    }
}

/// How an injected record is recognised in a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trace {
    /// Its bytes as published (or their size, where the dead letter had
    /// to omit them).
    Bytes(Vec<u8>),
    /// Its event id: an Avro string is its UTF-8 bytes after a length, so
    /// the id stands verbatim in the payload of whichever stage's copy was
    /// dead-lettered (the loader's input is the joiner's or the
    /// deduplicator's output, not the bytes published).
    EventId(String),
}

impl Trace {
    fn matches(&self, payload: &[u8], omitted: Option<usize>) -> bool {
        match (self, omitted) {
            (Trace::Bytes(value), Some(size)) => size == value.len(),
            (Trace::Bytes(value), None) => payload == value.as_slice(),
            (Trace::EventId(id), _) => payload
                .windows(id.len())
                .any(|window| window == id.as_bytes()),
        }
    }
}

/// Elasticsearch takes at most this many bytes as a document's `_id`
/// (the loader dead-letters a longer one before the write: one such item
/// makes Elasticsearch refuse its whole `_bulk` request).
const ELASTICSEARCH_MAX_ID_BYTES: usize = adpipe_loader::elasticsearch::MAX_ID_BYTES;

/// The store-refusal class: adds to the simulation an impression whose
/// event id only Elasticsearch refuses (dc1's, at the first event's
/// time), and returns its record. Every stage and every other store must
/// hold it once; Elasticsearch must not, and the loader must dead-letter
/// it with the reason.
pub fn add_store_refused(
    publications: &mut Vec<Publication>,
    truth: &mut GroundTruth,
) -> BadRecord {
    let first = publications
        .iter()
        .map(|publication| publication.event.event_time())
        .min()
        .unwrap_or_else(adpipe_runtime::event_time::now_ms);
    let mut impression = adpipe_events::samples::impression(9);
    impression.event_id = format!(
        "imp-refused-by-elasticsearch-{}",
        "x".repeat(ELASTICSEARCH_MAX_ID_BYTES)
    );
    impression.event_time = first;
    impression.user_id = "user-bad-input".to_owned();
    impression.dc = "dc1".to_owned();
    truth.impressions.insert(impression.event_id.clone());
    truth.published += 1;
    let id = impression.event_id.clone();
    publications.insert(
        0,
        Publication {
            dc: impression.dc.clone(),
            event: SimEvent::Impression(impression),
            duplicate: false,
        },
    );
    BadRecord {
        class: "a store refusing a write (_id > 512 bytes)",
        trace: Trace::EventId(id),
        service: "loader",
        reason: Some("elasticsearch_id_too_long"),
        dead_letter: None,
    }
}

/// Whether Elasticsearch takes `event_id` as a document's `_id`.
pub fn elasticsearch_takes(event_id: &str) -> bool {
    event_id.len() <= ELASTICSEARCH_MAX_ID_BYTES
}

/// A record whose schema has no `event_time` (a bidder on an old schema).
#[derive(serde::Serialize)]
struct NoEventTime {
    event_id: String,
    user_id: String,
}

const NO_EVENT_TIME_SCHEMA: &str = r#"{"type":"record","name":"Impression","namespace":"com.adpipe.demo.bad","fields":[{"name":"event_id","type":"string"},{"name":"user_id","type":"string"}]}"#;

fn impression(id: &str, event_time: i64, url_bytes: usize) -> adpipe_events::Impression {
    let mut impression = adpipe_events::samples::impression(7);
    impression.event_id = id.to_owned();
    impression.event_time = event_time;
    impression.user_id = "user-bad-input".to_owned();
    impression.url = "x".repeat(url_bytes.max(1));
    impression
}

/// Publishes one record of each class into dc1's impressions (on dc1's
/// cluster, or into its replica on `central` when there is none).
pub async fn publish(
    codec: &Codec,
    central: &str,
    names: &Names,
) -> anyhow::Result<Vec<BadRecord>> {
    let (cluster, topic) = names.publish_target("dc1", EventKind::Impression);
    let bootstrap = cluster.unwrap_or(central);
    let now = adpipe_runtime::event_time::now_ms();
    let encode = async |value: &adpipe_events::Impression| -> anyhow::Result<Vec<u8>> {
        let encoder = codec
            .encoder::<adpipe_events::Impression>(
                &value_subject(&names.merged(EventKind::Impression)),
                EventKind::Impression.schema(),
            )
            .await?;
        Ok(encoder.encode(value)?)
    };
    let no_time = codec
        .encoder::<NoEventTime>(
            &value_subject(&format!("{}demo-bad-input", names.prefix)),
            NO_EVENT_TIME_SCHEMA,
        )
        .await?
        .encode(&NoEventTime {
            event_id: "bad-no-event-time".to_owned(),
            user_id: "user-bad-input".to_owned(),
        })?;
    let records: Vec<(&'static str, Vec<u8>)> = vec![
        ("undecodable", b"not an Avro record at all".to_vec()),
        // Magic byte 0, then a schema id no registry gave out.
        ("unknown schema", vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6]),
        ("missing field (event_time)", no_time),
        (
            "far-future event time",
            encode(&impression("bad-far-future", now + 30 * 86_400_000, 40)).await?,
        ),
        (
            "ancient event time (seconds)",
            encode(&impression("bad-in-seconds", now / 1000, 40)).await?,
        ),
        (
            "oversize record",
            encode(&impression(
                "bad-oversize",
                now - 60_000,
                MERGER_MAX_RECORD_BYTES + 50_000,
            ))
            .await?,
        ),
    ];
    let producer: FutureProducer = adpipe_kafka_client::env_client_config(bootstrap)
        .set("message.max.bytes", "2000000")
        .create()?;
    let mut injected = Vec::new();
    for (class, value) in records {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&topic)
                    .key("user-bad-input")
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .with_context(|| format!("publishing the {class} record"))?;
        injected.push(BadRecord {
            class,
            trace: Trace::Bytes(value),
            service: "merger",
            reason: None,
            dead_letter: None,
        });
    }
    Ok(injected)
}

/// Finds each injected record's dead letter in its service's dead-letter
/// topic (waiting up to 30 s for them all).
pub fn find_dead_letters(
    bootstrap: &str,
    names: &Names,
    injected: &mut [BadRecord],
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = adpipe_kafka_client::env_client_config(bootstrap)
        .set(
            "group.id",
            format!("{}adpipe-demo-dlq-checker", names.prefix),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let mut services: Vec<&str> = injected.iter().map(|record| record.service).collect();
    services.sort_unstable();
    services.dedup();
    let mut assignment = TopicPartitionList::new();
    for service in services {
        assignment.add_partition_offset(&names.dlq(service), 0, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while injected.iter().any(|record| record.dead_letter.is_none())
        && std::time::Instant::now() < deadline
    {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let header = |name: &str| adpipe_runtime::header_text(&message, name);
        let omitted: Option<usize> =
            header(dead_letter::HEADER_VALUE_OMITTED).and_then(|size| size.parse().ok());
        let payload = message.payload().unwrap_or_default();
        for record in injected.iter_mut() {
            if record.trace.matches(payload, omitted) {
                record.dead_letter = Some((
                    header(dead_letter::HEADER_SERVICE).unwrap_or_default(),
                    header(dead_letter::HEADER_REASON).unwrap_or_default(),
                ));
            }
        }
    }
    Ok(())
}
