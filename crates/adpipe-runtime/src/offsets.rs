//! The offset tracker: which offsets of one partition are done, and how far
//! the consumer group may commit.
//!
//! Contract: offsets are registered in the order the consumer delivers them
//! (increasing, possibly with gaps from compaction or transaction markers)
//! and completed in any order. [`OffsetTracker::committable`] is the offset
//! after the longest *contiguous* prefix of completed offsets — never past
//! an offset that is still in flight, whatever completed after it. (This is
//! where Vector's Kafka source goes wrong: a later success must not move the
//! commit past an earlier failure.)

use std::collections::VecDeque;

/// Tracks in-flight and completed offsets of one partition.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Registered offsets not yet swept, oldest first, with their done flag.
    pending: VecDeque<(i64, bool)>,
    /// The offset after the contiguous done prefix, once something is done.
    committable: Option<i64>,
    /// Registered and not completed.
    in_flight: usize,
    /// An output could not be delivered: nothing more may be committed.
    failed: bool,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an offset the consumer delivered. Offsets must increase;
    /// an offset at or below the last registered one is ignored (and
    /// reported as `false`), which fences redeliveries after a seek.
    pub fn register(&mut self, offset: i64) -> bool {
        let last = self
            .pending
            .back()
            .map(|(last, _)| *last)
            .or(self.committable.map(|next| next - 1));
        if last.is_some_and(|last| offset <= last) {
            return false;
        }
        self.pending.push_back((offset, false));
        self.in_flight += 1;
        true
    }

    /// Marks an offset done. Unknown or already-done offsets are ignored.
    pub fn complete(&mut self, offset: i64) {
        let Ok(index) = self
            .pending
            .binary_search_by_key(&offset, |(pending, _)| *pending)
        else {
            return;
        };
        let Some(entry) = self.pending.get_mut(index) else {
            return;
        };
        if entry.1 {
            return;
        }
        entry.1 = true;
        self.in_flight -= 1;
        while let Some(&(front, true)) = self.pending.front() {
            self.pending.pop_front();
            self.committable = Some(front + 1);
        }
    }

    /// Marks the partition failed: an output of some record was lost, so
    /// the only safe commit is the one already made; the worker must stop
    /// and let a restart re-consume from there.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Whether an output of this partition was lost.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The offset to commit (one past the contiguous done prefix), if any
    /// record is done and no output was lost.
    pub fn committable(&self) -> Option<i64> {
        if self.failed { None } else { self.committable }
    }

    /// Registered records not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_contiguous_prefix() {
        let mut tracker = OffsetTracker::new();
        for offset in [10, 11, 13, 14] {
            assert!(tracker.register(offset));
        }
        tracker.complete(11);
        tracker.complete(14);
        assert_eq!(tracker.committable(), None, "10 is still in flight");
        tracker.complete(10);
        assert_eq!(tracker.committable(), Some(12));
        tracker.complete(13);
        assert_eq!(
            tracker.committable(),
            Some(15),
            "gap at 12 (compaction) is skipped"
        );
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn a_lost_output_stops_all_commits() {
        let mut tracker = OffsetTracker::new();
        tracker.register(0);
        tracker.register(1);
        tracker.complete(0);
        tracker.fail();
        tracker.complete(1);
        assert_eq!(tracker.committable(), None);
    }

    #[test]
    fn ignores_redeliveries_and_unknown_offsets() {
        let mut tracker = OffsetTracker::new();
        tracker.register(5);
        tracker.complete(5);
        assert!(!tracker.register(5));
        assert!(!tracker.register(3));
        tracker.complete(99);
        assert_eq!(tracker.committable(), Some(6));
    }

    proptest! {
        /// Against a naive model: the committable offset is one past the
        /// largest offset o such that every registered offset <= o is done.
        #[test]
        fn matches_a_naive_model(
            gaps in proptest::collection::vec(1i64..4, 1..200),
            completions in proptest::collection::vec(any::<prop::sample::Index>(), 0..400),
        ) {
            let mut offsets = Vec::new();
            let mut next = 0;
            for gap in gaps { offsets.push(next); next += gap; }
            let mut tracker = OffsetTracker::new();
            for offset in &offsets { tracker.register(*offset); }
            let mut done = std::collections::BTreeSet::new();
            for index in completions {
                let offset = offsets[index.index(offsets.len())];
                tracker.complete(offset);
                done.insert(offset);
                let model = offsets.iter().take_while(|offset| done.contains(offset)).last().map(|last| last + 1);
                prop_assert_eq!(tracker.committable(), model);
                prop_assert_eq!(tracker.in_flight(), offsets.len() - done.len());
            }
        }
    }
}
