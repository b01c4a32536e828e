//! Time-aligned feeding of a task with several inputs (pure logic, no IO).
//!
//! Contract: records are handed on in event-time order across the inputs.
//! The head with the smallest event time (ties: the input listed first) is
//! released only when no other input may still deliver an earlier record,
//! i.e. every other input
//! - has a record queued (its head is not earlier, or it would be the
//!   smallest), or
//! - has promised, by an in-band heartbeat, that nothing earlier than its
//!   watermark will come (see [`crate::heartbeat`]), or
//! - is *idle*: its consumer position is at the log end and nothing arrived
//!   from it for `max_idle`. Then the task proceeds without it.
//!
//! A record that arrives after later ones were released (a straggler from
//! an input that was idle, or an input whose own records are out of order)
//! is still released — never dropped — with its lateness: how far its event
//! time is behind the latest one released.
//!
//! Backpressure stays where it is: queued records keep counting against
//! their partition's byte budget until released, so the input that runs
//! ahead is paused by the consumer, never buffered without bound.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One input's state.
#[derive(Debug)]
struct Input<T> {
    queue: VecDeque<(i64, T)>,
    /// Highest watermark announced by heartbeats.
    heartbeat_ms: Option<i64>,
    /// The consumer's position was at the log end when last reported.
    caught_up: bool,
    /// Last record or heartbeat (or the task's start).
    last_activity: Instant,
    /// The partition is assigned to this task.
    assigned: bool,
}

/// What the task should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Hand this record to the step.
    Release {
        /// Which input it came from.
        input: usize,
        /// The item queued with it.
        item: T,
        /// Its event time.
        event_time_ms: i64,
        /// Event-time distance behind the latest record released before it.
        lateness_ms: Option<i64>,
    },
    /// Records are queued but must wait: until `Some(instant)` (when an
    /// input turns idle), or until something arrives (`None`).
    Wait(Option<Instant>),
    /// Nothing queued.
    Empty,
}

/// The alignment state of one task.
#[derive(Debug)]
pub struct Aligner<T> {
    inputs: Vec<Input<T>>,
    max_idle: Duration,
    /// Latest event time released (the task's event-time clock).
    released_ms: Option<i64>,
}

impl<T> Aligner<T> {
    /// An aligner for inputs of which `assigned[i]` tells whether input i's
    /// partition belongs to the task (a task given only part of its inputs
    /// waits for the rest: a missing input is never idle).
    pub fn new(assigned: &[bool], max_idle: Duration, now: Instant) -> Self {
        Aligner {
            inputs: assigned
                .iter()
                .map(|assigned| Input {
                    queue: VecDeque::new(),
                    heartbeat_ms: None,
                    caught_up: false,
                    last_activity: now,
                    assigned: *assigned,
                })
                .collect(),
            max_idle,
            released_ms: None,
        }
    }

    /// Queues a record of `input` with its event time.
    pub fn push(&mut self, input: usize, event_time_ms: i64, item: T, now: Instant) {
        if let Some(state) = self.inputs.get_mut(input) {
            state.queue.push_back((event_time_ms, item));
            state.last_activity = now;
        }
    }

    /// An in-band heartbeat: `input` will deliver nothing earlier than
    /// `watermark_ms` (later records that break the promise are stragglers).
    pub fn heartbeat(&mut self, input: usize, watermark_ms: i64, now: Instant) {
        if let Some(state) = self.inputs.get_mut(input) {
            state.heartbeat_ms = Some(
                state
                    .heartbeat_ms
                    .map_or(watermark_ms, |w| w.max(watermark_ms)),
            );
            state.last_activity = now;
        }
    }

    /// Whether `input`'s consumer position is at the partition's end.
    pub fn set_caught_up(&mut self, input: usize, caught_up: bool) {
        if let Some(state) = self.inputs.get_mut(input) {
            state.caught_up = caught_up;
        }
    }

    /// The latest event time released (the task's event-time clock).
    pub fn released_ms(&self) -> Option<i64> {
        self.released_ms
    }

    /// Records queued over all inputs.
    pub fn queued(&self) -> usize {
        self.inputs.iter().map(|input| input.queue.len()).sum()
    }

    /// Removes every queued record (revoke: they are abandoned).
    pub fn take_all(&mut self) -> Vec<T> {
        self.inputs
            .iter_mut()
            .flat_map(|input| input.queue.drain(..).map(|(_, item)| item))
            .collect()
    }

    /// The next record to hand on, or how long to wait.
    pub fn next(&mut self, now: Instant) -> Next<T> {
        let head = self
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(index, input)| input.queue.front().map(|(time, _)| (*time, index)))
            .min();
        let Some((event_time_ms, input)) = head else {
            return Next::Empty;
        };
        let mut wake: Option<Instant> = None;
        let mut blocked = false;
        for (index, other) in self.inputs.iter().enumerate() {
            if index == input || !other.queue.is_empty() {
                continue;
            }
            if other
                .heartbeat_ms
                .is_some_and(|watermark| watermark >= event_time_ms)
            {
                continue;
            }
            if !other.assigned || !other.caught_up {
                blocked = true; // it still has records to deliver (or is not ours yet)
                continue;
            }
            let idle_at = other.last_activity + self.max_idle;
            if now < idle_at {
                blocked = true;
                wake = Some(wake.map_or(idle_at, |at| at.min(idle_at)));
            }
        }
        if blocked {
            // Wake at the earliest moment a waiting input could turn idle;
            // one not caught up wakes the task by delivering a record.
            return Next::Wait(wake);
        }
        let Some((_, item)) = self.inputs[input].queue.pop_front() else {
            return Next::Empty;
        };
        let lateness_ms = self
            .released_ms
            .filter(|released| *released > event_time_ms)
            .map(|released| released - event_time_ms);
        self.released_ms = Some(
            self.released_ms
                .map_or(event_time_ms, |r| r.max(event_time_ms)),
        );
        Next::Release {
            input,
            item,
            event_time_ms,
            lateness_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    fn released(
        aligner: &mut Aligner<&'static str>,
        now: Instant,
    ) -> Vec<(&'static str, Option<i64>)> {
        let mut out = Vec::new();
        while let Next::Release {
            item, lateness_ms, ..
        } = aligner.next(now)
        {
            out.push((item, lateness_ms));
        }
        out
    }

    #[test]
    fn releases_in_event_time_order_while_every_input_has_records() {
        let now = Instant::now();
        let mut aligner = Aligner::new(&[true, true], IDLE, now);
        aligner.push(0, 10, "a10", now);
        aligner.push(0, 30, "a30", now);
        aligner.push(1, 20, "b20", now);
        aligner.push(1, 40, "b40", now);
        // a10, b20, a30 go; b40 waits: input 0 may still send something earlier.
        assert_eq!(
            released(&mut aligner, now),
            vec![("a10", None), ("b20", None), ("a30", None)]
        );
        assert_eq!(aligner.next(now), Next::Wait(None));
        aligner.push(0, 50, "a50", now);
        assert_eq!(released(&mut aligner, now), vec![("b40", None)]);
    }

    #[test]
    fn ties_go_to_the_input_listed_first() {
        let now = Instant::now();
        let mut aligner = Aligner::new(&[true, true], IDLE, now);
        aligner.push(1, 10, "b10", now);
        aligner.push(0, 10, "a10", now);
        aligner.push(0, 11, "a11", now);
        aligner.push(1, 12, "b12", now);
        assert_eq!(
            released(&mut aligner, now),
            vec![("a10", None), ("b10", None), ("a11", None)]
        );
    }

    #[test]
    fn a_heartbeat_lets_records_up_to_its_watermark_pass() {
        let now = Instant::now();
        let mut aligner = Aligner::new(&[true, true], IDLE, now);
        aligner.push(0, 10, "a10", now);
        aligner.push(0, 20, "a20", now);
        assert_eq!(aligner.next(now), Next::Wait(None));
        aligner.heartbeat(1, 15, now);
        assert_eq!(released(&mut aligner, now), vec![("a10", None)]);
        assert_eq!(
            aligner.next(now),
            Next::Wait(None),
            "a20 is past the watermark"
        );
    }

    #[test]
    fn an_idle_caught_up_input_is_waited_for_max_idle_then_skipped() {
        let start = Instant::now();
        let mut aligner = Aligner::new(&[true, true], IDLE, start);
        aligner.set_caught_up(1, true);
        aligner.push(0, 10, "a10", start);
        assert_eq!(aligner.next(start), Next::Wait(Some(start + IDLE)));
        let later = start + IDLE;
        assert_eq!(released(&mut aligner, later), vec![("a10", None)]);
        // The straggler from the idle input is processed, and counted late.
        aligner.push(0, 30, "a30", later);
        aligner.push(1, 5, "b5", later);
        assert_eq!(released(&mut aligner, later), vec![("b5", Some(5))]);
    }

    #[test]
    fn an_input_that_is_not_caught_up_is_never_skipped() {
        let start = Instant::now();
        let mut aligner = Aligner::new(&[true, true], IDLE, start);
        aligner.push(0, 10, "a10", start);
        let much_later = start + IDLE * 100;
        assert_eq!(aligner.next(much_later), Next::Wait(None));
    }

    #[test]
    fn a_task_missing_an_input_waits_for_it() {
        let start = Instant::now();
        let mut aligner = Aligner::new(&[true, false], IDLE, start);
        aligner.set_caught_up(1, true);
        aligner.push(0, 10, "a10", start);
        assert_eq!(aligner.next(start + IDLE * 100), Next::Wait(None));
    }

    #[test]
    fn out_of_order_records_of_one_input_are_released_as_late() {
        let now = Instant::now();
        let mut aligner = Aligner::new(&[true], IDLE, now);
        aligner.push(0, 20, "a20", now);
        aligner.push(0, 15, "a15", now);
        assert_eq!(
            released(&mut aligner, now),
            vec![("a20", None), ("a15", Some(5))]
        );
        assert_eq!(aligner.released_ms(), Some(20));
    }

    #[test]
    fn take_all_empties_every_queue() {
        let now = Instant::now();
        let mut aligner = Aligner::new(&[true, true], IDLE, now);
        aligner.push(0, 1, "a", now);
        aligner.push(1, 2, "b", now);
        assert_eq!(aligner.take_all().len(), 2);
        assert_eq!(aligner.next(now), Next::Empty);
    }
}
