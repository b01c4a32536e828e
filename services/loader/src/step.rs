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
use crate::sink::{Pending, Sink, Turns};

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
    /// Bound of one write, its wait for a turn included.
    pub write_timeout: Duration,
    /// The process's turns at writing: every partition's step shares them,
    /// so a backlog over many partitions sends the store a few writes at
    /// a time instead of one per partition at once (Elasticsearch answered
    /// a backlog of 48 partitions' batches with 429s, and kept indexing the
    /// batches the loader had given up on: the 10M chaos run).
    pub turns: Turns,
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
        if self.sink.holds(record.offset) {
            // Read again after a restart from a commit behind the store
            // (`Sink::holds`): only a bad record had anything left to do.
            return Ok(());
        }
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
        // The wait for a turn is inside the bound: the whole write must end
        // below the runtime's processing timeout, and an abandoned wait
        // costs the store nothing.
        let write = self.sink.write(batch, spans, &self.target.turns);
        let refusals = match tokio::time::timeout(self.target.write_timeout, write).await {
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
                warn!(sink = sink_name, records = batch.len(), timeout = ?self.target.write_timeout, "a batch was not written in time (its turn included); it is tried again");
                return Err(StepError::transient(
                    "sink_timeout",
                    format!(
                        "writing {} records (waiting for a turn included) took longer than {:?}",
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

    fn on_revoke(&mut self, drained: bool) {
        let _ = drained;
        self.sink.on_revoke();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A store that takes 50 ms per write and notes how many writes it
    /// had at once.
    struct CountingSink {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Sink for CountingSink {
        type Item = ();

        fn prepare(&mut self, _: &InputRecord<'_>, _: &Identity) -> Result<(), StepError> {
            Ok(())
        }

        async fn write(
            &mut self,
            _: &[Pending<()>],
            _: &[Span],
            turns: &Turns,
        ) -> Result<Vec<crate::sink::Refusal>, StepError> {
            let _turn = crate::sink::take_turn(turns).await?;
            /// Ends the write's count also when the timeout cuts it off.
            struct Writing(Arc<AtomicUsize>);
            impl Drop for Writing {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            let _writing = Writing(Arc::clone(&self.now));
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Vec::new())
        }
    }

    fn pending(partition: i32) -> Vec<Pending<()>> {
        vec![Pending::for_test(
            "t",
            partition,
            0,
            (format!("e{partition}"), 0),
            (),
        )]
    }

    /// Eight partitions' steps write at once over `turns` turns with a
    /// write timeout of `timeout`; returns (the most writes the store had
    /// at once, the error kinds of the writes that failed).
    async fn eight_partitions(turns: usize, timeout: Duration) -> (usize, Vec<&'static str>) {
        let most = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let target = StepTarget {
            sink: "counting",
            dead_letter_topic: Arc::from("dlq.loader"),
            service: "loader".to_owned(),
            write_timeout: timeout,
            turns: Arc::new(tokio::sync::Semaphore::new(turns)),
        };
        let writes = (0..8).map(|partition| {
            let mut step = LoaderStep::new(
                CountingSink {
                    now: Arc::clone(&now),
                    most: Arc::clone(&most),
                },
                "t",
                target.clone(),
            );
            tokio::spawn(async move {
                BatchStep::write(&mut step, &pending(partition), &[])
                    .await
                    .err()
                    .map(|error| error.kind)
            })
        });
        let mut failed = Vec::new();
        for write in writes.collect::<Vec<_>>() {
            failed.extend(write.await.expect("joined"));
        }
        (most.load(Ordering::SeqCst), failed)
    }

    #[tokio::test]
    async fn the_partitions_of_a_process_take_turns_at_the_store() {
        let (most, failed) = eight_partitions(2, Duration::from_secs(5)).await;
        assert_eq!(most, 2, "two turns: two writes at a time");
        assert!(failed.is_empty(), "{failed:?}");
        // Switched off (a turn per partition): all eight at once, as the
        // Elasticsearch loader sent its backlog before.
        let (most, _) = eight_partitions(8, Duration::from_secs(5)).await;
        assert_eq!(most, 8);
    }

    #[tokio::test]
    async fn a_wait_for_a_turn_beyond_the_write_timeout_is_a_transient_timeout() {
        // One turn, 50 ms a write, 120 ms allowed: the first ones are
        // written, the rest time out waiting — tried again later, never
        // dead-lettered.
        let (most, failed) = eight_partitions(1, Duration::from_millis(120)).await;
        assert_eq!(most, 1);
        assert!((1..8).contains(&failed.len()), "{failed:?}");
        assert!(
            failed.iter().all(|kind| *kind == "sink_timeout"),
            "{failed:?}"
        );
    }
}
