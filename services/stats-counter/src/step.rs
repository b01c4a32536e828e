//! One partition of one input, counted in batches: each record is folded
//! into the open batch's increments ([`crate::aggregate`]); the batch is
//! written to PostgreSQL in one transaction with the partition's offset
//! moving by compare-and-set ([`crate::store`]), through the runtime's
//! batching (`adpipe_runtime::batching`: records committed to Kafka only
//! once their batch is written).
//!
//! Delivery contract: exactly once into PostgreSQL. A batch either commits
//! with its offset or not at all; the partition resumes from the stored
//! offset (`StatsFactory::stored_offsets`), so a record of a committed
//! batch is never counted again, and one of an unwritten batch is read
//! again. A write refused because the stored offset moved (`Fenced`: a
//! zombie, or a write cut off after it committed) stops the worker: the
//! restart resumes from PostgreSQL. Bad records (undecodable, absurd event
//! time, negative money, no ISO currency, an orphan without its reason
//! header) go to the dead-letter topic with the reason and add nothing.

use std::time::Duration;

use adpipe_events::{
    HEADER_ORPHAN_KIND, HEADER_ORPHAN_REASON, Impression, JoinedClick, JoinedConversion,
};
use adpipe_runtime::batching::{BatchStep, Span};
use adpipe_runtime::{EventTimePolicy, InputRecord, OutputRecord, StepError};
use serde::Deserialize;
use tracing::warn;

use crate::aggregate::{Closing, Increments, Rejected};
use crate::config::InputKind;
use crate::store::{OffsetAdvance, PgStore, StoreError, UpsertMethod};

/// Only the event time of an orphan (a click or a conversion).
#[derive(Deserialize)]
struct EventTime {
    event_time: i64,
}

/// Where and how a step writes.
pub struct Target {
    /// PostgreSQL URL.
    pub url: String,
    /// Schema of the tables.
    pub schema: String,
    /// Consumer group the offsets are stored under.
    pub group: String,
    /// Upsert method.
    pub method: UpsertMethod,
    /// Bound of one write.
    pub write_timeout: Duration,
    /// How long after its end a bucket counts as closed (for the
    /// corrections metric).
    pub closed_after: Duration,
}

/// The counting step of one input partition.
pub struct StatsStep {
    kind: InputKind,
    target: Target,
    policy: EventTimePolicy,
    /// The connection; `None` after a failure (reconnected at the next write).
    store: Option<PgStore>,
    /// The offset stored for this partition, what the next batch expects.
    stored: Option<i64>,
    /// Which buckets are closed, by this partition's event times.
    closing: Closing,
}

fn rejected(error: Rejected) -> StepError {
    StepError::poison(error.kind, error.message)
}

impl StatsStep {
    /// A step for an input of `kind` whose stored offset is `stored`.
    pub fn new(
        kind: InputKind,
        target: Target,
        policy: EventTimePolicy,
        store: Option<PgStore>,
        stored: Option<i64>,
    ) -> Self {
        StatsStep {
            closing: Closing::new(
                i64::try_from(target.closed_after.as_millis()).unwrap_or(i64::MAX),
            ),
            kind,
            target,
            policy,
            store,
            stored,
        }
    }

    /// Refuses an absurd event time; notes the buckets the event corrects.
    fn check_time(&mut self, batch: &mut Increments, event_time: i64) -> Result<(), StepError> {
        self.policy
            .check(event_time, adpipe_runtime::event_time::now_ms())?;
        for size in self.closing.observe(event_time) {
            *batch.corrections.entry(size).or_default() += 1;
        }
        Ok(())
    }
}

impl BatchStep for StatsStep {
    type Batch = Increments;

    fn add(&mut self, batch: &mut Increments, record: &InputRecord<'_>) -> Result<(), StepError> {
        match self.kind {
            InputKind::Impressions => {
                let impression: Impression = record.decode()?;
                self.check_time(batch, impression.event_time)?;
                batch.add_impression(&impression).map_err(rejected)
            }
            InputKind::JoinedClicks => {
                let joined: JoinedClick = record.decode()?;
                self.check_time(batch, joined.click.event_time)?;
                batch.add_click(&joined).map_err(rejected)
            }
            InputKind::JoinedConversions => {
                let joined: JoinedConversion = record.decode()?;
                self.check_time(batch, joined.conversion.event_time)?;
                batch.add_conversion(&joined).map_err(rejected)
            }
            InputKind::Orphans => {
                let header = |name: &str| {
                    record
                        .header(name)
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .filter(|value| !value.is_empty())
                        .ok_or_else(|| {
                            StepError::poison(
                                "orphan_without_reason",
                                format!("an orphan without the {name} header"),
                            )
                        })
                };
                let (kind, reason) = (header(HEADER_ORPHAN_KIND)?, header(HEADER_ORPHAN_REASON)?);
                let time: EventTime = record.decode()?;
                self.check_time(batch, time.event_time)?;
                batch.add_orphan(time.event_time, kind, reason);
                Ok(())
            }
        }
    }

    async fn write(
        &mut self,
        batch: &Increments,
        spans: &[Span],
    ) -> Result<Vec<OutputRecord>, StepError> {
        // One input partition per task: one span.
        let offsets: Vec<OffsetAdvance> = spans
            .iter()
            .map(|span| OffsetAdvance {
                topic: span.topic.clone(),
                partition: span.partition,
                expected: self.stored,
                next: span.last + 1,
            })
            .collect();
        let Target {
            url,
            schema,
            group,
            method,
            write_timeout,
            ..
        } = &self.target;
        let attempt = async {
            let mut store = match self.store.take() {
                Some(store) if !store.is_closed() => store,
                _ => PgStore::connect(url, schema).await?,
            };
            let written = store.commit(group, &offsets, batch, *method).await;
            Ok::<_, StoreError>((store, written?))
        };
        match tokio::time::timeout(*write_timeout, attempt).await {
            Ok(Ok((store, _totals))) => {
                self.store = Some(store);
                if let Some(last) = offsets.last() {
                    self.stored = Some(last.next);
                }
                // Counted once written: an abandoned batch is read again.
                for (size, count) in &batch.corrections {
                    metrics::counter!("adpipe_stats_corrections_total", "bucket_size" => size.name())
                        .increment(*count);
                }
                Ok(Vec::new())
            }
            Ok(Err(fenced @ StoreError::Fenced { .. })) => {
                Err(StepError::fatal("offsets_fenced", fenced.to_string()))
            }
            Ok(Err(error)) => {
                warn!(%error, "writing a stats batch failed; it is tried again");
                Err(StepError::transient("postgres", error.to_string()))
            }
            Err(_) => Err(StepError::transient(
                "postgres_timeout",
                format!("a stats batch took longer than {write_timeout:?} to write"),
            )),
        }
    }
}
