//! What a service plugs into the runtime: a processing step, what it sees
//! of a record, and the [`Emitter`] through which it answers.
//!
//! Contract: a step never does Kafka IO and never sees offsets; it emits
//! outputs (tied to the current record's acknowledgement), may hold a
//! record to complete it later ([`Held`]), and may set timers that call it
//! back ([`Step::on_timer`]). So every step can be unit-tested by calling it.

use std::future::Future;
use std::sync::Arc;

use crate::ack::{AckToken, Held};
use crate::event_time::EventTimePolicy;
use crate::headers::Headers;
use bytes::Bytes;

use adpipe_codec::{DecodeError, Disposition, WriterSchema};
use serde::de::DeserializeOwned;

/// Error kind of an attempt cut off by the processing timeout.
pub const PROCESSING_TIMEOUT: &str = "processing_timeout";

/// A failed step, with what the runtime should do about it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Retry, dead-letter or stop.
    pub disposition: Disposition,
    /// Short stable label for metrics and dead-letter headers.
    pub kind: &'static str,
    /// Human-readable cause.
    pub message: String,
}

impl StepError {
    /// The record is bad: dead-letter it.
    pub fn poison(kind: &'static str, message: impl Into<String>) -> Self {
        StepError {
            disposition: Disposition::Poison,
            kind,
            message: message.into(),
        }
    }
    /// A dependency failed: retry the record with backoff.
    pub fn transient(kind: &'static str, message: impl Into<String>) -> Self {
        StepError {
            disposition: Disposition::Transient,
            kind,
            message: message.into(),
        }
    }
    /// Nothing will work: stop the worker.
    pub fn fatal(kind: &'static str, message: impl Into<String>) -> Self {
        StepError {
            disposition: Disposition::Fatal,
            kind,
            message: message.into(),
        }
    }
}

impl From<DecodeError> for StepError {
    fn from(error: DecodeError) -> Self {
        StepError {
            disposition: error.disposition(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// One consumed record, as a step sees it.
#[derive(Debug)]
pub struct InputRecord<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Which of the task's inputs it came from (index into
    /// [`TaskAssignment::inputs`]).
    pub input: usize,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Kafka timestamp (ms), if any.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value (Confluent-framed Avro for adpipe topics).
    pub value: Option<&'a [u8]>,
    /// Record headers (clone them onto an output: no copy).
    pub headers: &'a Headers,
    /// The buffer `key`, `value` and `headers` borrow from, when the
    /// runtime has one: [`Self::share`] slices it instead of copying.
    /// `None` in unit tests.
    pub shared: Option<&'a Bytes>,
    /// The value's writer schema, resolved by the runtime when the worker
    /// decodes values (see `WorkerSettings::registry_url`).
    pub writer: Option<Arc<WriterSchema>>,
    /// In a task with several time-aligned inputs: how far (ms of event
    /// time) behind records already handed to the step this one came — a
    /// straggler, processed anyway. `None` when it came in order.
    pub lateness_ms: Option<i64>,
    /// In a task with several time-aligned inputs: the event time the
    /// record was ordered by ([`Step::event_time`]), already checked.
    pub event_time_ms: Option<i64>,
}

impl InputRecord<'_> {
    /// Decodes the value into `T` with its writer schema (schema resolution
    /// by field name and serde defaults).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        let Some(writer) = &self.writer else {
            return Err(StepError::fatal(
                "no_writer_schema",
                "the worker does not decode values",
            ));
        };
        let value = self.value.unwrap_or_default();
        let (_, datum) = adpipe_codec::split_header(value)?;
        Ok(writer.decode_datum(datum)?)
    }

    /// The value of header `key`, if present.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers.value_of(key)
    }

    /// `part` (the key, the value or a slice of them) as shared bytes for
    /// an output: a slice of the consumer's buffer when it lies in it (no
    /// copy, no allocation), a copy otherwise.
    pub fn share(&self, part: Option<&[u8]>) -> Option<Bytes> {
        part.map(|part| match self.shared {
            Some(buffer) if !part.is_empty() && buffer.as_ptr_range().contains(&part.as_ptr()) => {
                buffer.slice_ref(part)
            }
            _ => Bytes::copy_from_slice(part),
        })
    }
}

/// A record to produce. Its parts are shared buffers: an output copying
/// its input's key, value or headers ([`InputRecord::share`]) and a topic
/// name held by the step cost no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Explicit partition (`None` lets the producer hash the key).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Headers,
    /// Kafka timestamp (ms); `None` lets the producer stamp it.
    pub timestamp_ms: Option<i64>,
    /// Produced only after this record is acknowledged, sharing its ack:
    /// for state changelogs that must never get ahead of the output they
    /// describe (see the deduplicator).
    pub then: Option<Box<OutputRecord>>,
}

impl OutputRecord {
    /// A record for `topic` with a copy of `key` and `value`.
    pub fn new(topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        OutputRecord::sharing(
            &Arc::from(topic),
            key.map(Bytes::copy_from_slice),
            value.map(Bytes::copy_from_slice),
        )
    }

    /// A record for `topic` with `key` and `value` as they are (shared, not
    /// copied): the allocation-free way for a step's hot path.
    pub fn sharing(topic: &Arc<str>, key: Option<Bytes>, value: Option<Bytes>) -> Self {
        OutputRecord {
            topic: Arc::clone(topic),
            partition: None,
            key,
            value,
            headers: Headers::new(),
            timestamp_ms: None,
            then: None,
        }
    }
}

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerClock {
    /// Wall-clock milliseconds since the epoch: fires when that time comes,
    /// whether records arrive or not (bounded waits).
    Wall,
    /// Event time: fires once the task's event time (the latest event time
    /// handed to the step) reaches it.
    Event,
}

/// A timer a step set, as it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// Its clock.
    pub clock: TimerClock,
    /// When (ms on that clock).
    pub at_ms: i64,
    /// The step's own identifier (what to do when it fires).
    pub id: u64,
}

/// An output waiting to be handed to the producer, with the
/// acknowledgement it belongs to (`None`: the record being processed).
#[derive(Debug)]
pub(crate) struct Emitted {
    pub(crate) record: OutputRecord,
    pub(crate) held: Option<AckToken>,
}

/// Collects what a step does with one record (or one timer): outputs,
/// holds, timers.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) emitted: Vec<Emitted>,
    pub(crate) event_time_ms: Option<i64>,
    pub(crate) timers: Vec<Timer>,
    /// The record being processed (`None` in timers and unit tests).
    pub(crate) current: Option<AckToken>,
    /// Whether any output belongs to no acknowledgement (see [`Self::emit`]).
    pub(crate) untracked: bool,
    /// Which event times are accepted.
    pub(crate) policy: EventTimePolicy,
}

impl Emitter {
    /// Emits a record for the record being processed: that record is done
    /// only once this output is acknowledged. Emitted from
    /// [`Step::on_timer`] (no record), the output is tracked by nothing —
    /// use [`Self::emit_held`] for outputs that must not be lost.
    pub fn emit(&mut self, record: OutputRecord) {
        self.untracked |= self.current.is_none();
        self.emitted.push(Emitted { record, held: None });
    }

    /// Emits a record for a held record: the held record is done once it
    /// is released and this output is acknowledged.
    pub fn emit_held(&mut self, held: &Held, record: OutputRecord) {
        self.emitted.push(Emitted {
            record,
            held: held.token().cloned(),
        });
    }

    /// Holds the record being processed: it stays uncommitted until the
    /// returned [`Held`] is released (deferred acknowledgement).
    pub fn hold(&mut self) -> Held {
        Held::new(self.current.clone())
    }

    /// Asks for [`Step::on_timer`] at `at_ms` on `clock`, with `id`.
    pub fn set_timer(&mut self, clock: TimerClock, at_ms: i64, id: u64) {
        self.timers.push(Timer { clock, at_ms, id });
    }

    /// Reports the input's event time — for the end-to-end latency metric,
    /// and as the task's event-time clock for single-input tasks — after
    /// checking it against the event-time rule ([`EventTimePolicy`]): an
    /// implausible or far-future time is a poison error (return it, and the
    /// record goes to the dead-letter topic before it touches any state).
    pub fn observe_event_time(&mut self, event_time_ms: i64) -> Result<(), StepError> {
        self.policy
            .check(event_time_ms, crate::event_time::now_ms())?;
        self.event_time_ms = Some(event_time_ms);
        Ok(())
    }

    /// The records emitted so far.
    pub fn outputs(&self) -> impl ExactSizeIterator<Item = &OutputRecord> {
        self.emitted.iter().map(|emitted| &emitted.record)
    }

    /// The timers set so far.
    pub fn timers(&self) -> &[Timer] {
        &self.timers
    }

    pub(crate) fn clear(&mut self) {
        self.emitted.clear();
        self.timers.clear();
        self.event_time_ms = None;
        self.untracked = false;
    }
}

/// The processing logic of a service, one instance per task: partition i
/// of each of its inputs (or a sub-partition of them by key).
///
/// Contract: `process` does no Kafka IO (the runtime does all of it), so a
/// step can be unit-tested by calling it. It is async so that a step which
/// must wait (a networked state store, a sink) can be cut off by the
/// runtime's processing timeout: the future is dropped and the record is
/// handled by the failure action for `processing_timeout`. Hence a step
/// must be *cancel-safe and atomic*: change its state only after its last
/// `.await`, and leave it unchanged when returning an error, because the
/// runtime may retry the same record. Emitting no output acknowledges the
/// input at once (unless the step [holds](Emitter::hold) it).
///
/// A panic in a step is caught: the record is abandoned (never done), the
/// panic is logged with the record's coordinates, and the worker stops, so
/// nothing after the record is committed.
pub trait Step: Send + 'static {
    /// Handles one record.
    fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// The record's event time (ms), by which a task with several inputs
    /// orders them. Called before `process`, only in such tasks. The
    /// default is the Kafka timestamp; steps whose producers do not stamp
    /// records with the event time read it from the value.
    fn event_time(&self, record: &InputRecord<'_>) -> Result<i64, StepError> {
        record.timestamp_ms.ok_or_else(|| {
            StepError::poison(
                "no_event_time",
                "the record has no timestamp to order it by",
            )
        })
    }

    /// A timer set through [`Emitter::set_timer`] fired. Async, under the
    /// same rules as [`Self::process`] (cut off by the processing timeout
    /// and by a revoke; cancel-safe: change state after the last `.await`):
    /// a step may write here (a batch due by time). A transient error or a
    /// cut-off fires the timer again after the retry backoff; any other
    /// error stops the worker.
    fn on_timer(
        &mut self,
        timer: Timer,
        out: &mut Emitter,
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        let _ = (timer, out);
        std::future::ready(Ok(()))
    }

    /// Entries held in state, for the state-size metric.
    fn state_entries(&self) -> usize {
        0
    }

    /// Heap bytes held in state, for the state-size metric.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Called when the task's partitions are revoked or the worker stops,
    /// after every output was acknowledged and none was lost (`drained`),
    /// or with `!drained` when the revoke deadline passed with outputs in
    /// flight or an output failed. A step may save local state only when
    /// drained. It runs on the task, inside `tokio::task::block_in_place`,
    /// so blocking IO is allowed; on a current-thread runtime it runs in
    /// place, and blocking there stalls that runtime's one thread (the
    /// other partitions' drains and deliveries wait meanwhile).
    fn on_revoke(&mut self, drained: bool) {
        let _ = drained;
    }
}

/// What a task owns: partition `partition` of each of its inputs (a group
/// of co-partitioned topics), or one sub-partition of them by key hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAssignment {
    /// Index of the input group in the worker's settings.
    pub group: usize,
    /// The group's topics, in configuration order.
    pub inputs: Vec<String>,
    /// The partition index, the same in every input.
    pub partition: i32,
    /// Sub-partition index (0 unless sub-partitioning is on).
    pub sub_partition: u16,
    /// Sub-partitions per partition.
    pub sub_partitions: u16,
}

/// Builds a step for a newly assigned task. Called on a blocking thread, so
/// it may restore state with blocking IO (a changelog read); a revoke that
/// comes first stops waiting for it.
pub trait StepFactory: Send + Sync + 'static {
    /// The step type.
    type Step: Step;
    /// Creates (and restores) the step for `assignment`.
    fn create(&self, assignment: &TaskAssignment) -> Result<Self::Step, StepError>;

    /// Whether the service stores its own offsets ([`stored_offsets`]
    /// is asked at every assignment, with the group's committed offsets).
    ///
    /// [`stored_offsets`]: StepFactory::stored_offsets
    const STORES_OFFSETS: bool = false;

    /// Where a service that stores its own offsets — in the transaction
    /// that stores its results, so a replayed record is never counted twice
    /// — starts these newly assigned partitions (each given with the
    /// group's committed offset, which the service may use, e.g. to send
    /// again outputs its store has but Kafka may not): the next offset of
    /// each it knows. The runtime starts those partitions there, set in the
    /// assignment itself (librdkafka refuses a seek right after an assign);
    /// the others start from the group's committed offset (or
    /// `auto.offset.reset`).
    ///
    /// A service should not start past the group's commit where it cannot
    /// tell that the records in between left nothing undone: a record
    /// dead-lettered while the batch after it was stored has its dead
    /// letter acknowledged only after that batch, so a kill -9 between the
    /// two leaves the store past the record and the commit before it.
    /// The stats-counter and the files loader start at the commit when it
    /// is behind, reading those records again without storing them twice
    /// (a bad one is dead-lettered again); BigQuery starts after its last
    /// row unless a row is missing since the commit.
    ///
    /// Called on the consumer's thread during the rebalance, only when
    /// [`STORES_OFFSETS`](StepFactory::STORES_OFFSETS): blocking is
    /// allowed, briefly. An error stops the worker — resuming from a guess
    /// could count twice or skip. The default stores nothing.
    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        let _ = partitions;
        Ok(Vec::new())
    }
}

/// A partition being assigned, as [`StepFactory::stored_offsets`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset, if it has one.
    pub committed: Option<i64>,
}
