//! The consumer thread: one `BaseConsumer` per worker, polled on its own
//! thread (avoiding StreamConsumer's wake-up stalls), dispatching records to
//! tasks, pausing and resuming partitions by queued bytes, and committing
//! done offsets.
//!
//! Contract:
//! - a task owns partition i of every topic of its input group (the eager
//!   `range` assignor gives partition i of equally partitioned topics to the
//!   same member); a task given only part of its inputs says so and waits;
//! - a committed offset is recorded only when the broker confirmed it; a
//!   failed periodic commit is sent again at the next tick; revokes and the
//!   final stop commit synchronously, retrying. Periodic commits are
//!   synchronous too, on a committer thread, because rust-rdkafka 0.39 never
//!   reports the result of an asynchronous one (rust-rdkafka #856): polling
//!   never waits for them, and a revoke waits for the one in flight so an
//!   older offset can never land after its newer one;
//! - on revoke (and at stop) the affected tasks are interrupted and drained
//!   within the revoke deadline, their done prefix — never past a failed or
//!   abandoned offset — is committed, and their trackers are dropped so late
//!   acknowledgements cannot commit (the fence);
//! - a task that outlives its revoke (a sink write still running past the
//!   deadline) lingers; when one of its partitions comes back to this
//!   worker, the new task — and the offsets the service stored for it — wait
//!   until the old one ended (up to [`LINGER_WAIT`], then it is aborted), so
//!   one worker never runs two tasks of a partition at once — and until the
//!   outputs the old one handed to the (shared) producer are settled
//!   (acknowledged or failed; up to [`LINGER_WAIT`]), so a new task that
//!   reads its output's tail to learn what was already emitted
//!   (`crate::emitted`) sees them;
//! - a lost output anywhere stops the worker at the next commit tick;
//! - librdkafka statistics give the lag gauge and tell aligned tasks which
//!   inputs are at their end (for `max-idle`);
//! - a partition whose service stores its own offsets
//!   ([`StepFactory::stored_offsets`]) starts at that offset, set in the
//!   assignment handed to librdkafka, never at the group's commit;
//! - records the broker deleted before they were read are counted and
//!   reported, and the commit moves past them even when no record follows
//!   (`crate::offset_reset`).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::{Partition, Statistics};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::ack::Source;
use crate::batch::BatchBuilder;
use crate::config::{QueueMarks, WorkerSettings};
use crate::offset_reset::{OffsetReset, deleted_counter, report_deleted};
use crate::offsets::OffsetTracker;
use crate::step::{AssignedPartition, StepFactory, TaskAssignment};
use crate::task::{Stopper, TaskEnv, TaskInput, TaskLink, TaskMessage, run_task};
use crate::telemetry::{Health, Metric};

/// Fixed per-record overhead counted against the queue, besides key and value.
const RECORD_OVERHEAD_BYTES: usize = 128;
/// How often paused partitions are checked for resumption (and queue gauges
/// updated): often enough for hysteresis to react, not once per record.
const RESUME_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// Synchronous commits at revoke and stop are tried this often.
const SYNC_COMMIT_ATTEMPTS: usize = 3;
/// How long a partition coming back waits for its previous task, still
/// finishing after its revoke, before that task is aborted.
const LINGER_WAIT: Duration = Duration::from_secs(60);
/// Extra time, beyond the revoke deadline, a drain may take to reply.
const DRAIN_REPLY_GRACE: Duration = Duration::from_secs(5);
/// How long a poll waits when nothing is ready.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long reading the group's committed offsets may block a rebalance.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// Records taken from librdkafka's queue before the batches are handed
/// over (they are handed over sooner whenever the queue runs dry): bounds
/// the latency batching adds, while a backlog goes over in large batches.
const MAX_RECORDS_PER_HANDOVER: usize = 2048;

/// A task: partition `partition` of input group `group`.
type TaskKey = (usize, i32);

/// One assigned topic-partition.
struct Slot {
    source: Arc<Source>,
    queued_bytes: Arc<AtomicUsize>,
    task: TaskKey,
    input: usize,
    paused: bool,
    /// Last offset the broker confirmed as committed.
    committed: Option<i64>,
    /// One past the last offset dispatched.
    next_offset: Option<i64>,
    caught_up: bool,
    /// The offset a fetch failed at "out of range", until the records the
    /// broker deleted from there are counted (`crate::offset_reset`).
    reset_at: Option<i64>,
    /// Records taken but not yet handed to the task, by sub-partition.
    pending: Vec<BatchBuilder>,
}

impl Slot {
    /// Where the records deleted unread from `at` begin: not below what
    /// this assignment already took, nor below the group's commit (a
    /// service that stores its own offsets may start below it, and what
    /// lies between was counted by whoever committed past it).
    fn deleted_from(&self, at: i64) -> i64 {
        at.max(self.next_offset.unwrap_or(at))
            .max(self.committed.unwrap_or(at))
    }

    /// A record at or past a pending reset: the offsets before it (and
    /// after what was taken) were deleted unread.
    fn settle_reset_at_record(&mut self, offset: i64) -> Option<(i64, i64)> {
        let at = self.reset_at.filter(|at| offset >= *at)?;
        self.reset_at = None;
        Some((self.deleted_from(at), offset))
    }

    /// A pending reset with no record after it yet, as the statistics show
    /// it: once everything before the failed offset was taken and the fetch
    /// stands at the new log start, the commit moves there — one done
    /// offset standing for the deleted range — or the deleted records
    /// would show as lag for ever. Returns the range deleted.
    fn settle_reset_from_stats(&mut self, stats: &Partition) -> Option<(i64, i64)> {
        let at = self.reset_at?;
        // `active`: librdkafka's name of the fetching state
        // (`rd_kafka_fetch_states`), reached once the reset is done.
        if stats.fetch_state != "active" {
            return None;
        }
        if stats.hi_offset >= 0 && stats.hi_offset < at {
            // The log now ends below the failed offset (the topic was
            // recreated or truncated): nothing was deleted unread.
            self.reset_at = None;
            return None;
        }
        let start = stats.lo_offset;
        if start <= at || stats.next_offset != start {
            return None; // not past a deletion, or records after it come
        }
        // Records fetched before the reset may still wait in librdkafka's
        // queue (its events outrank records): committing past them would
        // lose them. Before any record of this assignment, only a start at
        // the failed offset or an empty queue rules them out.
        let taken_all = match self.next_offset {
            Some(next) => next >= at,
            None => at == stats.committed_offset || stats.fetchq_cnt == 0,
        };
        if !taken_all {
            return None;
        }
        self.reset_at = None;
        let from = self.deleted_from(at).max(stats.committed_offset);
        let mut tracker = self.source.tracker.lock();
        if !tracker.register(start - 1) {
            return None; // a record past it was taken, and settled it
        }
        tracker.complete(start - 1);
        drop(tracker);
        self.next_offset = Some(start);
        Some((from, start))
    }

    /// Hands the records taken so far to the task's actors.
    fn hand_over(&mut self, task: Option<&TaskHandle>) {
        for (sub_partition, builder) in self.pending.iter_mut().enumerate() {
            if builder.is_empty() {
                continue;
            }
            let batch = builder.finish();
            let sender = task.and_then(|task| task.senders.get(sub_partition));
            let bytes = batch.queued_bytes();
            let message = TaskMessage::Batch {
                input: self.input,
                batch,
            };
            if sender.is_none_or(|sender| sender.send(message).is_err()) {
                // The task is gone (revoked): the records stay undone.
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
        }
    }
}

/// The actors of one task (one per sub-partition).
struct TaskHandle {
    senders: Vec<mpsc::UnboundedSender<TaskMessage>>,
    revoke: watch::Sender<bool>,
    /// One per sub-partition: done when its task has ended.
    running: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Assignment {
    /// By topic, then partition; keyed by `Box<str>` so a record's topic
    /// finds its slot without allocating.
    slots: HashMap<Box<str>, HashMap<i32, Slot>>,
    tasks: HashMap<TaskKey, TaskHandle>,
    /// Each partition's queue marks for the partitions now assigned
    /// (`WorkerSettings::queue_marks`), set whenever `slots` changes.
    marks: QueueMarks,
}

impl Assignment {
    fn slot_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Slot> {
        self.slots.get_mut(topic)?.get_mut(&partition)
    }

    fn slot_count(&self) -> usize {
        self.slots.values().map(HashMap::len).sum()
    }

    /// Sets `marks` for the partitions now assigned.
    fn share_queues(&mut self, settings: &WorkerSettings) {
        self.marks = settings.queue_marks(self.slot_count());
    }
}

/// State shared by the consumer thread and its callbacks.
pub struct WorkerContext<F: StepFactory> {
    env: Arc<TaskEnv>,
    factory: Arc<F>,
    runtime: tokio::runtime::Handle,
    assignment: Mutex<Assignment>,
    /// topic → (input group, index in the group)
    routes: HashMap<String, (usize, usize)>,
    stopper: Arc<Stopper>,
    health: Arc<Health>,
    /// Held while a commit is in flight (see the module's contract).
    commit_lock: Mutex<()>,
    /// Tasks revoked but still running (see the module's contract).
    lingering: Mutex<HashMap<TaskKey, Vec<tokio::task::JoinHandle<()>>>>,
    /// Revoked partitions' sources, alive while an output of their records
    /// is still in the producer (its acknowledgement token holds it).
    settling: Mutex<HashMap<TaskKey, Vec<Weak<Source>>>>,
    /// Out-of-range resets librdkafka logged, not yet given to their slots.
    /// Log lines arrive through any poll (rust-rdkafka sets `log.queue`),
    /// so `log` takes only this lock, never `assignment`.
    offset_resets: Mutex<Vec<OffsetReset>>,
    /// Set after a push to `offset_resets`, so the poll thread looks only then.
    resets_pending: AtomicBool,
    /// The group's commits read at an assignment by a service that stores
    /// its own offsets, until its slots are made (their `committed`).
    group_commits: Mutex<HashMap<(String, i32), i64>>,
}

impl<F: StepFactory> ClientContext for WorkerContext<F> {
    /// librdkafka's log lines go where rust-rdkafka's default sends them
    /// (`tracing`, with its `tracing` feature); an out-of-range reset is
    /// also kept for its slot.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        DefaultClientContext.log(level, facility, message);
        if let Some(reset) = OffsetReset::parse(facility, message) {
            self.offset_resets.lock().push(reset);
            self.resets_pending.store(true, Ordering::Release);
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut assignment = self.assignment.lock();
        let Assignment { slots, tasks, .. } = &mut *assignment;
        self.give_offset_resets(slots);
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                if *partition < 0 {
                    continue;
                }
                // Only partitions this instance owns: librdkafka keeps
                // reporting a revoked one, and its lag belongs to its new
                // owner (set to 0 here on revoke).
                let Some(slot) = slots
                    .get_mut(topic_name.as_str())
                    .and_then(|partitions| partitions.get_mut(partition))
                else {
                    continue;
                };
                if let Some((from, to)) = slot.settle_reset_from_stats(stats) {
                    report_deleted(&self.env.settings.service, topic_name, *partition, from, to);
                }
                if stats.consumer_lag >= 0 {
                    partition_gauge(Metric::ConsumerLag, topic_name, *partition)
                        .set(stats.consumer_lag as f64);
                }
                // read_committed: the end a consumer can reach is the last
                // stable offset.
                let end = stats.ls_offset;
                let position = slot.next_offset.unwrap_or(stats.next_offset);
                let caught_up = end >= 0 && position >= end;
                if caught_up != slot.caught_up {
                    slot.caught_up = caught_up;
                    // Records taken reach the task before the news that
                    // there are no more.
                    slot.hand_over(tasks.get(&slot.task));
                    if let Some(task) = tasks.get(&slot.task) {
                        for sender in &task.senders {
                            let _ = sender.send(TaskMessage::CaughtUp {
                                input: slot.input,
                                caught_up,
                            });
                        }
                    }
                }
            }
        }
    }
}

impl<F: StepFactory> ConsumerContext for WorkerContext<F> {
    /// rust-rdkafka's own handler (pre-rebalance, assign or unassign,
    /// post-rebalance) with one step added: before an assign, partitions
    /// whose service stores its offsets get them in the list librdkafka
    /// assigns, so fetching starts there.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_at_stored_offsets(consumer, partitions);
                Rebalance::Assign(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match &rebalance {
            Rebalance::Assign(partitions) if cooperative => consumer.incremental_assign(partitions),
            Rebalance::Assign(partitions) => consumer.assign(partitions),
            Rebalance::Revoke(partitions) if cooperative => {
                consumer.incremental_unassign(partitions)
            }
            _ => consumer.unassign(),
        };
        if let Err(error) = done {
            error!(%error, "applying the rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            metrics::counter!(Metric::Rebalances.name(), "service" => self.env.settings.service.clone(), "kind" => "revoke").increment(1);
            let keys: Vec<(String, i32)> = partitions
                .elements()
                .iter()
                .map(|element| (element.topic().to_owned(), element.partition()))
                .collect();
            info!(
                partitions = keys.len(),
                "partitions revoked: draining and committing"
            );
            self.drain_and_commit(consumer, &keys);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                // librdkafka can keep a partition paused across an eager
                // rebalance that hands it back to us, while our new slot
                // starts unpaused and would never resume it: start clean.
                if let Err(error) = consumer.resume(partitions) {
                    warn!(%error, "resuming newly assigned partitions failed");
                }
                metrics::counter!(Metric::Rebalances.name(), "service" => self.env.settings.service.clone(), "kind" => "assign").increment(1);
                let assigned: Vec<(String, i32)> = partitions
                    .elements()
                    .iter()
                    .map(|element| (element.topic().to_owned(), element.partition()))
                    .collect();
                self.assign(&assigned);
                let count = self.assignment.lock().slot_count();
                metrics::gauge!(Metric::AssignedPartitions.name()).set(count as f64);
                info!(assigned = count, "partitions assigned");
                self.health.ready.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => warn!(%error, "rebalance error"),
        }
    }
}

impl<F: StepFactory> WorkerContext<F> {
    /// Context for a new consumer.
    pub fn new(
        env: Arc<TaskEnv>,
        factory: Arc<F>,
        runtime: tokio::runtime::Handle,
        stopper: Arc<Stopper>,
        health: Arc<Health>,
    ) -> Self {
        let routes = env
            .settings
            .input_groups
            .iter()
            .enumerate()
            .flat_map(|(group, topics)| {
                topics
                    .iter()
                    .enumerate()
                    .map(move |(input, topic)| (topic.clone(), (group, input)))
            })
            .collect();
        // Counters of faults start at 0, so a panel shows 0 rather than no
        // data and `increase()` sees the first one (a series born at 1
        // has no increase).
        let service = env.settings.service.clone();
        for fault in [Metric::CommitFailures, Metric::StepPanics] {
            metrics::counter!(fault.name(), "service" => service.clone()).increment(0);
        }
        WorkerContext {
            env,
            factory,
            runtime,
            assignment: Mutex::new(Assignment::default()),
            routes,
            stopper,
            health,
            commit_lock: Mutex::new(()),
            lingering: Mutex::new(HashMap::new()),
            settling: Mutex::new(HashMap::new()),
            offset_resets: Mutex::new(Vec::new()),
            resets_pending: AtomicBool::new(false),
            group_commits: Mutex::new(HashMap::new()),
        }
    }

    /// Gives the out-of-range resets librdkafka logged to their slots (the
    /// earliest offset wins); a reset of a partition no longer owned is
    /// its new owner's to see.
    fn give_offset_resets(&self, slots: &mut HashMap<Box<str>, HashMap<i32, Slot>>) {
        // A plain load first: this runs for every record.
        if !self.resets_pending.load(Ordering::Acquire)
            || !self.resets_pending.swap(false, Ordering::AcqRel)
        {
            return;
        }
        for reset in self.offset_resets.lock().drain(..) {
            if let Some(slot) = slots
                .get_mut(reset.topic.as_str())
                .and_then(|partitions| partitions.get_mut(&reset.partition))
            {
                slot.reset_at = Some(slot.reset_at.map_or(reset.at, |at| at.min(reset.at)));
            }
        }
    }

    /// Waits until no task revoked earlier still runs for any of
    /// `partitions` (aborting one that takes over [`LINGER_WAIT`]).
    fn wait_for_lingering<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let keys: Vec<TaskKey> = partitions
            .into_iter()
            .filter_map(|(topic, partition)| {
                self.routes.get(topic).map(|&(group, _)| (group, partition))
            })
            .collect();
        let handles: Vec<(TaskKey, tokio::task::JoinHandle<()>)> = {
            let mut lingering = self.lingering.lock();
            lingering.retain(|_, handles| {
                handles.retain(|handle| !handle.is_finished());
                !handles.is_empty()
            });
            keys.iter()
                .filter_map(|key| lingering.remove(key).map(|handles| (*key, handles)))
                .flat_map(|(key, handles)| handles.into_iter().map(move |handle| (key, handle)))
                .collect()
        };
        if handles.is_empty() {
            self.wait_for_settling(&keys);
            return;
        }
        warn!(
            tasks = handles.len(),
            "partitions came back while their previous tasks still finish; waiting for those"
        );
        self.runtime.block_on(async {
            for ((group, partition), mut handle) in handles {
                if tokio::time::timeout(LINGER_WAIT, &mut handle)
                    .await
                    .is_err()
                {
                    error!(
                        group,
                        partition,
                        ?LINGER_WAIT,
                        "a revoked task did not end; aborting it"
                    );
                    handle.abort();
                    let _ = handle.await;
                }
            }
        });
        self.wait_for_settling(&keys);
    }

    /// Waits until the outputs that tasks revoked earlier for `keys` handed
    /// to the producer are settled (up to [`LINGER_WAIT`]; then a warning:
    /// the new task may emit some of them again — never lose them).
    fn wait_for_settling(&self, keys: &[TaskKey]) {
        let sources: Vec<Weak<Source>> = {
            let mut settling = self.settling.lock();
            settling.retain(|_, sources| {
                sources.retain(|source| source.strong_count() > 0);
                !sources.is_empty()
            });
            keys.iter()
                .filter_map(|key| settling.remove(key))
                .flatten()
                .collect()
        };
        if sources.is_empty() {
            return;
        }
        let unsettled = || {
            sources
                .iter()
                .filter(|source| source.strong_count() > 0)
                .count()
        };
        info!(
            partitions = sources.len(),
            "partitions came back while outputs of their previous tasks are still in the producer; waiting for those"
        );
        let deadline = Instant::now() + LINGER_WAIT;
        while unsettled() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = unsettled();
        if left > 0 {
            warn!(
                partitions = left,
                ?LINGER_WAIT,
                "outputs of revoked tasks still unsettled; the new tasks may emit some of them again"
            );
        }
    }

    /// Sets, in the list about to be assigned, the offsets the service
    /// stored for its partitions; stops the worker when it cannot tell them.
    fn start_at_stored_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &mut TopicPartitionList,
    ) {
        if !F::STORES_OFFSETS {
            return;
        }
        // What a previous task of these partitions still writes is stored
        // before the offsets are read.
        self.wait_for_lingering(
            partitions
                .elements()
                .iter()
                .map(|element| (element.topic(), element.partition())),
        );
        let committed = match consumer.committed_offsets(partitions.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                self.stopper.stop(format!(
                    "cannot read the group's committed offsets for the assignment: {error}"
                ));
                return;
            }
        };
        let assigned: Vec<AssignedPartition> = partitions
            .elements()
            .iter()
            .map(|element| AssignedPartition {
                topic: element.topic().to_owned(),
                partition: element.partition(),
                committed: committed
                    .find_partition(element.topic(), element.partition())
                    .and_then(|found| match found.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    }),
            })
            .collect();
        match self.factory.stored_offsets(&assigned) {
            Ok(stored) => {
                // Stored offsets ahead of the group's commit: what the store
                // holds is done, so the group learns it now — else a
                // partition whose every record is already stored would show
                // a lag forever (nothing left to process, nothing to commit).
                let mut ahead = TopicPartitionList::new();
                for (topic, partition, offset) in stored {
                    match partitions.set_partition_offset(&topic, partition, Offset::Offset(offset))
                    {
                        Ok(()) => info!(
                            topic,
                            partition, offset, "starting at the offset the service stored"
                        ),
                        Err(error) => {
                            warn!(topic, partition, %error, "cannot start at the stored offset");
                            continue;
                        }
                    }
                    let behind = assigned
                        .iter()
                        .find(|a| a.topic == topic && a.partition == partition)
                        .is_some_and(|a| a.committed.is_none_or(|committed| committed < offset));
                    if behind {
                        let _ =
                            ahead.add_partition_offset(&topic, partition, Offset::Offset(offset));
                    }
                }
                // The floor of a deleted range (`Slot::deleted_from`); a
                // commit of the stored offsets below cannot raise it past
                // where the partition starts.
                let mut group_commits = self.group_commits.lock();
                for partition in &assigned {
                    if let Some(committed) = partition.committed {
                        group_commits
                            .insert((partition.topic.clone(), partition.partition), committed);
                    }
                }
                drop(group_commits);
                if ahead.count() > 0
                    && let Err(error) = consumer.commit(&ahead, CommitMode::Sync)
                {
                    warn!(%error, "cannot commit the stored offsets now; the group stays behind them until later records are processed");
                }
            }
            Err(error) => self.stopper.stop(format!(
                "cannot read the offsets the service stored ({}: {}); not resuming from a guess",
                error.kind, error.message
            )),
        }
    }

    /// Creates slots for newly assigned partitions and a task for every
    /// (group, partition) among them.
    fn assign(&self, partitions: &[(String, i32)]) {
        self.wait_for_lingering(
            partitions
                .iter()
                .map(|(topic, partition)| (topic.as_str(), *partition)),
        );
        let settings = &self.env.settings;
        let sub_partitions = settings.sub_partitions.get();
        let mut by_task: HashMap<TaskKey, Vec<(usize, &str)>> = HashMap::new();
        for (topic, partition) in partitions {
            match self.routes.get(topic) {
                Some(&(group, input)) => by_task
                    .entry((group, *partition))
                    .or_default()
                    .push((input, topic)),
                None => warn!(topic, "assigned a topic no input group reads; ignoring it"),
            }
        }
        let mut assignment = self.assignment.lock();
        let mut incomplete = 0;
        for ((group, partition), inputs) in by_task {
            let topics = &settings.input_groups[group];
            let mut task_inputs: Vec<Option<TaskInput>> = (0..topics.len()).map(|_| None).collect();
            for (input, topic) in inputs {
                let source = Arc::new(Source {
                    topic: Arc::from(topic),
                    partition,
                    tracker: Arc::new(Mutex::new(OffsetTracker::new())),
                });
                let queued_bytes = Arc::new(AtomicUsize::new(0));
                partition_gauge(Metric::PartitionAssigned, topic, partition).set(1.0);
                deleted_counter(&settings.service, topic, partition).increment(0);
                assignment.slots.entry(topic.into()).or_default().insert(
                    partition,
                    Slot {
                        source: Arc::clone(&source),
                        queued_bytes: Arc::clone(&queued_bytes),
                        task: (group, partition),
                        input,
                        paused: false,
                        committed: self
                            .group_commits
                            .lock()
                            .remove(&(topic.to_owned(), partition)),
                        next_offset: None,
                        caught_up: false,
                        reset_at: None,
                        pending: (0..sub_partitions)
                            .map(|_| BatchBuilder::new(Arc::clone(&source.topic), partition))
                            .collect(),
                    },
                );
                task_inputs[input] = Some(TaskInput {
                    source,
                    queued_bytes,
                });
            }
            let missing: Vec<&String> = topics
                .iter()
                .zip(&task_inputs)
                .filter(|(_, input)| input.is_none())
                .map(|(topic, _)| topic)
                .collect();
            if !missing.is_empty() {
                incomplete += 1;
                warn!(
                    partition,
                    ?missing,
                    "a task was given only part of its inputs (are they co-partitioned?); it waits for the rest"
                );
            }
            let handle = self.spawn_task(group, partition, task_inputs);
            assignment.tasks.insert((group, partition), handle);
        }
        assignment.share_queues(settings);
        metrics::gauge!(Metric::IncompleteTasks.name(), "service" => settings.service.clone())
            .set(f64::from(incomplete));
    }

    fn spawn_task(
        &self,
        group: usize,
        partition: i32,
        inputs: Vec<Option<TaskInput>>,
    ) -> TaskHandle {
        let settings = &self.env.settings;
        let sub_partitions = settings.sub_partitions.get();
        let (revoke, revoked) = watch::channel(false);
        let mut senders = Vec::with_capacity(usize::from(sub_partitions));
        let mut running = Vec::with_capacity(usize::from(sub_partitions));
        for sub_partition in 0..sub_partitions {
            let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
            let assignment = TaskAssignment {
                group,
                inputs: settings.input_groups[group].clone(),
                partition,
                sub_partition,
                sub_partitions,
            };
            let link = TaskLink {
                inputs: inputs
                    .iter()
                    .map(|input| {
                        input.as_ref().map(|input| TaskInput {
                            source: Arc::clone(&input.source),
                            queued_bytes: Arc::clone(&input.queued_bytes),
                        })
                    })
                    .collect(),
                revoked: revoked.clone(),
                stopper: Arc::clone(&self.stopper),
            };
            running.push(self.runtime.spawn(run_task(
                Arc::clone(&self.env),
                Arc::clone(&self.factory),
                assignment,
                link,
                inbox_rx,
            )));
            senders.push(inbox_tx);
        }
        TaskHandle {
            senders,
            revoke,
            running,
        }
    }

    /// Drains the tasks that own any of `partitions` (a task is drained
    /// whole), commits their done prefix synchronously and forgets them.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, partitions: &[(String, i32)]) {
        let (tasks, slots) = {
            let mut assignment = self.assignment.lock();
            let mut keys: Vec<TaskKey> = partitions
                .iter()
                .filter_map(|(topic, partition)| {
                    assignment.slot_mut(topic, *partition).map(|slot| slot.task)
                })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            let tasks: Vec<(TaskKey, TaskHandle)> = keys
                .iter()
                .filter_map(|key| assignment.tasks.remove(key).map(|task| (*key, task)))
                .collect();
            let mut slots = Vec::new();
            for partitions in assignment.slots.values_mut() {
                let revoked: Vec<i32> = partitions
                    .iter()
                    .filter(|(_, slot)| keys.contains(&slot.task))
                    .map(|(partition, _)| *partition)
                    .collect();
                slots.extend(
                    revoked
                        .iter()
                        .filter_map(|partition| partitions.remove(partition)),
                );
            }
            assignment
                .slots
                .retain(|_, partitions| !partitions.is_empty());
            assignment.share_queues(&self.env.settings);
            (tasks, slots)
        };
        // Interrupt what the tasks wait on, then ask each to drain.
        let (keys_of_tasks, tasks): (Vec<TaskKey>, Vec<TaskHandle>) = tasks.into_iter().unzip();
        let mut replies = Vec::new();
        for task in &tasks {
            let _ = task.revoke.send(true);
            for sender in &task.senders {
                let (reply_tx, reply_rx) = oneshot::channel();
                if sender.send(TaskMessage::Drain(reply_tx)).is_ok() {
                    replies.push(reply_rx);
                }
            }
        }
        let wait = self.env.settings.revoke_deadline + DRAIN_REPLY_GRACE;
        let drained = self.runtime.block_on(async {
            tokio::time::timeout(wait, futures::future::join_all(replies)).await
        });
        if drained.is_err() {
            error!(
                ?wait,
                "tasks did not finish draining in time; committing what is done"
            );
        }
        {
            let mut settling = self.settling.lock();
            for slot in &slots {
                settling
                    .entry(slot.task)
                    .or_default()
                    .push(Arc::downgrade(&slot.source));
            }
        }
        {
            let mut lingering = self.lingering.lock();
            for (key, task) in keys_of_tasks.iter().zip(tasks) {
                let still: Vec<_> = task
                    .running
                    .into_iter()
                    .filter(|handle| !handle.is_finished())
                    .collect();
                if !still.is_empty() {
                    lingering.entry(*key).or_default().extend(still);
                }
            }
        }
        let mut offsets = TopicPartitionList::new();
        for slot in &slots {
            if let Some(next) = slot.source.tracker.lock().committable()
                && Some(next) != slot.committed
            {
                let _ = offsets.add_partition_offset(
                    &slot.source.topic,
                    slot.source.partition,
                    Offset::Offset(next),
                );
            }
        }
        self.commit_sync(consumer, &offsets);
        // Series stay (no idle timeout: a gauge set only on change would
        // vanish); a revoked partition's read 0 here, its owner's count.
        for slot in &slots {
            let (topic, partition) = (&slot.source.topic, slot.source.partition);
            for metric in [
                Metric::PartitionAssigned,
                Metric::ConsumerLag,
                Metric::QueueBytes,
            ] {
                partition_gauge(metric, topic, partition).set(0.0);
            }
        }
        let assigned = self.assignment.lock().slot_count();
        metrics::gauge!(Metric::AssignedPartitions.name()).set(assigned as f64);
    }

    /// Records the broker's answer to a periodic commit: only a confirmed
    /// offset counts as committed; a failed one is sent again next tick.
    fn record_commit(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let mut assignment = self.assignment.lock();
                for element in offsets.elements() {
                    if let (Offset::Offset(offset), Some(slot)) = (
                        element.offset(),
                        assignment.slot_mut(element.topic(), element.partition()),
                    ) && slot.committed.is_none_or(|committed| committed < offset)
                    {
                        slot.committed = Some(offset);
                    }
                }
                metrics::counter!(Metric::Commits.name(), "service" => self.env.settings.service.clone()).increment(1);
            }
            Err(error) => {
                metrics::counter!(Metric::CommitFailures.name(), "service" => self.env.settings.service.clone()).increment(1);
                warn!(%error, "offset commit failed; retrying at the next tick");
            }
        }
    }

    /// Commits synchronously, retrying a few times: a revoke or stop must
    /// not lose the progress made since the last periodic commit.
    fn commit_sync(&self, consumer: &BaseConsumer<Self>, offsets: &TopicPartitionList) {
        if offsets.count() == 0 {
            return;
        }
        // After any periodic commit in flight, never before it.
        let _in_order = self.commit_lock.lock();
        for attempt in 1..=SYNC_COMMIT_ATTEMPTS {
            match consumer.commit(offsets, CommitMode::Sync) {
                Ok(()) => {
                    metrics::counter!(Metric::Commits.name(), "service" => self.env.settings.service.clone()).increment(1);
                    return;
                }
                Err(error) => {
                    metrics::counter!(Metric::CommitFailures.name(), "service" => self.env.settings.service.clone()).increment(1);
                    warn!(%error, attempt, "synchronous commit failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        error!(
            "commit failed {SYNC_COMMIT_ATTEMPTS} times; the next owner re-processes from the last commit"
        );
    }

    /// Takes a record for its task (handed over in a batch by
    /// [`Self::hand_over_all`], or now when the batch is full); pauses the
    /// partition above the high mark.
    fn dispatch(
        &self,
        consumer: &BaseConsumer<Self>,
        message: rdkafka::message::BorrowedMessage<'_>,
    ) {
        let mut assignment = self.assignment.lock();
        let Assignment {
            slots,
            tasks,
            marks,
        } = &mut *assignment;
        // Before the record: librdkafka logs a reset while it holds the
        // partition's lock (no fetch from the new start begins before), and
        // its log event outranks records in the queue: the first record
        // after a reset always finds it given.
        self.give_offset_resets(slots);
        let Some(slot) = slots
            .get_mut(message.topic())
            .and_then(|partitions| partitions.get_mut(&message.partition()))
        else {
            return;
        };
        if !slot.source.tracker.lock().register(message.offset()) {
            return; // redelivered below what we already track
        }
        if let Some((from, to)) = slot.settle_reset_at_record(message.offset()) {
            report_deleted(
                &self.env.settings.service,
                message.topic(),
                message.partition(),
                from,
                to,
            );
        }
        slot.next_offset = Some(message.offset() + 1);
        let bytes =
            RECORD_OVERHEAD_BYTES + message.payload_len() + message.key().map_or(0, <[u8]>::len);
        let queued = slot.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let sub_partition = match (slot.pending.len(), message.key()) {
            (1, _) | (_, None) => 0,
            (count, Some(key)) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % count as u64) as usize
            }
        };
        let Some(builder) = slot.pending.get_mut(sub_partition) else {
            slot.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return;
        };
        builder.push(&message, bytes);
        if builder.is_full() {
            slot.hand_over(tasks.get(&slot.task));
        }
        if queued > marks.high && !slot.paused {
            let mut partition = TopicPartitionList::new();
            partition.add_partition(message.topic(), message.partition());
            match consumer.pause(&partition) {
                Ok(()) => slot.paused = true,
                Err(error) => warn!(%error, "pause failed"),
            }
        }
    }

    /// Hands every record taken so far to its task.
    fn hand_over_all(&self) {
        let mut assignment = self.assignment.lock();
        let Assignment { slots, tasks, .. } = &mut *assignment;
        for slot in slots.values_mut().flat_map(HashMap::values_mut) {
            slot.hand_over(tasks.get(&slot.task));
        }
    }

    /// Resumes paused partitions whose queue fell below the low mark.
    fn resume_drained(&self, consumer: &BaseConsumer<Self>) {
        let mut assignment = self.assignment.lock();
        let low = assignment.marks.low;
        let mut paused = 0;
        for (topic, partitions) in assignment.slots.iter_mut() {
            for (partition, slot) in partitions.iter_mut() {
                let queued = slot.queued_bytes.load(Ordering::Acquire);
                partition_gauge(Metric::QueueBytes, topic, *partition).set(queued as f64);
                if slot.paused && queued < low {
                    let mut list = TopicPartitionList::new();
                    list.add_partition(topic, *partition);
                    if consumer.resume(&list).is_ok() {
                        slot.paused = false;
                    }
                }
                paused += usize::from(slot.paused);
            }
        }
        metrics::gauge!(Metric::PausedPartitions.name()).set(paused as f64);
    }

    /// Hands every done prefix that moved past what the broker confirmed to
    /// the committer thread (unless a commit is still in flight); stops the
    /// worker when an output was lost.
    fn commit_done(&self, committer: &std::sync::mpsc::SyncSender<TopicPartitionList>) {
        let mut offsets = TopicPartitionList::new();
        let assignment = self.assignment.lock();
        for slot in assignment.slots.values().flat_map(HashMap::values) {
            let tracker = slot.source.tracker.lock();
            if let Some(failed) = tracker.failed_at() {
                self.stopper.stop(format!(
                    "an output of {}-{} offset {failed} was lost; stopping so a restart reads it again",
                    slot.source.topic, slot.source.partition
                ));
            }
            if let Some(next) = tracker.committable()
                && Some(next) != slot.committed
            {
                let _ = offsets.add_partition_offset(
                    &slot.source.topic,
                    slot.source.partition,
                    Offset::Offset(next),
                );
            }
        }
        drop(assignment);
        if offsets.count() > 0 {
            // Full: the previous commit is still in flight; next tick.
            let _ = committer.try_send(offsets);
        }
    }
}

/// A per-partition gauge (`topic`, `partition`) of this instance: whether
/// it owns the partition, its lag, its queued bytes.
fn partition_gauge(metric: Metric, topic: &str, partition: i32) -> metrics::Gauge {
    metrics::gauge!(metric.name(), "topic" => topic.to_owned(), "partition" => partition.to_string())
}

/// Creates the consumer for a worker.
pub fn create_consumer<F: StepFactory>(
    context: WorkerContext<F>,
) -> Result<BaseConsumer<WorkerContext<F>>, rdkafka::error::KafkaError> {
    let settings = &context.env.settings;
    let aligned = settings.input_groups.iter().any(|group| group.len() > 1);
    let mut config = settings.kafka.client_config();
    for (key, value) in CONSUMER_DEFAULTS {
        config.set(key, value);
    }
    config
        .set("group.id", &settings.kafka.group_id)
        .set("client.id", format!("adpipe-{}", settings.service))
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        // Aligned tasks learn from statistics when an input is at its end.
        .set(
            "statistics.interval.ms",
            if aligned { "1000" } else { "5000" },
        );
    for (key, value) in &settings.kafka.consumer {
        config.set(key, value);
    }
    // rust-rdkafka asks librdkafka only for the lines the global logger
    // would show (errors alone when none is installed), but an out-of-range
    // reset, a warning, is how the worker learns of records deleted unread
    // (`crate::offset_reset`): warnings always reach it.
    if matches!(
        config.log_level,
        RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Emerg
    ) {
        config.set_log_level(RDKafkaLogLevel::Warning);
    }
    config.create_with_context(context)
}

/// The consumer settings of every worker (and of the benchmark's bare loop).
pub const CONSUMER_DEFAULTS: [(&str, &str); 8] = [
    // Offsets are committed by us, only for the contiguous done prefix.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    // Eager "range": partition i of every input topic lands on the same
    // instance (tasks with several inputs need it); cooperative rebalancing
    // with manual commits has known librdkafka bugs (crates.md).
    ("partition.assignment.strategy", "range"),
    ("isolation.level", "read_committed"),
    // librdkafka postpones a partition's next fetch by this much whenever
    // its local queue is above queued.min.messages/…kbytes; the default
    // (1 s) paced a backlog at ~110k records/s with the CPU half idle, the
    // bare loop included (adpipe-bench; 10 ms: 374k). Fetching that fast
    // fills the producer's queue far more often, which exposed a loss hole
    // at revoke (outputs given up while waiting for queue space), closed in
    // `task.rs` with its fault test.
    ("fetch.queue.backoff.ms", "10"),
    // Records librdkafka pre-fetches for the whole consumer (default 64 MiB)
    // sit in front of the runtime's own per-partition queues
    // (`queue-high-bytes`), which already keep every task busy: 16 MiB
    // cut the pass-through's peak RSS by about 90 MiB at no measurable cost
    // in records per CPU-second (adpipe-bench).
    ("queued.max.messages.kbytes", "16384"),
    // That bound is checked before a fetch; the response then brings up to
    // this much per partition (default 1 MiB, compressed), and librdkafka
    // keeps each decompressed set whole, plus an op per record, until the
    // last of its records is taken: with 1 MiB, librdkafka held ~90 MB of
    // the joiner's 287 MB heap peak (heaptrack; 18 input partitions).
    // 256 KiB cut the peak RSS of the merger by ~20%, the joiner's by ~12%
    // and the deduplicator's by ~7%, within the runs' noise in CPU-s per
    // record (adpipe-bench, alternating, one session; README).
    ("max.partition.fetch.bytes", "262144"),
];

/// Polls until `stop` is set or the worker must stop, then drains every
/// task and commits what is done.
pub fn poll_loop<F: StepFactory>(consumer: BaseConsumer<WorkerContext<F>>, stop: Arc<AtomicBool>) {
    let consumer = Arc::new(consumer);
    let (committer, commit_requests) = std::sync::mpsc::sync_channel::<TopicPartitionList>(1);
    let committer_thread = {
        let consumer = Arc::clone(&consumer);
        std::thread::Builder::new()
            .name("adpipe-committer".to_owned())
            .spawn(move || {
                for offsets in commit_requests {
                    let context = consumer.context();
                    let _in_flight = context.commit_lock.lock();
                    let result = consumer.commit(&offsets, CommitMode::Sync);
                    context.record_commit(result, &offsets);
                }
            })
    };
    let committer_thread = match committer_thread {
        Ok(thread) => Some(thread),
        Err(error) => {
            consumer
                .context()
                .stopper
                .stop(format!("cannot start the committer thread: {error}"));
            None
        }
    };
    let context = consumer.context();
    let commit_interval = context.env.settings.commit_interval;
    let mut last_commit = Instant::now();
    let mut last_resume_check = Instant::now();
    let mut taken = 0;
    while !stop.load(Ordering::Acquire) && !context.stopper.is_stopped() {
        // While records keep coming, take them without waiting, and hand
        // them over in batches when the queue runs dry or enough were taken.
        let wait = if taken == 0 {
            POLL_WAIT
        } else {
            Duration::ZERO
        };
        let ready = match consumer.poll(wait) {
            Some(Ok(message)) => {
                context.dispatch(&consumer, message);
                true
            }
            Some(Err(rdkafka::error::KafkaError::MessageConsumptionFatal(code))) => {
                context
                    .stopper
                    .stop(format!("fatal consumer error: {code}"));
                false
            }
            Some(Err(error)) => {
                warn!(%error, "consumer error");
                false
            }
            None => false,
        };
        taken += usize::from(ready);
        if ready && taken < MAX_RECORDS_PER_HANDOVER {
            continue; // the clock is read once per hand-over, not per record
        }
        context.hand_over_all();
        taken = 0;
        if last_resume_check.elapsed() >= RESUME_CHECK_INTERVAL {
            context.resume_drained(&consumer);
            last_resume_check = Instant::now();
        }
        if last_commit.elapsed() >= commit_interval {
            context.commit_done(&committer);
            last_commit = Instant::now();
        }
    }
    drop(committer);
    if let Some(thread) = committer_thread {
        let _ = thread.join();
    }
    info!("consumer stopping: draining tasks and committing");
    let partitions: Vec<(String, i32)> = {
        let assignment = context.assignment.lock();
        assignment
            .slots
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .keys()
                    .map(move |partition| (topic.to_string(), *partition))
            })
            .collect()
    };
    context.drain_and_commit(&consumer, &partitions);
    context.health.ready.store(false, Ordering::Release);
    consumer.unsubscribe();
}
