//! Acknowledgement tokens: a record is done when every clone of its token
//! has been dropped (Vector's finalizers, in miniature).
//!
//! The partition worker creates one token per input record and gives a clone
//! to every output it produces; the producer's delivery callback drops its
//! clone on success. When the last clone goes, the record's offset is marked
//! done in its partition's [`OffsetTracker`]. A failed delivery marks the
//! tracker failed instead, so nothing past the lost output is ever committed.
//!
//! Fencing: a token points at the tracker of the assignment it was created
//! in. A revoked partition's tracker is dropped from the worker's map, so
//! late acknowledgements update a tracker nobody commits from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::offsets::OffsetTracker;

/// A partition's tracker, shared by its worker, its tokens and the committer.
pub type SharedTracker = Arc<Mutex<OffsetTracker>>;

const PENDING: u8 = 0;
const FAILED: u8 = 1;
const ABANDONED: u8 = 2;

struct Inner {
    tracker: SharedTracker,
    offset: i64,
    state: AtomicU8,
    /// Records of one actor whose outputs are not all acknowledged yet.
    outstanding: Arc<AtomicUsize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        match self.state.load(Ordering::Acquire) {
            FAILED => self.tracker.lock().fail(),
            ABANDONED => {}
            _ => self.tracker.lock().complete(self.offset),
        }
    }
}

/// Shared acknowledgement of one input record.
#[derive(Clone)]
pub struct AckToken {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("offset", &self.inner.offset)
            .finish()
    }
}

impl AckToken {
    /// A token for `offset`, which must already be registered in `tracker`.
    /// `outstanding` counts live tokens (the actor waits for it on revoke).
    pub fn new(tracker: SharedTracker, offset: i64, outstanding: Arc<AtomicUsize>) -> Self {
        outstanding.fetch_add(1, Ordering::AcqRel);
        AckToken {
            inner: Arc::new(Inner {
                tracker,
                offset,
                state: AtomicU8::new(PENDING),
                outstanding,
            }),
        }
    }

    /// The input offset this token acknowledges.
    pub fn offset(&self) -> i64 {
        self.inner.offset
    }

    /// Records that an output of this record was lost.
    pub fn fail(&self) {
        self.inner.state.store(FAILED, Ordering::Release);
    }

    /// Gives the record up without completing it (revoke, shutdown, fatal
    /// error): its offset stays uncommitted, so the next owner re-reads it.
    pub fn abandon(&self) {
        let _ = self.inner.state.compare_exchange(
            PENDING,
            ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_only_when_the_last_clone_drops() {
        let tracker: SharedTracker = Arc::new(Mutex::new(OffsetTracker::new()));
        tracker.lock().register(7);
        let token = AckToken::new(Arc::clone(&tracker), 7, Arc::default());
        let output_a = token.clone();
        let output_b = token.clone();
        drop(token);
        drop(output_a);
        assert_eq!(tracker.lock().committable(), None);
        drop(output_b);
        assert_eq!(tracker.lock().committable(), Some(8));
    }

    #[test]
    fn a_failed_output_fails_the_partition() {
        let tracker: SharedTracker = Arc::new(Mutex::new(OffsetTracker::new()));
        tracker.lock().register(1);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let token = AckToken::new(Arc::clone(&tracker), 1, Arc::clone(&outstanding));
        assert_eq!(outstanding.load(Ordering::Acquire), 1);
        token.clone().fail();
        drop(token);
        assert!(tracker.lock().failed());
        assert_eq!(tracker.lock().committable(), None);
        assert_eq!(outstanding.load(Ordering::Acquire), 0);
    }

    #[test]
    fn an_abandoned_record_is_neither_done_nor_failed() {
        let tracker: SharedTracker = Arc::new(Mutex::new(OffsetTracker::new()));
        tracker.lock().register(3);
        let token = AckToken::new(Arc::clone(&tracker), 3, Arc::default());
        token.abandon();
        drop(token);
        assert_eq!(tracker.lock().committable(), None);
        assert!(!tracker.lock().failed());
    }
}
