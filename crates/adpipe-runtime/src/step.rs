//! What a service plugs into the runtime: a processing step.

use std::future::Future;
use std::sync::Arc;

use adpipe_codec::{DecodeError, Disposition, WriterSchema};
use serde::de::DeserializeOwned;

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
    /// Record headers.
    pub headers: &'a [(String, Vec<u8>)],
    /// The value's writer schema, resolved by the runtime when the worker
    /// decodes values (see `WorkerSettings::decode_values`).
    pub writer: Option<Arc<WriterSchema>>,
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
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition (`None` lets the producer hash the key).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None` is a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Produced only after this record is acknowledged, sharing its ack:
    /// for state changelogs that must never get ahead of the output they
    /// describe (see the deduplicator).
    pub then: Option<Box<OutputRecord>>,
}

impl OutputRecord {
    /// A record for `topic` with a key and a value.
    pub fn new(topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        OutputRecord {
            topic: topic.to_owned(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
            then: None,
        }
    }
}

/// Collects the outputs of one input record.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) outputs: Vec<OutputRecord>,
    pub(crate) event_time_ms: Option<i64>,
}

impl Emitter {
    /// Emits a record.
    pub fn emit(&mut self, record: OutputRecord) {
        self.outputs.push(record);
    }

    /// Reports the input's event time, for the end-to-end latency metric.
    pub fn observe_event_time(&mut self, event_time_ms: i64) {
        self.event_time_ms = Some(event_time_ms);
    }

    /// The records emitted so far.
    pub fn outputs(&self) -> &[OutputRecord] {
        &self.outputs
    }

    pub(crate) fn clear(&mut self) {
        self.outputs.clear();
        self.event_time_ms = None;
    }
}

/// The processing logic of a service, one instance per assigned partition
/// (or sub-partition).
///
/// Contract: `process` does no Kafka IO (the runtime does all of it), so a
/// step can be unit-tested by calling it. It is async so that a step which
/// must wait (a networked state store, a sink) can be cut off by the
/// runtime's processing timeout: the future is dropped and the record is
/// handled by the failure action for `processing_timeout`. Hence a step
/// must be *cancel-safe and atomic*: change its state only after its last
/// `.await`, and leave it unchanged when returning an error, because the
/// runtime may retry the same record. Emitting no output acknowledges the
/// input at once.
pub trait Step: Send + 'static {
    /// Handles one record.
    fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Entries held in state, for the state-size metric.
    fn state_entries(&self) -> usize {
        0
    }

    /// Heap bytes held in state, for the state-size metric.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Called when the partition is revoked or the worker stops, after
    /// in-flight outputs were acknowledged (`drained`) or the revoke
    /// deadline passed with some still in flight (`!drained`). A step may
    /// save local state here; it runs on the actor's task, inside
    /// `tokio::task::block_in_place`, so blocking IO is allowed.
    fn on_revoke(&mut self, drained: bool) {
        let _ = drained;
    }
}

/// Where a step instance runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAssignment {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Sub-partition index (0 unless sub-partitioning is on).
    pub sub_partition: u16,
    /// Sub-partitions per partition.
    pub sub_partitions: u16,
}

/// Builds a step for a newly assigned partition. Called on a blocking
/// thread, so it may restore state with blocking IO (a changelog read).
pub trait StepFactory: Send + Sync + 'static {
    /// The step type.
    type Step: Step;
    /// Creates (and restores) the step for `assignment`.
    fn create(&self, assignment: &PartitionAssignment) -> Result<Self::Step, StepError>;
}
