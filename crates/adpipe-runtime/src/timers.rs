//! A task's timers (pure logic): wall-clock and event-time timers set by
//! its step, fired in order of time, each (clock, time, id) at most once.

use std::collections::BTreeSet;

use crate::step::{Timer, TimerClock};

/// Pending timers of one task.
#[derive(Debug, Default)]
pub struct Timers {
    wall: BTreeSet<(i64, u64)>,
    event: BTreeSet<(i64, u64)>,
}

impl Timers {
    /// Adds a timer (setting the same one twice keeps one).
    pub fn set(&mut self, timer: Timer) {
        let queue = match timer.clock {
            TimerClock::Wall => &mut self.wall,
            TimerClock::Event => &mut self.event,
        };
        queue.insert((timer.at_ms, timer.id));
    }

    /// The earliest wall-clock timer (ms since the epoch).
    pub fn next_wall_ms(&self) -> Option<i64> {
        self.wall.first().map(|(at, _)| *at)
    }

    /// Removes and returns the timers of `clock` due at `now_ms`, earliest first.
    pub fn take_due(&mut self, clock: TimerClock, now_ms: i64) -> Vec<Timer> {
        let queue = match clock {
            TimerClock::Wall => &mut self.wall,
            TimerClock::Event => &mut self.event,
        };
        let later = queue.split_off(&(now_ms.saturating_add(1), 0));
        let due = std::mem::replace(queue, later);
        due.into_iter()
            .map(|(at_ms, id)| Timer { clock, at_ms, id })
            .collect()
    }

    /// Timers pending.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.wall.len() + self.event.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_due_timers_once_in_order_of_time() {
        let mut timers = Timers::default();
        for (clock, at_ms, id) in [
            (TimerClock::Event, 30, 1),
            (TimerClock::Event, 10, 2),
            (TimerClock::Event, 10, 2),
            (TimerClock::Wall, 5, 3),
            (TimerClock::Event, 20, 4),
        ] {
            timers.set(Timer { clock, at_ms, id });
        }
        assert_eq!(timers.len(), 4, "the same timer set twice is one");
        assert_eq!(timers.next_wall_ms(), Some(5));
        let due: Vec<_> = timers
            .take_due(TimerClock::Event, 20)
            .into_iter()
            .map(|timer| (timer.at_ms, timer.id))
            .collect();
        assert_eq!(due, vec![(10, 2), (20, 4)]);
        assert!(timers.take_due(TimerClock::Event, 20).is_empty());
        assert_eq!(timers.take_due(TimerClock::Wall, 4).len(), 0);
        assert_eq!(timers.take_due(TimerClock::Wall, 5).len(), 1);
        assert_eq!(timers.len(), 1);
    }
}
