//! One task per input group and partition (or sub-partition by key): a
//! tokio task that owns its step and hands it records — in offset order
//! for a single input, in event-time order across several ([`crate::align`]).
//!
//! Contract:
//! - a record's outputs go to the producer with its ack token; the record is
//!   marked processed only after every output was handed over, so a panic,
//!   a revoke or a stop in between leaves it abandoned (read again), never done;
//! - a panic in the step is caught and logged with the record's coordinates,
//!   and stops the worker: nothing from that record on is committed;
//! - failures follow the worker's failure actions (retry with backoff,
//!   dead-letter, stop); a record cut off by the processing timeout is
//!   retried a bounded number of times, then dead-lettered;
//! - a revoke interrupts whatever the task waits on (a restore, a retry
//!   sleep, a full producer queue, a slow step); the drain then waits up to
//!   the revoke deadline for outputs in flight and tells the step whether
//!   everything it emitted was acknowledged (`drained`) — never when an
//!   output failed;
//! - heartbeats are consumed here (done at once; they advance an aligned
//!   input's watermark); timers set by the step fire here.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, Disposition, WriterSchema};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::ack::{AckToken, BatchAcks, Source};
use crate::align::{Aligner, Next};
use crate::batch::{Consumed, RecordBatch};
use crate::config::{FailureAction, WorkerSettings};
use crate::dead_letter::dead_letter_record;
use crate::event_time::now_ms;
use crate::headers::Headers;
use crate::heartbeat;
use crate::producer::{OutputProducer, SendError};
use crate::step::{
    Emitter, InputRecord, PROCESSING_TIMEOUT, Step, StepError, StepFactory, TaskAssignment, Timer,
    TimerClock,
};
use crate::telemetry::Metric;
use crate::timers::Timers;

/// A message to a task.
pub enum TaskMessage {
    /// Consecutive records of input `input`.
    Batch {
        /// Index of the input in the task's group.
        input: usize,
        /// The records.
        batch: Arc<RecordBatch>,
    },
    /// Whether the consumer's position in input `input` is at its end.
    CaughtUp {
        /// Index of the input.
        input: usize,
        /// At the end.
        caught_up: bool,
    },
    /// Stop: wait for outputs in flight (up to the deadline), let the step
    /// save its state, reply.
    Drain(oneshot::Sender<()>),
}

/// Stops the whole worker once something went wrong for good.
#[derive(Debug, Default)]
pub struct Stopper {
    stopped: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Stopper {
    /// Records the first reason and stops the worker.
    pub fn stop(&self, reason: String) {
        let mut first = self.reason.lock();
        if first.is_none() {
            error!(%reason, "worker stopping");
            *first = Some(reason);
        }
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether the worker must stop.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Why it stopped.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }
}

/// One input partition of a task, as the consumer shares it.
pub struct TaskInput {
    /// Topic, partition and offset tracker.
    pub source: Arc<Source>,
    /// Bytes queued for the partition (all its sub-partitions).
    pub queued_bytes: Arc<AtomicUsize>,
}

/// What a task shares with the consumer thread.
pub struct TaskLink {
    /// Its inputs, by index in the group; `None` when not assigned.
    pub inputs: Vec<Option<TaskInput>>,
    /// Turns true when the task's partitions are being revoked.
    pub revoked: watch::Receiver<bool>,
    /// The worker's stop switch.
    pub stopper: Arc<Stopper>,
}

/// Everything a task needs, shared by all tasks of a worker.
pub struct TaskEnv {
    /// Settings.
    pub settings: WorkerSettings,
    /// Output producer.
    pub producer: Arc<OutputProducer>,
    /// Codec, when the worker decodes values.
    pub codec: Option<Arc<Codec>>,
}

/// Metric handles of one task, resolved once: looking a labelled metric up
/// per record would allocate its labels on the hot path.
struct TaskMetrics {
    consumed: Vec<metrics::Counter>,
    late: Vec<metrics::Counter>,
    lateness: metrics::Histogram,
    processing: metrics::Histogram,
    event_lag: metrics::Histogram,
    state_entries: metrics::Gauge,
    state_bytes: metrics::Gauge,
    /// Counts attempts, to sample the histograms and gauges above.
    sample: u32,
}

impl Drop for TaskMetrics {
    /// The task's partition went (revoked, or the worker stopped): its
    /// state is no longer held here; the series stay, at 0.
    fn drop(&mut self) {
        self.state_entries.set(0.0);
        self.state_bytes.set(0.0);
    }
}

/// One processed record in this many feeds the processing-time and
/// event-lag histograms and the state gauges: their distributions and
/// levels stay right, and the hot path does not read the clock per record.
const METRICS_SAMPLE_EVERY: u32 = 16;

impl TaskMetrics {
    fn new(service: &str, assignment: &TaskAssignment) -> Self {
        let consumed = assignment
            .inputs
            .iter()
            .map(|topic| metrics::counter!(Metric::RecordsConsumed.name(), "service" => service.to_owned(), "topic" => topic.clone()))
            .collect();
        let late = assignment
            .inputs
            .iter()
            .map(|topic| metrics::counter!(Metric::LateRecords.name(), "service" => service.to_owned(), "topic" => topic.clone(), "reason" => "out_of_order"))
            .collect();
        let state_labels = [
            ("service", service.to_owned()),
            (
                "topic",
                assignment.inputs.first().cloned().unwrap_or_default(),
            ),
            ("partition", assignment.partition.to_string()),
            ("sub_partition", assignment.sub_partition.to_string()),
        ];
        TaskMetrics {
            consumed,
            late,
            lateness: metrics::histogram!(Metric::LatenessSeconds.name(), "service" => service.to_owned()),
            processing: metrics::histogram!(Metric::ProcessingSeconds.name(), "service" => service.to_owned()),
            event_lag: metrics::histogram!(Metric::EventLagSeconds.name(), "service" => service.to_owned()),
            state_entries: metrics::gauge!(Metric::StateEntries.name(), &state_labels),
            state_bytes: metrics::gauge!(Metric::StateBytes.name(), &state_labels),
            sample: 0,
        }
    }
}

/// A record waiting in an aligned task's queue.
struct Queued {
    input: usize,
    message: Consumed,
    acks: Arc<BatchAcks>,
}

/// How one attempt at a record ended.
enum Attempt {
    /// Processed and every output handed to the producer.
    Done,
    /// The step failed.
    Failed(StepError),
    /// A revoke or a stop cut it short: abandon the record.
    Interrupted,
}

/// What to do after a failure was handled.
enum AfterFailure {
    TryAgain,
    Finished,
}

/// A task's running state.
struct Task<S: Step> {
    env: Arc<TaskEnv>,
    link: TaskLink,
    assignment: TaskAssignment,
    step: Option<S>,
    emitter: Emitter,
    outputs_in_flight: Arc<AtomicUsize>,
    metrics: TaskMetrics,
    /// Present when the task has several inputs.
    aligner: Option<Aligner<Queued>>,
    /// When the aligner wants another look without a new message.
    aligned_wake: Option<Instant>,
    timers: Timers,
    /// Delay before a timer that failed transiently fires again (doubles
    /// per failure up to the maximum, reset by a timer that succeeds).
    timer_backoff: Duration,
    /// The task's event time: the latest event time handed to the step.
    event_clock_ms: Option<i64>,
    /// Outputs the step emitted were given up before reaching the producer
    /// (a revoke while they waited for queue space): the step's state may
    /// hold records whose outputs never left, so the task is not drained.
    outputs_given_up: bool,
}

/// Runs a task until it is drained or its channel closes.
pub async fn run_task<F: StepFactory>(
    env: Arc<TaskEnv>,
    factory: Arc<F>,
    assignment: TaskAssignment,
    link: TaskLink,
    mut inbox: mpsc::UnboundedReceiver<TaskMessage>,
) {
    let metrics = TaskMetrics::new(&env.settings.service, &assignment);
    let aligner = (assignment.inputs.len() > 1).then(|| {
        let assigned: Vec<bool> = link.inputs.iter().map(Option::is_some).collect();
        Aligner::new(&assigned, env.settings.max_idle, Instant::now())
    });
    let emitter = Emitter {
        policy: env.settings.event_time,
        ..Emitter::default()
    };
    let mut task: Task<F::Step> = Task {
        env,
        link,
        assignment,
        step: None,
        emitter,
        outputs_in_flight: Arc::new(AtomicUsize::new(0)),
        outputs_given_up: false,
        metrics,
        aligner,
        aligned_wake: None,
        timers: Timers::default(),
        timer_backoff: Duration::ZERO,
        event_clock_ms: None,
    };
    task.create_step(factory).await;
    loop {
        let wake = task.next_wake();
        let message = tokio::select! {
            message = inbox.recv() => message,
            () = sleep_until(wake) => {
                task.on_wake().await;
                continue;
            }
        };
        match message {
            None => {
                task.abandon_queued();
                return;
            }
            Some(TaskMessage::Drain(reply)) => {
                task.drain().await;
                let _ = reply.send(());
                return;
            }
            Some(TaskMessage::Batch { input, batch }) => {
                task.metrics.consumed[input].increment(batch.len() as u64);
                let Some(acks) = task.acks_for(input, &batch) else {
                    continue; // an input the task does not own: cannot happen
                };
                for index in 0..batch.len() {
                    task.on_record(input, RecordBatch::record(&batch, index), &acks)
                        .await;
                }
            }
            Some(TaskMessage::CaughtUp { input, caught_up }) => {
                if let Some(aligner) = &mut task.aligner {
                    aligner.set_caught_up(input, caught_up);
                }
                task.release_ready().await;
            }
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the task's partitions are being revoked.
async fn revoked(revoked: &mut watch::Receiver<bool>) {
    if revoked.wait_for(|revoked| *revoked).await.is_err() {
        std::future::pending::<()>().await; // the consumer is gone: the inbox closes
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl<S: Step> Task<S> {
    /// Creates the task's step. A transient failure (a broker's leader
    /// moving, a store restarting) is tried again with backoff until it
    /// succeeds or the partition is revoked — a worker must not stop
    /// because its first metadata request met an election; a poison or
    /// fatal one stops the worker.
    async fn create_step<F: StepFactory<Step = S>>(&mut self, factory: Arc<F>) {
        let label = format!(
            "{:?} partition {}",
            self.assignment.inputs, self.assignment.partition
        );
        let mut backoff = self.env.settings.retry_initial_backoff;
        loop {
            let assignment = self.assignment.clone();
            let factory = Arc::clone(&factory);
            let creating = tokio::task::spawn_blocking(move || factory.create(&assignment));
            tokio::select! {
                created = creating => match created {
                    Ok(Ok(step)) => {
                        self.step = Some(step);
                        return;
                    }
                    Ok(Err(error)) if error.disposition == Disposition::Transient => {
                        warn!(task = %label, kind = error.kind, error = %error.message, ?backoff, "creating the step failed; trying again");
                        metrics::counter!(Metric::Retries.name(), "service" => self.env.settings.service.clone(), "reason" => error.kind).increment(1);
                    }
                    Ok(Err(error)) => {
                        self.link.stopper.stop(format!("creating the step for {label}: {error}"));
                        return;
                    }
                    Err(join_error) => {
                        self.link.stopper.stop(format!("the step factory panicked for {label}: {join_error}"));
                        return;
                    }
                },
                () = revoked(&mut self.link.revoked) => {
                    // The restore goes on in the background; its result is dropped.
                    warn!(task = %label, "revoked while restoring state: giving the partition up");
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = revoked(&mut self.link.revoked) => {
                    warn!(task = %label, "revoked while waiting to create the step again");
                    return;
                }
            }
            backoff = (backoff * 2).min(self.env.settings.retry_max_backoff);
        }
    }

    /// Whether records must be abandoned instead of processed.
    fn skipping(&self) -> bool {
        self.step.is_none() || *self.link.revoked.borrow() || self.link.stopper.is_stopped()
    }

    fn input(&self, input: usize) -> Option<&TaskInput> {
        self.link.inputs.get(input).and_then(Option::as_ref)
    }

    fn release_bytes(&self, input: usize, bytes: usize) {
        if let Some(input) = self.input(input) {
            input.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// The acknowledgement slots of a batch of input `input`.
    fn acks_for(&self, input: usize, batch: &RecordBatch) -> Option<Arc<BatchAcks>> {
        self.input(input).map(|input| {
            BatchAcks::new(
                Arc::clone(&input.source),
                Arc::clone(&self.outputs_in_flight),
                batch.offsets(),
            )
        })
    }

    fn next_wake(&self) -> Option<Instant> {
        let timer = self.timers.next_wall_ms().map(|at_ms| {
            let wait = u64::try_from(at_ms.saturating_sub(now_ms())).unwrap_or(0);
            Instant::now() + Duration::from_millis(wait)
        });
        match (timer, self.aligned_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_wake(&mut self) {
        self.fire_timers(TimerClock::Wall, now_ms()).await;
        self.release_ready().await;
    }

    async fn on_record(&mut self, input: usize, message: Consumed, acks: &Arc<BatchAcks>) {
        let bytes = message.queued_bytes();
        if let Some(watermark) = heartbeat::watermark_of(message.payload(), message.headers()) {
            // Runtime business: done at once, never shown to the step.
            acks.token(message.index()).mark_processed();
            self.release_bytes(input, bytes);
            if let Some(aligner) = &mut self.aligner {
                aligner.heartbeat(input, watermark, Instant::now());
                self.release_ready().await;
            }
            return;
        }
        if self.aligner.is_none() {
            self.process(input, &message, acks, Alignment::default())
                .await;
            self.release_bytes(input, bytes);
            return;
        }
        match self.event_time_of(input, &message, acks).await {
            Some(event_time_ms) => {
                if let Some(aligner) = &mut self.aligner {
                    aligner.push(
                        input,
                        event_time_ms,
                        Queued {
                            input,
                            message,
                            acks: Arc::clone(acks),
                        },
                        Instant::now(),
                    );
                }
                self.release_ready().await;
            }
            None => self.release_bytes(input, bytes), // dead-lettered, stopped or abandoned
        }
    }

    /// Hands on every record the aligner lets go.
    async fn release_ready(&mut self) {
        loop {
            if self.skipping() {
                return; // the drain abandons what is queued
            }
            let next = match &mut self.aligner {
                Some(aligner) => aligner.next(Instant::now()),
                None => return,
            };
            match next {
                Next::Release {
                    input,
                    item,
                    event_time_ms,
                    lateness_ms,
                } => {
                    if let Some(lateness) = lateness_ms {
                        self.metrics.late[input].increment(1);
                        self.metrics.lateness.record(lateness as f64 / 1000.0);
                    }
                    let alignment = Alignment {
                        event_time_ms: Some(event_time_ms),
                        lateness_ms,
                    };
                    self.process(input, &item.message, &item.acks, alignment)
                        .await;
                    self.release_bytes(input, item.message.queued_bytes());
                    self.advance_event_clock(event_time_ms).await;
                }
                Next::Wait(until) => {
                    self.aligned_wake = until;
                    return;
                }
                Next::Empty => {
                    self.aligned_wake = None;
                    return;
                }
            }
        }
    }

    /// The event time an aligned task orders `message` by; `None` when the
    /// record was dead-lettered (bad time, undecodable) or abandoned.
    async fn event_time_of(
        &mut self,
        input: usize,
        message: &Consumed,
        acks: &Arc<BatchAcks>,
    ) -> Option<i64> {
        let token = acks.token(message.index());
        let mut backoff = self.env.settings.retry_initial_backoff;
        loop {
            if self.skipping() {
                token.abandon();
                return None;
            }
            let outcome = match resolve_writer(&self.env, message).await {
                Ok(writer) => {
                    let record = input_record(input, message, writer, Alignment::default());
                    match &self.step {
                        Some(step) => step.event_time(&record).and_then(|event_time_ms| {
                            self.env
                                .settings
                                .event_time
                                .check(event_time_ms, now_ms())
                                .map(|()| event_time_ms)
                        }),
                        None => Err(StepError::fatal("no_step", "the step was not created")),
                    }
                }
                Err(error) => Err(error),
            };
            match outcome {
                // Its token is dropped unmarked: the record is processed
                // (with a new token) when the aligner releases it.
                Ok(event_time_ms) => return Some(event_time_ms),
                Err(error) => {
                    match self
                        .after_failure(input, message, &token, error, 0, &mut backoff)
                        .await
                    {
                        AfterFailure::TryAgain => continue,
                        AfterFailure::Finished => return None,
                    }
                }
            }
        }
    }

    /// Processes one record to the end: done, dead-lettered, or abandoned.
    async fn process(
        &mut self,
        input: usize,
        message: &Consumed,
        acks: &Arc<BatchAcks>,
        alignment: Alignment,
    ) {
        let token = acks.token(message.index());
        if self.skipping() {
            token.abandon();
            return;
        }
        let mut backoff = self.env.settings.retry_initial_backoff;
        let mut timeouts = 0;
        loop {
            match self.attempt(input, message, alignment, &token).await {
                Attempt::Done => {
                    token.mark_processed();
                    return;
                }
                Attempt::Interrupted => {
                    token.abandon();
                    return;
                }
                Attempt::Failed(error) => {
                    if error.kind == PROCESSING_TIMEOUT {
                        timeouts += 1;
                    }
                    match self
                        .after_failure(input, message, &token, error, timeouts, &mut backoff)
                        .await
                    {
                        AfterFailure::TryAgain => {}
                        AfterFailure::Finished => return,
                    }
                }
            }
        }
    }

    /// One attempt: the step under the processing timeout, then its outputs.
    async fn attempt(
        &mut self,
        input: usize,
        message: &Consumed,
        alignment: Alignment,
        token: &AckToken,
    ) -> Attempt {
        let writer = match resolve_writer(&self.env, message).await {
            Ok(writer) => writer,
            Err(error) => return Attempt::Failed(error),
        };
        let record = input_record(input, message, writer, alignment);
        let processing_timeout = self.env.settings.processing_timeout;
        let Task {
            step,
            emitter,
            link,
            metrics,
            ..
        } = self;
        let Some(step) = step.as_mut() else {
            return Attempt::Interrupted;
        };
        emitter.clear();
        emitter.current = Some(token.clone());
        // Timing every record would read the clock twice per record for a
        // histogram: one record in `METRICS_SAMPLE_EVERY` is timed.
        metrics.sample = metrics.sample.wrapping_add(1);
        let sampled = metrics.sample % METRICS_SAMPLE_EVERY == 0;
        let started = sampled.then(Instant::now);
        // Dropping the step's future is how a slow attempt is cut off;
        // steps are cancel-safe by contract (see `Step`). Most steps finish
        // at the first poll: the timer (a clock read and a timer-wheel
        // entry) is armed only for one that has to wait.
        let outcome = {
            let mut processing =
                std::pin::pin!(AssertUnwindSafe(step.process(&record, emitter)).catch_unwind());
            let first_poll =
                std::future::poll_fn(|cx| Poll::Ready(processing.as_mut().poll(cx))).await;
            match first_poll {
                Poll::Ready(outcome) => Some(Ok(outcome)),
                Poll::Pending => tokio::select! {
                    outcome = tokio::time::timeout(processing_timeout, processing) => Some(outcome),
                    () = revoked(&mut link.revoked) => None,
                },
            }
        };
        let Some(outcome) = outcome else {
            emitter.current = None;
            return Attempt::Interrupted;
        };
        emitter.current = None;
        if let Some(started) = started {
            metrics.processing.record(started.elapsed().as_secs_f64());
        }
        match outcome {
            Err(_) => Attempt::Failed(StepError::transient(
                PROCESSING_TIMEOUT,
                format!("processing took longer than {processing_timeout:?}"),
            )),
            Ok(Err(panic)) => {
                self.on_panic(message, &panic_message(panic.as_ref()));
                Attempt::Interrupted
            }
            Ok(Ok(Err(error))) => {
                // Outputs emitted for held records before this one failed
                // (a batch written ahead of it) are theirs, not this
                // record's: they are sent whatever becomes of this one.
                self.emitter.emitted.retain(|output| output.held.is_some());
                if !self.emitter.emitted.is_empty() && !self.send_emitted(None).await {
                    return Attempt::Interrupted;
                }
                Attempt::Failed(error)
            }
            Ok(Ok(Ok(()))) => {
                let observed = self.emitter.event_time_ms;
                if sampled {
                    if let Some(event_time_ms) = observed {
                        let lag_ms = (now_ms() - event_time_ms).max(0);
                        self.metrics.event_lag.record(lag_ms as f64 / 1000.0);
                    }
                    if let Some(step) = &self.step {
                        self.metrics.state_entries.set(step.state_entries() as f64);
                        self.metrics.state_bytes.set(step.state_bytes() as f64);
                    }
                }
                for timer in self.emitter.timers.drain(..) {
                    self.timers.set(timer);
                }
                if !self.send_emitted(Some(token)).await {
                    return Attempt::Interrupted;
                }
                if self.aligner.is_none()
                    && let Some(event_time_ms) = observed
                {
                    self.advance_event_clock(event_time_ms).await;
                }
                Attempt::Done
            }
        }
    }

    /// A panicking step: the record stays abandoned, the worker stops.
    fn on_panic(&mut self, message: &Consumed, panic: &str) {
        metrics::counter!(Metric::StepPanics.name(), "service" => self.env.settings.service.clone())
            .increment(1);
        error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            panic,
            "the step panicked; the record is not done and the worker stops"
        );
        self.step = None; // its state may be half-changed: never use it again
        self.link.stopper.stop(format!(
            "the step panicked at {}-{} offset {}: {panic}",
            message.topic(),
            message.partition(),
            message.offset()
        ));
    }

    /// Carries out the failure action for `error`.
    async fn after_failure(
        &mut self,
        input: usize,
        message: &Consumed,
        token: &AckToken,
        error: StepError,
        timeouts: u32,
        backoff: &mut Duration,
    ) -> AfterFailure {
        let settings = &self.env.settings;
        match settings.action_for(&error, timeouts) {
            FailureAction::Retry => {
                if self.skipping() {
                    token.abandon();
                    return AfterFailure::Finished;
                }
                metrics::counter!(Metric::Retries.name(), "service" => settings.service.clone(), "reason" => error.kind).increment(1);
                warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), reason = error.kind, %error, ?backoff, "failed; retrying");
                let sleep = *backoff;
                *backoff = (*backoff * 2).min(settings.retry_max_backoff);
                tokio::select! {
                    () = tokio::time::sleep(sleep) => AfterFailure::TryAgain,
                    () = revoked(&mut self.link.revoked) => {
                        token.abandon();
                        AfterFailure::Finished
                    }
                }
            }
            FailureAction::DeadLetter => {
                metrics::counter!(Metric::DeadLettered.name(), "service" => settings.service.clone(), "topic" => message.topic().to_owned(), "reason" => error.kind).increment(1);
                warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), reason = error.kind, %error, "dead-lettered record");
                let dead = dead_letter_record(
                    settings,
                    &input_record(input, message, None, Alignment::default()),
                    &error,
                );
                self.emitter.clear();
                self.emitter.emitted.push(crate::step::Emitted {
                    record: dead,
                    held: None,
                });
                if self.send_emitted(Some(token)).await {
                    token.mark_processed();
                } else {
                    token.abandon();
                }
                AfterFailure::Finished
            }
            FailureAction::Stop => {
                token.abandon();
                self.link.stopper.stop(format!(
                    "{}-{} offset {}: {error}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                ));
                AfterFailure::Finished
            }
        }
    }

    /// Hands the emitter's outputs to the producer, each with its token
    /// (`current` unless it was emitted for a held record). Returns false
    /// when a revoke cut it short: every output not handed over abandons its
    /// record, so a held record released in the same step never counts as
    /// done without its output.
    async fn send_emitted(&mut self, current: Option<&AckToken>) -> bool {
        let mut emitted = std::mem::take(&mut self.emitter.emitted);
        let mut complete = true;
        let mut outputs = emitted.drain(..);
        while let Some(output) = outputs.next() {
            let token = output.held.as_ref().or(current);
            if !send_with_backpressure(
                &self.env.producer,
                output.record,
                token,
                &mut self.link.revoked,
            )
            .await
            {
                let unsent = std::iter::once(token.cloned()).chain(
                    outputs
                        .by_ref()
                        .map(|unsent| unsent.held.or(current.cloned())),
                );
                for token in unsent.flatten() {
                    token.abandon();
                }
                self.outputs_given_up = true;
                complete = false;
                break;
            }
        }
        drop(outputs);
        self.emitter.emitted = emitted; // keep the allocation
        complete
    }

    /// Moves the event-time clock and fires the event-time timers it passed.
    async fn advance_event_clock(&mut self, event_time_ms: i64) {
        if self
            .event_clock_ms
            .is_some_and(|clock| clock >= event_time_ms)
        {
            return;
        }
        self.event_clock_ms = Some(event_time_ms);
        self.fire_timers(TimerClock::Event, event_time_ms).await;
    }

    async fn fire_timers(&mut self, clock: TimerClock, now: i64) {
        for timer in self.timers.take_due(clock, now) {
            if self.skipping() {
                return;
            }
            let processing_timeout = self.env.settings.processing_timeout;
            let Task {
                step,
                emitter,
                link,
                ..
            } = self;
            let Some(step) = step.as_mut() else {
                return;
            };
            emitter.clear();
            // Like a record's attempt: cut off by the processing timeout and
            // by a revoke (steps are cancel-safe by contract).
            let outcome = {
                let firing = AssertUnwindSafe(step.on_timer(timer, emitter)).catch_unwind();
                tokio::select! {
                    outcome = tokio::time::timeout(processing_timeout, firing) => Some(outcome),
                    () = revoked(&mut link.revoked) => None,
                }
            };
            let Some(outcome) = outcome else {
                return; // revoked: what the step holds is abandoned
            };
            match outcome {
                Ok(Ok(Ok(()))) => {
                    self.timer_backoff = Duration::ZERO;
                    for timer in self.emitter.timers.drain(..) {
                        self.timers.set(timer);
                    }
                    if self.emitter.untracked {
                        warn!(
                            ?timer,
                            "a timer emitted outputs tracked by no record (use emit_held)"
                        );
                    }
                    self.send_emitted(None).await;
                }
                Err(_) => {
                    self.fire_again(timer, &format!("took longer than {processing_timeout:?}"))
                }
                Ok(Ok(Err(error))) if error.disposition == Disposition::Transient => {
                    self.fire_again(timer, &error.to_string());
                }
                Ok(Ok(Err(error))) => self.link.stopper.stop(format!("timer {timer:?}: {error}")),
                Ok(Err(panic)) => {
                    self.step = None;
                    self.link.stopper.stop(format!(
                        "the step panicked in timer {timer:?}: {}",
                        panic_message(panic.as_ref())
                    ));
                }
            }
        }
    }

    /// Sets a timer that failed transiently to fire again after the
    /// backoff, on the wall clock (an event-time timer could otherwise wait
    /// for events that never come).
    fn fire_again(&mut self, timer: Timer, why: &str) {
        let settings = &self.env.settings;
        self.timer_backoff = (self.timer_backoff * 2)
            .max(settings.retry_initial_backoff)
            .min(settings.retry_max_backoff);
        warn!(?timer, why, backoff = ?self.timer_backoff, "a timer failed; it fires again");
        self.timers.set(Timer {
            clock: TimerClock::Wall,
            at_ms: now_ms() + i64::try_from(self.timer_backoff.as_millis()).unwrap_or(i64::MAX),
            id: timer.id,
        });
    }

    /// Gives up the records an aligned task still queues (never done: the
    /// next owner reads them again).
    fn abandon_queued(&mut self) {
        let queued = self
            .aligner
            .as_mut()
            .map(Aligner::take_all)
            .unwrap_or_default();
        for item in queued {
            self.release_bytes(item.input, item.message.queued_bytes());
        }
    }

    /// Revoke or stop: queued records are abandoned; outputs in flight get
    /// until the revoke deadline; the step learns whether all were
    /// acknowledged and none failed.
    async fn drain(&mut self) {
        self.abandon_queued();
        let deadline = Instant::now() + self.env.settings.revoke_deadline;
        while self.outputs_in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let in_flight = self.outputs_in_flight.load(Ordering::Acquire);
        let failed: Vec<String> = self
            .link
            .inputs
            .iter()
            .flatten()
            .filter_map(|input| {
                input.source.tracker.lock().failed_at().map(|offset| {
                    format!(
                        "{}-{} offset {offset}",
                        input.source.topic, input.source.partition
                    )
                })
            })
            .collect();
        if !failed.is_empty() {
            error!(
                ?failed,
                "outputs were lost: the partition is not drained; commits stop before them"
            );
        } else if in_flight > 0 {
            warn!(in_flight, "outputs still in flight at the revoke deadline");
        } else if self.outputs_given_up {
            warn!("outputs the step emitted never reached the producer: not drained");
        }
        let drained = in_flight == 0 && failed.is_empty() && !self.outputs_given_up;
        if let Some(step) = self.step.as_mut() {
            let saved = std::panic::catch_unwind(AssertUnwindSafe(|| {
                blocking_allowed(|| step.on_revoke(drained));
            }));
            if let Err(panic) = saved {
                error!(panic = %panic_message(panic.as_ref()), "the step panicked on revoke");
            }
        }
    }
}

/// Runs `blocking` where it may block: inside `block_in_place` on a
/// multi-thread runtime (the services'), so the runtime's other tasks move
/// to another thread meanwhile; in place on a current-thread runtime (an
/// application embedding the runtime in its own), where `block_in_place`
/// panics — and a panic here would skip the step's revoke altogether.
fn blocking_allowed(blocking: impl FnOnce()) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let current_thread = Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if current_thread {
        blocking();
    } else {
        tokio::task::block_in_place(blocking);
    }
}

/// Where an aligned record stands in event time.
#[derive(Debug, Clone, Copy, Default)]
struct Alignment {
    event_time_ms: Option<i64>,
    lateness_ms: Option<i64>,
}

/// Headers of a record that has none.
static NO_HEADERS: Headers = Headers::new();

fn input_record(
    input: usize,
    message: &Consumed,
    writer: Option<Arc<WriterSchema>>,
    alignment: Alignment,
) -> InputRecord<'_> {
    InputRecord {
        topic: message.topic(),
        input,
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key(),
        value: message.payload(),
        headers: message.headers().unwrap_or(&NO_HEADERS),
        shared: Some(message.shared_buffer()),
        writer,
        lateness_ms: alignment.lateness_ms,
        event_time_ms: alignment.event_time_ms,
    }
}

async fn resolve_writer(
    env: &TaskEnv,
    record: &Consumed,
) -> Result<Option<Arc<WriterSchema>>, StepError> {
    let Some(codec) = &env.codec else {
        return Ok(None);
    };
    let (schema_id, _) = adpipe_codec::split_header(record.payload().unwrap_or_default())?;
    if let Some(writer) = codec.cached_writer_schema(schema_id) {
        return Ok(Some(writer));
    }
    match tokio::time::timeout(
        env.settings.processing_timeout,
        codec.writer_schema(schema_id),
    )
    .await
    {
        Ok(result) => Ok(Some(result?)),
        Err(_) => Err(StepError::transient(
            "registry_timeout",
            format!("schema {schema_id} lookup timed out"),
        )),
    }
}

/// Hands one output to the producer, waiting while its queue is full or
/// changelog follow-ups lag. False when a revoke came first.
async fn send_with_backpressure(
    producer: &OutputProducer,
    mut output: crate::step::OutputRecord,
    token: Option<&AckToken>,
    revoked_rx: &mut watch::Receiver<bool>,
) -> bool {
    // Changelog follow-ups first: the gap between an output and its
    // follow-up is what a crash re-emits, so it must stay short.
    while producer.followups_lagging() {
        if *revoked_rx.borrow() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        match producer.send(output, token) {
            Err(SendError::QueueFull(returned)) => {
                output = returned;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                    () = revoked(revoked_rx) => return false,
                }
            }
            Err(SendError::Failed(error)) => {
                error!(%error, "output could not be queued; the input will be read again after a restart");
                return true; // the token is failed: the worker stops at the next commit
            }
            Ok(()) => return true,
        }
    }
}
