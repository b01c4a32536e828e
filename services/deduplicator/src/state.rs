//! The deduplicator's per-partition state: event ids seen within the window.
//!
//! Semantics (design.md): an event is a duplicate when an event with the
//! same event_id was seen and that first event's event_time is within
//! `window` of the partition's watermark (the highest event_time seen minus
//! the allowed lateness). Older ids are forgotten, so a copy arriving after
//! the window passes — by design, the window is the memory.
//!
//! Ids are kept as 128-bit hashes (xxh3): 16 bytes a key instead of the
//! ~60-byte id, and a collision chance around 10^-20 per day at RTB House's
//! volumes — a 64-bit hash would drop a real event every few days. They are
//! stored as two `u64`s: a `u128` is 16-byte aligned, which would pad every
//! entry of both tables from 24 to 32 bytes.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time seen within the window: emit it.
    New,
    /// Seen within the window: drop it.
    Duplicate,
}

/// Seen ids of one partition.
#[derive(Debug)]
pub struct DedupState {
    seen: HashMap<Key, i64, BuildHasherDefault<KeyHasher>>,
    /// (event_time, id) in insertion order, for expiry.
    expiry: VecDeque<(i64, Key)>,
    max_event_time: i64,
    window_ms: i64,
    lateness_ms: i64,
}

/// The key an event id is remembered by.
pub fn id_hash(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// An id hash as stored: 8-byte aligned (see the module docs).
type Key = (u64, u64);

/// Hashes a [`Key`] by folding its two halves: keys are already xxh3
/// hashes, uniformly spread, so hashing them again (std's SipHash) only
/// costs time. Ids come from our own bidders, not from users, so there is
/// no flooding attacker to defend against with a keyed hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for (u64, u64); kept correct for any other use.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, half: u64) {
        self.0 = self.0.rotate_left(29) ^ half;
    }
}

fn key(id: u128) -> Key {
    ((id >> 64) as u64, id as u64)
}

impl DedupState {
    /// Empty state for a window and allowed lateness in milliseconds.
    pub fn new(window_ms: i64, lateness_ms: i64) -> Self {
        DedupState {
            seen: HashMap::default(),
            expiry: VecDeque::new(),
            max_event_time: i64::MIN,
            window_ms,
            lateness_ms,
        }
    }

    /// Event times below this are outside the window.
    pub fn cutoff(&self) -> i64 {
        self.max_event_time
            .saturating_sub(self.lateness_ms)
            .saturating_sub(self.window_ms)
    }

    /// Decides on an event and remembers it if new.
    pub fn check_and_insert(&mut self, id: u128, event_time: i64) -> Verdict {
        let cutoff = self.cutoff();
        if let Some(&first_seen) = self.seen.get(&key(id))
            && first_seen >= cutoff
        {
            return Verdict::Duplicate;
        }
        self.remember(id, event_time);
        Verdict::New
    }

    /// Remembers an id without deciding (restoring from the changelog).
    pub fn remember(&mut self, id: u128, event_time: i64) {
        self.max_event_time = self.max_event_time.max(event_time);
        if event_time < self.cutoff() {
            return; // already outside the window: nothing to remember
        }
        self.seen.insert(key(id), event_time);
        self.expiry.push_back((event_time, key(id)));
        self.expire();
    }

    /// Forgets ids that left the window. Amortized O(1) per insert: events
    /// arrive nearly time-ordered, so expired entries sit at the front; a
    /// late event's entry simply lives a little longer than it must.
    fn expire(&mut self) {
        let cutoff = self.cutoff();
        while let Some(&(event_time, id)) = self.expiry.front() {
            if event_time >= cutoff {
                break;
            }
            self.expiry.pop_front();
            if self.seen.get(&id) == Some(&event_time) {
                self.seen.remove(&id);
            }
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Heap bytes held, from the tables' capacities: hashbrown keeps a
    /// power-of-two number of buckets at most 7/8 full, one control byte
    /// each; the expiry queue is a plain ring buffer.
    pub fn heap_bytes(&self) -> usize {
        let buckets = match self.seen.capacity() {
            0 => 0,
            capacity => (capacity * 8 / 7).next_power_of_two(),
        };
        buckets * (std::mem::size_of::<(Key, i64)>() + 1)
            + self.expiry.capacity() * std::mem::size_of::<(i64, Key)>()
    }

    /// The first event time remembered for an id.
    pub fn first_seen(&self, id: u128) -> Option<i64> {
        self.seen.get(&key(id)).copied()
    }

    /// Forgets an id (a changelog tombstone). Its expiry-queue entry stays
    /// and is skipped when it comes up.
    pub fn forget(&mut self, id: u128) {
        self.seen.remove(&key(id));
    }

    /// The window and the allowed lateness, in ms.
    pub fn window(&self) -> (i64, i64) {
        (self.window_ms, self.lateness_ms)
    }

    /// Whether an id is remembered (within the window or not yet expired).
    pub fn contains(&self, id: u128) -> bool {
        self.seen.contains_key(&key(id))
    }

    /// Every remembered (id, event time), oldest first (the expiry order),
    /// for a snapshot: restoring them in this order keeps expiry cheap.
    pub fn entries(&self) -> Vec<(u128, i64)> {
        self.expiry
            .iter()
            .filter(|(event_time, key)| self.seen.get(key) == Some(event_time))
            .map(|&(event_time, (high, low))| {
                ((u128::from(high) << 64) | u128::from(low), event_time)
            })
            .collect()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn drops_duplicates_inside_the_window_and_passes_them_outside() {
        let mut state = DedupState::new(24 * HOUR, HOUR);
        let t0 = 1_000 * HOUR;
        assert_eq!(state.check_and_insert(1, t0), Verdict::New);
        assert_eq!(state.check_and_insert(1, t0), Verdict::Duplicate);
        // Time moves on, but within window + lateness: still remembered.
        state.check_and_insert(2, t0 + 24 * HOUR);
        assert_eq!(state.check_and_insert(1, t0), Verdict::Duplicate);
        // Past the window plus lateness: forgotten, so a late copy passes.
        state.check_and_insert(3, t0 + 26 * HOUR);
        assert_eq!(state.check_and_insert(1, t0), Verdict::New);
        assert_eq!(state.len(), 2, "id 1 (too old) is not kept; 2 and 3 are");
    }

    proptest! {
        /// Against a plain HashMap model with the same TTL rule.
        #[test]
        fn matches_a_hashmap_with_ttl(
            events in proptest::collection::vec((0u128..50, 0i64..200), 1..400),
            window in 1i64..100,
            lateness in 0i64..20,
        ) {
            let mut state = DedupState::new(window, lateness);
            let mut model: HashMap<u128, i64> = HashMap::new();
            let mut max_time = i64::MIN;
            // Times increase mostly, with jitter: like merged streams.
            for (step, (id, jitter)) in events.into_iter().enumerate() {
                let event_time = step as i64 * 3 + jitter;
                let cutoff = max_time.saturating_sub(lateness).saturating_sub(window);
                let expected = match model.get(&id) {
                    Some(&first) if first >= cutoff => Verdict::Duplicate,
                    _ => Verdict::New,
                };
                if expected == Verdict::New {
                    max_time = max_time.max(event_time);
                    let new_cutoff = max_time.saturating_sub(lateness).saturating_sub(window);
                    if event_time >= new_cutoff { model.insert(id, event_time); } else { model.remove(&id); }
                }
                prop_assert_eq!(state.check_and_insert(id, event_time), expected);
            }
        }
    }
}
