//! Time buckets: how event times map to the units the store expires.
//!
//! Bucket `b` holds event times in `[b·width, (b+1)·width)`. A bucket is
//! expired by a cutoff once it ends at or before it, so an entry lives
//! between its TTL and its TTL plus one bucket width: with a window of W
//! and width W/8, at most 9 buckets are live and expiry keeps at most 1/8
//! more than the window.

/// The bucket layout of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    width_ms: i64,
}

impl Buckets {
    /// Buckets of `width_ms` (at least 1 ms).
    pub fn new(width_ms: i64) -> Self {
        Buckets {
            width_ms: width_ms.max(1),
        }
    }

    /// Buckets for a time-to-live: eight per TTL, so expiry keeps at most
    /// an eighth more than the window, and a lookup probes at most nine.
    pub fn for_ttl(ttl_ms: i64) -> Self {
        Buckets::new(ttl_ms / 8)
    }

    /// The width in ms.
    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    /// The bucket holding `event_time`.
    pub fn of(&self, event_time: i64) -> i64 {
        event_time.div_euclid(self.width_ms)
    }

    /// The first bucket a `cutoff` keeps: every bucket below it ends at or
    /// before the cutoff.
    pub fn floor_for(&self, cutoff: i64) -> i64 {
        cutoff.div_euclid(self.width_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_expires_once_it_ends_at_or_before_the_cutoff() {
        let buckets = Buckets::new(10);
        assert_eq!(buckets.of(0), 0);
        assert_eq!(buckets.of(9), 0);
        assert_eq!(buckets.of(10), 1);
        assert_eq!(buckets.of(-1), -1, "times before 1970 are buckets too");
        // Bucket 0 is [0, 10): a cutoff of 10 expires it, 9 does not.
        assert_eq!(buckets.floor_for(10), 1);
        assert_eq!(buckets.floor_for(9), 0);
        assert_eq!(Buckets::for_ttl(80).width_ms(), 10);
        assert_eq!(Buckets::for_ttl(3).width_ms(), 1, "never zero");
    }
}
