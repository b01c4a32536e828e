//! One input partition loaded into a store in batches, through the
//! runtime's batching (`adpipe_runtime::batching`): records are held until
//! their batch is written, so the group's commit never passes a record the
//! store has not acknowledged; a failing store fails the write (tried again
//! with backoff) and the partition's queue fills and is paused — memory
//! stays bounded by the batch and queue limits, nothing is skipped.
//!
//! Records the store refuses for good go to the dead-letter topic with the
//! store's reason, acknowledged before the batch counts as done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adpipe_runtime::batching::{BatchStep, Span};
use adpipe_runtime::dead_letter::{Coordinates, Refused, refused_record};
use adpipe_runtime::telemetry::{Described, MetricKind};
use adpipe_runtime::{InputRecord, OutputRecord, StepError};
use tracing::warn;

use crate::record::{Identity, Source};
use crate::sink::{Pending, Sink};

/// Every loader's metrics (some only its sink records), declared when a
/// step is made so /metrics names them before the first fault.
const METRICS: [Described; 7] = [
    Described {
        name: "adpipe_loader_records_total",
        kind: MetricKind::Counter,
        help: "Records the store acknowledged, by sink and topic.",
    },
    Described {
        name: "adpipe_loader_write_seconds",
        kind: MetricKind::Summary,
        help: "Time to write one batch, seconds.",
    },
    Described {
        name: "adpipe_loader_write_failures_total",
        kind: MetricKind::Counter,
        help: "Batches not written (tried again), by sink and kind.",
    },
    Described {
        name: "adpipe_loader_refused_total",
        kind: MetricKind::Counter,
        help: "Records the store refused for good (dead-lettered), by sink and reason.",
    },
    Described {
        name: "adpipe_loader_item_retries_total",
        kind: MetricKind::Counter,
        help: "Bulk items Elasticsearch asked to retry (429), tried again.",
    },
    Described {
        name: "adpipe_loader_file_bytes_total",
        kind: MetricKind::Counter,
        help: "Bytes of finished files.",
    },
    Described {
        name: "adpipe_loader_profile_expired_total",
        kind: MetricKind::Counter,
        help: "Profile entries already past their TTL, not written.",
    },
];

/// Where a step sends what the store refused, and its labels.
#[derive(Debug, Clone)]
pub struct StepTarget {
    /// The sink's name (metric label).
    pub sink: &'static str,
    /// The dead-letter topic.
    pub dead_letter_topic: Arc<str>,
    /// The service name in dead-letter headers.
    pub service: String,
    /// Bound of one write.
    pub write_timeout: Duration,
}

/// The loading step of one input partition.
pub struct LoaderStep<S: Sink> {
    sink: S,
    topic: Arc<str>,
    target: StepTarget,
}

impl<S: Sink> LoaderStep<S> {
    /// A step writing `topic`'s records through `sink`.
    pub fn new(sink: S, topic: &str, target: StepTarget) -> Self {
        adpipe_runtime::telemetry::describe(&METRICS);
        LoaderStep {
            sink,
            topic: Arc::from(topic),
            target,
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }
}

impl<S: Sink> BatchStep for LoaderStep<S> {
    type Batch = Vec<Pending<S::Item>>;

    fn add(
        &mut self,
        batch: &mut Vec<Pending<S::Item>>,
        record: &InputRecord<'_>,
    ) -> Result<(), StepError> {
        let identity = Identity::of(record)?;
        let item = self.sink.prepare(record, &identity)?;
        batch.push(Pending {
            source: Source::of(record, &self.topic),
            identity,
            item,
        });
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &Vec<Pending<S::Item>>,
        spans: &[Span],
    ) -> Result<Vec<OutputRecord>, StepError> {
        let sink_name = self.target.sink;
        let started = Instant::now();
        let refusals = match tokio::time::timeout(
            self.target.write_timeout,
            self.sink.write(batch, spans),
        )
        .await
        {
            Ok(Ok(refusals)) => refusals,
            Ok(Err(error)) => {
                metrics::counter!("adpipe_loader_write_failures_total", "sink" => sink_name, "kind" => error.kind)
                        .increment(1);
                warn!(sink = sink_name, kind = error.kind, %error, records = batch.len(), "a batch was not written; it is tried again");
                return Err(error);
            }
            Err(_) => {
                metrics::counter!("adpipe_loader_write_failures_total", "sink" => sink_name, "kind" => "timeout")
                        .increment(1);
                warn!(sink = sink_name, records = batch.len(), timeout = ?self.target.write_timeout, "a batch was not written in time; it is tried again");
                return Err(StepError::transient(
                    "sink_timeout",
                    format!(
                        "writing {} records took longer than {:?}",
                        batch.len(),
                        self.target.write_timeout
                    ),
                ));
            }
        };
        metrics::histogram!("adpipe_loader_write_seconds", "sink" => sink_name)
            .record(started.elapsed().as_secs_f64());
        let written = batch.len() - refusals.len();
        metrics::counter!("adpipe_loader_records_total", "sink" => sink_name, "topic" => self.topic.to_string())
            .increment(written as u64);
        let mut outputs = Vec::with_capacity(refusals.len());
        for refusal in refusals {
            let Some(pending) = batch.get(refusal.index) else {
                return Err(StepError::fatal(
                    "sink_bug",
                    format!(
                        "the sink refused record {} of {}",
                        refusal.index,
                        batch.len()
                    ),
                ));
            };
            metrics::counter!("adpipe_loader_refused_total", "sink" => sink_name, "reason" => refusal.kind)
                .increment(1);
            let source = &pending.source;
            outputs.push(refused_record(
                &self.target.dead_letter_topic,
                &self.target.service,
                Refused {
                    source: Coordinates {
                        topic: &source.topic,
                        partition: source.partition,
                        offset: source.offset,
                    },
                    key: source.key.clone(),
                    value: source.value.clone(),
                    headers: &source.headers,
                    reason: refusal.kind,
                    error: &refusal.reason,
                },
            ));
        }
        Ok(outputs)
    }
}
