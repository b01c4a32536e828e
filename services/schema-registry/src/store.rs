//! The registry's durable log: a single-partition compacted Kafka topic.
//!
//! Contract: [`LogStore::append`] returns only after the record is
//! acknowledged by Kafka (acks=all) *and* this instance's tailer has applied
//! it, so a caller reads its own write from [`LogStore::state`] and sees the
//! same outcome every other instance sees; [`LogStore::catch_up`] lets a
//! reader wait for every write acknowledged so far. A tailer thread (a `BaseConsumer`
//! polled on its own thread, see crates.md) applies records in log order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use adpipe_kafka_client::EofReader;
use parking_lot::RwLock;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::model::{Applied, LogRecord, RegistryState};

/// How long a write waits for Kafka and for its own record to come back.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the log lives.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// The registry topic (Confluent's default is `_schemas`).
    pub topic: String,
    /// Replication factor used if the registry has to create its topic.
    pub replication: i32,
    /// How long start-up may take to read the topic to its end.
    pub startup_timeout: Duration,
}

/// The log, its tailer and the state it builds.
pub struct LogStore {
    topic: String,
    producer: FutureProducer,
    state: Arc<RwLock<RegistryState>>,
    applied_rx: watch::Receiver<i64>,
    stop: Arc<AtomicBool>,
    tailer: Option<JoinHandle<()>>,
}

impl LogStore {
    /// Creates the topic if needed, reads it to its end and starts tailing.
    pub async fn open(settings: &StoreSettings) -> Result<Self, ApiError> {
        ensure_topic(settings).await?;
        let producer: FutureProducer =
            adpipe_kafka_client::env_client_config(&settings.bootstrap_servers)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "0")
                .create()
                .map_err(ApiError::store)?;

        let consumer: BaseConsumer<EofReader> =
            adpipe_kafka_client::env_client_config(&settings.bootstrap_servers)
                // Assigned, not subscribed: every instance reads the whole log and
                // commits nothing. librdkafka still wants a group id.
                .set(
                    "group.id",
                    format!("adpipe-schema-registry-{}", uuid::Uuid::new_v4()),
                )
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", "read_committed")
                .create_with_context(EofReader)
                .map_err(ApiError::store)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&settings.topic, 0, Offset::Beginning)
            .map_err(ApiError::store)?;
        consumer.assign(&assignment).map_err(ApiError::store)?;
        // A topic created a moment ago may have no leader yet
        // (NotLeaderForPartition): ask again until the startup timeout.
        let deadline = std::time::Instant::now() + settings.startup_timeout;
        let high = loop {
            match consumer.fetch_watermarks(&settings.topic, 0, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(error) if std::time::Instant::now() < deadline => {
                    warn!(%error, topic = %settings.topic, "registry log not readable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(ApiError::store(error)),
            }
        };

        let state = Arc::new(RwLock::new(RegistryState::default()));
        let (applied_tx, applied_rx) = watch::channel(0_i64);
        let stop = Arc::new(AtomicBool::new(false));
        let tailer = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("registry-tailer".to_owned())
                .spawn(move || tail(consumer, state, applied_tx, stop))
                .map_err(ApiError::store)?
        };
        let store = LogStore {
            topic: settings.topic.clone(),
            producer,
            state,
            applied_rx,
            stop,
            tailer: Some(tailer),
        };
        store.wait_applied(high, settings.startup_timeout).await?;
        info!(topic = %settings.topic, records = high, "schema registry state loaded");
        Ok(store)
    }

    /// The current state (never hold the guard across an await).
    pub fn state(&self) -> &RwLock<RegistryState> {
        &self.state
    }

    /// Appends a record and waits until this instance has applied it.
    pub async fn append(&self, record: &LogRecord) -> Result<(), ApiError> {
        let (key, value) = record.encode();
        let mut future_record = FutureRecord::to(&self.topic).partition(0).key(&key);
        if let Some(value) = &value {
            future_record = future_record.payload(value);
        }
        let delivery = self
            .producer
            .send(future_record, WRITE_TIMEOUT)
            .await
            .map_err(|(error, _)| ApiError::store(error))?;
        self.wait_applied(delivery.offset + 1, WRITE_TIMEOUT).await
    }

    /// Waits until this instance has applied the log up to its current end:
    /// every write any instance had acknowledged when this was called.
    pub async fn catch_up(&self) -> Result<(), ApiError> {
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        let (_, high) = tokio::task::spawn_blocking(move || {
            producer.client().fetch_watermarks(&topic, 0, WRITE_TIMEOUT)
        })
        .await
        .map_err(ApiError::store)?
        .map_err(ApiError::store)?;
        self.wait_applied(high, WRITE_TIMEOUT).await
    }

    /// Waits until every record before `next_offset` has been applied.
    async fn wait_applied(&self, next_offset: i64, timeout: Duration) -> Result<(), ApiError> {
        let mut applied = self.applied_rx.clone();
        match tokio::time::timeout(timeout, applied.wait_for(|done| *done >= next_offset)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::store("log tailer stopped")),
            Err(_) => Err(ApiError::timeout(format!(
                "waited {timeout:?} to read the registry topic up to offset {next_offset}"
            ))),
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(tailer) = self.tailer.take() {
            let _ = tailer.join();
        }
    }
}

fn tail(
    consumer: BaseConsumer<EofReader>,
    state: Arc<RwLock<RegistryState>>,
    applied_tx: watch::Sender<i64>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match result {
            Ok(message) => message,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                // Compaction can leave the end of the log without a record at
                // `high - 1`; the consumer's position is the true end.
                if let Some(end) = position(&consumer) {
                    applied_tx.send_if_modified(|applied| {
                        let moved = end > *applied;
                        *applied = (*applied).max(end);
                        moved
                    });
                }
                continue;
            }
            Err(error) => {
                warn!(%error, "registry log read failed; retrying");
                continue;
            }
        };
        let offset = message.offset();
        match LogRecord::decode(message.key().unwrap_or_default(), message.payload()) {
            Ok(Some(record)) => {
                if let Applied::Rejected(reason) = state.write().apply(record) {
                    info!(offset, %reason, "registry record lost a race and was ignored");
                }
            }
            Ok(None) => {}
            Err(reason) => warn!(offset, %reason, "skipping undecodable registry record"),
        }
        applied_tx.send_replace(offset + 1);
    }
}

fn position(consumer: &BaseConsumer<EofReader>) -> Option<i64> {
    let positions = consumer.position().ok()?;
    let element = positions.elements().into_iter().next()?;
    match element.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

async fn ensure_topic(settings: &StoreSettings) -> Result<(), ApiError> {
    let admin: AdminClient<_> = adpipe_kafka_client::env_client_config(&settings.bootstrap_servers)
        .create()
        .map_err(ApiError::store)?;
    // Usually `adpipe topology apply` created it already; checking first also
    // keeps us off CreateTopics, which librdkafka's mock cluster lacks.
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&settings.topic), Duration::from_secs(10))
        .map_err(ApiError::store)?;
    let exists = metadata.topics().iter().any(|topic| {
        topic.name() == settings.topic && topic.error().is_none() && !topic.partitions().is_empty()
    });
    if exists {
        return Ok(());
    }
    let topic = NewTopic::new(
        &settings.topic,
        1,
        TopicReplication::Fixed(settings.replication),
    )
    .set("cleanup.policy", "compact");
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(ApiError::store)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ApiError::store(format!(
                    "cannot create topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}
