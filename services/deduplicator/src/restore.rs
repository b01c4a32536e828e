//! Restoring a partition's state: its local snapshot, when it provably
//! describes this changelog, plus the changelog from the snapshot's offset
//! (or the whole changelog).
//!
//! Contract: a snapshot is loaded only when its binding matches — the same
//! cluster id, changelog topic and partition, an offset not past the
//! changelog's end, and the record at `offset − 1` still the one it ended
//! at (a changelog deleted and created again holds another record there, or
//! none). Anything else falls back to a full changelog replay, which is
//! always correct, only slower.

use std::time::Duration;

use adpipe_runtime::StepError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::{DedupSettings, Stream};
use crate::snapshot::{self, Snapshot};
use crate::state::{DedupState, id_hash};

/// A restored partition.
#[derive(Debug)]
pub struct Restored {
    /// The state.
    pub state: DedupState,
    /// Where the replay started: the snapshot's offset, or `None` for a
    /// full replay.
    pub from_snapshot: Option<i64>,
}

fn kafka(error: rdkafka::error::KafkaError) -> StepError {
    StepError::transient("changelog_restore", error.to_string())
}

/// A reader of changelog partitions (a new consumer per use: partitions
/// restore and save in parallel).
fn changelog_consumer(settings: &DedupSettings) -> Result<BaseConsumer, StepError> {
    ClientConfig::new()
        .set(
            "bootstrap.servers",
            &settings.worker.kafka.bootstrap_servers,
        )
        .set(
            "group.id",
            format!("{}-restore", settings.worker.kafka.group_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // Partitions restore in parallel; librdkafka's default prefetch
        // (64 MiB each) made a restart's memory peak twice the state's.
        .set("queued.max.messages.kbytes", "4096")
        .create()
        .map_err(kafka)
}

/// A changelog record's key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The changelog partition's end offset and its last record (what a
/// snapshot saved now ends at).
pub fn changelog_end(
    settings: &DedupSettings,
    changelog: &str,
    partition: i32,
) -> Result<(i64, Option<KeyValue>), StepError> {
    let consumer = changelog_consumer(settings)?;
    let (_, high) = consumer
        .fetch_watermarks(changelog, partition, Duration::from_secs(10))
        .map_err(kafka)?;
    let mut last = None;
    if high > 0 {
        read_range(
            &consumer,
            changelog,
            partition,
            high - 1,
            high,
            |key, value| {
                last = Some((key.to_vec(), value.to_vec()));
            },
        )?;
    }
    Ok((high, last))
}

/// Restores `stream`'s `partition` (blocking IO: the factory runs on a
/// blocking thread). `cluster_id` is the cluster the changelog lives on,
/// if known; without it no snapshot is trusted.
pub fn restore(
    settings: &DedupSettings,
    cluster_id: Option<&str>,
    stream: &Stream,
    partition: i32,
) -> Result<Restored, StepError> {
    let mut state = DedupState::new(settings.window_ms, settings.lateness_ms);
    let consumer = changelog_consumer(settings)?;
    let (low, high) = consumer
        .fetch_watermarks(&stream.changelog, partition, Duration::from_secs(30))
        .map_err(kafka)?;
    let path = snapshot::snapshot_path(&settings.state_dir, &stream.changelog, partition);
    let usable = match snapshot::load(&path) {
        Ok(Some(saved)) => {
            match why_not_usable(&consumer, &saved, cluster_id, stream, partition, high) {
                Ok(None) => Some(saved),
                Ok(Some(reason)) => {
                    warn!(path = %path.display(), reason, "ignoring the snapshot; replaying the changelog");
                    None
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "cannot check the snapshot; replaying the changelog");
                    None
                }
            }
        }
        Ok(None) => None,
        Err(error) => {
            warn!(%error, "ignoring the snapshot; replaying the changelog");
            None
        }
    };
    let from_snapshot = usable.map(|saved| {
        for (id, event_time) in saved.entries {
            state.remember(id, event_time);
        }
        saved.binding.offset
    });
    let start = from_snapshot.unwrap_or(low).max(low);
    let mut replayed = 0_u64;
    if high > start {
        read_range(
            &consumer,
            &stream.changelog,
            partition,
            start,
            high,
            |key, value| {
                if let Ok(bytes) = <[u8; 8]>::try_from(value) {
                    state.remember(
                        id_hash(&String::from_utf8_lossy(key)),
                        i64::from_be_bytes(bytes),
                    );
                    replayed += 1;
                }
            },
        )?;
    }
    info!(changelog = %stream.changelog, partition, ?from_snapshot, replayed, kept = state.len(), "deduplicator state restored");
    Ok(Restored {
        state,
        from_snapshot,
    })
}

/// Why `saved` does not describe this changelog partition (`None`: it does).
fn why_not_usable(
    consumer: &BaseConsumer,
    saved: &Snapshot,
    cluster_id: Option<&str>,
    stream: &Stream,
    partition: i32,
    high: i64,
) -> Result<Option<String>, StepError> {
    let binding = &saved.binding;
    let Some(cluster_id) = cluster_id else {
        return Ok(Some("the cluster's id is unknown".to_owned()));
    };
    if binding.cluster_id != cluster_id {
        return Ok(Some(format!(
            "written for cluster {}, this is {cluster_id}",
            binding.cluster_id
        )));
    }
    if binding.topic != stream.changelog || binding.partition != partition {
        return Ok(Some(format!(
            "written for {}-{}",
            binding.topic, binding.partition
        )));
    }
    if binding.offset > high {
        return Ok(Some(format!(
            "ahead of its changelog ({} > end {high}): the topic was recreated",
            binding.offset
        )));
    }
    if binding.offset == 0 {
        return Ok(None);
    }
    let mut found = None;
    read_range(
        consumer,
        &stream.changelog,
        partition,
        binding.offset - 1,
        binding.offset,
        |key, value| found = Some((key.to_vec(), value.to_vec())),
    )?;
    Ok(match found {
        Some(record) if record == binding.last_record => None,
        Some(_) => Some(format!(
            "the changelog's record at {} is not the one the snapshot ended at: the topic was recreated",
            binding.offset - 1
        )),
        None => Some(format!(
            "the changelog no longer holds offset {} (compacted or expired)",
            binding.offset - 1
        )),
    })
}

/// Calls `each(key, value)` for the records of `topic`-`partition` in
/// `[from, to)`. Records that compaction or retention removed are skipped.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<(), StepError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(kafka)?;
    consumer.assign(&assignment).map_err(kafka)?;
    loop {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(message)) => {
                if message.offset() >= to {
                    return Ok(());
                }
                if message.offset() >= from {
                    each(
                        message.key().unwrap_or_default(),
                        message.payload().unwrap_or_default(),
                    );
                }
                if message.offset() + 1 >= to {
                    return Ok(());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(error)) => return Err(kafka(error)),
            None => {
                return Err(StepError::transient(
                    "changelog_restore",
                    "changelog read timed out",
                ));
            }
        }
    }
}
