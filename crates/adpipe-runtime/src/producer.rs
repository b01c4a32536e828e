//! The output producer: a librdkafka producer polled on its own thread, whose
//! delivery callback settles the input's [`AckToken`].
//!
//! Contract:
//! - an output acknowledged by the broker drops its clone of the token (and
//!   sends its follow-up, if any, only now);
//! - an output the broker can never take (too large, invalid) is *rejected*:
//!   instead of failing the input, a dead-letter record goes out in its
//!   place, carrying the input's coordinates, the output topic and the
//!   broker's reason; the input is done when that is acknowledged — so one
//!   oversized record does not crash-loop the instance;
//! - any other delivery failure (librdkafka already retried until
//!   `message.timeout.ms`) fails the token: its offset is never done and the
//!   worker stops, so a restart reads it again.
//!
//! A `BaseProducer` with a delivery opaque costs about a third of the CPU of
//! a `FutureProducer` per message (crates.md), and needs no task per record.
//! The opaque is a key into a slab of deliveries in flight rather than a
//! `Box` per output: one allocation less per record on the hot path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use slab::Slab;
use tokio::sync::mpsc;
use tracing::error;

use crate::ack::AckToken;
use crate::dead_letter;
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

/// A client config for `bootstrap_servers` with [`PRODUCER_DEFAULTS`],
/// secured as this process's environment says (the CLI's and tools' way;
/// a worker's producer takes its `[kafka.security]`).
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    secured_producer_config(
        bootstrap_servers,
        &adpipe_kafka_client::KafkaSecurity::from_env().unwrap_or_default(),
    )
}

/// A client config for `bootstrap_servers` with [`PRODUCER_DEFAULTS`],
/// secured by `security`.
pub fn secured_producer_config(
    bootstrap_servers: &str,
    security: &adpipe_kafka_client::KafkaSecurity,
) -> ClientConfig {
    let mut config = adpipe_kafka_client::client_config(bootstrap_servers, security);
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(key, value);
    }
    config
}

/// Whether the broker (or librdkafka's own size check) will never accept
/// this record, however often it is retried.
pub fn rejects_record(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
    )
}

/// What travels with a message through librdkafka.
pub struct Delivery {
    /// `None`: an output no record waits for (emitted from a timer).
    token: Option<AckToken>,
    then: Option<Box<OutputRecord>>,
    /// This is already the dead letter of a rejected output: never again.
    dead_letter: bool,
}

/// A record to send from the follow-up task (outside the delivery callback).
pub struct FollowUp {
    record: OutputRecord,
    token: Option<AckToken>,
    dead_letter: bool,
}

/// Delivery callbacks: settle tokens, hand follow-ups to the sender task.
pub struct AckContext {
    /// What travels with each output in flight, keyed by its opaque.
    deliveries: Mutex<Slab<Delivery>>,
    service: String,
    dead_letter_topic: String,
    followups: mpsc::UnboundedSender<FollowUp>,
    /// Follow-ups waiting to be sent; tasks hold back new outputs while it
    /// is large, so changelogs keep up with the outputs they describe (the
    /// gap between them is what a crash re-emits).
    followup_backlog: Arc<AtomicUsize>,
    /// Produced-records counters by topic, resolved once per topic: a
    /// labelled lookup per record would allocate on the hot path.
    produced: Mutex<HashMap<Box<str>, metrics::Counter>>,
}

impl ClientContext for AckContext {}

impl AckContext {
    fn count_produced(&self, topic: &str) {
        let mut produced = self.produced.lock();
        if let Some(counter) = produced.get(topic) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(Metric::RecordsProduced.name(), "service" => self.service.clone(), "topic" => topic.to_owned());
        counter.increment(1);
        produced.insert(topic.into(), counter);
    }

    fn follow_up(&self, followup: FollowUp) {
        let token = followup.token.clone();
        if let Some(token) = &token {
            token.output_sent(); // in flight from now, not from when it is sent
        }
        self.followup_backlog.fetch_add(1, Ordering::AcqRel);
        if self.followups.send(followup).is_err()
            && let Some(token) = token
        {
            token.fail();
            token.output_settled();
        }
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, key: usize) {
        let Some(Delivery {
            token,
            then,
            dead_letter,
        }) = self.deliveries.lock().try_remove(key)
        else {
            error!(key, "a delivery report for no output in flight");
            return;
        };
        match result {
            Ok(message) => {
                self.count_produced(message.topic());
                if let Some(then) = then {
                    // Producing from inside the callback could block the
                    // thread that runs callbacks; a task sends it instead.
                    self.follow_up(FollowUp {
                        record: *then,
                        token: token.clone(),
                        dead_letter: false,
                    });
                }
            }
            Err((KafkaError::MessageProduction(code), message))
                if rejects_record(*code) && !dead_letter && token.is_some() =>
            {
                metrics::counter!(Metric::OutputsRejected.name(), "service" => self.service.clone(), "topic" => message.topic().to_owned()).increment(1);
                error!(error = %code, topic = message.topic(), "the broker rejected an output for good; dead-lettering it with its input's coordinates");
                if let Some(token) = &token {
                    let record = dead_letter::rejected_output_record(
                        &self.dead_letter_topic,
                        &self.service,
                        token,
                        &rejected_output(message),
                        *code,
                    );
                    self.follow_up(FollowUp {
                        record,
                        token: Some(token.clone()),
                        dead_letter: true,
                    });
                }
            }
            Err((error, message)) => {
                // librdkafka already retried until message.timeout.ms: the
                // output is lost, so the partition must not commit past it.
                error!(%error, topic = message.topic(), "output delivery failed; the input will be read again after a restart");
                if let Some(token) = &token {
                    token.fail();
                }
            }
        }
        if let Some(token) = &token {
            token.output_settled();
        }
    }
}

/// The output as librdkafka returned it with its failure.
fn rejected_output(message: &rdkafka::message::BorrowedMessage<'_>) -> OutputRecord {
    let mut record = OutputRecord::new(message.topic(), message.key(), message.payload());
    if let Some(headers) = message.headers() {
        record.headers = crate::headers::Headers::copied_from(headers);
    }
    record
}

/// Follow-ups queued above which tasks wait before producing more.
const MAX_FOLLOWUP_BACKLOG: usize = 1_000;

/// The shared producer of a worker.
pub struct OutputProducer {
    producer: ThreadedProducer<AckContext>,
    followup_backlog: Arc<AtomicUsize>,
}

/// Why an output could not be handed to librdkafka.
#[derive(Debug)]
// The record travels back only on the rare QueueFull path; boxing it would
// allocate there for nothing.
#[allow(clippy::large_enum_variant)]
pub enum SendError {
    /// The local queue is full: wait and retry with the record given back
    /// (backpressure).
    QueueFull(OutputRecord),
    /// Anything else: the token was failed.
    Failed(KafkaError),
}

/// Where a worker's producer writes and what it calls itself.
pub struct ProducerSetup<'a> {
    /// Service name (client id, metric label).
    pub service: &'a str,
    /// Bootstrap servers.
    pub bootstrap_servers: &'a str,
    /// TLS and SASL.
    pub security: &'a adpipe_kafka_client::KafkaSecurity,
    /// Where rejected outputs go.
    pub dead_letter_topic: &'a str,
    /// librdkafka overrides.
    pub overrides: &'a std::collections::BTreeMap<String, String>,
}

impl OutputProducer {
    /// Creates the producer and the receiver of follow-up records.
    pub fn new(
        setup: &ProducerSetup<'_>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<FollowUp>), KafkaError> {
        let (followups, followup_rx) = mpsc::unbounded_channel();
        let mut config = secured_producer_config(setup.bootstrap_servers, setup.security);
        config
            .set("client.id", format!("adpipe-{}", setup.service))
            // A broker restart must not lose outputs: keep retrying for 10 min.
            .set("message.timeout.ms", "600000");
        for (key, value) in setup.overrides {
            config.set(key, value);
        }
        let followup_backlog = Arc::new(AtomicUsize::new(0));
        let context = AckContext {
            deliveries: Mutex::new(Slab::new()),
            service: setup.service.to_owned(),
            dead_letter_topic: setup.dead_letter_topic.to_owned(),
            followups,
            followup_backlog: Arc::clone(&followup_backlog),
            produced: Mutex::new(HashMap::new()),
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

    /// Hands one output to librdkafka (counted in flight for its task). On
    /// `QueueFull` nothing was sent and the record comes back to retry; the
    /// caller keeps its token. A record librdkafka refuses for good (larger
    /// than `message.max.bytes`) is dead-lettered in its place.
    #[allow(clippy::result_large_err)] // see SendError
    pub fn send(&self, output: OutputRecord, token: Option<&AckToken>) -> Result<(), SendError> {
        self.send_as(output, token, false, true)
    }

    #[allow(clippy::result_large_err)] // see SendError
    fn send_as(
        &self,
        mut output: OutputRecord,
        token: Option<&AckToken>,
        dead_letter: bool,
        count: bool,
    ) -> Result<(), SendError> {
        // The record is moved in, so its follow-up travels without a copy;
        // key, value and headers are borrowed (librdkafka copies them).
        let context = self.producer.context();
        let key = context.deliveries.lock().insert(Delivery {
            token: token.cloned(),
            then: output.then.take(),
            dead_letter,
        });
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&output.topic, key);
        if !output.headers.is_empty() {
            record = record.headers(output.headers.to_rdkafka());
        }
        if let Some(key) = &output.key {
            record = record.key(key.as_ref());
        }
        if let Some(value) = &output.value {
            record = record.payload(value.as_ref());
        }
        if let Some(partition) = output.partition {
            record = record.partition(partition);
        }
        if let Some(timestamp) = output.timestamp_ms {
            record = record.timestamp(timestamp);
        }
        if count && let Some(token) = token {
            token.output_sent();
        }
        let settle = |token: Option<&AckToken>| {
            if let Some(token) = token {
                token.output_settled();
            }
        };
        let (error, returned) = match self.producer.send(record) {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        // Dropping the delivery's token clone is fine: the caller still
        // holds its own.
        if let Some(Delivery { then, .. }) = context
            .deliveries
            .lock()
            .try_remove(returned.delivery_opaque)
        {
            output.then = then;
        }
        match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                if count {
                    settle(token);
                }
                Err(SendError::QueueFull(output))
            }
            KafkaError::MessageProduction(code)
                if rejects_record(code) && !dead_letter && token.is_some() =>
            {
                if count {
                    settle(token); // the dead letter below counts itself
                }
                let Some(token) = token else {
                    return Ok(());
                };
                metrics::counter!(Metric::OutputsRejected.name(), "service" => context.service.clone(), "topic" => output.topic.to_string()).increment(1);
                error!(error = %code, topic = %output.topic, "an output exceeds what the producer may send; dead-lettering it with its input's coordinates");
                let record = dead_letter::rejected_output_record(
                    &context.dead_letter_topic,
                    &context.service,
                    token,
                    &output,
                    code,
                );
                // The dead letter takes the output's place in flight.
                self.send_as(record, Some(token), true, count)
            }
            error => {
                settle(token);
                if let Some(token) = token {
                    token.fail();
                }
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

/// Sends follow-up records (produced after their primary was acknowledged,
/// or dead letters in place of rejected outputs), retrying while the local
/// queue is full. They were counted in flight when queued.
pub async fn run_followups(
    producer: Arc<OutputProducer>,
    mut followups: mpsc::UnboundedReceiver<FollowUp>,
) {
    while let Some(followup) = followups.recv().await {
        // A `Failed` send already failed and settled the token; only a full
        // queue retries.
        let mut record = followup.record;
        while let Err(SendError::QueueFull(returned)) =
            producer.send_as(record, followup.token.as_ref(), followup.dead_letter, false)
        {
            record = returned;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        producer.followup_backlog.fetch_sub(1, Ordering::AcqRel);
    }
}
