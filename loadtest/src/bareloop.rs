//! The bare loop: consume → produce with librdkafka and nothing else — no
//! runtime, no actors, no offset tracker — with the runtime's own client
//! settings. It is the ceiling the runtime's overhead is measured against
//! (`adpipe-bench`), not a service: it commits, per partition, the offset
//! after the last acknowledged output (one producer keeps each partition's
//! outputs in order), which is at-least-once, but it has no backpressure,
//! no dead letters, no rebalance handling and no failure handling.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::passthrough::PassThroughSettings;

type Acked = Arc<Mutex<HashMap<(String, i32), Arc<AtomicI64>>>>;

/// Runs until `stop` is set.
pub fn run(settings: &PassThroughSettings, stop: &AtomicBool) -> Result<(), KafkaError> {
    let worker = &settings.worker;
    // The runtime's consumer settings and pass-through properties.
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("bootstrap.servers", &worker.kafka.bootstrap_servers)
        .set("group.id", &worker.kafka.group_id);
    for (key, value) in adpipe_runtime::CONSUMER_DEFAULTS {
        consumer_config.set(key, value);
    }
    for (key, value) in &worker.kafka.consumer {
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer = consumer_config.create()?;
    let mut producer_config = adpipe_runtime::producer_config(&worker.kafka.bootstrap_servers);
    producer_config.set("client.id", "adpipe-bareloop");
    for (key, value) in &worker.kafka.producer {
        producer_config.set(key, value);
    }
    let producer: ThreadedProducer<Delivered> = producer_config.create_with_context(Delivered)?;
    let topics = worker.input_topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    let acked: Acked = Arc::default();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if let Some(result) = consumer.poll(Duration::from_millis(50)) {
            let message = result?;
            let key = (message.topic().to_owned(), message.partition());
            let slot = Arc::clone(acked.lock().entry(key).or_default());
            let output = format!("{}{}", message.topic(), settings.output_suffix);
            let mut record =
                BaseRecord::with_opaque_to(&output, Box::new((slot, message.offset())))
                    .partition(message.partition());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            if let Some(headers) = message.headers() {
                let mut owned = OwnedHeaders::new_with_capacity(headers.count());
                for header in headers.iter() {
                    owned = owned.insert(header);
                }
                record = record.headers(owned);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((error, _)) => return Err(error),
                }
            }
        }
        if last_commit.elapsed() >= worker.commit_interval {
            commit(&consumer, &acked, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    let _ = producer.flush(Duration::from_secs(30));
    commit(&consumer, &acked, CommitMode::Sync);
    Ok(())
}

/// Records, per input partition, the highest input offset whose output the
/// broker acknowledged.
struct Delivered;

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = Box<(Arc<AtomicI64>, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<(Arc<AtomicI64>, i64)>) {
        if result.is_ok() {
            let (acked, offset) = *opaque;
            acked.fetch_max(offset + 1, Ordering::AcqRel);
        }
    }
}

fn commit(consumer: &BaseConsumer, acked: &Acked, mode: CommitMode) {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in acked.lock().iter() {
        let next = next.load(Ordering::Acquire);
        if next > 0 {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(next));
        }
    }
    if offsets.count() > 0 {
        let _ = consumer.commit(&offsets, mode);
    }
}
