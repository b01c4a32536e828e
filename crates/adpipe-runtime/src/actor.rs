//! One actor per assigned partition (or sub-partition): a tokio task that
//! owns its step, handles records in order, and hands outputs to the producer
//! with the record's ack token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adpipe_codec::{Codec, WriterSchema};
use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::ack::{AckToken, SharedTracker};
use crate::config::{FailureAction, WorkerSettings};
use crate::dead_letter::dead_letter_record;
use crate::producer::{OutputProducer, SendError};
use crate::step::{Emitter, InputRecord, PartitionAssignment, Step, StepError, StepFactory};
use crate::telemetry::Metric;

/// A message to an actor.
pub enum ActorMessage {
    /// A record to handle, with the bytes it counts against the queue.
    Record(OwnedMessage, usize),
    /// Stop: wait for outputs in flight (up to the deadline), flush state, reply.
    Drain(oneshot::Sender<()>),
}

/// What an actor shares with the consumer thread.
pub struct ActorLink {
    /// The partition's offset tracker.
    pub tracker: SharedTracker,
    /// Bytes queued for the partition (all its sub-partitions).
    pub queued_bytes: Arc<AtomicUsize>,
    /// Set before `Drain` is sent: queued records are abandoned, not handled.
    pub revoking: Arc<AtomicBool>,
    /// Set when the worker must stop (a fatal error anywhere).
    pub fatal: Arc<parking_lot::Mutex<Option<String>>>,
}

/// Metric handles of one actor, resolved once: looking a labelled metric up
/// per record would allocate its labels on the hot path.
struct ActorMetrics {
    consumed: metrics::Counter,
    processing: metrics::Histogram,
    event_lag: metrics::Histogram,
    state_entries: metrics::Gauge,
    state_bytes: metrics::Gauge,
}

impl ActorMetrics {
    fn new(service: &str, assignment: &PartitionAssignment) -> Self {
        let service = service.to_owned();
        let topic = &assignment.topic;
        let state_labels = [
            ("service", service.clone()),
            ("topic", topic.clone()),
            ("partition", assignment.partition.to_string()),
            ("sub_partition", assignment.sub_partition.to_string()),
        ];
        ActorMetrics {
            consumed: metrics::counter!(Metric::RecordsConsumed.name(), "service" => service.clone(), "topic" => topic.to_owned()),
            processing: metrics::histogram!(Metric::ProcessingSeconds.name(), "service" => service.clone()),
            event_lag: metrics::histogram!(Metric::EventLagSeconds.name(), "service" => service.clone()),
            state_entries: metrics::gauge!(Metric::StateEntries.name(), &state_labels),
            state_bytes: metrics::gauge!(Metric::StateBytes.name(), &state_labels),
        }
    }
}

/// Everything an actor needs, shared by all actors of a worker.
pub struct ActorEnv {
    /// Settings.
    pub settings: WorkerSettings,
    /// Output producer.
    pub producer: Arc<OutputProducer>,
    /// Codec, when the worker decodes values.
    pub codec: Option<Arc<Codec>>,
}

/// Runs an actor until it is drained or its channel closes.
pub async fn run_actor<F: StepFactory>(
    env: Arc<ActorEnv>,
    factory: Arc<F>,
    assignment: PartitionAssignment,
    link: ActorLink,
    mut inbox: mpsc::UnboundedReceiver<ActorMessage>,
) {
    let creating = {
        let factory = Arc::clone(&factory);
        let assignment = assignment.clone();
        tokio::task::spawn_blocking(move || factory.create(&assignment)).await
    };
    let mut step = match creating {
        Ok(Ok(step)) => Some(step),
        Ok(Err(error)) => {
            set_fatal(
                &link,
                format!(
                    "creating the step for {}-{}: {error}",
                    assignment.topic, assignment.partition
                ),
            );
            None
        }
        Err(join_error) => {
            set_fatal(
                &link,
                format!(
                    "step factory panicked for {}-{}: {join_error}",
                    assignment.topic, assignment.partition
                ),
            );
            None
        }
    };
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut emitter = Emitter::default();
    let actor_metrics = ActorMetrics::new(&env.settings.service, &assignment);
    while let Some(message) = inbox.recv().await {
        match message {
            ActorMessage::Record(record, bytes) => {
                let token = AckToken::new(
                    Arc::clone(&link.tracker),
                    record.offset(),
                    Arc::clone(&outstanding),
                );
                let skip = step.is_none()
                    || link.revoking.load(Ordering::Acquire)
                    || link.fatal.lock().is_some();
                if skip {
                    token.abandon();
                } else if let Some(step) = step.as_mut() {
                    handle_record(
                        &env,
                        &link,
                        step,
                        &record,
                        token,
                        &mut emitter,
                        &actor_metrics,
                    )
                    .await;
                    actor_metrics.state_entries.set(step.state_entries() as f64);
                    actor_metrics.state_bytes.set(step.state_bytes() as f64);
                }
                link.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
            ActorMessage::Drain(reply) => {
                let deadline = Instant::now() + env.settings.revoke_deadline;
                while outstanding.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if let Some(step) = step.as_mut() {
                    let drained = outstanding.load(Ordering::Acquire) == 0;
                    tokio::task::block_in_place(|| step.on_revoke(drained));
                }
                let _ = reply.send(());
                return;
            }
        }
    }
}

fn set_fatal(link: &ActorLink, reason: String) {
    error!(%reason, "worker stopping");
    link.fatal.lock().get_or_insert(reason);
}

async fn handle_record<S: Step>(
    env: &ActorEnv,
    link: &ActorLink,
    step: &mut S,
    record: &OwnedMessage,
    token: AckToken,
    emitter: &mut Emitter,
    actor_metrics: &ActorMetrics,
) {
    let settings = &env.settings;
    actor_metrics.consumed.increment(1);
    let headers: Vec<(String, Vec<u8>)> = record
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut backoff = settings.retry_initial_backoff;
    loop {
        let started = Instant::now();
        let outcome = match resolve_writer(env, record).await {
            Ok(writer) => {
                let input = InputRecord {
                    topic: record.topic(),
                    partition: record.partition(),
                    offset: record.offset(),
                    timestamp_ms: record.timestamp().to_millis(),
                    key: record.key(),
                    value: record.payload(),
                    headers: &headers,
                    writer,
                };
                emitter.clear();
                // Dropping the step's future is how a slow attempt is cut
                // off; steps are cancel-safe by contract (see `Step`).
                tokio::time::timeout(settings.processing_timeout, step.process(&input, emitter))
                    .await
                    .unwrap_or_else(|_| {
                        Err(StepError::transient(
                            "processing_timeout",
                            format!(
                                "processing took longer than {:?}",
                                settings.processing_timeout
                            ),
                        ))
                    })
            }
            Err(error) => Err(error),
        };
        actor_metrics
            .processing
            .record(started.elapsed().as_secs_f64());
        let error = match outcome {
            Ok(()) => {
                if let Some(event_time_ms) = emitter.event_time_ms {
                    let now_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis() as i64);
                    actor_metrics
                        .event_lag
                        .record((now_ms - event_time_ms).max(0) as f64 / 1000.0);
                }
                for output in emitter.outputs.drain(..) {
                    send_with_backpressure(&env.producer, &output, &token).await;
                }
                return;
            }
            Err(error) => error,
        };
        emitter.clear(); // a failed attempt's outputs never leave
        match settings.action_for(&error) {
            FailureAction::Retry => {
                if link.revoking.load(Ordering::Acquire) || link.fatal.lock().is_some() {
                    token.abandon();
                    return;
                }
                metrics::counter!(Metric::Retries.name(), "service" => settings.service.clone(), "reason" => error.kind).increment(1);
                warn!(offset = record.offset(), reason = error.kind, %error, ?backoff, "failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.retry_max_backoff);
            }
            FailureAction::DeadLetter => {
                metrics::counter!(Metric::DeadLettered.name(), "service" => settings.service.clone(), "topic" => record.topic().to_owned(), "reason" => error.kind).increment(1);
                warn!(topic = record.topic(), partition = record.partition(), offset = record.offset(), reason = error.kind, %error, "dead-lettered record");
                let dead = dead_letter_record(settings, record, &headers, &error);
                send_with_backpressure(&env.producer, &dead, &token).await;
                return;
            }
            FailureAction::Stop => {
                token.abandon();
                set_fatal(
                    link,
                    format!(
                        "{}-{} offset {}: {error}",
                        record.topic(),
                        record.partition(),
                        record.offset()
                    ),
                );
                return;
            }
        }
    }
}

async fn resolve_writer(
    env: &ActorEnv,
    record: &OwnedMessage,
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

async fn send_with_backpressure(
    producer: &OutputProducer,
    output: &crate::step::OutputRecord,
    token: &AckToken,
) {
    // Changelog follow-ups first: the gap between an output and its
    // follow-up is what a crash re-emits, so it must stay short.
    while producer.followups_lagging() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        match producer.send(output, token) {
            Err(SendError::QueueFull) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(SendError::Failed(error)) => {
                error!(%error, topic = %output.topic, "output could not be queued; partition will stop committing");
                return;
            }
            Ok(()) => return,
        }
    }
}
