//! A sink's request to its store that outlives the write that sent it.
//!
//! Contract: [`InFlight::answer`] sends a request on a task of its own,
//! which holds its turn (`writes-in-flight`) until the store answered or
//! the request's own patience ran out. When the write timeout cuts the
//! write off, the request stays here: the batch's next attempt, carrying
//! the same records ([`Carries`]), takes that answer instead of sending
//! them again. Why: a store goes on with a request whose client gave up.
//! Abandoned and resent at every timeout, a slow Elasticsearch held ever
//! more of the loader's requests (its indexing-pressure limit then
//! refused the new ones) and finished none in time; BigQuery could apply
//! an abandoned insert after the sink had asked the table what landed,
//! and get its rows twice (and a question cut off is asked once: its
//! answer waited for). A request carrying other records (Elasticsearch's
//! retry of the items it answered 429, BigQuery's re-send of the rows it
//! stopped) is not joined: Elasticsearch's writes are idempotent, so it
//! goes on alone; BigQuery [`settle`](InFlight::settle)s it before asking
//! the table. A request whose task panicked panics the write (the
//! runtime stops the worker); a revoked sink waits for its request
//! ([`settle_blocking`](InFlight::settle_blocking)) before its partition
//! is handed on.

use adpipe_runtime::StepError;
use tokio::task::JoinHandle;

use crate::sink::{Pending, Turn, Turns, take_turn};

/// Which batch: its first and last offsets and its length (a retried
/// batch is the same records: the runtime seals a batch whose write failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId(i64, i64, usize);

impl BatchId {
    /// The id of `batch`.
    pub fn of<I>(batch: &[Pending<I>]) -> BatchId {
        let offset = |pending: &Pending<I>| pending.source.offset;
        BatchId(
            batch.first().map_or(-1, offset),
            batch.last().map_or(-1, offset),
            batch.len(),
        )
    }
}

/// The records a request carries: which batch, and which of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carries(BatchId, Vec<usize>);

impl Carries {
    /// What a question to the store (no write) carries.
    pub fn nothing() -> Carries {
        Carries(BatchId(-1, -1, 0), Vec::new())
    }

    /// `indices` of `batch`.
    pub fn new<I>(batch: &[Pending<I>], indices: &[usize]) -> Carries {
        Carries(BatchId::of(batch), indices.to_vec())
    }
}

/// A sink's one request in flight, if any; `A` is the store's answer.
pub struct InFlight<A> {
    request: Option<(Carries, JoinHandle<A>)>,
}

impl<A> Default for InFlight<A> {
    fn default() -> Self {
        InFlight { request: None }
    }
}

impl<A: Send + 'static> InFlight<A> {
    /// The answer to the request carrying `carries`: the one in flight if
    /// it carries them, else one `send` makes with a turn of `turns` (a
    /// request carrying other records goes on alone, keeping its turn).
    /// Cancel-safe: cut off, the request stays for the next call.
    pub async fn answer(
        &mut self,
        carries: Carries,
        turns: &Turns,
        send: impl FnOnce(Turn) -> JoinHandle<A>,
    ) -> Result<A, StepError> {
        let request = match self.request.take() {
            Some(request) if request.0 == carries => request,
            _ => (carries, send(take_turn(turns).await?)),
        };
        let answered = (&mut self.request.insert(request).1).await;
        self.request = None;
        match answered {
            Ok(answer) => Ok(answer),
            // A request that panicked is the write's own panic: the task
            // catches it and stops the worker, as a panic in the write
            // itself would (retried, it would panic again, forever).
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(StepError::transient(
                "store_request_lost",
                error.to_string(),
            )),
        }
    }

    /// What the request in flight carries, if one is.
    pub fn carrying(&self) -> Option<&Carries> {
        self.request.as_ref().map(|(carries, _)| carries)
    }

    /// Waits for the request in flight, if any, and forgets its answer.
    /// Cancel-safe: cut off, the request stays.
    pub async fn settle(&mut self) {
        if let Some((_, answer)) = &mut self.request {
            let _ = answer.await;
            self.request = None;
        }
    }

    /// [`settle`](Self::settle), blocking, for at most `wait`: for a
    /// revoked task's sink (`on_revoke` runs inside `block_in_place` on the
    /// runtime), so the partition is not handed on — to another instance,
    /// or back to this one — while a request of its sink may still land.
    /// Bounded: the runtime waits for a revoked task only so long (the
    /// revoke deadline; a stopping worker, its stop limit).
    pub fn settle_blocking(&mut self, wait: std::time::Duration) {
        if self.request.is_some() {
            tokio::runtime::Handle::current().block_on(async {
                let _ = tokio::time::timeout(wait, self.settle()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn turns(count: usize) -> Turns {
        Arc::new(tokio::sync::Semaphore::new(count))
    }

    #[tokio::test]
    async fn a_cut_off_request_is_joined_by_the_attempt_carrying_the_same_records() {
        let turns = turns(1);
        let mut in_flight = InFlight::<u32>::default();
        let carries = Carries(BatchId(10, 14, 5), vec![0, 1, 2, 3, 4]);
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let send = |answer: u32| {
            let sent = Arc::clone(&sent);
            move |turn: Turn| {
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _turn = turn;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    answer
                })
            }
        };
        let cut_off = tokio::time::timeout(
            Duration::from_millis(50),
            in_flight.answer(carries.clone(), &turns, send(1)),
        )
        .await;
        assert!(cut_off.is_err(), "cut off before the answer");
        assert_eq!(turns.available_permits(), 0, "the request keeps its turn");
        let answer = in_flight
            .answer(carries, &turns, send(2))
            .await
            .expect("answered");
        assert_eq!(answer, 1, "the first request's answer");
        assert_eq!(
            sent.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "sent once"
        );
        assert_eq!(turns.available_permits(), 1, "its turn back");
    }

    #[tokio::test]
    async fn a_request_that_panicked_panics_the_write_instead_of_being_tried_again() {
        let turns = turns(1);
        let write = tokio::spawn(async move {
            let mut in_flight = InFlight::<u32>::default();
            in_flight
                .answer(Carries::nothing(), &turns, |turn| {
                    tokio::spawn(async move {
                        let _turn = turn;
                        panic!("the store's answer made no sense")
                    })
                })
                .await
        });
        let ended = write.await;
        assert!(
            ended.as_ref().is_err_and(|error| error.is_panic()),
            "the write panics (the runtime then stops the worker), not a transient error to retry: {ended:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_sink_waits_for_its_request_in_flight() {
        let turns = turns(1);
        let mut in_flight = InFlight::<u32>::default();
        let landed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let send = {
            let landed = Arc::clone(&landed);
            move |turn: Turn| {
                tokio::spawn(async move {
                    let _turn = turn;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    landed.store(true, std::sync::atomic::Ordering::SeqCst);
                    7
                })
            }
        };
        let cut_off = tokio::time::timeout(
            Duration::from_millis(20),
            in_flight.answer(Carries::nothing(), &turns, send),
        )
        .await;
        assert!(cut_off.is_err(), "cut off before the answer");
        tokio::task::block_in_place(|| in_flight.settle_blocking(Duration::from_secs(10)));
        assert!(
            landed.load(std::sync::atomic::Ordering::SeqCst),
            "the request landed before the revoke went on"
        );
        assert_eq!(in_flight.carrying(), None);
        assert_eq!(turns.available_permits(), 1, "its turn back");
    }

    #[tokio::test]
    async fn a_request_carrying_other_records_is_settled_or_left_to_go_on() {
        let turns = turns(2);
        let mut in_flight = InFlight::<u32>::default();
        let slow = |answer: u32| {
            move |turn: Turn| {
                tokio::spawn(async move {
                    let _turn = turn;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    answer
                })
            }
        };
        let first = Carries(BatchId(10, 14, 5), vec![0, 1]);
        let other = Carries(BatchId(10, 14, 5), vec![1]);
        let _ = tokio::time::timeout(
            Duration::from_millis(20),
            in_flight.answer(first.clone(), &turns, slow(1)),
        )
        .await;
        assert_eq!(in_flight.carrying(), Some(&first));
        in_flight.settle().await;
        assert_eq!(in_flight.carrying(), None, "settled");
        assert_eq!(turns.available_permits(), 2);
        let answer = in_flight
            .answer(other, &turns, slow(3))
            .await
            .expect("answered");
        assert_eq!(answer, 3, "a new request for other records");
    }
}
