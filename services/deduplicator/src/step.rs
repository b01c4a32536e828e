//! The deduplication step and its factory, which restores a partition's
//! state from its changelog.
//!
//! Delivery contract: a new event is emitted to the output topic, and only
//! after the output is acknowledged is its id appended to the changelog
//! (`OutputRecord::then`); the input is done when the changelog write is
//! acknowledged. So after a crash the restored state never holds an id whose
//! output might be missing: replayed records are either dropped (their output
//! and changelog entry both exist) or emitted again (the changelog entry was
//! lost) — never a loss. A re-emit is avoided too: every output carries its
//! input offset (`adpipe.input`), and a restored step first reads its output
//! partition's tail for what was already emitted at or after the group's
//! commit (`adpipe_runtime::emitted`): such a record, read again, gets only
//! its changelog entry.
//!
//! Restore and checkpoint are the shared mechanism of `adpipe_state`
//! (`ChangelogReader`), over [`DedupStore`]: its snapshot when the mark it
//! was saved with still describes the changelog, plus the changelog from
//! there; a snapshot is saved only on a drained revoke.

use std::sync::Arc;

use adpipe_runtime::emitted::{self, AlreadyEmitted, FedBy, ScanBounds};
use adpipe_runtime::telemetry::Metric;
use adpipe_runtime::{
    Bytes, Emitter, InputRecord, OutputRecord, Step, StepError, StepFactory, TaskAssignment,
};
use adpipe_state::StateError;
use adpipe_state::changelog::ChangelogReader;
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{DedupSettings, Stream};
use crate::snapshot;
use crate::state::{DedupState, Verdict, id_hash};
use crate::store::DedupStore;

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
    store: DedupStore,
    /// Reads the changelog's end for a checkpoint on revoke.
    checkpoints: Option<ChangelogReader>,
    /// Events older than the window (passed on undeduplicated).
    outside_window: metrics::Counter,
    /// Outputs already in the output topic for records read again.
    already: AlreadyEmitted,
    /// Records whose output was found there (not emitted again).
    skipped_on_resume: metrics::Counter,
}

impl DedupStep {
    /// A step with the given (possibly restored) store.
    pub fn new(stream: Stream, partition: i32, store: DedupStore) -> Self {
        let outside_window = metrics::counter!(
            Metric::LateRecords.name(),
            "service" => "deduplicator",
            "topic" => stream.input.clone(),
            "reason" => "outside_window"
        );
        let skipped_on_resume = metrics::counter!(Metric::RecordsSkippedOnResume.name(), "service" => "deduplicator", "topic" => stream.output.clone());
        DedupStep {
            output_topic: Arc::from(stream.output.as_str()),
            changelog_topic: Arc::from(stream.changelog.as_str()),
            stream,
            partition,
            store,
            checkpoints: None,
            outside_window,
            already: AlreadyEmitted::none(),
            skipped_on_resume,
        }
    }

    /// What the partition's outputs already hold for records that will be
    /// read again.
    pub fn with_already_emitted(mut self, already: AlreadyEmitted) -> Self {
        self.already = already;
        self
    }

    /// Checkpoints (saves the snapshot) on drained revokes.
    pub fn with_checkpoints(mut self, reader: ChangelogReader) -> Self {
        self.checkpoints = Some(reader);
        self
    }

    /// The partition's state.
    pub fn state(&self) -> &DedupState {
        self.store.state()
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
        let state = self.store.state_mut();
        if identity.event_time < state.cutoff() {
            // Older than the window: nothing to compare with, so it passes
            // (the window is the memory), counted.
            self.outside_window.increment(1);
        }
        if state.check_and_insert(id_hash(&identity.event_id), identity.event_time)
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
        if self.already.take(record.input, record.offset).is_some() {
            // Emitted before a crash: its changelog entry may be what was
            // lost, so it is written; the output is not.
            self.skipped_on_resume.increment(1);
            out.emit(changelog);
            return Ok(());
        }
        let mut output = OutputRecord::sharing(
            &self.output_topic,
            record.share(record.key),
            record.share(record.value),
        );
        // Fixed partitioning: partition i stays partition i.
        output.partition = Some(self.partition);
        output.headers = emitted::stamped(record.headers, record);
        output.then = Some(Box::new(changelog));
        out.emit(output);
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.store.state().len()
    }

    fn state_bytes(&self) -> usize {
        self.store.state().heap_bytes()
    }

    fn on_revoke(&mut self, drained: bool) {
        let Some(reader) = &self.checkpoints else {
            return;
        };
        if !drained {
            // Some ids in memory may lack an acknowledged output: a snapshot
            // could hide them after a restart. The changelog alone is safe.
            warn!(changelog = %self.stream.changelog, partition = self.partition, "outputs still in flight at revoke; no snapshot");
            return;
        }
        // Every output and changelog entry is acknowledged: the changelog's
        // end is where the state is complete up to.
        match reader.checkpoint(&mut self.store, &self.stream.changelog, self.partition) {
            Ok(Some(mark)) => {
                info!(changelog = %self.stream.changelog, partition = self.partition, offset = mark.offset, entries = self.store.state().len(), "deduplicator snapshot saved")
            }
            Ok(None) => {}
            Err(error) => {
                warn!(%error, "deduplicator snapshot not saved; the next owner replays the changelog")
            }
        }
    }
}

/// A restored partition.
#[derive(Debug)]
pub struct Restored {
    /// The store.
    pub store: DedupStore,
    /// Where the replay started: the snapshot's offset, or `None` for a
    /// full replay.
    pub from_snapshot: Option<i64>,
}

impl Restored {
    /// The restored seen ids.
    pub fn state(&self) -> &DedupState {
        self.store.state()
    }
}

/// Builds steps, restoring each partition's state from its changelog.
pub struct DedupFactory {
    settings: Arc<DedupSettings>,
    /// Reads changelogs; knows the cluster's id (marks are bound to it).
    reader: ChangelogReader,
}

impl DedupFactory {
    /// A factory for these settings; asks the cluster for its id.
    pub fn new(settings: DedupSettings) -> Result<Self, StateError> {
        let config = settings.worker.kafka.client_config();
        let reader = ChangelogReader::new(config, &settings.worker.kafka.group_id)?;
        Ok(DedupFactory {
            settings: Arc::new(settings),
            reader,
        })
    }

    /// A partition's state: its snapshot, if it provably describes this
    /// changelog, plus the changelog from there (or all of it).
    pub fn restore(&self, stream: &Stream, partition: i32) -> Result<Restored, StepError> {
        let path = snapshot::snapshot_path(&self.settings.state_dir, &stream.changelog, partition);
        let mut store = DedupStore::open(path, self.settings.window_ms, self.settings.lateness_ms);
        let restored = self
            .reader
            .restore(&mut store, &stream.changelog, partition)
            .map_err(|error| StepError::transient("changelog_restore", error.to_string()))?;
        info!(changelog = %stream.changelog, partition, from_snapshot = ?restored.from_mark, replayed = restored.replayed, kept = store.state().len(), why_not_snapshot = ?restored.why_not_local, "deduplicator state restored");
        Ok(Restored {
            store,
            from_snapshot: restored.from_mark,
        })
    }
}

impl DedupFactory {
    /// The outputs already emitted for records that will be read again.
    fn already_emitted(
        &self,
        stream: &Stream,
        assignment: &TaskAssignment,
    ) -> Result<AlreadyEmitted, StepError> {
        let already = emitted::already_emitted(
            &self.settings.worker,
            &assignment.inputs,
            assignment.partition,
            &[FedBy {
                topic: &stream.output,
                inputs: &[0],
            }],
            ScanBounds {
                limit: self.settings.resume_scan,
                // Never holds a record: outputs follow input order.
                hold_ms: Some(0),
            },
        )
        .map_err(|error| StepError::transient("resume_scan", error.to_string()))?;
        info!(output = %stream.output, partition = assignment.partition, already_emitted = already.len(), "deduplicator resumes");
        Ok(already)
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
        let already = self.already_emitted(&stream, assignment)?;
        Ok(DedupStep::new(stream, assignment.partition, restored.store)
            .with_checkpoints(self.reader.clone())
            .with_already_emitted(already))
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
        let mut step = DedupStep::new(
            stream(),
            4,
            DedupStore::new(DedupState::new(86_400_000, 3_600_000)),
        );
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
        assert_eq!(
            output.headers,
            headers.with(emitted::HEADER_INPUT, "in@0"),
            "input headers kept, the input's coordinates added"
        );
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
