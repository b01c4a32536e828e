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
//! zombie) stops the worker: the restart resumes from PostgreSQL. A
//! retried batch finding the stored offset at exactly its own end knows
//! its earlier attempt committed (its answer lost) and counts as written.
//! Bad records (undecodable, absurd event time, negative money, no ISO
//! currency, an orphan without its reason header) go to the dead-letter
//! topic with the reason and add nothing. Records before the stored offset
//! that the group's commit is behind are read again (their totals sent
//! again, never counted again), and a bad one among them dead-lettered
//! again: its dead letter may have been cut off by a kill -9 after the
//! batch after it was stored. Not again: one refused for an event time
//! ahead of the clock, a decision made against the clock when it was first
//! read (one before the policy's floor is refused again).

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use adpipe_codec::Encoder;
use adpipe_events::{
    HEADER_ORPHAN_KIND, HEADER_ORPHAN_REASON, Impression, JoinedClick, JoinedConversion, StatsTotal,
};
use adpipe_runtime::batching::{BatchStep, Span};
use adpipe_runtime::{EventTimePolicy, InputRecord, OutputRecord, StepError};
use serde::Deserialize;
use tracing::warn;

use crate::aggregate::{BucketSize, Closing, Increments, Rejected, RowKey};
use crate::config::InputKind;
use crate::store::{OffsetAdvance, PgStore, StoreError, Total, UpsertMethod};

/// Only the event time of an orphan (a click or a conversion).
#[derive(Deserialize)]
struct EventTime {
    event_time: i64,
}

/// Where the totals of the rows a batch changed are sent.
#[derive(Clone)]
pub struct TotalsOutput {
    /// The compacted topic (`stats.totals`).
    pub topic: Arc<str>,
    /// Its value encoder (registered under `<topic>-value`).
    pub encoder: Arc<Encoder<StatsTotal>>,
}

/// An open batch: what it counts, and the rows whose totals it only sends
/// again (records before the stored offset, read again because the group's
/// commit was behind it: their totals may never have reached the topic).
#[derive(Debug, Default)]
pub struct StatsBatch {
    /// Increments of the records at or after the stored offset.
    pub counted: Increments,
    /// The rows of records already counted, to send their totals again.
    pub resend: Increments,
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
    /// Where totals go (`None`: nowhere).
    pub totals: Option<TotalsOutput>,
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

/// Events counted into a bucket already closed (`closed_after` past its
/// end): the bucket's row was corrected, never dropped.
const CORRECTIONS: &str = "adpipe_stats_corrections_total";

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
        // From 0, so the first correction shows as an increase.
        for size in BucketSize::ALL {
            metrics::counter!(CORRECTIONS, "bucket_size" => size.name()).increment(0);
        }
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

    /// Refuses an absurd event time and notes the buckets the event
    /// corrects — for a record counted now (`count`); one only re-read for
    /// its rows is refused again only for what does not depend on the
    /// clock.
    fn event_time(
        &mut self,
        batch: &mut Increments,
        event_time: i64,
        count: bool,
    ) -> Result<(), StepError> {
        if !count {
            // Read again: only the part of the policy that does not depend
            // on the clock (a time before its floor) is decided again — a
            // time ahead of the clock was judged against the clock of the
            // first reading. (`now` at its largest: no time is ahead of it.)
            return self.policy.check(event_time, i64::MAX);
        }
        self.policy
            .check(event_time, adpipe_runtime::event_time::now_ms())?;
        for size in self.closing.observe(event_time) {
            *batch.corrections.entry(size).or_default() += 1;
        }
        Ok(())
    }
}

impl StatsStep {
    /// Folds `record` into `increments`; `count` says whether it is counted
    /// now (else only its rows are wanted: no corrections noted).
    fn fold(
        &mut self,
        increments: &mut Increments,
        record: &InputRecord<'_>,
        count: bool,
    ) -> Result<(), StepError> {
        match self.kind {
            InputKind::Impressions => {
                let impression: Impression = record.decode()?;
                self.event_time(increments, impression.event_time, count)?;
                increments.add_impression(&impression).map_err(rejected)
            }
            InputKind::JoinedClicks => {
                let joined: JoinedClick = record.decode()?;
                self.event_time(increments, joined.click.event_time, count)?;
                increments.add_click(&joined).map_err(rejected)
            }
            InputKind::JoinedConversions => {
                let joined: JoinedConversion = record.decode()?;
                self.event_time(increments, joined.conversion.event_time, count)?;
                increments.add_conversion(&joined).map_err(rejected)
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
                let time_only: EventTime = record.decode()?;
                self.event_time(increments, time_only.event_time, count)?;
                increments.add_orphan(time_only.event_time, kind, reason);
                Ok(())
            }
        }
    }

    /// The current totals of every row `batch` touched (counted or to send
    /// again), read without writing.
    async fn current_totals(
        &mut self,
        batch: &StatsBatch,
    ) -> Result<HashMap<RowKeyText, Total>, StepError> {
        let Target { url, schema, .. } = &self.target;
        let store = match self.store.take() {
            Some(store) if !store.is_closed() => store,
            _ => PgStore::connect(url, schema)
                .await
                .map_err(|error| StepError::transient("postgres", error.to_string()))?,
        };
        let mut totals = HashMap::new();
        for increments in [&batch.counted, &batch.resend] {
            if increments.is_empty() {
                continue;
            }
            for total in store
                .current(increments)
                .await
                .map_err(|error| StepError::transient("postgres", error.to_string()))?
            {
                totals.entry(RowKeyText::of(&total)).or_insert(total);
            }
        }
        self.store = Some(store);
        Ok(totals)
    }

    /// The records of `totals` for the totals topic.
    fn total_records(
        &self,
        totals: HashMap<RowKeyText, Total>,
    ) -> Result<Vec<OutputRecord>, StepError> {
        let Some(output) = &self.target.totals else {
            return Ok(Vec::new());
        };
        totals
            .into_iter()
            .map(|(key, total)| {
                let value = output
                    .encoder
                    .encode(&stats_total(total))
                    .map_err(|error| StepError::fatal("totals_encoding", error.to_string()))?;
                Ok(OutputRecord::sharing(
                    &output.topic,
                    Some(key.0.into_bytes().into()),
                    Some(value.into()),
                ))
            })
            .collect()
    }
}

/// A row's key on the totals topic: its size, bucket and dimensions as
/// text (`minute|1763700000000|1000|50000|10|700|site|ssp|PL|dc1|EUR`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKeyText(pub String);

impl RowKeyText {
    /// The key of `total`'s row.
    pub fn of(total: &Total) -> RowKeyText {
        RowKeyText::of_key(&total.key)
    }

    /// The key of the row `key`.
    pub fn of_key(key: &RowKey) -> RowKeyText {
        let d = &key.dimensions;
        RowKeyText(format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            key.size.name(),
            key.bucket_ms,
            d.campaign_id,
            d.creative_id,
            d.advertiser_id,
            d.publisher_id,
            d.site,
            d.ssp,
            d.country,
            d.dc,
            d.currency
        ))
    }
}

fn stats_total(total: Total) -> StatsTotal {
    let Total {
        key,
        counts,
        version,
    } = total;
    let d = key.dimensions;
    StatsTotal {
        bucket_size: key.size.name().to_owned(),
        bucket_start: key.bucket_ms,
        campaign_id: d.campaign_id,
        creative_id: d.creative_id,
        advertiser_id: d.advertiser_id,
        publisher_id: d.publisher_id,
        site: d.site,
        ssp: d.ssp,
        country: d.country,
        dc: d.dc,
        currency: d.currency,
        impressions: counts.impressions,
        clicks: counts.clicks,
        conversions: counts.conversions,
        cost_micros: counts.cost_micros,
        conversion_value_micros: counts.conversion_value_micros,
        version,
    }
}

impl BatchStep for StatsStep {
    type Batch = StatsBatch;

    fn add(&mut self, batch: &mut StatsBatch, record: &InputRecord<'_>) -> Result<(), StepError> {
        if self.stored.is_some_and(|stored| record.offset < stored) {
            // Counted before; read again because the group's commit is
            // behind it. A bad one is dead-lettered again: its first dead
            // letter may have been cut off by a crash after the batch
            // holding the records after it was stored.
            let mut rows = Increments::default();
            self.fold(&mut rows, record, false)?;
            batch.resend.merge(rows);
            Ok(())
        } else {
            self.fold(&mut batch.counted, record, true)
        }
    }

    async fn write(
        &mut self,
        batch: &StatsBatch,
        spans: &[Span],
    ) -> Result<Vec<OutputRecord>, StepError> {
        // One input partition per task: one span. Records before the stored
        // offset are not counted again; a batch of only those moves nothing.
        let offsets: Vec<OffsetAdvance> = spans
            .iter()
            .filter(|span| self.stored.is_none_or(|stored| span.last >= stored))
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
            let mut totals = HashMap::new();
            if !offsets.is_empty() {
                for total in store
                    .commit(group, &offsets, &batch.counted, *method)
                    .await?
                {
                    totals.insert(RowKeyText::of(&total), total);
                }
            }
            if !batch.resend.is_empty() {
                for total in store.current(&batch.resend).await? {
                    totals.entry(RowKeyText::of(&total)).or_insert(total);
                }
            }
            Ok::<_, StoreError>((store, totals))
        };
        match tokio::time::timeout(*write_timeout, attempt).await {
            Ok(Ok((store, totals))) => {
                self.store = Some(store);
                if let Some(last) = offsets.last() {
                    self.stored = Some(last.next);
                }
                // Counted once written: an abandoned batch is read again.
                for (size, count) in &batch.counted.corrections {
                    metrics::counter!(CORRECTIONS, "bucket_size" => size.name()).increment(*count);
                }
                self.total_records(totals)
            }
            // Our own earlier attempt of this very batch committed (its
            // answer was lost: a timeout) — the batch is sealed, so the
            // stored offset being exactly its end means it is written.
            Ok(Err(StoreError::Fenced { found, .. }))
                if offsets.len() == 1 && found == Some(offsets[0].next) =>
            {
                tracing::info!(
                    next = offsets[0].next,
                    "a batch whose write seemed to fail had committed; not counting it again"
                );
                self.stored = found;
                let totals = self.current_totals(batch).await?;
                self.total_records(totals)
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
