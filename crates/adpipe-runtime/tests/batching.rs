//! Batches (`adpipe_runtime::batching`) on the real central cluster: records
//! are written in batches bounded by count and time, committed only once
//! their batch is written, and a write that fails is tried again without
//! losing, doubling or dead-lettering anything.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use adpipe_runtime::batching::{BatchLimits, BatchStep, Batching, Span};
use adpipe_runtime::{InputRecord, OutputRecord, StepError, StepFactory, TaskAssignment};
use parking_lot::Mutex;
use support::{Topics, records, text};

/// What the sink received: each written batch's values.
type Written = Arc<Mutex<Vec<Vec<String>>>>;
/// Every write tried: (its values, whether it succeeded).
type Attempts = Arc<Mutex<Vec<(Vec<String>, bool)>>>;

/// Writes batches of values to `written` and emits one output per batch.
struct Sink {
    out_topic: String,
    written: Written,
    /// Writes that fail (transiently) before the next succeeds.
    failures_left: Arc<AtomicUsize>,
    /// While false, a write waits (what the test sees while a batch is open).
    gate: Arc<AtomicBool>,
    /// While true, every write fails for good (not transiently).
    broken: Arc<AtomicBool>,
    attempts: Attempts,
}

impl BatchStep for Sink {
    type Batch = Vec<String>;

    fn add(&mut self, batch: &mut Vec<String>, record: &InputRecord<'_>) -> Result<(), StepError> {
        let value = text(record.value);
        if value.starts_with("poison") {
            return Err(StepError::poison("poison", "a poison record"));
        }
        batch.push(value);
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &Vec<String>,
        spans: &[Span],
    ) -> Result<Vec<OutputRecord>, StepError> {
        while !self.gate.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.broken.load(Ordering::Acquire) {
            return Err(StepError::poison(
                "store_broken",
                "the store refuses every batch",
            ));
        }
        if self
            .failures_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            self.attempts.lock().push((batch.clone(), false));
            return Err(StepError::transient("sink_down", "the sink is down"));
        }
        self.attempts.lock().push((batch.clone(), true));
        let covered: i64 = spans.iter().map(|span| span.last - span.first + 1).sum();
        assert_eq!(
            covered,
            batch.len() as i64,
            "spans cover the batch: {spans:?}"
        );
        self.written.lock().push(batch.clone());
        let mut output = OutputRecord::new(
            &self.out_topic,
            None,
            Some(format!("batch of {}", batch.len()).as_bytes()),
        );
        output.partition = spans.first().map(|span| span.partition);
        Ok(vec![output])
    }
}

struct SinkFactory {
    out_topic: String,
    written: Written,
    failures_left: Arc<AtomicUsize>,
    gate: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
    attempts: Attempts,
    limits: BatchLimits,
}

impl SinkFactory {
    fn new(topics: &Topics, failures: usize, limits: BatchLimits) -> Self {
        SinkFactory {
            out_topic: topics.name("out"),
            written: Written::default(),
            failures_left: Arc::new(AtomicUsize::new(failures)),
            gate: Arc::new(AtomicBool::new(true)),
            broken: Arc::new(AtomicBool::new(false)),
            attempts: Attempts::default(),
            limits,
        }
    }
}

impl StepFactory for SinkFactory {
    type Step = Batching<Sink>;

    fn create(&self, _: &TaskAssignment) -> Result<Batching<Sink>, StepError> {
        Ok(Batching::new(
            Sink {
                out_topic: self.out_topic.clone(),
                written: Arc::clone(&self.written),
                failures_left: Arc::clone(&self.failures_left),
                gate: Arc::clone(&self.gate),
                broken: Arc::clone(&self.broken),
                attempts: Arc::clone(&self.attempts),
            },
            self.limits,
        ))
    }
}

fn limits(max_records: usize, max_wait_ms: u64) -> BatchLimits {
    BatchLimits {
        max_records,
        max_bytes: usize::MAX,
        max_wait: Duration::from_millis(max_wait_ms),
    }
}

fn values(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("good-{index}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_in_batches_bounded_by_count_and_time() {
    let topics = Topics::create("rt-batches", 1).await;
    topics.produce(&records(25, &[])).await;
    let factory = SinkFactory::new(&topics, 0, limits(10, 500));
    let written = Arc::clone(&factory.written);
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    let batches = written.lock().clone();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5], "two full batches, the rest by time");
    assert_eq!(batches.concat(), values(25), "every record once, in order");
    assert_eq!(
        topics.values("out").await,
        ["batch of 10", "batch of 10", "batch of 5"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_committed_only_once_their_batch_is_written() {
    let topics = Topics::create("rt-batch-commit", 1).await;
    topics.produce(&records(8, &[])).await;
    let factory = SinkFactory::new(&topics, 0, limits(100, 300));
    factory.gate.store(false, Ordering::Release);
    let (written, gate) = (Arc::clone(&factory.written), Arc::clone(&factory.gate));
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    // The batch is open (its write waits at the gate) for several commit
    // ticks: nothing may be committed yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(written.lock().is_empty());
    assert!(
        topics
            .committed()
            .iter()
            .all(|offset| offset.is_none_or(|offset| offset == 0)),
        "committed before the batch was written: {:?}",
        topics.committed()
    );
    gate.store(true, Ordering::Release);
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    assert_eq!(written.lock().concat(), values(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_is_tried_again_and_nothing_is_lost_doubled_or_dead_lettered() {
    let topics = Topics::create("rt-batch-retry", 1).await;
    topics.produce(&records(30, &[])).await;
    // Three failures: at least one from a full batch (the next record's
    // processing) and, with a short wait, from the timer.
    let factory = SinkFactory::new(&topics, 3, limits(12, 200));
    let written = Arc::clone(&factory.written);
    let worker = adpipe_runtime::start(
        topics.settings("retry-initial-backoff = \"50ms\"\nretry-max-backoff = \"200ms\"\n"),
        factory,
    )
    .expect("starts");
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    assert_eq!(
        written.lock().concat(),
        values(30),
        "every record once, in order"
    );
    assert!(
        topics.values("dlq").await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_due_by_time_that_fails_is_tried_again_by_its_timer() {
    let topics = Topics::create("rt-batch-timer", 1).await;
    topics.produce(&records(5, &[])).await;
    // Never full: every write is the timer's, and the first two fail.
    let factory = SinkFactory::new(&topics, 2, limits(100, 200));
    let written = Arc::clone(&factory.written);
    let worker = adpipe_runtime::start(
        topics.settings("retry-initial-backoff = \"50ms\"\nretry-max-backoff = \"200ms\"\n"),
        factory,
    )
    .expect("starts");
    topics.wait_committed_to_end(Duration::from_secs(30)).await;
    worker.stop().await.expect("clean stop");
    assert_eq!(written.lock().concat(), values(5));
}

/// A record that fails right after it made the full batch be written: the
/// batch's output belongs to the batch's records and is still sent; the
/// failing record alone is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_ahead_of_a_poison_record_still_sends_its_outputs() {
    let topics = Topics::create("rt-batch-poison", 1).await;
    topics.produce(&records(21, &[(10, "poison")])).await;
    let factory = SinkFactory::new(&topics, 0, limits(10, 500));
    let written = Arc::clone(&factory.written);
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    assert_eq!(written.lock().len(), 2, "two batches written");
    assert_eq!(
        topics.values("out").await,
        ["batch of 10", "batch of 10"],
        "the output of the batch written before the poison record is sent"
    );
    assert_eq!(
        topics.values("dlq").await.len(),
        1,
        "the poison record alone"
    );
}

/// A write that fails for good — here on the full-batch path, where the
/// record that made the batch full is at hand — stops the worker naming
/// the error: that record is not dead-lettered for the batch, nothing is
/// committed past the unwritten batch, and a restart writes it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_for_good_stops_the_worker_and_blames_no_record() {
    let topics = Topics::create("rt-batch-broken", 1).await;
    topics.produce(&records(25, &[])).await;
    // Full at 10 records, never due by time: the write comes with record 10.
    let factory = SinkFactory::new(&topics, 0, limits(10, 600_000));
    factory.broken.store(true, Ordering::Release);
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    let reason = tokio::time::timeout(Duration::from_secs(60), worker.stopped())
        .await
        .expect("the worker stops by itself");
    assert!(
        reason.contains("store_broken") && reason.contains("batch of 10"),
        "{reason}"
    );
    let _ = worker.stop().await;
    assert!(
        topics.values("dlq").await.is_empty(),
        "no record dead-lettered for a batch's failure"
    );
    assert!(
        topics
            .committed()
            .iter()
            .all(|offset| offset.unwrap_or(0) == 0),
        "nothing committed past the unwritten batch: {:?}",
        topics.committed()
    );
    let factory = SinkFactory::new(&topics, 0, limits(10, 200));
    let written = Arc::clone(&factory.written);
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts again");
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    assert_eq!(written.lock().concat(), values(25));
}

/// A write that failed may have reached the store after all (its answer
/// lost): the retry must write exactly the same records, or the store's
/// fence cannot tell its own earlier write from another writer's (the
/// chaos test's stats-counter stopped on such a grown batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_write_failed_takes_no_more_records_until_written() {
    let topics = Topics::create("rt-batch-sealed", 1).await;
    let all = records(10, &[]);
    topics.produce(&all[..5]).await;
    // Never full; the first write (the timer's) fails and is tried again
    // a second later, while the other five records arrive.
    let factory = SinkFactory::new(&topics, 1, limits(100, 200));
    let (written, attempts) = (Arc::clone(&factory.written), Arc::clone(&factory.attempts));
    let worker = adpipe_runtime::start(
        topics.settings("retry-initial-backoff = \"1s\"\nretry-max-backoff = \"1s\"\n"),
        factory,
    )
    .expect("starts");
    let failed = || attempts.lock().iter().any(|(_, ok)| !ok);
    for _ in 0..300 {
        if failed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed(), "the first write failed");
    topics.produce(&all[5..]).await;
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    let attempts = attempts.lock().clone();
    let first_failure = attempts.iter().position(|(_, ok)| !ok).expect("a failure");
    assert_eq!(
        attempts[first_failure + 1].0,
        attempts[first_failure].0,
        "the retry writes what the failed attempt did, nothing added: {attempts:?}"
    );
    assert_eq!(
        written.lock().concat(),
        values(10),
        "every record once, in order"
    );
}
