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
    Bytes, Emitter, InputRecord, OutputRecord, Step, StepError, StepFactory, TaskAssignment,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{DedupSettings, Stream};
use crate::restore::{self, Restored};
use crate::snapshot::{self, Binding};
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
    /// `stream.output` and `stream.changelog`, shared by every output.
    output_topic: Arc<str>,
    changelog_topic: Arc<str>,
    partition: i32,
    state: DedupState,
    /// Where to save the state on revoke, and the cluster holding the changelog.
    snapshot: Option<SnapshotTarget>,
    /// Events older than the window (passed on undeduplicated).
    outside_window: metrics::Counter,
}

/// Where a step saves its snapshot, and what binds it.
#[derive(Clone)]
pub struct SnapshotTarget {
    /// The snapshot file.
    pub path: std::path::PathBuf,
    /// The id of the cluster holding the changelog.
    pub cluster_id: String,
    /// To read the changelog's end at snapshot time.
    pub settings: Arc<DedupSettings>,
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
            output_topic: Arc::from(stream.output.as_str()),
            changelog_topic: Arc::from(stream.changelog.as_str()),
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
    /// so the changelog's end is where the state is complete up to; it is
    /// bound to that end's record (see `snapshot`).
    fn save_snapshot(&self, target: &SnapshotTarget) -> Result<i64, String> {
        let (high, last_record) =
            restore::changelog_end(&target.settings, &self.stream.changelog, self.partition)
                .map_err(|error| error.to_string())?;
        if high > 0 && last_record.is_none() {
            return Err(format!(
                "cannot read the changelog's last record (offset {})",
                high - 1
            ));
        }
        let binding = Binding {
            cluster_id: target.cluster_id.clone(),
            topic: self.stream.changelog.clone(),
            partition: self.partition,
            offset: high,
            last_record: last_record.unwrap_or_default(),
        };
        let bytes = snapshot::encode(&binding, self.state.entries().into_iter());
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
        let mut changelog = OutputRecord::sharing(
            &self.changelog_topic,
            Some(Bytes::from(identity.event_id.into_bytes())),
            Some(Bytes::from(changelog_value(identity.event_time))),
        );
        changelog.partition = Some(self.partition);
        let mut output = OutputRecord::sharing(
            &self.output_topic,
            record.share(record.key),
            record.share(record.value),
        );
        // Fixed partitioning: partition i stays partition i.
        output.partition = Some(self.partition);
        output.headers = record.headers.clone();
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
    settings: Arc<DedupSettings>,
    /// The changelog cluster's id (snapshots are bound to it); `None` when
    /// the cluster did not say, and then no snapshot is written or trusted.
    cluster_id: Option<String>,
}

impl DedupFactory {
    /// A factory for these settings; asks the cluster for its id.
    pub fn new(settings: DedupSettings) -> Result<Self, rdkafka::error::KafkaError> {
        let client: BaseConsumer = ClientConfig::new()
            .set(
                "bootstrap.servers",
                &settings.worker.kafka.bootstrap_servers,
            )
            .create()?;
        let cluster_id = client.client().fetch_cluster_id(Duration::from_secs(30));
        if cluster_id.is_none() {
            warn!(
                "the cluster did not tell its id: snapshots are off, restores replay the changelog"
            );
        }
        Ok(DedupFactory {
            settings: Arc::new(settings),
            cluster_id,
        })
    }

    /// A partition's state: its snapshot, if it provably describes this
    /// changelog, plus the changelog from there (or all of it).
    pub fn restore(&self, stream: &Stream, partition: i32) -> Result<Restored, StepError> {
        restore::restore(
            &self.settings,
            self.cluster_id.as_deref(),
            stream,
            partition,
        )
    }
}

impl StepFactory for DedupFactory {
    type Step = DedupStep;

    fn create(&self, assignment: &TaskAssignment) -> Result<DedupStep, StepError> {
        let input = assignment.inputs.first().map_or("", String::as_str);
        let stream = self.settings.stream(input).cloned().ok_or_else(|| {
            StepError::fatal("unknown_stream", format!("no stream reads {input}"))
        })?;
        let restored = self.restore(&stream, assignment.partition)?;
        let path = snapshot::snapshot_path(
            &self.settings.state_dir,
            &stream.changelog,
            assignment.partition,
        );
        let step = DedupStep::new(stream, assignment.partition, restored.state);
        Ok(match &self.cluster_id {
            Some(cluster_id) => step.with_snapshots(SnapshotTarget {
                path,
                cluster_id: cluster_id.clone(),
                settings: Arc::clone(&self.settings),
            }),
            None => step,
        })
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
        let headers = adpipe_runtime::Headers::from_pairs([("adpipe.origin.dc", "dc1")]);
        let record = |offset| InputRecord {
            topic: "in",
            input: 0,
            lateness_ms: None,
            event_time_ms: None,
            partition: 4,
            offset,
            timestamp_ms: None,
            key: Some(event.user_id.as_bytes()),
            value: Some(&value),
            headers: &headers,
            shared: None,
            writer: Some(Arc::clone(&writer)),
        };
        let mut step = DedupStep::new(stream(), 4, DedupState::new(86_400_000, 3_600_000));
        let mut out = Emitter::default();
        step.process(&record(0), &mut out).await.expect("processes");
        let outputs: Vec<&OutputRecord> = out.outputs().collect();
        let [output] = outputs[..] else {
            panic!("one output expected")
        };
        assert_eq!((&*output.topic, output.partition), ("out", Some(4)));
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
