//! Acknowledgement tokens: when an input record counts as done.
//!
//! Contract:
//! - The task creates one token per input record and gives a clone to every
//!   output the record produced; the producer drops its clone when the
//!   broker acknowledged the output.
//! - A record is done when the last clone goes **and** the task marked it
//!   [`processed`](AckToken::mark_processed) — i.e. the step returned and
//!   every output was handed to the producer. Dropping an unmarked token
//!   (a panic unwinding through the step, a task cut off at revoke, a
//!   forgotten [`Held`]) means *abandoned*: the offset stays uncommitted and
//!   the next owner reads the record again. Nothing is ever done by accident.
//! - A failed output marks the record failed: its offset is never done, so
//!   the contiguous prefix (what is committed) stops before it.
//! - The tokens of one batch of records share one allocation: a slot per
//!   record with its state and the number of tokens sharing it; the last
//!   token of a record settles it, whatever the other records do.
//! - Fencing: a token points at the tracker of the assignment it was created
//!   in; a revoked partition's tracker is dropped from the consumer's map, so
//!   late acknowledgements update a tracker nobody commits from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::offsets::OffsetTracker;

/// A partition's tracker, shared by its consumer slot, its tokens and the committer.
pub type SharedTracker = Arc<Mutex<OffsetTracker>>;

/// Where an input record came from (for dead letters of rejected outputs).
#[derive(Debug)]
pub struct Source {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
    /// The partition's offset tracker.
    pub tracker: SharedTracker,
}

const OPEN: u8 = 0;
const PROCESSED: u8 = 1;
const FAILED: u8 = 2;
const ABANDONED: u8 = 3;

/// One record's acknowledgement state and how many tokens share it.
struct Slot {
    offset: i64,
    state: AtomicU8,
    tokens: AtomicUsize,
}

/// The acknowledgement slots of a batch of records of one partition: one
/// allocation per batch, not one per record (the hot path's).
pub(crate) struct BatchAcks {
    source: Arc<Source>,
    /// Outputs of the task handed to the producer and not yet acknowledged.
    outputs_in_flight: Arc<AtomicUsize>,
    slots: Box<[Slot]>,
}

impl BatchAcks {
    /// Slots for `offsets` (each already registered in the source's
    /// tracker); `outputs_in_flight` is the task's count of outputs awaiting
    /// acknowledgement (a drain waits for it to reach zero).
    pub(crate) fn new(
        source: Arc<Source>,
        outputs_in_flight: Arc<AtomicUsize>,
        offsets: impl Iterator<Item = i64>,
    ) -> Arc<Self> {
        Arc::new(BatchAcks {
            source,
            outputs_in_flight,
            slots: offsets
                .map(|offset| Slot {
                    offset,
                    state: AtomicU8::new(OPEN),
                    tokens: AtomicUsize::new(0),
                })
                .collect(),
        })
    }

    /// A token for record `index` of the batch.
    pub(crate) fn token(self: &Arc<Self>, index: usize) -> AckToken {
        debug_assert!(index < self.slots.len());
        self.slots[index].tokens.fetch_add(1, Ordering::Relaxed);
        AckToken {
            batch: Arc::clone(self),
            index,
        }
    }
}

/// Shared acknowledgement of one input record.
pub struct AckToken {
    batch: Arc<BatchAcks>,
    index: usize,
}

impl Clone for AckToken {
    fn clone(&self) -> Self {
        // Cloned only from a live token: the count is never back from zero.
        self.slot().tokens.fetch_add(1, Ordering::Relaxed);
        AckToken {
            batch: Arc::clone(&self.batch),
            index: self.index,
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        let slot = self.slot();
        if slot.tokens.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last token of the record.
        match slot.state.load(Ordering::Acquire) {
            PROCESSED => self.batch.source.tracker.lock().complete(slot.offset),
            FAILED => self.batch.source.tracker.lock().fail(slot.offset),
            _ => {} // open or abandoned: never done, re-read by the next owner
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("topic", &self.batch.source.topic)
            .field("partition", &self.batch.source.partition)
            .field("offset", &self.slot().offset)
            .finish()
    }
}

impl AckToken {
    /// A token for `offset` alone, which must already be registered in the
    /// source's tracker (the runtime makes them a batch at a time).
    pub fn new(source: Arc<Source>, offset: i64, outputs_in_flight: Arc<AtomicUsize>) -> Self {
        BatchAcks::new(source, outputs_in_flight, std::iter::once(offset)).token(0)
    }

    fn slot(&self) -> &Slot {
        &self.batch.slots[self.index]
    }

    /// The input offset this token acknowledges.
    pub fn offset(&self) -> i64 {
        self.slot().offset
    }

    /// Where the input came from.
    pub fn source(&self) -> &Source {
        &self.batch.source
    }

    /// The step handled the record and every output was handed over: the
    /// record is done once those outputs are acknowledged.
    pub fn mark_processed(&self) {
        let _ = self.slot().state.compare_exchange(
            OPEN,
            PROCESSED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// An output of this record was lost: it must never count as done.
    pub fn fail(&self) {
        let _ = self
            .slot()
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state != ABANDONED).then_some(FAILED)
            });
    }

    /// Gives the record up (revoke, shutdown, fatal error): its offset stays
    /// uncommitted, so the next owner re-reads it.
    pub fn abandon(&self) {
        let _ = self
            .slot()
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state != FAILED).then_some(ABANDONED)
            });
    }

    /// Whether an output of the record was lost.
    pub fn failed(&self) -> bool {
        self.slot().state.load(Ordering::Acquire) == FAILED
    }

    /// An output was handed to the producer.
    pub(crate) fn output_sent(&self) {
        self.batch.outputs_in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// An output was acknowledged or failed for good.
    pub(crate) fn output_settled(&self) {
        self.batch.outputs_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A record a step holds to complete later (deferred acknowledgement): a
/// click waiting for its impression, say. Its offset is not committed until
/// the held record is [`released`](Held::release) and every output emitted
/// for it ([`crate::Emitter::emit_held`]) is acknowledged.
///
/// Dropping a `Held` without releasing it abandons the record (it will be
/// read again after a restart or rebalance), so a step that forgets one
/// stalls commits instead of losing the record.
#[derive(Debug)]
pub struct Held {
    token: Option<AckToken>,
}

impl Held {
    pub(crate) fn new(token: Option<AckToken>) -> Self {
        Held { token }
    }

    /// A held record that belongs to no runtime, for unit tests of steps.
    pub fn detached() -> Self {
        Held { token: None }
    }

    pub(crate) fn token(&self) -> Option<&AckToken> {
        self.token.as_ref()
    }

    /// The input offset held, when the record came from the runtime.
    pub fn offset(&self) -> Option<i64> {
        self.token.as_ref().map(AckToken::offset)
    }

    /// Completes the hold: the record is done once the outputs emitted for
    /// it are acknowledged (at once if there are none).
    pub fn release(mut self) {
        self.token = None; // drops the clone normally
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            tracing::warn!(
                topic = %token.source().topic,
                partition = token.source().partition,
                offset = token.offset(),
                "a held record was dropped without release: abandoned, it will be read again"
            );
            token.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(offsets: &[i64]) -> Arc<Source> {
        let tracker: SharedTracker = Arc::new(Mutex::new(OffsetTracker::new()));
        for offset in offsets {
            tracker.lock().register(*offset);
        }
        Arc::new(Source {
            topic: Arc::from("t"),
            partition: 0,
            tracker,
        })
    }

    fn committable(source: &Source) -> Option<i64> {
        source.tracker.lock().committable()
    }

    #[test]
    fn done_only_when_processed_and_the_last_clone_drops() {
        let source = source(&[7]);
        let token = AckToken::new(Arc::clone(&source), 7, Arc::default());
        let output_a = token.clone();
        let output_b = token.clone();
        token.mark_processed();
        drop(token);
        drop(output_a);
        assert_eq!(committable(&source), None);
        drop(output_b);
        assert_eq!(committable(&source), Some(8));
    }

    #[test]
    fn records_of_one_batch_settle_on_their_own_tokens() {
        let source = source(&[10, 11, 12]);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let batch = BatchAcks::new(Arc::clone(&source), Arc::clone(&in_flight), 10..13);
        let (first, second, third) = (batch.token(0), batch.token(1), batch.token(2));
        drop(batch);
        let output_of_second = second.clone();
        for token in [&first, &second, &third] {
            token.mark_processed();
        }
        drop(first);
        drop(second);
        assert_eq!(committable(&source), Some(11), "11 waits for its output");
        drop(third);
        assert_eq!(committable(&source), Some(11));
        drop(output_of_second);
        assert_eq!(committable(&source), Some(13));
    }

    #[test]
    fn a_token_dropped_unprocessed_is_abandoned_not_done() {
        // What a panic unwinding through a step does to its record's token.
        let source = source(&[3, 4]);
        let panicked = AckToken::new(Arc::clone(&source), 3, Arc::default());
        let later = AckToken::new(Arc::clone(&source), 4, Arc::default());
        later.mark_processed();
        drop(later);
        drop(panicked);
        assert_eq!(committable(&source), None, "nothing past 3 is committed");
        assert!(!source.tracker.lock().failed());
    }

    #[test]
    fn a_failed_output_keeps_its_offset_out_of_the_prefix() {
        let source = source(&[1, 2, 3]);
        let in_flight = Arc::new(AtomicUsize::new(0));
        for offset in [1, 2, 3] {
            let token = AckToken::new(Arc::clone(&source), offset, Arc::clone(&in_flight));
            token.mark_processed();
            if offset == 2 {
                token.clone().fail();
            }
        }
        assert!(source.tracker.lock().failed());
        assert_eq!(
            committable(&source),
            Some(2),
            "the prefix before the failure"
        );
    }

    #[test]
    fn abandon_wins_over_processed_but_not_over_failed() {
        let source = source(&[1, 2]);
        let abandoned = AckToken::new(Arc::clone(&source), 1, Arc::default());
        abandoned.mark_processed();
        abandoned.abandon();
        drop(abandoned);
        assert_eq!(committable(&source), None);
        let failed = AckToken::new(Arc::clone(&source), 2, Arc::default());
        failed.fail();
        failed.abandon();
        assert!(failed.failed());
    }

    #[test]
    fn a_held_record_completes_on_release_and_is_abandoned_when_dropped() {
        let source = source(&[1, 2]);
        let token = AckToken::new(Arc::clone(&source), 1, Arc::default());
        let held = Held::new(Some(token.clone()));
        token.mark_processed();
        drop(token);
        assert_eq!(committable(&source), None, "still held");
        held.release();
        assert_eq!(committable(&source), Some(2));

        let token = AckToken::new(Arc::clone(&source), 2, Arc::default());
        let forgotten = Held::new(Some(token.clone()));
        token.mark_processed();
        drop(token);
        drop(forgotten);
        assert_eq!(committable(&source), Some(2), "a dropped hold is not done");
    }
}
