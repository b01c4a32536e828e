//! Event-time sanity: which event times a service accepts.
//!
//! Rule (one for every service, documented in the README): an event time
//! - before [`EventTimePolicy::FLOOR_MS`] (2001-09-09, the first 13-digit
//!   millisecond time) is not a millisecond time at all — zero, or seconds
//!   instead of milliseconds: dead-lettered as `event_time_implausible`;
//! - later than now + `max-future-skew` is from a broken clock or in
//!   microseconds: dead-lettered as `event_time_in_future`;
//! - anything else is processed; how late is too late is each service's
//!   own rule (the deduplicator's window, the merger's lateness count).
//!
//! So one bad timestamp can never move a watermark (a deduplicator's window,
//! a merge) past now + the skew.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::step::StepError;

/// The accepted range of event times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimePolicy {
    /// How far past the wall clock an event time may be.
    pub max_future_skew: Duration,
}

impl Default for EventTimePolicy {
    fn default() -> Self {
        EventTimePolicy {
            max_future_skew: Duration::from_secs(3600),
        }
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

impl EventTimePolicy {
    /// 2001-09-09T01:46:40Z: smaller values are not millisecond times.
    pub const FLOOR_MS: i64 = 1_000_000_000_000;

    /// Accepts `event_time_ms` or says why not (a poison error: dead-letter).
    pub fn check(&self, event_time_ms: i64, now_ms: i64) -> Result<(), StepError> {
        if event_time_ms < Self::FLOOR_MS {
            return Err(StepError::poison(
                "event_time_implausible",
                format!(
                    "event time {event_time_ms} is before {} (zero, or seconds instead of milliseconds?)",
                    Self::FLOOR_MS
                ),
            ));
        }
        let skew_ms = i64::try_from(self.max_future_skew.as_millis()).unwrap_or(i64::MAX);
        if event_time_ms > now_ms.saturating_add(skew_ms) {
            return Err(StepError::poison(
                "event_time_in_future",
                format!(
                    "event time {event_time_ms} is {} ms ahead of the clock (allowed: {skew_ms} ms; microseconds instead of milliseconds?)",
                    event_time_ms - now_ms
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_seconds_microseconds_and_the_far_future() {
        let policy = EventTimePolicy::default();
        let now = 1_764_000_000_000;
        assert!(policy.check(now, now).is_ok());
        assert!(
            policy.check(now - 30 * 86_400_000, now).is_ok(),
            "old data replays"
        );
        assert!(
            policy.check(now + 3_600_000, now).is_ok(),
            "within the skew"
        );
        for (bad, kind) in [
            (0, "event_time_implausible"),
            (now / 1000, "event_time_implausible"),
            (now * 1000, "event_time_in_future"),
            (now + 3_600_001, "event_time_in_future"),
        ] {
            let error = policy.check(bad, now).expect_err("rejected");
            assert_eq!(error.kind, kind, "{bad}");
            assert_eq!(error.disposition, adpipe_codec::Disposition::Poison);
        }
    }
}
