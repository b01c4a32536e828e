//! The consumer thread: one `BaseConsumer` per worker, polled on its own
//! thread (avoiding StreamConsumer's wake-up stalls), dispatching records to
//! partition actors, pausing and resuming partitions by queued bytes, and
//! committing done offsets.
//!
//! Rebalance callbacks run inside `poll` on this thread: on revoke the
//! partition's actors are drained (in-flight outputs acknowledged or the
//! deadline passed), the done prefix is committed synchronously, and the
//! tracker is dropped so late acknowledgements cannot commit (the fence).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::ack::SharedTracker;
use crate::actor::{ActorEnv, ActorLink, ActorMessage, run_actor};
use crate::offsets::OffsetTracker;
use crate::step::{PartitionAssignment, StepFactory};
use crate::telemetry::{Health, Metric};

/// Fixed per-record overhead counted against the queue, besides key and value.
const RECORD_OVERHEAD_BYTES: usize = 128;
/// How often paused partitions are checked for resumption (and queue gauges
/// updated): often enough for hysteresis to react, not once per record.
const RESUME_CHECK_INTERVAL: Duration = Duration::from_millis(10);

struct PartitionSlot {
    tracker: SharedTracker,
    actors: Vec<mpsc::UnboundedSender<ActorMessage>>,
    queued_bytes: Arc<AtomicUsize>,
    revoking: Arc<AtomicBool>,
    paused: bool,
    committed: Option<i64>,
}

type SlotKey = (String, i32);

/// State shared by the consumer thread and its rebalance callbacks.
pub struct WorkerContext<F: StepFactory> {
    env: Arc<ActorEnv>,
    factory: Arc<F>,
    runtime: tokio::runtime::Handle,
    slots: Mutex<HashMap<SlotKey, PartitionSlot>>,
    fatal: Arc<Mutex<Option<String>>>,
    health: Arc<Health>,
}

impl<F: StepFactory> ClientContext for WorkerContext<F> {
    fn stats(&self, statistics: Statistics) {
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!(Metric::ConsumerLag.name(), "topic" => topic_name.clone(), "partition" => partition.to_string())
                        .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl<F: StepFactory> ConsumerContext for WorkerContext<F> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            metrics::counter!(Metric::Rebalances.name(), "service" => self.env.settings.service.clone(), "kind" => "revoke").increment(1);
            let keys: Vec<SlotKey> = partitions
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
                for element in partitions.elements() {
                    self.assign(element.topic(), element.partition());
                }
                let assigned = self.slots.lock().len();
                metrics::gauge!(Metric::AssignedPartitions.name()).set(assigned as f64);
                info!(assigned, "partitions assigned");
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
        env: Arc<ActorEnv>,
        factory: Arc<F>,
        runtime: tokio::runtime::Handle,
        fatal: Arc<Mutex<Option<String>>>,
        health: Arc<Health>,
    ) -> Self {
        WorkerContext {
            env,
            factory,
            runtime,
            slots: Mutex::new(HashMap::new()),
            fatal,
            health,
        }
    }

    fn assign(&self, topic: &str, partition: i32) {
        let sub_partitions = self.env.settings.sub_partitions.get();
        let tracker: SharedTracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let revoking = Arc::new(AtomicBool::new(false));
        let mut actors = Vec::with_capacity(usize::from(sub_partitions));
        for sub_partition in 0..sub_partitions {
            let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
            let assignment = PartitionAssignment {
                topic: topic.to_owned(),
                partition,
                sub_partition,
                sub_partitions,
            };
            let link = ActorLink {
                tracker: Arc::clone(&tracker),
                queued_bytes: Arc::clone(&queued_bytes),
                revoking: Arc::clone(&revoking),
                fatal: Arc::clone(&self.fatal),
            };
            self.runtime.spawn(run_actor(
                Arc::clone(&self.env),
                Arc::clone(&self.factory),
                assignment,
                link,
                inbox_rx,
            ));
            actors.push(inbox_tx);
        }
        let slot = PartitionSlot {
            tracker,
            actors,
            queued_bytes,
            revoking,
            paused: false,
            committed: None,
        };
        self.slots
            .lock()
            .insert((topic.to_owned(), partition), slot);
    }

    /// Drains the actors of `keys`, commits their done prefix synchronously
    /// and forgets them.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, keys: &[SlotKey]) {
        let removed: Vec<(SlotKey, PartitionSlot)> = {
            let mut slots = self.slots.lock();
            keys.iter()
                .filter_map(|key| slots.remove(key).map(|slot| (key.clone(), slot)))
                .collect()
        };
        let mut replies = Vec::new();
        for (_, slot) in &removed {
            slot.revoking.store(true, Ordering::Release);
            for actor in &slot.actors {
                let (reply_tx, reply_rx) = oneshot::channel();
                if actor.send(ActorMessage::Drain(reply_tx)).is_ok() {
                    replies.push(reply_rx);
                }
            }
        }
        for reply in replies {
            // Actors reply within the revoke deadline (they stop handling
            // queued records at once and wait at most that long for acks).
            let _ = reply.blocking_recv();
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), slot) in &removed {
            if let Some(next) = slot.tracker.lock().committable()
                && Some(next) != slot.committed
            {
                let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(next));
            }
        }
        if offsets.count() > 0 {
            match consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => metrics::counter!(Metric::Commits.name(), "service" => self.env.settings.service.clone()).increment(1),
                Err(error) => warn!(%error, "commit on revoke failed; the next owner re-processes from the last commit"),
            }
        }
        metrics::gauge!(Metric::AssignedPartitions.name()).set(self.slots.lock().len() as f64);
    }

    /// Hands a record to its actor; pauses the partition above the high mark.
    fn dispatch(
        &self,
        consumer: &BaseConsumer<Self>,
        message: rdkafka::message::BorrowedMessage<'_>,
    ) {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(&(message.topic().to_owned(), message.partition())) else {
            return;
        };
        if !slot.tracker.lock().register(message.offset()) {
            return; // redelivered below what we already track
        }
        let bytes =
            RECORD_OVERHEAD_BYTES + message.payload_len() + message.key().map_or(0, <[u8]>::len);
        let queued = slot.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let actor_index = match (slot.actors.len(), message.key()) {
            (1, _) | (_, None) => 0,
            (count, Some(key)) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % count as u64) as usize
            }
        };
        let record = ActorMessage::Record(message.detach(), bytes);
        if slot
            .actors
            .get(actor_index)
            .is_none_or(|actor| actor.send(record).is_err())
        {
            slot.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return;
        }
        if queued > self.env.settings.queue_high_bytes && !slot.paused {
            let mut partition = TopicPartitionList::new();
            partition.add_partition(message.topic(), message.partition());
            match consumer.pause(&partition) {
                Ok(()) => slot.paused = true,
                Err(error) => warn!(%error, "pause failed"),
            }
        }
    }

    /// Resumes paused partitions whose queue fell below the low mark.
    fn resume_drained(&self, consumer: &BaseConsumer<Self>) {
        let mut slots = self.slots.lock();
        let mut paused = 0;
        for ((topic, partition), slot) in slots.iter_mut() {
            let queued = slot.queued_bytes.load(Ordering::Acquire);
            metrics::gauge!(Metric::QueueBytes.name(), "topic" => topic.clone(), "partition" => partition.to_string()).set(queued as f64);
            if slot.paused && queued < self.env.settings.queue_low_bytes {
                let mut list = TopicPartitionList::new();
                list.add_partition(topic, *partition);
                if consumer.resume(&list).is_ok() {
                    slot.paused = false;
                }
            }
            paused += usize::from(slot.paused);
        }
        metrics::gauge!(Metric::PausedPartitions.name()).set(paused as f64);
    }

    /// Commits every partition's done prefix that moved since the last commit.
    fn commit_done(&self, consumer: &BaseConsumer<Self>, mode: CommitMode) {
        let mut offsets = TopicPartitionList::new();
        let mut slots = self.slots.lock();
        for ((topic, partition), slot) in slots.iter_mut() {
            let tracker = slot.tracker.lock();
            if tracker.failed() {
                self.fatal.lock().get_or_insert_with(|| {
                    format!("an output of {topic}-{partition} was lost; stopping so a restart re-consumes from the last commit")
                });
            }
            if let Some(next) = tracker.committable()
                && Some(next) != slot.committed
            {
                let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(next));
                slot.committed = Some(next);
            }
        }
        drop(slots);
        if offsets.count() == 0 {
            return;
        }
        match consumer.commit(&offsets, mode) {
            Ok(()) => metrics::counter!(Metric::Commits.name(), "service" => self.env.settings.service.clone()).increment(1),
            Err(error) => warn!(%error, "offset commit failed; will retry with the next one"),
        }
    }
}

/// Creates the consumer for a worker.
pub fn create_consumer<F: StepFactory>(
    context: WorkerContext<F>,
) -> Result<BaseConsumer<WorkerContext<F>>, rdkafka::error::KafkaError> {
    let settings = &context.env.settings;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("group.id", &settings.kafka.group_id)
        .set("client.id", format!("adpipe-{}", settings.service))
        // Offsets are committed by us, only for the contiguous done prefix.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        // Eager "range": partition i of every input topic lands on the same
        // instance (joins need it); cooperative rebalancing with manual
        // commits has known librdkafka bugs (crates.md).
        .set("partition.assignment.strategy", "range")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000");
    for (key, value) in &settings.kafka.consumer {
        config.set(key, value);
    }
    config.create_with_context(context)
}

/// Polls until `stop` is set or a fatal error is recorded, then drains every
/// partition and commits what is done.
pub fn poll_loop<F: StepFactory>(consumer: BaseConsumer<WorkerContext<F>>, stop: Arc<AtomicBool>) {
    let context = consumer.context();
    let commit_interval = context.env.settings.commit_interval;
    let mut last_commit = Instant::now();
    let mut last_resume_check = Instant::now();
    while !stop.load(Ordering::Acquire) && context.fatal.lock().is_none() {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => context.dispatch(&consumer, message),
            Some(Err(error)) => warn!(%error, "consumer error"),
            None => {}
        }
        if last_resume_check.elapsed() >= RESUME_CHECK_INTERVAL {
            context.resume_drained(&consumer);
            last_resume_check = Instant::now();
        }
        if last_commit.elapsed() >= commit_interval {
            context.commit_done(&consumer, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    info!("consumer stopping: draining partitions and committing");
    context.commit_done(&consumer, CommitMode::Async);
    let keys: Vec<SlotKey> = context.slots.lock().keys().cloned().collect();
    context.drain_and_commit(&consumer, &keys);
    context.health.ready.store(false, Ordering::Release);
    consumer.unsubscribe();
}
