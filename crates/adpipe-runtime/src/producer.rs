//! The output producer: a librdkafka producer polled on its own thread, whose
//! delivery callback completes (or fails) the input's [`AckToken`].
//!
//! A `BaseProducer` with a delivery opaque costs about a third of the CPU of
//! a `FutureProducer` per message (crates.md), and needs no task per record.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;
use tracing::error;

use crate::ack::AckToken;
use crate::step::OutputRecord;
use crate::telemetry::Metric;

/// Producer settings every adpipe producer shares (services, the CLI, the
/// simulator, the benchmark's Kafka tools):
/// idempotence, so retries after a broker failure never duplicate or reorder
/// within a partition; acks from all replicas; lz4 batches of up to 256 KiB
/// gathered for at most 5 ms.
pub const PRODUCER_DEFAULTS: [(&str, &str); 5] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("batch.size", "262144"),
];

/// A client config for `bootstrap_servers` with [`PRODUCER_DEFAULTS`].
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(key, value);
    }
    config
}

/// What travels with a message through librdkafka.
pub struct Delivery {
    token: AckToken,
    then: Option<Box<OutputRecord>>,
}

/// Delivery callbacks: complete tokens, hand follow-ups to the sender task.
pub struct AckContext {
    service: String,
    followups: mpsc::UnboundedSender<(OutputRecord, AckToken)>,
    /// Follow-ups waiting to be sent; actors hold back new outputs while it
    /// is large, so changelogs keep up with the outputs they describe (the
    /// gap between them is what a crash re-emits).
    followup_backlog: Arc<AtomicUsize>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match result {
            Ok(message) => {
                use rdkafka::message::Message;
                metrics::counter!(Metric::RecordsProduced.name(), "service" => self.service.clone(), "topic" => message.topic().to_owned()).increment(1);
                let Delivery { token, then } = *delivery;
                if let Some(then) = then {
                    // Producing from inside the callback could block the
                    // thread that runs callbacks; a task sends it instead.
                    self.followup_backlog.fetch_add(1, Ordering::AcqRel);
                    if self.followups.send((*then, token.clone())).is_err() {
                        token.fail();
                    }
                }
            }
            Err((error, message)) => {
                use rdkafka::message::Message;
                // librdkafka already retried until message.timeout.ms: the
                // output is lost, so the partition must not commit past it.
                error!(%error, topic = message.topic(), "output delivery failed; partition will stop committing");
                delivery.token.fail();
            }
        }
    }
}

/// Follow-ups queued above which actors wait before producing more.
const MAX_FOLLOWUP_BACKLOG: usize = 1_000;

/// The shared producer of a worker.
pub struct OutputProducer {
    producer: ThreadedProducer<AckContext>,
    followup_backlog: Arc<AtomicUsize>,
}

/// Why an output could not be handed to librdkafka.
#[derive(Debug)]
pub enum SendError {
    /// The local queue is full: wait and retry (backpressure).
    QueueFull,
    /// Anything else: the token was failed.
    Failed(KafkaError),
}

impl OutputProducer {
    /// Creates the producer and the receiver of follow-up records.
    pub fn new(
        service: &str,
        bootstrap_servers: &str,
        overrides: &std::collections::BTreeMap<String, String>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<(OutputRecord, AckToken)>), KafkaError> {
        let (followups, followup_rx) = mpsc::unbounded_channel();
        let mut config = producer_config(bootstrap_servers);
        config
            .set("client.id", format!("adpipe-{service}"))
            // A broker restart must not lose outputs: keep retrying for 10 min.
            .set("message.timeout.ms", "600000");
        for (key, value) in overrides {
            config.set(key, value);
        }
        let followup_backlog = Arc::new(AtomicUsize::new(0));
        let context = AckContext {
            service: service.to_owned(),
            followups,
            followup_backlog: Arc::clone(&followup_backlog),
        };
        let producer = config.create_with_context(context)?;
        Ok((
            OutputProducer {
                producer,
                followup_backlog,
            },
            followup_rx,
        ))
    }

    /// Hands one output to librdkafka. On `QueueFull` nothing was sent and
    /// the caller keeps its token to retry.
    pub fn send(&self, output: &OutputRecord, token: &AckToken) -> Result<(), SendError> {
        let mut headers = OwnedHeaders::new_with_capacity(output.headers.len());
        for (key, value) in &output.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let delivery = Box::new(Delivery {
            token: token.clone(),
            then: output.then.clone(),
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<Delivery>> =
            BaseRecord::with_opaque_to(&output.topic, delivery).headers(headers);
        if let Some(key) = &output.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &output.value {
            record = record.payload(value.as_slice());
        }
        if let Some(partition) = output.partition {
            record = record.partition(partition);
        }
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            // Dropping the returned opaque drops our clone of the token, which
            // is fine: the caller still holds its own.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull)
            }
            Err((error, _)) => {
                token.fail();
                Err(SendError::Failed(error))
            }
        }
    }

    /// Whether follow-ups lag so far behind that new outputs should wait.
    pub fn followups_lagging(&self) -> bool {
        self.followup_backlog.load(Ordering::Acquire) > MAX_FOLLOWUP_BACKLOG
    }

    /// Waits for every queued output to be delivered (or fail).
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "producer flush did not finish");
        }
    }
}

/// Sends follow-up records (produced after their primary was acknowledged),
/// retrying while the local queue is full.
pub async fn run_followups(
    producer: std::sync::Arc<OutputProducer>,
    mut followups: mpsc::UnboundedReceiver<(OutputRecord, AckToken)>,
) {
    while let Some((record, token)) = followups.recv().await {
        // A `Failed` send already failed the token; only a full queue retries.
        while let Err(SendError::QueueFull) = producer.send(&record, &token) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        producer.followup_backlog.fetch_sub(1, Ordering::AcqRel);
    }
}
