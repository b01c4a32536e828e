//! The offset tracker: which offsets of one partition are done, and how far
//! the consumer group may commit.
//!
//! Contract: offsets are registered in the order the consumer delivers them
//! (increasing, possibly with gaps from compaction or transaction markers)
//! and completed in any order. [`OffsetTracker::committable`] is the offset
//! after the longest *contiguous* prefix of completed offsets — never past
//! an offset that is still in flight, whatever completed after it. (This is
//! where Vector's Kafka source goes wrong: a later success must not move the
//! commit past an earlier failure.) A failed offset is never completed, so
//! the prefix stops right before it: a revoke after a lost output commits
//! exactly the records before the loss.

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
    /// The first offset whose output could not be delivered, if any.
    failed_at: Option<i64>,
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
        // Offsets are nearly always contiguous: try the direct position
        // first, search only when gaps (compaction, markers) moved it.
        let direct = self.pending.front().and_then(|(front, _)| {
            usize::try_from(offset - front)
                .ok()
                .filter(|&index| self.pending.get(index).is_some_and(|(at, _)| *at == offset))
        });
        let Some(index) = direct.or_else(|| {
            self.pending
                .binary_search_by_key(&offset, |(pending, _)| *pending)
                .ok()
        }) else {
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

    /// Marks `offset` failed: an output of it was lost, so it never
    /// becomes done and nothing from it on is committed; the worker must
    /// stop (or the partition move) so that it is read again.
    pub fn fail(&mut self, offset: i64) {
        self.failed_at = Some(self.failed_at.map_or(offset, |first| first.min(offset)));
    }

    /// Whether an output of this partition was lost.
    pub fn failed(&self) -> bool {
        self.failed_at.is_some()
    }

    /// The first offset whose output was lost.
    pub fn failed_at(&self) -> Option<i64> {
        self.failed_at
    }

    /// The offset to commit (one past the contiguous done prefix), if any
    /// record is done. Never past a failed offset: it is never completed.
    pub fn committable(&self) -> Option<i64> {
        debug_assert!(
            self.failed_at
                .is_none_or(|failed| self.committable.is_none_or(|next| next <= failed))
        );
        self.committable
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
    fn a_lost_output_stops_the_prefix_before_it() {
        let mut tracker = OffsetTracker::new();
        for offset in 0..4 {
            tracker.register(offset);
        }
        tracker.complete(0);
        tracker.fail(1);
        tracker.complete(2);
        tracker.complete(3);
        assert_eq!(tracker.committable(), Some(1), "only offset 0 is done");
        assert_eq!(tracker.failed_at(), Some(1));
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
