//! Publishing at a steady rate: the n-th record is due n / rate seconds
//! after the start, so short stalls are caught up instead of lowering the
//! rate for good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// Spreads a fixed number of records over a run of fault rounds (kills,
/// restarts) so that publishing spans every fault however long the rounds
/// take on the machine at hand. The records are cut into `faults + 1`
/// shares: share k may start only once fault k came (so the last share goes
/// out after the last fault, and publishing never ends before one), and a
/// share is paced over 1.5× the mean round seen so far (the first over a
/// guess), so it is usually still going when its fault comes.
///
/// Shared (`Arc`) between the publishing thread
/// ([`FaultRounds::spawn_publisher`]) and the test driving the faults
/// ([`FaultRounds::fault`]).
#[derive(Debug)]
pub struct FaultRounds {
    total: u64,
    faults: u64,
    first_round: Duration,
    started: Instant,
    published: AtomicU64,
    state: Mutex<RoundsState>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct RoundsState {
    faults_done: u64,
    last_fault: Option<Instant>,
    in_flight_at_faults: u64,
}

/// The pace of the share being published (kept by the publisher between
/// calls of [`FaultRounds::wait_turn`]).
#[derive(Debug)]
struct ShareTurn {
    share: u64,
    started: Instant,
    span: Duration,
}

impl FaultRounds {
    /// `total` records over `faults` faults; `first_round` guesses how long
    /// the first round takes.
    pub fn new(total: u64, faults: u64, first_round: Duration) -> Arc<FaultRounds> {
        Arc::new(FaultRounds {
            total,
            faults,
            first_round,
            started: Instant::now(),
            published: AtomicU64::new(0),
            state: Mutex::new(RoundsState::default()),
            released: Condvar::new(),
        })
    }

    /// The share record `n` belongs to.
    fn share_of(&self, n: u64) -> u64 {
        let share = u128::from(n) * u128::from(self.faults + 1) / u128::from(self.total.max(1));
        u64::try_from(share).expect("below faults + 1")
    }

    /// The first record of `share` (the end of the previous one).
    fn share_start(&self, share: u64) -> u64 {
        let start =
            (u128::from(share) * u128::from(self.total)).div_ceil(u128::from(self.faults + 1));
        u64::try_from(start).expect("at most total")
    }

    /// Blocks until record `n` (counted from 0, in order) may be published;
    /// `turn` carries the pace between calls (start with `None`).
    fn wait_turn(&self, n: u64, turn: &mut Option<ShareTurn>) {
        let share = self.share_of(n);
        if turn.as_ref().is_none_or(|turn| turn.share != share) {
            let mut state = self.state.lock().expect("fault rounds");
            while state.faults_done < share {
                state = self.released.wait(state).expect("fault rounds");
            }
            let mean_round = match state.last_fault {
                Some(last) if state.faults_done > 0 => {
                    (last - self.started) / u32::try_from(state.faults_done).unwrap_or(u32::MAX)
                }
                _ => self.first_round,
            };
            // The share after the last fault goes out at once.
            let span = if share >= self.faults {
                Duration::ZERO
            } else {
                mean_round.mul_f64(1.5)
            };
            *turn = Some(ShareTurn {
                share,
                started: Instant::now(),
                span,
            });
        }
        let turn = turn.as_ref().expect("set above");
        let (first, end) = (self.share_start(share), self.share_start(share + 1));
        let due = turn
            .span
            .mul_f64((n - first) as f64 / (end - first).max(1) as f64);
        if let Some(wait) = due.checked_sub(turn.started.elapsed())
            && wait > Duration::from_millis(1)
        {
            std::thread::sleep(wait);
        }
        self.published.store(n + 1, Ordering::Release);
    }

    /// Publishes records `0..total` on a thread of its own, record `n` by
    /// `publish(n)` when its turn comes, then calls `finish` (a flush).
    pub fn spawn_publisher(
        self: &Arc<Self>,
        mut publish: impl FnMut(u64) + Send + 'static,
        finish: impl FnOnce() + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let rounds = Arc::clone(self);
        std::thread::spawn(move || {
            let mut turn = None;
            for n in 0..rounds.total {
                rounds.wait_turn(n, &mut turn);
                publish(n);
            }
            finish();
        })
    }

    /// Called at the moment of a fault: notes whether records were still
    /// being published, and releases the next share.
    pub fn fault(&self) {
        let mut state = self.state.lock().expect("fault rounds");
        let share_end = self.share_start(state.faults_done + 1);
        if self.published.load(Ordering::Acquire) < share_end {
            state.in_flight_at_faults += 1;
        }
        state.faults_done += 1;
        state.last_fault = Some(Instant::now());
        self.released.notify_all();
    }

    /// At how many faults the publisher had not finished its share yet
    /// (the others found its records out and it waiting for the fault).
    pub fn in_flight_at_faults(&self) -> u64 {
        self.state.lock().expect("fault rounds").in_flight_at_faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rounds_hold_each_share_until_its_fault_and_the_last_until_all() {
        let rounds = FaultRounds::new(100, 3, Duration::from_millis(20));
        let publisher = {
            let rounds = Arc::clone(&rounds);
            std::thread::spawn(move || {
                let mut turn = None;
                for n in 0..100 {
                    rounds.wait_turn(n, &mut turn);
                }
            })
        };
        // Share 0 (records 0..25) goes out, then the publisher waits.
        let published = || rounds.published.load(Ordering::Acquire);
        while published() < 25 {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(published(), 25, "share 1 must wait for fault 0");
        rounds.fault();
        rounds.fault();
        while published() < 75 {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(published(), 75, "the last share waits for the last fault");
        assert!(!publisher.is_finished());
        rounds.fault();
        publisher.join().expect("publisher");
        assert_eq!(published(), 100);
        // Faults 0 and 1 came together, the second while share 1 was going
        // out or not yet started; fault 2 found share 2 finished.
        assert!(rounds.in_flight_at_faults() <= 2);
    }

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
