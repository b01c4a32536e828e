//! Reading the chain's Kafka stages into the ledger: each topic from the
//! first record written `slack` before the reconciled hours to its end as
//! it was when reading began, decoding only the id and event time of each
//! record (any schema the registry knows), the orphans' kind and reason
//! from their headers, and the dead-letter topics whole — each dead letter
//! by the id of the record it carries and by the coordinates it names.
//!
//! Contract: heartbeats (no value) are skipped; a record that does not
//! decode is kept as [`Undecodable`](crate::ledger::Undecodable) when its
//! record time is inside the hours; reading fails (never returns a short
//! count) when a partition's end cannot be reached.

use std::collections::HashMap;
use std::time::Duration;

use adpipe_codec::Codec;
use adpipe_runtime::{dead_letter, header_text};
use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::ledger::{Bucket, Kind, Ledger, Place, Stage, Undecodable, bucket_of};

/// What decides a record's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindOf {
    /// Every record of the topic is this kind.
    Fixed(Kind),
    /// The orphans: the `adpipe.orphan.kind` header.
    OrphanHeader,
    /// Processed events of every kind (the dispatcher's output): a joined
    /// conversion, a joined click, else an impression — by its fields.
    ByValue,
}

/// One topic of one stage.
#[derive(Debug, Clone)]
pub struct StageTopic {
    /// The stage.
    pub stage: Stage,
    /// Its cluster.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// Its records' kind.
    pub kind: KindOf,
    /// The dispatcher's routing, when this is one of its inputs and the
    /// routing is reconciled: each record is then also recorded as
    /// [`Stage::Routed`] to every DC it must reach.
    pub routes: Option<std::sync::Arc<adpipe_dispatcher::dispatch::Routes>>,
}

/// The hours being reconciled, and how early reading starts.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// First hour's start (ms).
    pub from: i64,
    /// End (ms, exclusive).
    pub to: i64,
    /// Reading starts at `from − slack_ms` (at the topics' beginnings when
    /// that is before the epoch).
    pub slack_ms: i64,
}

#[derive(Deserialize, Default)]
struct Nested {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    event_time: Option<i64>,
    #[serde(default)]
    user_id: Option<String>,
}

/// The fields an id and an event time are made of (a joined record's are
/// its conversion's or click's).
#[derive(Deserialize)]
struct IdFields {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    event_time: Option<i64>,
    #[serde(default)]
    conversion: Option<Nested>,
    #[serde(default)]
    click: Option<Nested>,
    #[serde(default)]
    user_id: Option<String>,
}

/// What a record is: its id, event time, user and (by its fields) kind.
struct Identified {
    id: String,
    time_ms: i64,
    user: Option<String>,
    kind: Kind,
}

impl IdFields {
    fn id_and_time(self) -> Option<(String, i64)> {
        self.identified()
            .map(|identified| (identified.id, identified.time_ms))
    }

    fn identified(self) -> Option<Identified> {
        let kind = if self.conversion.is_some() {
            Kind::Conversion
        } else if self.click.is_some() {
            Kind::Click
        } else {
            Kind::Impression
        };
        let nested = self.conversion.or(self.click).unwrap_or_default();
        Some(Identified {
            id: self.event_id.or(nested.event_id)?,
            time_ms: self.event_time.or(nested.event_time)?,
            user: self.user_id.or(nested.user_id),
            kind,
        })
    }
}

/// A Kafka client of the reconciler (never in a group: it commits nothing).
pub fn client(
    bootstrap: &str,
    properties: &adpipe_kafka_client::ClientSettings,
) -> anyhow::Result<StreamConsumer> {
    let mut config = properties.client_config(bootstrap);
    config
        .set("group.id", "adpipe-reconciler-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // A start that retention deleted meanwhile: from what is left,
        // never from the end (which would read nothing and count a loss).
        .set("auto.offset.reset", "earliest");
    config
        .create()
        .with_context(|| format!("creating a Kafka client for {bootstrap}"))
}

const TIMEOUT: Duration = Duration::from_secs(15);

/// Assigns `topic` from `start_ms` (None: its beginning) to the ends it
/// has now; returns how many records that is per partition.
fn assign_span(
    consumer: &StreamConsumer,
    topic: &str,
    start_ms: Option<i64>,
) -> anyhow::Result<HashMap<i32, i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|meta| meta.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    let mut starts = TopicPartitionList::new();
    for partition in &partitions {
        starts.add_partition_offset(
            topic,
            *partition,
            match start_ms {
                Some(ms) => Offset::Offset(ms),
                None => Offset::Beginning,
            },
        )?;
    }
    let starts = match start_ms {
        Some(_) => consumer
            .offsets_for_times(starts, TIMEOUT)
            .with_context(|| format!("finding where {topic} starts"))?,
        None => starts,
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for element in starts.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), TIMEOUT)
            .with_context(|| format!("reading the end of {topic}-{}", element.partition()))?;
        let start = match element.offset() {
            Offset::Offset(offset) => offset.max(low),
            // No record at or after the time: nothing to read.
            Offset::End => high,
            _ => low,
        };
        if start < high {
            assignment.add_partition_offset(topic, element.partition(), Offset::Offset(start))?;
            ends.insert(element.partition(), high);
        }
    }
    consumer.assign(&assignment)?;
    Ok(ends)
}

/// Reads every record of `ends`' partitions up to those ends, handing
/// each to `each`.
async fn read_to_ends<'c>(
    consumer: &'c StreamConsumer,
    topic: &str,
    mut ends: HashMap<i32, i64>,
    mut each: impl AsyncFnMut(&BorrowedMessage<'c>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut read = 0;
    while !ends.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .with_context(|| {
                format!("{topic}: nothing arrived for 30 s before the ends {ends:?} were reached")
            })?
            .with_context(|| format!("reading {topic}"))?;
        let partition = message.partition();
        if let Some(end) = ends.get(&partition).copied() {
            if message.offset() < end {
                each(&message).await?;
                read += 1;
            }
            if message.offset() + 1 >= end {
                ends.remove(&partition);
            }
        }
    }
    Ok(read)
}

fn value_hash(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Reads one stage's topic into `ledger`; returns the records read.
pub async fn read_stage(
    ledger: &mut Ledger,
    codec: &Codec,
    source: &StageTopic,
    span: Span,
    properties: &adpipe_kafka_client::ClientSettings,
) -> anyhow::Result<u64> {
    let consumer = client(&source.bootstrap, properties)?;
    // A slack reaching back to the epoch reads whole topics (a cluster
    // that cannot look offsets up by time: librdkafka's mock).
    let start_ms = Some(span.from - span.slack_ms).filter(|start| *start > 0);
    let ends = assign_span(&consumer, &source.topic, start_ms)?;
    let topic = ledger.topic(&source.topic);
    read_to_ends(&consumer, &source.topic, ends, async |message| {
        let Some(value) = message.payload() else {
            return Ok(()); // a heartbeat
        };
        let record_ms = message.timestamp().to_millis();
        let decoded = codec
            .decode::<IdFields>(value)
            .await
            .map_err(|error| error.to_string())
            .and_then(|fields| {
                fields
                    .identified()
                    .ok_or_else(|| "no event_id or event_time".to_owned())
            });
        let kind = match (source.kind, &decoded) {
            (KindOf::Fixed(kind), _) => Some(kind),
            (KindOf::OrphanHeader, _) => header_text(message, adpipe_events::HEADER_ORPHAN_KIND)
                .as_deref()
                .and_then(Kind::parse),
            (KindOf::ByValue, Ok(identified)) => Some(identified.kind),
            (KindOf::ByValue, Err(_)) => None,
        };
        let identified = match (decoded, kind) {
            (Ok(decoded), Some(_)) => decoded,
            (error, _) => {
                if record_ms.is_some_and(|ms| (span.from..span.to).contains(&ms)) {
                    ledger.undecodable.push(Undecodable {
                        topic: source.topic.clone(),
                        partition: message.partition(),
                        offset: message.offset(),
                        error: error
                            .err()
                            .unwrap_or_else(|| "no orphan kind header".to_owned()),
                        value_hash: value_hash(value),
                    });
                }
                return Ok(());
            }
        };
        let (id, event_ms) = (identified.id, identified.time_ms);
        let Some(bucket) = bucket_of(event_ms, record_ms, span.from, span.to) else {
            return Ok(());
        };
        let kind = kind.unwrap_or(Kind::Impression);
        if let (Stage::Dispatched(_), Some(user)) = (&source.stage, identified.user) {
            ledger.profile_owner(&id, &user, kind, event_ms);
        }
        if source.kind == KindOf::OrphanHeader {
            let reason = header_text(message, adpipe_events::HEADER_ORPHAN_REASON)
                .unwrap_or_else(|| "?".to_owned());
            ledger.orphan_reason(&id, kind, &reason);
        }
        let place = Place {
            topic,
            partition: message.partition(),
            offset: message.offset(),
        };
        ledger.record(bucket, kind, source.stage.clone(), &id, Some(place));
        if let Some(routes) = &source.routes {
            // Decoded again, as the dispatcher decodes it: an event it
            // cannot route (no user, no origin) it dead-letters, and is
            // routed nowhere here.
            let origin = adpipe_runtime::header_bytes(message, adpipe_events::HEADER_ORIGIN_DC);
            let route = codec
                .decode::<adpipe_dispatcher::dispatch::RouteFields>(value)
                .await
                .ok()
                .and_then(|fields| fields.route(origin).ok());
            if let Some(route) = route {
                for (dc, _) in routes.targets(&route.user, &route.origin) {
                    ledger.record(bucket, kind, Stage::Routed(dc.clone()), &id, Some(place));
                }
            }
        }
        Ok(())
    })
    .await
}

/// Reads a dead-letter topic whole into `ledger`.
pub async fn read_dead_letters(
    ledger: &mut Ledger,
    codec: &Codec,
    bootstrap: &str,
    topic: &str,
    properties: &adpipe_kafka_client::ClientSettings,
) -> anyhow::Result<u64> {
    let consumer = client(bootstrap, properties)?;
    let ends = match assign_span(&consumer, topic, None) {
        Ok(ends) => ends,
        // A service that never dead-lettered may not have its topic yet.
        Err(error) if error.to_string().contains("does not exist") => return Ok(0),
        Err(error) => return Err(error),
    };
    read_to_ends(&consumer, topic, ends, async |message| {
        let service = header_text(message, dead_letter::HEADER_SERVICE).unwrap_or_default();
        let reason = header_text(message, dead_letter::HEADER_REASON).unwrap_or_default();
        let coordinates = (
            header_text(message, dead_letter::HEADER_TOPIC),
            header_text(message, dead_letter::HEADER_PARTITION).and_then(|p| p.parse().ok()),
            header_text(message, dead_letter::HEADER_OFFSET).and_then(|o| o.parse().ok()),
        );
        let letter = crate::ledger::DeadLetter { service, reason };
        if let (Some(topic), Some(partition), Some(offset)) = coordinates {
            ledger
                .dead_by_place
                .insert((topic, partition, offset), letter.clone());
        }
        if let Some(value) = message.payload()
            && let Ok(fields) = codec.decode::<IdFields>(value).await
            && let Some((id, _)) = fields.id_and_time()
        {
            ledger.dead_letter(&id, &letter.service, &letter.reason);
        }
        Ok(())
    })
    .await
}

/// The committed offsets of `group` on `topics` (none: an empty map).
pub fn committed(
    bootstrap: &str,
    group: &str,
    topics: &[String],
    properties: &adpipe_kafka_client::ClientSettings,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let mut config = properties.client_config(bootstrap);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), TIMEOUT) else {
            continue;
        };
        for meta in metadata.topics() {
            for partition in meta.partitions() {
                list.add_partition(topic, partition.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(list, TIMEOUT)
        .with_context(|| format!("reading the committed offsets of {group}"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => {
                Some(((element.topic().to_owned(), element.partition()), offset))
            }
            _ => None,
        })
        .collect())
}

/// The bucket a stage's record with no record time would land in (stores).
pub fn store_bucket(event_ms: i64, span: Span) -> Option<Bucket> {
    bucket_of(event_ms, None, span.from, span.to)
}
