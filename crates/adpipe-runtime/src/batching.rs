//! Steps that write in batches: records are folded into an open batch and
//! acknowledged together once the batch is written (one transaction).
//!
//! Contract ([`Batching`] turns a [`BatchStep`] into a [`Step`]):
//! - [`BatchStep::add`] folds one record into the open batch, without IO;
//!   an error there is that record's own (dead-lettered as usual) and must
//!   leave the batch unchanged;
//! - a batch is written ([`BatchStep::write`]) once it holds
//!   [`BatchLimits::max_records`] records or [`BatchLimits::max_bytes`]
//!   value bytes, or [`BatchLimits::max_wait`] after its first record (a
//!   wall-clock timer). Its records are held until then and released
//!   together only when the write succeeded: committed after the write,
//!   never before; a revoke or crash with a batch open leaves them to be
//!   read again;
//! - a batch full by size is written when the next record comes, *before*
//!   that record is added: a record whose processing is cut off and retried
//!   is never added twice;
//! - a write that fails transiently is tried again and nothing is
//!   dead-lettered for it: the batch is sealed — the next record waits,
//!   its processing trying the write first (its partition's queue fills
//!   and is paused), a due timer fires again after the backoff — so the
//!   retry writes exactly the records the failed attempt did (a failed
//!   attempt may have committed after all; the fence then knows it). A
//!   write must return within the processing timeout (bound its IO), and
//!   must be fenced by the service (the stats-counter's compare-and-set
//!   offsets): a write cut off after it committed is tried again and has
//!   to be refused, not applied twice;
//! - a write that fails for good (any error but a transient one) stops the
//!   worker, naming the error: a batch is not the fault of the record that
//!   happened to make it full, which must not be dead-lettered for it. A
//!   store refusing single records returns them as the write's outputs
//!   (dead letters), not as its error;
//! - a written batch's outputs are acknowledged before its first record
//!   counts as done: the group's committed offset never passes a batch
//!   whose outputs might be lost.

use std::time::Duration;

use adpipe_codec::Disposition;

use crate::ack::Held;
use crate::event_time::now_ms;
use crate::step::{Emitter, InputRecord, OutputRecord, Step, StepError, Timer, TimerClock};

/// When a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Records per batch.
    pub max_records: usize,
    /// Value bytes per batch.
    pub max_bytes: usize,
    /// How long after its first record a batch is written at the latest.
    pub max_wait: Duration,
}

/// The offsets a batch covers on one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Input topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset in the batch.
    pub first: i64,
    /// Last offset in the batch (the next to read is `last + 1`).
    pub last: i64,
}

/// A service's logic when it writes in batches.
pub trait BatchStep: Send + 'static {
    /// What an open batch accumulates.
    type Batch: Default + Send + Sync;

    /// Folds one record into `batch` (no IO). On error `batch` must be
    /// unchanged: the record is handled by the runtime's failure action.
    fn add(&mut self, batch: &mut Self::Batch, record: &InputRecord<'_>) -> Result<(), StepError>;

    /// Writes `batch`, whose records span `spans`; returns outputs to send
    /// once it is written (acknowledged before the batch's first record
    /// counts as done: the group's commit does not pass the batch before). Cancel-safe, and bounded in time (see the module).
    fn write(
        &mut self,
        batch: &Self::Batch,
        spans: &[Span],
    ) -> impl Future<Output = Result<Vec<OutputRecord>, StepError>> + Send;

    /// As [`Step::on_revoke`]; the open batch is dropped unwritten.
    fn on_revoke(&mut self, drained: bool) {
        let _ = drained;
    }
}

/// A [`BatchStep`] run as a [`Step`] (see the module's contract).
pub struct Batching<S: BatchStep> {
    step: S,
    limits: BatchLimits,
    open: S::Batch,
    held: Vec<Held>,
    bytes: usize,
    spans: Vec<Span>,
    /// The timer that writes the open batch by time.
    timer: Option<u64>,
    next_timer: u64,
    /// A write of the open batch was tried: it takes no more records.
    sealed: bool,
}

impl<S: BatchStep> Batching<S> {
    /// Runs `step` with batches bounded by `limits`.
    pub fn new(step: S, limits: BatchLimits) -> Self {
        Batching {
            step,
            limits,
            open: S::Batch::default(),
            held: Vec::new(),
            bytes: 0,
            spans: Vec::new(),
            timer: None,
            next_timer: 0,
            sealed: false,
        }
    }

    /// The step inside.
    pub fn inner(&self) -> &S {
        &self.step
    }

    /// Records in the open batch.
    pub fn open_records(&self) -> usize {
        self.held.len()
    }

    fn full(&self) -> bool {
        self.held.len() >= self.limits.max_records.max(1) || self.bytes >= self.limits.max_bytes
    }

    /// Writes the open batch; on success releases its records with the
    /// outputs and starts a new one. State changes only after the write.
    async fn write(&mut self, out: &mut Emitter) -> Result<(), StepError> {
        self.sealed = true;
        let outputs =
            self.step
                .write(&self.open, &self.spans)
                .await
                .map_err(|error| match error.disposition {
                    Disposition::Transient => error,
                    _ => StepError::fatal(
                        error.kind,
                        format!(
                            "a batch of {} records was not written ({}): {error}",
                            self.held.len(),
                            error.kind
                        ),
                    ),
                })?;
        let held = std::mem::take(&mut self.held);
        // Outputs share the *first* record's acknowledgement: the group's
        // commit stays before the whole batch until they are acknowledged,
        // so a restart from the commit sees every record whose outputs may
        // be missing (the stats-counter sends their totals again).
        if let Some(first) = held.first() {
            for output in outputs {
                out.emit_held(first, output);
            }
        }
        for record in held {
            record.release();
        }
        self.open = S::Batch::default();
        self.bytes = 0;
        self.spans.clear();
        self.timer = None;
        self.sealed = false;
        Ok(())
    }
}

impl<S: BatchStep> Step for Batching<S> {
    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        if self.full() || (self.sealed && !self.held.is_empty()) {
            self.write(out).await?;
        }
        self.step.add(&mut self.open, record)?;
        if self.held.is_empty() {
            let id = self.next_timer;
            self.next_timer += 1;
            let wait = i64::try_from(self.limits.max_wait.as_millis()).unwrap_or(i64::MAX);
            out.set_timer(TimerClock::Wall, now_ms().saturating_add(wait), id);
            self.timer = Some(id);
        }
        self.held.push(out.hold());
        self.bytes += record.value.map_or(0, <[u8]>::len);
        match self
            .spans
            .iter_mut()
            .find(|span| span.partition == record.partition && span.topic == record.topic)
        {
            Some(span) => span.last = span.last.max(record.offset),
            None => self.spans.push(Span {
                topic: record.topic.to_owned(),
                partition: record.partition,
                first: record.offset,
                last: record.offset,
            }),
        }
        Ok(())
    }

    async fn on_timer(&mut self, timer: Timer, out: &mut Emitter) -> Result<(), StepError> {
        if self.timer == Some(timer.id) && !self.held.is_empty() {
            self.write(out).await?;
        }
        Ok(())
    }

    fn on_revoke(&mut self, drained: bool) {
        self.step.on_revoke(drained);
    }
}
