//! The deduplication step and its factory, which restores a partition's
//! state from its changelog.
//!
//! Delivery contract: a new event is emitted to the output topic, and only
//! after the output is acknowledged is its id appended to the changelog
//! (`OutputRecord::then`); the input is done when the changelog write is
//! acknowledged. So after a crash the restored state never holds an id whose
//! output might be missing: replayed records are either dropped (their output
//! and changelog entry both exist) or emitted again (the changelog entry was
//! lost) — a duplicate downstream, which the idempotent sinks absorb, never
//! a loss.

use std::sync::Arc;
use std::time::Duration;

use adpipe_runtime::telemetry::Metric;
use adpipe_runtime::{
    Emitter, InputRecord, OutputRecord, Step, StepError, StepFactory, TaskAssignment,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{DedupSettings, Stream};
use crate::snapshot;
use crate::state::{DedupState, Verdict, id_hash};

/// The fields every deduplicated event has; the rest of the record is
/// skipped by the decoder and forwarded untouched as bytes.
#[derive(Debug, Deserialize)]
struct EventIdentity {
    event_id: String,
    event_time: i64,
}

/// Deduplicates one partition of one stream.
pub struct DedupStep {
    stream: Stream,
    partition: i32,
    state: DedupState,
    /// Where to save the state on revoke, and the cluster holding the changelog.
    snapshot: Option<SnapshotTarget>,
    /// Events older than the window (passed on undeduplicated).
    outside_window: metrics::Counter,
}

/// Where a step saves its snapshot.
#[derive(Clone)]
pub struct SnapshotTarget {
    /// The snapshot file.
    pub path: std::path::PathBuf,
    /// A client of the changelog's cluster, shared by every partition, to
    /// read the changelog's end at snapshot time.
    pub watermarks: Arc<BaseConsumer>,
}

impl DedupStep {
    /// A step with the given (possibly restored) state.
    pub fn new(stream: Stream, partition: i32, state: DedupState) -> Self {
        let outside_window = metrics::counter!(
            Metric::LateRecords.name(),
            "service" => "deduplicator",
            "topic" => stream.input.clone(),
            "reason" => "outside_window"
        );
        DedupStep {
            stream,
            partition,
            state,
            snapshot: None,
            outside_window,
        }
    }

    /// Saves snapshots to `target` on drained revokes.
    pub fn with_snapshots(mut self, target: SnapshotTarget) -> Self {
        self.snapshot = Some(target);
        self
    }

    /// The partition's state.
    pub fn state(&self) -> &DedupState {
        &self.state
    }

    /// Writes the snapshot: every output and changelog entry is acknowledged,
    /// so the changelog's end is where the state is complete up to.
    fn save_snapshot(&self, target: &SnapshotTarget) -> Result<i64, String> {
        let (_, high) = target
            .watermarks
            .fetch_watermarks(
                &self.stream.changelog,
                self.partition,
                Duration::from_secs(10),
            )
            .map_err(|error| error.to_string())?;
        let bytes = snapshot::encode(high, self.state.entries().into_iter());
        snapshot::store(&target.path, &bytes).map_err(|error| error.to_string())?;
        Ok(high)
    }
}

/// Changelog value: the first copy's event time, 8 bytes big-endian.
fn changelog_value(event_time: i64) -> Vec<u8> {
    event_time.to_be_bytes().to_vec()
}

impl Step for DedupStep {
    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let identity: EventIdentity = record.decode()?;
        // Rejects absurd times before they touch the window (see
        // `adpipe_runtime::event_time`): one bad timestamp must not move it.
        out.observe_event_time(identity.event_time)?;
        if identity.event_time < self.state.cutoff() {
            // Older than the window: nothing to compare with, so it passes
            // (the window is the memory), counted.
            self.outside_window.increment(1);
        }
        if self
            .state
            .check_and_insert(id_hash(&identity.event_id), identity.event_time)
            == Verdict::Duplicate
        {
            return Ok(()); // no output: done at once
        }
        let mut changelog = OutputRecord::new(
            &self.stream.changelog,
            Some(identity.event_id.as_bytes()),
            Some(&changelog_value(identity.event_time)),
        );
        changelog.partition = Some(self.partition);
        let mut output = OutputRecord::new(&self.stream.output, record.key, record.value);
        // Fixed partitioning: partition i stays partition i.
        output.partition = Some(self.partition);
        output.headers = record.headers.to_vec();
        output.then = Some(Box::new(changelog));
        out.emit(output);
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.state.len()
    }

    fn state_bytes(&self) -> usize {
        self.state.heap_bytes()
    }

    fn on_revoke(&mut self, drained: bool) {
        let Some(target) = &self.snapshot else {
            return;
        };
        if !drained {
            // Some ids in memory may lack an acknowledged output: a snapshot
            // could hide them after a restart. The changelog alone is safe.
            warn!(changelog = %self.stream.changelog, partition = self.partition, "outputs still in flight at revoke; no snapshot");
            return;
        }
        match self.save_snapshot(target) {
            Ok(offset) => {
                info!(path = %target.path.display(), offset, entries = self.state.len(), "deduplicator snapshot saved")
            }
            Err(error) => {
                warn!(%error, "deduplicator snapshot not saved; the next owner replays the changelog")
            }
        }
    }
}

/// Builds steps, restoring each partition's state from its changelog.
pub struct DedupFactory {
    settings: DedupSettings,
    /// Shared by all steps' snapshot saves (one client, not one per revoke).
    watermarks: Arc<BaseConsumer>,
}

impl DedupFactory {
    /// A factory for these settings.
    pub fn new(settings: DedupSettings) -> Result<Self, rdkafka::error::KafkaError> {
        let watermarks = ClientConfig::new()
            .set(
                "bootstrap.servers",
                &settings.worker.kafka.bootstrap_servers,
            )
            .create()?;
        Ok(DedupFactory {
            settings,
            watermarks: Arc::new(watermarks),
        })
    }

    /// A partition's state: its snapshot, if usable, plus the changelog
    /// from the snapshot's offset (or all of it).
    pub fn restore(&self, stream: &Stream, partition: i32) -> Result<DedupState, StepError> {
        let mut state = DedupState::new(self.settings.window_ms, self.settings.lateness_ms);
        let kafka = |error: rdkafka::error::KafkaError| {
            StepError::transient("changelog_restore", error.to_string())
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set(
                "bootstrap.servers",
                &self.settings.worker.kafka.bootstrap_servers,
            )
            .set(
                "group.id",
                format!("{}-restore", self.settings.worker.kafka.group_id),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // Partitions restore in parallel; librdkafka's default prefetch
            // (64 MiB each) made a restart's memory peak twice the state's.
            .set("queued.max.messages.kbytes", "4096")
            .create()
            .map_err(kafka)?;
        let (low, high) = consumer
            .fetch_watermarks(&stream.changelog, partition, Duration::from_secs(30))
            .map_err(kafka)?;
        let from_snapshot = self.load_snapshot(stream, partition, high, &mut state);
        let start = from_snapshot.unwrap_or(low).max(low);
        if high <= start {
            info!(changelog = %stream.changelog, partition, kept = state.len(), ?from_snapshot, "deduplicator state restored");
            return Ok(state);
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&stream.changelog, partition, Offset::Offset(start))
            .map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)?;
        let mut restored = 0_u64;
        loop {
            match consumer.poll(Duration::from_secs(30)) {
                Some(Ok(message)) => {
                    if let (Some(key), Some(value)) = (message.key(), message.payload())
                        && let Ok(bytes) = <[u8; 8]>::try_from(value)
                    {
                        let event_id = String::from_utf8_lossy(key);
                        state.remember(id_hash(&event_id), i64::from_be_bytes(bytes));
                        restored += 1;
                    }
                    if message.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => return Err(kafka(error)),
                None => {
                    return Err(StepError::transient(
                        "changelog_restore",
                        "changelog read timed out",
                    ));
                }
            }
        }
        info!(changelog = %stream.changelog, partition, ?from_snapshot, replayed = restored, kept = state.len(), "deduplicator state restored");
        Ok(state)
    }

    /// Loads the partition's snapshot into `state` and returns the changelog
    /// offset to replay from; `None` (replay everything) when there is no
    /// usable snapshot.
    fn load_snapshot(
        &self,
        stream: &Stream,
        partition: i32,
        changelog_high: i64,
        state: &mut DedupState,
    ) -> Option<i64> {
        let path = snapshot::snapshot_path(&self.settings.state_dir, &stream.changelog, partition);
        match snapshot::load(&path) {
            Ok(Some(saved)) if saved.changelog_offset <= changelog_high => {
                for (id, event_time) in saved.entries {
                    state.remember(id, event_time);
                }
                Some(saved.changelog_offset)
            }
            Ok(Some(saved)) => {
                warn!(path = %path.display(), snapshot_offset = saved.changelog_offset, changelog_high, "snapshot is ahead of its changelog (topic recreated?); replaying the changelog");
                None
            }
            Ok(None) => None,
            Err(error) => {
                warn!(%error, "ignoring the snapshot; replaying the changelog");
                None
            }
        }
    }
}

impl StepFactory for DedupFactory {
    type Step = DedupStep;

    fn create(&self, assignment: &TaskAssignment) -> Result<DedupStep, StepError> {
        let input = assignment.inputs.first().map_or("", String::as_str);
        let stream = self.settings.stream(input).cloned().ok_or_else(|| {
            StepError::fatal("unknown_stream", format!("no stream reads {input}"))
        })?;
        let state = self.restore(&stream, assignment.partition)?;
        let target = SnapshotTarget {
            path: snapshot::snapshot_path(
                &self.settings.state_dir,
                &stream.changelog,
                assignment.partition,
            ),
            watermarks: Arc::clone(&self.watermarks),
        };
        Ok(DedupStep::new(stream, assignment.partition, state).with_snapshots(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adpipe_codec::{Encoder, WriterSchema};
    use adpipe_events::{EventKind, Impression, samples};
    use std::sync::Arc;

    fn stream() -> Stream {
        Stream {
            input: "in".into(),
            output: "out".into(),
            changelog: "log".into(),
        }
    }

    #[tokio::test]
    async fn emits_the_first_copy_with_its_changelog_entry_after_it() {
        let writer = Arc::new(
            WriterSchema::parse(1, EventKind::Impression.schema().to_owned()).expect("schema"),
        );
        let encoder =
            Encoder::<Impression>::new(1, EventKind::Impression.schema().parse().expect("schema"));
        let event = samples::impression(9);
        let value = encoder.encode(&event).expect("encodes");
        let headers = vec![("adpipe.origin.dc".to_owned(), b"dc1".to_vec())];
        let record = |offset| InputRecord {
            topic: "in",
            input: 0,
            lateness_ms: None,
            partition: 4,
            offset,
            timestamp_ms: None,
            key: Some(event.user_id.as_bytes()),
            value: Some(&value),
            headers: &headers,
            writer: Some(Arc::clone(&writer)),
        };
        let mut step = DedupStep::new(stream(), 4, DedupState::new(86_400_000, 3_600_000));
        let mut out = Emitter::default();
        step.process(&record(0), &mut out).await.expect("processes");
        let outputs: Vec<&OutputRecord> = out.outputs().collect();
        let [output] = outputs[..] else {
            panic!("one output expected")
        };
        assert_eq!((output.topic.as_str(), output.partition), ("out", Some(4)));
        assert_eq!(
            output.value.as_deref(),
            Some(value.as_slice()),
            "bytes forwarded untouched"
        );
        assert_eq!(output.headers, headers);
        let changelog = output.then.as_ref().expect("changelog after the output");
        assert_eq!(changelog.key.as_deref(), Some(event.event_id.as_bytes()));
        assert_eq!(changelog.partition, Some(4));

        let mut again = Emitter::default();
        step.process(&record(1), &mut again)
            .await
            .expect("processes");
        assert_eq!(again.outputs().len(), 0, "the duplicate is dropped");
        assert_eq!(step.state_entries(), 1);
    }
}
