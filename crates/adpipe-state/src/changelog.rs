//! The changelog topic behind a store: its record format, the [`Mark`] that
//! binds local data to a changelog position, and restoring a store.
//!
//! Record format: key = the store key; value = event time (i64, 8 bytes
//! big-endian) followed by the stored value; a tombstone removes the key.
//! (The deduplicator's changelog — id → 8-byte first event time — is this
//! format with empty values.)
//!
//! Every restore counts in `adpipe_state_restores_total{changelog, from}`
//! (`from` = `mark`: local data plus the tail; `full`: the whole changelog;
//! `shared`: nothing to restore).
//!
//! Restore contract ([`restore`]): the store's mark is used only when it
//! provably describes this changelog — the same cluster id, topic and
//! partition, an offset not past the changelog's end, and the record at
//! `offset − 1` still the one the mark ended at (a changelog deleted and
//! created again holds another record there, or none). Then the changelog
//! is replayed from the mark; otherwise the store is wiped and the whole
//! changelog replayed, which is always correct, only slower.

use std::time::{Duration, Instant};

use adpipe_kafka_client::{EofReader, RefusalWatch, refusal_after};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// A changelog reader's consumer (it reads to each partition's end).
type Reader = BaseConsumer<EofReader>;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::{StateError, StateStore};

/// Encodes a changelog value.
pub fn encode_value(event_time: i64, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + value.len());
    bytes.extend_from_slice(&event_time.to_be_bytes());
    bytes.extend_from_slice(value);
    bytes
}

/// Decodes a changelog value into (event time, value).
pub fn decode_value(bytes: &[u8]) -> Result<(i64, &[u8]), StateError> {
    match bytes.split_first_chunk::<8>() {
        Some((time, value)) => Ok((i64::from_be_bytes(*time), value)),
        None => Err(StateError::Changelog(format!(
            "a changelog value has {} bytes, fewer than the 8 of its event time",
            bytes.len()
        ))),
    }
}

/// Where local data is complete up to: a changelog position, bound to the
/// cluster, topic, partition and the record just before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    /// The Kafka cluster's id.
    pub cluster_id: String,
    /// The changelog topic.
    pub topic: String,
    /// The changelog partition.
    pub partition: i32,
    /// The changelog offset the data is complete up to (exclusive).
    pub offset: i64,
    /// Key and value of the changelog record at `offset − 1` (empty when
    /// `offset` is 0).
    pub last_record: (Vec<u8>, Vec<u8>),
}

impl Mark {
    /// Encodes the mark (little-endian, length-prefixed fields).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.offset.to_le_bytes());
        bytes.extend_from_slice(&self.partition.to_le_bytes());
        for field in [
            self.cluster_id.as_bytes(),
            self.topic.as_bytes(),
            &self.last_record.0,
            &self.last_record.1,
        ] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&field[..len as usize]);
        }
        bytes
    }

    /// Decodes a mark; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Mark> {
        let mut at = 0_usize;
        let mut take = |len: usize| {
            let slice = bytes.get(at..at.checked_add(len)?)?;
            at += len;
            Some(slice)
        };
        let offset = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let partition = i32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut fields: [Vec<u8>; 4] = Default::default();
        for field in &mut fields {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            *field = take(len)?.to_vec();
        }
        let [cluster_id, topic, key, value] = fields;
        (at == bytes.len()).then_some(())?;
        Some(Mark {
            cluster_id: String::from_utf8(cluster_id).ok()?,
            topic: String::from_utf8(topic).ok()?,
            partition,
            offset,
            last_record: (key, value),
        })
    }
}

/// Reads changelog partitions. A new consumer per use: partitions restore
/// and checkpoint in parallel.
#[derive(Clone)]
pub struct ChangelogReader {
    config: ClientConfig,
    cluster_id: Option<String>,
}

impl std::fmt::Debug for ChangelogReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChangelogReader")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Where the replay started when the local data was used (its mark's
    /// offset); `None` for a full replay.
    pub from_mark: Option<i64>,
    /// Why the local data was not used, when it was not.
    pub why_not_local: Option<String>,
    /// Changelog records applied.
    pub replayed: u64,
}

/// The cluster's id, asked for up to 30 s. A cluster that refuses this
/// client (a wrong password or CA) ends the question at once: no wait
/// mends a setting, and the worker's own start-up check would only say
/// so 30 s later.
fn ask_cluster_id(config: &ClientConfig) -> Result<Option<String>, StateError> {
    let client: BaseConsumer<RefusalWatch> = config
        .create_with_context(RefusalWatch::default())
        .map_err(|error| StateError::Kafka {
            topic: String::new(),
            partition: -1,
            message: error.to_string(),
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(id) = client.client().fetch_cluster_id(Duration::from_secs(2)) {
            return Ok(Some(id));
        }
        if let Some(refusal) = refusal_after(&client) {
            return Err(StateError::Refused(refusal.to_string()));
        }
    }
    Ok(None)
}

/// What each restore's consumer fetches and keeps ahead. Partitions
/// restore in parallel, each with its own consumer, so this is paid once
/// per partition being restored — and changelog records are tiny (an id and
/// 8 bytes), so librdkafka's defaults bounded it by count: it fetches until
/// a partition's queue holds `queued.min.messages` (100,000), and each
/// fetch brings up to `max.partition.fetch.bytes` (1 MiB) of lz4 batches
/// that decompress to several times that. The 10M chaos run's
/// deduplicator, restoring 36 partitions at once after a kill -9, peaked
/// at 834 MiB six seconds after its start. Measured (`cargo bench -p
/// adpipe-deduplicator --bench restore`: 4.3M ids, 36 partitions at once,
/// the state's tables 225 MiB): peak RSS 1,140–1,270 MiB with the
/// defaults and 4 MiB queues, 436–502 MiB with these (0.35–0.40×), but the
/// restore took 8.5–9.9 s instead of 2.1–4.2 s. What remains is mostly per
/// consumer (~7 MiB each): restoring fewer partitions at once would cut it
/// further (8 at once, by hand: 441 MiB).
pub const RESTORE_PREFETCH: [(&str, &str); 3] = [
    ("queued.min.messages", "10000"),
    ("queued.max.messages.kbytes", "1024"),
    ("max.partition.fetch.bytes", "262144"),
];

impl ChangelogReader {
    /// A reader with the service's Kafka client settings (bootstrap servers,
    /// security); asks the cluster for its id, which marks are bound to.
    /// Without an id no mark is written or trusted.
    pub fn new(mut config: ClientConfig, group_id: &str) -> Result<Self, StateError> {
        config
            .set("group.id", format!("{group_id}-restore"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        for (key, value) in RESTORE_PREFETCH {
            // The service's own setting, if it has one, wins.
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let cluster_id = ask_cluster_id(&config)?;
        if cluster_id.is_none() {
            warn!(
                "the cluster did not tell its id: state marks are off, restores replay the changelog"
            );
        }
        Ok(ChangelogReader { config, cluster_id })
    }

    /// The changelog cluster's id, if it told it.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    fn consumer(&self, topic: &str, partition: i32) -> Result<Reader, StateError> {
        self.config
            .create_with_context(EofReader)
            .map_err(|error| kafka(topic, partition, error))
    }

    /// The mark of the changelog's current end: what a checkpoint taken now,
    /// with every changelog record acknowledged, is complete up to. `None`
    /// when the cluster's id is unknown.
    pub fn mark_at_end(&self, topic: &str, partition: i32) -> Result<Option<Mark>, StateError> {
        let Some(cluster_id) = &self.cluster_id else {
            return Ok(None);
        };
        let consumer = self.consumer(topic, partition)?;
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|error| kafka(topic, partition, error))?;
        let mut last = None;
        if high > 0 {
            read_range(&consumer, topic, partition, high - 1, high, |key, value| {
                last = Some((key.to_vec(), value.unwrap_or_default().to_vec()));
            })?;
            if last.is_none() {
                return Err(StateError::Changelog(format!(
                    "cannot read {topic}-{partition}'s last record (offset {})",
                    high - 1
                )));
            }
        }
        Ok(Some(Mark {
            cluster_id: cluster_id.clone(),
            topic: topic.to_owned(),
            partition,
            offset: high,
            last_record: last.unwrap_or_default(),
        }))
    }

    /// Checkpoints `store` at the changelog's end (see [`StateStore::checkpoint`]).
    pub fn checkpoint(
        &self,
        store: &mut (impl StateStore + ?Sized),
        topic: &str,
        partition: i32,
    ) -> Result<Option<Mark>, StateError> {
        let mark = self.mark_at_end(topic, partition)?;
        if let Some(mark) = &mark {
            store.checkpoint(mark)?;
        }
        Ok(mark)
    }

    /// Restores `store` from `topic`-`partition` (blocking IO: call it where
    /// blocking is allowed, e.g. a step factory).
    pub fn restore(
        &self,
        store: &mut (impl StateStore + ?Sized),
        topic: &str,
        partition: i32,
    ) -> Result<Restored, StateError> {
        if store.shared() {
            metrics::counter!("adpipe_state_restores_total", "changelog" => topic.to_owned(), "from" => "shared")
                .increment(1);
            return Ok(Restored {
                from_mark: None,
                why_not_local: Some("a shared store: its data is on the server".to_owned()),
                replayed: 0,
            });
        }
        let started = Instant::now();
        let consumer = self.consumer(topic, partition)?;
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(30))
            .map_err(|error| kafka(topic, partition, error))?;
        let why_not_local = match store.mark() {
            None => Some("no mark".to_owned()),
            Some(mark) => self.why_not_usable(&consumer, &mark, topic, partition, high)?,
        };
        let from_mark = match &why_not_local {
            None => store.mark().map(|mark| mark.offset),
            Some(reason) => {
                if store.stats().entries > 0 || store.mark().is_some() {
                    warn!(
                        topic,
                        partition, reason, "local state not usable; replaying the whole changelog"
                    );
                }
                store.wipe()?;
                None
            }
        };
        let start = from_mark.unwrap_or(low).max(low);
        let mut replayed = 0_u64;
        let mut failed = None;
        if high > start {
            read_range(&consumer, topic, partition, start, high, |key, value| {
                if failed.is_none() {
                    match store.apply(key, value) {
                        Ok(()) => replayed += 1,
                        Err(error) => failed = Some(error),
                    }
                }
            })?;
        }
        if let Some(error) = failed {
            return Err(error);
        }
        info!(
            topic,
            partition,
            ?from_mark,
            replayed,
            entries = store.stats().entries,
            seconds = started.elapsed().as_secs_f64(),
            "state restored"
        );
        let from = if from_mark.is_some() { "mark" } else { "full" };
        metrics::counter!("adpipe_state_restores_total", "changelog" => topic.to_owned(), "from" => from)
            .increment(1);
        Ok(Restored {
            from_mark,
            why_not_local,
            replayed,
        })
    }

    /// Why `mark` does not describe this changelog partition (`None`: it does).
    fn why_not_usable(
        &self,
        consumer: &Reader,
        mark: &Mark,
        topic: &str,
        partition: i32,
        high: i64,
    ) -> Result<Option<String>, StateError> {
        let Some(cluster_id) = &self.cluster_id else {
            return Ok(Some("the cluster's id is unknown".to_owned()));
        };
        if &mark.cluster_id != cluster_id {
            return Ok(Some(format!(
                "written for cluster {}, this is {cluster_id}",
                mark.cluster_id
            )));
        }
        if mark.topic != topic || mark.partition != partition {
            return Ok(Some(format!(
                "written for {}-{}",
                mark.topic, mark.partition
            )));
        }
        if mark.offset > high {
            return Ok(Some(format!(
                "ahead of its changelog ({} > end {high}): the topic was recreated",
                mark.offset
            )));
        }
        if mark.offset == 0 {
            return Ok(None);
        }
        let mut found = None;
        read_range(
            consumer,
            topic,
            partition,
            mark.offset - 1,
            mark.offset,
            |key, value| found = Some((key.to_vec(), value.unwrap_or_default().to_vec())),
        )?;
        Ok(match found {
            Some(record) if record == mark.last_record => None,
            Some(_) => Some(format!(
                "the changelog's record at {} is not the one the mark ended at: the topic was recreated",
                mark.offset - 1
            )),
            None => Some(format!(
                "the changelog no longer holds offset {} (compacted or expired)",
                mark.offset - 1
            )),
        })
    }
}

fn kafka(topic: &str, partition: i32, error: rdkafka::error::KafkaError) -> StateError {
    StateError::Kafka {
        topic: topic.to_owned(),
        partition,
        message: error.to_string(),
    }
}

/// Calls `each(key, value)` for the records of `topic`-`partition` in
/// `[from, to)` (`value` `None` for a tombstone). Records that compaction
/// or retention removed are skipped.
fn read_range(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut each: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), StateError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|error| kafka(topic, partition, error))?;
    consumer
        .assign(&assignment)
        .map_err(|error| kafka(topic, partition, error))?;
    loop {
        match consumer.poll(Duration::from_secs(30)) {
            // Only this partition counts (defensive: one assignment).
            Some(Ok(message)) if message.topic() != topic || message.partition() != partition => {}
            Some(Ok(message)) => {
                if message.offset() >= to {
                    return Ok(());
                }
                if message.offset() >= from {
                    each(message.key().unwrap_or_default(), message.payload());
                }
                if message.offset() + 1 >= to {
                    return Ok(());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(error)) => return Err(kafka(topic, partition, error)),
            None => {
                return Err(StateError::Kafka {
                    topic: topic.to_owned(),
                    partition,
                    message: "changelog read timed out".to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_marks_round_trip() {
        let value = encode_value(-42, b"abc");
        assert_eq!(decode_value(&value).expect("decodes"), (-42, &b"abc"[..]));
        assert_eq!(
            decode_value(&7_i64.to_be_bytes()).expect("the dedup's format"),
            (7, &b""[..])
        );
        assert!(decode_value(b"short").is_err());

        let mark = Mark {
            cluster_id: "c".into(),
            topic: "log".into(),
            partition: 3,
            offset: 99,
            last_record: (b"k".to_vec(), b"v".to_vec()),
        };
        let bytes = mark.encode();
        assert_eq!(Mark::decode(&bytes), Some(mark));
        for cut in 0..bytes.len() {
            assert_eq!(Mark::decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Mark::decode(&longer), None, "trailing bytes");
    }
}
