//! Publishing at a steady rate: the n-th record is due n / rate seconds
//! after the start, so short stalls are caught up instead of lowering the
//! rate for good.

use std::time::{Duration, Instant};

/// Paces a blocking loop to `rate` records per second (or not at all).
#[derive(Debug)]
pub struct Pacer {
    rate: Option<f64>,
    started: Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer for `rate` records/s; `None` (or a rate ≤ 0) does not wait.
    pub fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            rate: rate.filter(|rate| *rate > 0.0),
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Blocks until the next record is due, and counts it.
    pub fn wait_turn(&mut self) {
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / rate);
            // Sleeps under a millisecond overshoot: let records due that
            // soon go out together.
            if let Some(wait) = due.checked_sub(self.started.elapsed())
                && wait > Duration::from_millis(1)
            {
                std::thread::sleep(wait);
            }
        }
        self.sent += 1;
    }

    /// Records counted so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Time since the pacer was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The rate achieved so far (records/s).
    pub fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.elapsed().as_secs_f64().max(f64::EPSILON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpaced_pacer_only_counts() {
        let mut pacer = Pacer::new(None);
        for _ in 0..1_000 {
            pacer.wait_turn();
        }
        assert_eq!(pacer.sent(), 1_000);
        let mut zero = Pacer::new(Some(0.0));
        zero.wait_turn();
        assert_eq!(zero.sent(), 1);
    }

    #[test]
    fn a_paced_loop_does_not_run_ahead_of_its_rate() {
        // 50 records at 500/s: the 50th is due at 98 ms, so the loop cannot
        // end sooner (a lower bound on behaviour, not a performance claim).
        let mut pacer = Pacer::new(Some(500.0));
        for _ in 0..50 {
            pacer.wait_turn();
        }
        assert!(
            pacer.elapsed() >= Duration::from_millis(97),
            "{:?}",
            pacer.elapsed()
        );
    }
}
