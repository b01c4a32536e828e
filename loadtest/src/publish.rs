//! Publishing a simulation to Kafka: every event Avro-encoded through the
//! schema registry, keyed by user id, with its origin DC in a header.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adpipe_codec::{Codec, EncodeError, Encoder};
use adpipe_events::{Click, Conversion, EventKind, Impression};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::{Publication, SimEvent};

/// Header carrying the DC a record was published in.
pub const ORIGIN_DC_HEADER: &str = "adpipe.origin.dc";

/// Why a publication failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Encoding or registering a schema failed.
    #[error("encoding: {0}")]
    Encode(#[from] EncodeError),
    /// Kafka refused the record.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Records were queued but the broker never took them (missing topic,
    /// cluster down past the delivery timeout): the simulation is incomplete.
    #[error("{failed} record(s) were not delivered; first error: {first_error}")]
    Undelivered {
        /// Records that failed.
        failed: u64,
        /// The first failure.
        first_error: String,
    },
}

/// Counts failed deliveries, which librdkafka reports only in callbacks.
#[derive(Default)]
struct DeliveryFailures {
    failed: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
}

#[derive(Clone, Default)]
struct CountingContext(Arc<DeliveryFailures>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            self.0.first_error.lock().get_or_insert_with(|| {
                format!("{} [{}]: {error}", message.topic(), message.partition())
            });
        }
    }
}

/// A producer plus one registered encoder per event type.
pub struct SimPublisher {
    impression: Encoder<Impression>,
    click: Encoder<Click>,
    conversion: Encoder<Conversion>,
    producer: ThreadedProducer<CountingContext>,
    failures: Arc<DeliveryFailures>,
}

impl SimPublisher {
    /// Registers the three schemas (under `subject_for(kind)`) and connects.
    pub async fn new(
        codec: &Codec,
        bootstrap: &str,
        subject_for: impl Fn(EventKind) -> String,
    ) -> Result<Self, PublishError> {
        let context = CountingContext::default();
        let failures = Arc::clone(&context.0);
        let producer = adpipe_runtime::producer_config(bootstrap)
            .set("queue.buffering.max.messages", "1000000")
            // A bidder waits out its DC's cluster, however long it is down
            // (the chaos run's DC outage outlasted the 5-minute default and
            // 244,520 records timed out): the ground truth is what was
            // published, so nothing may be given up. A full queue makes
            // `publish` wait instead.
            .set("message.timeout.ms", "0")
            // Java clients' partitioner, so every client puts a user in the same partition.
            .set("partitioner", "murmur2_random")
            .create_with_context(context)?;
        Ok(SimPublisher {
            impression: codec
                .encoder(
                    &subject_for(EventKind::Impression),
                    EventKind::Impression.schema(),
                )
                .await?,
            click: codec
                .encoder(&subject_for(EventKind::Click), EventKind::Click.schema())
                .await?,
            conversion: codec
                .encoder(
                    &subject_for(EventKind::Conversion),
                    EventKind::Conversion.schema(),
                )
                .await?,
            producer,
            failures,
        })
    }

    /// Queues one publication to `topic`, waiting while the local queue is
    /// full. Blocking: call it from a blocking context.
    pub fn publish(&self, publication: &Publication, topic: &str) -> Result<(), PublishError> {
        let value = self.encode(&publication.event)?;
        self.publish_value(topic, publication.event.user_id(), &value, &publication.dc)
    }

    /// Queues a record with any value (a benchmark's poison records), keyed
    /// and with an origin header like a publication.
    pub fn publish_value(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        dc: &str,
    ) -> Result<(), PublishError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: ORIGIN_DC_HEADER,
            value: Some(dc.as_bytes()),
        });
        let mut record = BaseRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// The record value of an event: Confluent-framed Avro.
    pub fn encode(&self, event: &SimEvent) -> Result<Vec<u8>, PublishError> {
        Ok(match event {
            SimEvent::Impression(event) => self.impression.encode(event)?,
            SimEvent::Click(event) => self.click.encode(event)?,
            SimEvent::Conversion(event) => self.conversion.encode(event)?,
        })
    }

    /// Waits until everything queued is acknowledged; fails if any record
    /// was not delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer.flush(timeout)?;
        match self.failures.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(PublishError::Undelivered {
                failed,
                first_error: self.failures.first_error.lock().clone().unwrap_or_default(),
            }),
        }
    }
}
