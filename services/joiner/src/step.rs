//! The join step of one partition: impressions are stored, clicks joined
//! with their impression, conversions with their click and its impression;
//! what finds no partner waits a bounded time, held, then goes out as an
//! orphan with its reason (design.md, "Join and stats rules").
//!
//! Delivery contract:
//! - an impression's only output is its changelog record: the impression is
//!   done when the changelog has it;
//! - a joined click goes to `joined.clicks`, and its state (by id, and in
//!   the user's last clicks) to the clicks changelog *after* that output is
//!   acknowledged (`OutputRecord::then`), so the changelog never holds a
//!   click whose join may be missing;
//! - a waiting click or conversion is **held** (its offset is not
//!   committed): a crash or rebalance while it waits makes it be read
//!   again, never lost; its wait ends with the partner's arrival (join) or
//!   the timer (orphan), and the held record is released with that output.
//!
//! - every output carries its input record's coordinates (`adpipe.input`);
//!   a restored step is given the outputs already emitted for the clicks
//!   and conversions it will read again (`adpipe_runtime::emitted`): such a
//!   record keeps that first decision — a click's is stored again, from the
//!   joined output itself or as an orphan — and is not emitted twice.
//!
//! The stores are written when a record is processed, before its output
//! is acknowledged ([`adpipe_state::Recovery::LocalAhead`]): replaying the
//! input over them writes the same values again, so a restore is local data
//! plus the changelog from the last mark.

use std::collections::HashMap;
use std::sync::Arc;

use adpipe_codec::{Encoder, WriterSchema};
use adpipe_events::{
    Attribution, Click, Conversion, EventKind, Impression, JoinedClick, JoinedConversion,
};
use adpipe_runtime::emitted::{self, AlreadyEmitted, EarlierOutput};
use adpipe_runtime::telemetry::Metric;
use adpipe_runtime::{
    Bytes, Emitter, Headers, Held, InputRecord, OutputRecord, Step, StepError, Timer, TimerClock,
};
use adpipe_state::changelog::ChangelogReader;
use adpipe_state::metrics::StoreMetrics;
use adpipe_state::{StateError, StateStore};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::rules::{OrphanReason, last_click, named_click_verdict};
use crate::state::{ChangelogEntry, JoinState, StoredClick};
use crate::{HEADER_ORPHAN_KIND, HEADER_ORPHAN_REASON};

/// Input indices: the order of the joiner's input group.
pub const IMPRESSIONS: usize = 0;
/// Clicks input.
pub const CLICKS: usize = 1;
/// Conversions input.
pub const CONVERSIONS: usize = 2;

/// Records between two expiry checks of the stores.
const EXPIRE_EVERY: u32 = 4_096;

/// The topics a step writes, shared by every output.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `joined.clicks`.
    pub joined_clicks: Arc<str>,
    /// `joined.conversions`.
    pub joined_conversions: Arc<str>,
    /// `joined.orphans`.
    pub orphans: Arc<str>,
    /// The impressions store's changelog.
    pub impressions_changelog: Arc<str>,
    /// The clicks store's changelog.
    pub clicks_changelog: Arc<str>,
}

/// The windows and the wait.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// How long after its impression a click may come (the impressions'
    /// TTL).
    pub click_ms: i64,
    /// How long after its click a conversion may come (the clicks' TTL).
    pub attribution_ms: i64,
    /// How long a click or conversion waits for its partner.
    pub wait_ms: i64,
    /// Which clock the wait runs on.
    pub wait_clock: TimerClock,
}

/// The registered encoders of the joined outputs.
pub struct Encoders {
    /// `joined.clicks` values.
    pub joined_click: Encoder<JoinedClick>,
    /// `joined.conversions` values.
    pub joined_conversion: Encoder<JoinedConversion>,
}

/// A record waiting for its partner, held.
struct Waiting<E> {
    event: E,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
    held: Held,
    timer: u64,
}

/// Where a timer's waiting record sits.
#[derive(Debug, Clone)]
enum Waiter {
    /// A click, under its impression id.
    Click(String),
    /// A conversion, under the click id it names.
    NamedClick(String),
    /// A conversion naming no click, under its user and advertiser.
    LastClick(String, i64),
}

/// Records waiting, by what they wait for.
#[derive(Default)]
struct Pending {
    clicks: HashMap<String, Vec<Waiting<Click>>>,
    named: HashMap<String, Vec<Waiting<Conversion>>>,
    last: HashMap<(String, i64), Vec<Waiting<Conversion>>>,
    timers: HashMap<u64, Waiter>,
    next_timer: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.timers.len()
    }
}

/// The counters a step reports.
struct JoinMetrics {
    joined_clicks: metrics::Counter,
    joined_by_click_id: metrics::Counter,
    joined_by_last_click: metrics::Counter,
    orphans: HashMap<(&'static str, OrphanReason), metrics::Counter>,
    conflicts: metrics::Counter,
    expired_impressions: metrics::Counter,
    waiting: metrics::Gauge,
    impressions_store: StoreMetrics,
    clicks_store: StoreMetrics,
}

impl Drop for JoinMetrics {
    /// The partition went: nothing waits here any more (the series stay).
    fn drop(&mut self) {
        self.waiting.set(0.0);
    }
}

impl JoinMetrics {
    fn new(partition: i32, caps: (u64, u64)) -> Self {
        let joins = |kind: &str, attribution: &str| metrics::counter!("adpipe_joiner_joins_total", "kind" => kind.to_owned(), "attribution" => attribution.to_owned());
        let mut orphans = HashMap::new();
        for kind in ["click", "conversion"] {
            for reason in OrphanReason::ALL {
                orphans.insert(
                    (kind, reason),
                    metrics::counter!("adpipe_joiner_orphans_total", "kind" => kind, "reason" => reason.name()),
                );
            }
        }
        JoinMetrics {
            joined_clicks: joins("click", "impression"),
            joined_by_click_id: joins("conversion", "click_id"),
            joined_by_last_click: joins("conversion", "last_click"),
            orphans,
            conflicts: metrics::counter!("adpipe_joiner_conflicts_total", "kind" => "impression"),

            expired_impressions: metrics::counter!("adpipe_late_records_total", "service" => "joiner", "topic" => "impressions", "reason" => "outside_window"),
            waiting: metrics::gauge!("adpipe_joiner_waiting", "partition" => partition.to_string()),
            impressions_store: StoreMetrics::new("joiner", "impressions", partition, caps.0),
            clicks_store: StoreMetrics::new("joiner", "clicks", partition, caps.1),
        }
    }

    fn orphan(&self, kind: &'static str, reason: OrphanReason) {
        if let Some(counter) = self.orphans.get(&(kind, reason)) {
            counter.increment(1);
        }
    }
}

/// Where and how often a step checkpoints its stores: on revoke, and every
/// `interval` while it works, so that a restart after kill -9 on the same
/// host replays only the changelog's tail since the last mark.
pub struct Checkpoints {
    /// Reads the changelogs' ends.
    pub reader: ChangelogReader,
    /// Between two checkpoints while processing.
    pub interval: std::time::Duration,
}

/// Joins one partition.
pub struct JoinStep {
    partition: i32,
    topics: Topics,
    windows: Windows,
    encoders: Arc<Encoders>,
    state: JoinState,
    pending: Pending,
    /// The highest event time seen, which expiry follows.
    max_event_time: i64,
    since_expiry: u32,
    metrics: JoinMetrics,
    checkpoints: Option<Checkpoints>,
    last_checkpoint: std::time::Instant,
    /// Outputs already in the output topics for records read again.
    already: AlreadyEmitted,
    /// Reads earlier `joined.clicks` records (parsed on first use: only a
    /// restored step that finds some needs it).
    joined_click_reader: std::sync::OnceLock<WriterSchema>,
}

/// The fields every event has, for ordering the inputs.
#[derive(Deserialize)]
struct EventTime {
    event_time: i64,
}

fn state_error(error: StateError) -> StepError {
    // A store that cannot read or write is a dependency failure: retried,
    // then the worker stops (never dead-letters good records).
    StepError::transient("state_store", error.to_string())
}

/// A chain of changelog records, each produced after the one before it is
/// acknowledged.
fn changelog_chain(
    topic: &Arc<str>,
    partition: i32,
    entries: Vec<ChangelogEntry>,
) -> Option<Box<OutputRecord>> {
    entries.into_iter().rev().fold(None, |then, (key, value)| {
        let mut record =
            OutputRecord::sharing(topic, Some(Bytes::from(key)), Some(Bytes::from(value)));
        record.partition = Some(partition);
        record.then = then;
        Some(Box::new(record))
    })
}

/// What to do with a conversion now.
enum ConversionOutcome {
    Join(Box<JoinedConversion>),
    Orphan(OrphanReason),
    Wait,
}

impl JoinStep {
    /// A step over restored state.
    pub fn new(
        partition: i32,
        topics: Topics,
        windows: Windows,
        encoders: Arc<Encoders>,
        state: JoinState,
        caps: (u64, u64),
    ) -> Self {
        JoinStep {
            partition,
            topics,
            windows,
            encoders,
            state,
            pending: Pending::default(),
            max_event_time: i64::MIN,
            since_expiry: 0,
            metrics: JoinMetrics::new(partition, caps),
            checkpoints: None,
            last_checkpoint: std::time::Instant::now(),
            already: AlreadyEmitted::none(),
            joined_click_reader: std::sync::OnceLock::new(),
        }
    }

    /// What the partition's outputs already hold for clicks and conversions
    /// that will be read again.
    pub fn with_already_emitted(mut self, already: AlreadyEmitted) -> Self {
        self.already = already;
        self
    }

    /// Checkpoints the stores on revoke.
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Records waiting for a partner.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    fn output(
        &self,
        topic: &Arc<str>,
        key: Option<Bytes>,
        value: Vec<u8>,
        headers: &Headers,
    ) -> OutputRecord {
        let mut record = OutputRecord::sharing(topic, key, Some(Bytes::from(value)));
        // Fixed partitioning: partition i of the inputs is partition i out.
        record.partition = Some(self.partition);
        record.headers = headers.clone();
        record
    }

    fn orphan_record(
        &self,
        kind: &'static str,
        reason: OrphanReason,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: &Headers,
    ) -> OutputRecord {
        self.metrics.orphan(kind, reason);
        let mut record = OutputRecord::sharing(&self.topics.orphans, key, value);
        record.partition = Some(self.partition);
        record.headers = headers.extended([
            (HEADER_ORPHAN_REASON, reason.name().as_bytes()),
            (HEADER_ORPHAN_KIND, kind.as_bytes()),
        ]);
        record
    }

    fn timer_at(&self, event_time: i64) -> i64 {
        match self.windows.wait_clock {
            TimerClock::Wall => adpipe_runtime::event_time::now_ms(),
            TimerClock::Event => event_time,
        }
        .saturating_add(self.windows.wait_ms)
    }

    fn new_timer(&mut self, out: &mut Emitter, event_time: i64, waiter: Waiter) -> u64 {
        self.pending.next_timer += 1;
        let id = self.pending.next_timer;
        out.set_timer(self.windows.wait_clock, self.timer_at(event_time), id);
        self.pending.timers.insert(id, waiter);
        id
    }

    fn after_event(&mut self, event_time: i64) -> Result<(), StepError> {
        self.max_event_time = self.max_event_time.max(event_time);
        self.since_expiry += 1;
        if self.since_expiry >= EXPIRE_EVERY {
            self.since_expiry = 0;
            self.expire().map_err(state_error)?;
        }
        self.metrics.waiting.set(self.pending.len() as f64);
        if let Some(checkpoints) = &self.checkpoints
            && self.last_checkpoint.elapsed() >= checkpoints.interval
        {
            self.last_checkpoint = std::time::Instant::now();
            // Blocking Kafka and disk IO (tens of ms, once an interval):
            // off the async path of the other tasks.
            tokio::task::block_in_place(|| self.checkpoint());
        }
        Ok(())
    }

    /// Marks both stores at their changelogs' current ends. Valid whatever
    /// is in flight: local data is written before its changelog record, so
    /// it always holds at least what the changelog holds.
    fn checkpoint(&mut self) {
        let Some(checkpoints) = &self.checkpoints else {
            return;
        };
        let partition = self.partition;
        let reader = &checkpoints.reader;
        checkpoint(
            reader,
            self.state.impressions_mut(),
            &self.topics.impressions_changelog,
            partition,
        );
        checkpoint(
            reader,
            self.state.clicks_mut(),
            &self.topics.clicks_changelog,
            partition,
        );
    }

    /// Drops the buckets that left the windows.
    fn expire(&mut self) -> Result<(), StateError> {
        let now = self.max_event_time;
        let impressions = self.state.impressions_mut();
        let expired = impressions.expire(now.saturating_sub(self.windows.click_ms))?;
        self.metrics
            .impressions_store
            .record(expired, impressions.stats());
        let clicks = self.state.clicks_mut();
        let expired = clicks.expire(now.saturating_sub(self.windows.attribution_ms))?;
        self.metrics.clicks_store.record(expired, clicks.stats());
        Ok(())
    }

    fn impression(&mut self, record: &InputRecord<'_>, out: &mut Emitter) -> Result<(), StepError> {
        let impression: Impression = record.decode()?;
        out.observe_event_time(impression.event_time)?;
        // Written with the compiled-in schema (the usual case): the datum
        // is already the stored form, so it is kept as it came.
        let datum = match (&record.writer, record.value) {
            (Some(writer), Some(value)) if self.state.is_internal_impression_schema(writer) => {
                Some(adpipe_codec::split_header(value)?.1)
            }
            _ => None,
        };
        let known = self
            .state
            .impression_entry(&impression.event_id)
            .map_err(state_error)?;
        let conflict = match &known {
            Some(stored) => !self
                .state
                .same_impression(stored, &impression, datum)
                .map_err(state_error)?,
            None => false,
        };
        if conflict {
            // The first one stays (joins must not depend on which copy
            // came last); the second is counted and dropped.
            warn!(impression_id = %impression.event_id, "an impression id came again with other contents; the first is kept");
            self.metrics.conflicts.increment(1);
        } else {
            // Put again even when known (a replay): the changelog record
            // may be the one a crash lost.
            match self
                .state
                .put_impression(&impression, datum)
                .map_err(state_error)?
            {
                Some((key, value)) => {
                    let mut record = OutputRecord::sharing(
                        &self.topics.impressions_changelog,
                        Some(Bytes::from(key)),
                        Some(Bytes::from(value)),
                    );
                    record.partition = Some(self.partition);
                    out.emit(record);
                }
                // Older than the click window: no click may join it.
                None => self.metrics.expired_impressions.increment(1),
            }
        }
        if let Some(waiting) = self.pending.clicks.remove(&impression.event_id) {
            for click in waiting {
                self.pending.timers.remove(&click.timer);
                self.join_click(click, &impression, out)?;
            }
        }
        self.after_event(impression.event_time)
    }

    /// Emits a held click's join and releases it.
    fn join_click(
        &mut self,
        waiting: Waiting<Click>,
        impression: &Impression,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let Waiting {
            event,
            key,
            headers,
            held,
            ..
        } = waiting;
        let (output, click) = self.joined_click_output(event, impression, key, &headers)?;
        out.emit_held(&held, output);
        held.release();
        self.conversions_waiting_for(&click, out)
    }

    /// The joined click's output (its changelog chained after it), stored.
    fn joined_click_output(
        &mut self,
        click: Click,
        impression: &Impression,
        key: Option<Bytes>,
        headers: &Headers,
    ) -> Result<(OutputRecord, Click), StepError> {
        let joined = JoinedClick {
            click,
            impression: impression.clone(),
        };
        let value = self
            .encoders
            .joined_click
            .encode(&joined)
            .map_err(|error| StepError::poison("encode", error.to_string()))?;
        let stored = StoredClick::Joined(joined);
        let changelog = self.state.put_click(&stored).map_err(state_error)?;
        let mut output = self.output(&self.topics.joined_clicks, key, value, headers);
        output.then = changelog_chain(&self.topics.clicks_changelog, self.partition, changelog);
        self.metrics.joined_clicks.increment(1);
        let StoredClick::Joined(joined) = stored else {
            unreachable!("stored as joined above")
        };
        Ok((output, joined.click))
    }

    fn click(&mut self, record: &InputRecord<'_>, out: &mut Emitter) -> Result<(), StepError> {
        let click: Click = record.decode()?;
        out.observe_event_time(click.event_time)?;
        let event_time = click.event_time;
        if let Some(earlier) = self.already.take(record.input, record.offset)
            && let Some(decision) = self.earlier_decision(&click, &earlier)
        {
            skipped_on_resume(&earlier.topic);
            self.store_earlier_decision(decision, out)?;
            return self.after_event(event_time);
        }
        let headers = emitted::stamped(record.headers, record);
        match self
            .state
            .impression(&click.impression_id)
            .map_err(state_error)?
        {
            Some(impression) => {
                let key = record.share(record.key);
                let (output, click) =
                    self.joined_click_output(click, &impression, key, &headers)?;
                out.emit(output);
                self.conversions_waiting_for(&click, out)?;
            }
            None => {
                let impression_id = click.impression_id.clone();
                let timer = self.new_timer(out, event_time, Waiter::Click(impression_id.clone()));
                let waiting = Waiting {
                    event: click,
                    key: record.share(record.key),
                    value: record.share(record.value),
                    headers,
                    held: out.hold(),
                    timer,
                };
                self.pending
                    .clicks
                    .entry(impression_id)
                    .or_default()
                    .push(waiting);
            }
        }
        self.after_event(event_time)
    }

    /// A click read again whose decision was emitted before a crash: the
    /// join as it was emitted, or an orphan. `None` (logged) if the joined
    /// output cannot be read: the click is then decided and emitted again.
    fn earlier_decision(&self, click: &Click, earlier: &EarlierOutput) -> Option<StoredClick> {
        if earlier.topic != *self.topics.joined_clicks {
            return Some(StoredClick::Orphan(click.clone()));
        }
        let read = || -> Result<JoinedClick, adpipe_codec::DecodeError> {
            let schema = match self.joined_click_reader.get() {
                Some(schema) => schema,
                None => {
                    let parsed = WriterSchema::parse(
                        self.encoders.joined_click.schema_id(),
                        EventKind::JoinedClick.schema().to_owned(),
                    )?;
                    self.joined_click_reader.get_or_init(|| parsed)
                }
            };
            let (_, datum) =
                adpipe_codec::split_header(earlier.value.as_deref().unwrap_or_default())?;
            schema.decode_datum(datum)
        };
        match read() {
            Ok(joined) => Some(StoredClick::Joined(joined)),
            Err(error) => {
                warn!(%error, click_id = %click.event_id, "an earlier joined click cannot be read; the click is joined again");
                None
            }
        }
    }

    /// Stores a decision emitted before a crash again (its changelog entry
    /// may be what was lost); conversions waiting for the click follow it.
    /// Nothing is emitted for the click itself.
    fn store_earlier_decision(
        &mut self,
        decision: StoredClick,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let changelog = self.state.put_click(&decision).map_err(state_error)?;
        if let Some(first) =
            changelog_chain(&self.topics.clicks_changelog, self.partition, changelog)
        {
            out.emit(*first);
        }
        let click = match decision {
            StoredClick::Joined(joined) => joined.click,
            StoredClick::Orphan(click) => click,
        };
        self.conversions_waiting_for(&click, out)
    }

    /// A click was stored (joined or orphan): conversions waiting for it,
    /// or for any click of its user on its advertiser, are decided again.
    fn conversions_waiting_for(
        &mut self,
        click: &Click,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let mut retry: Vec<Waiting<Conversion>> = self
            .pending
            .named
            .remove(&click.event_id)
            .unwrap_or_default();
        if let Some(StoredClick::Joined(joined)) =
            self.state.click(&click.event_id).map_err(state_error)?
        {
            let user = (click.user_id.clone(), joined.impression.advertiser_id);
            retry.extend(self.pending.last.remove(&user).unwrap_or_default());
        }
        for waiting in retry {
            match self.decide(&waiting.event)? {
                ConversionOutcome::Wait => self.wait_again(waiting),
                outcome => {
                    self.pending.timers.remove(&waiting.timer);
                    self.finish_conversion(waiting, outcome, out)?;
                }
            }
        }
        Ok(())
    }

    /// Puts a conversion back where it waits (its timer still runs).
    fn wait_again(&mut self, waiting: Waiting<Conversion>) {
        match self.pending.timers.get(&waiting.timer).cloned() {
            Some(Waiter::NamedClick(click_id)) => self
                .pending
                .named
                .entry(click_id)
                .or_default()
                .push(waiting),
            Some(Waiter::LastClick(user, advertiser)) => self
                .pending
                .last
                .entry((user, advertiser))
                .or_default()
                .push(waiting),
            Some(Waiter::Click(_)) | None => {
                // Not a conversion's timer: cannot happen; never lose it.
                let id = waiting.timer;
                self.pending.timers.insert(
                    id,
                    Waiter::LastClick(waiting.event.user_id.clone(), waiting.event.advertiser_id),
                );
                self.pending
                    .last
                    .entry((waiting.event.user_id.clone(), waiting.event.advertiser_id))
                    .or_default()
                    .push(waiting);
            }
        }
    }

    /// Emits a decided conversion (join or orphan) and releases it.
    fn finish_conversion(
        &mut self,
        waiting: Waiting<Conversion>,
        outcome: ConversionOutcome,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let Waiting {
            key,
            value,
            headers,
            held,
            ..
        } = waiting;
        let output = match outcome {
            ConversionOutcome::Join(joined) => {
                self.joined_conversion_output(*joined, key, &headers)?
            }
            ConversionOutcome::Orphan(reason) => {
                self.orphan_record("conversion", reason, key, value, &headers)
            }
            ConversionOutcome::Wait => return Ok(()),
        };
        out.emit_held(&held, output);
        held.release();
        Ok(())
    }

    fn joined_conversion_output(
        &self,
        joined: JoinedConversion,
        key: Option<Bytes>,
        headers: &Headers,
    ) -> Result<OutputRecord, StepError> {
        match joined.attribution {
            Attribution::ClickId => self.metrics.joined_by_click_id.increment(1),
            _ => self.metrics.joined_by_last_click.increment(1),
        }
        let value = self
            .encoders
            .joined_conversion
            .encode(&joined)
            .map_err(|error| StepError::poison("encode", error.to_string()))?;
        Ok(self.output(&self.topics.joined_conversions, key, value, headers))
    }

    /// Decides a conversion from the state as it is now.
    fn decide(&self, conversion: &Conversion) -> Result<ConversionOutcome, StepError> {
        let window = self.windows.attribution_ms;
        if let Some(click_id) = &conversion.click_id {
            return Ok(match self.state.click(click_id).map_err(state_error)? {
                Some(StoredClick::Joined(joined)) => {
                    match named_click_verdict(conversion, &joined.click, window) {
                        Ok(()) => ConversionOutcome::Join(Box::new(JoinedConversion {
                            conversion: conversion.clone(),
                            click: joined.click,
                            impression: joined.impression,
                            attribution: Attribution::ClickId,
                        })),
                        Err(reason) => ConversionOutcome::Orphan(reason),
                    }
                }
                Some(StoredClick::Orphan(click)) if click.user_id != conversion.user_id => {
                    ConversionOutcome::Orphan(OrphanReason::ClickUserMismatch)
                }
                Some(StoredClick::Orphan(_)) => {
                    ConversionOutcome::Orphan(OrphanReason::ImpressionNotFound)
                }
                None => ConversionOutcome::Wait,
            });
        }
        let recent = self
            .state
            .user_clicks(&conversion.user_id, conversion.advertiser_id)
            .map_err(state_error)?;
        let Some(chosen) = last_click(conversion.event_time, window, &recent) else {
            return Ok(ConversionOutcome::Wait);
        };
        Ok(
            match self.state.click(&chosen.click_id).map_err(state_error)? {
                Some(StoredClick::Joined(joined)) => {
                    ConversionOutcome::Join(Box::new(JoinedConversion {
                        conversion: conversion.clone(),
                        click: joined.click,
                        impression: joined.impression,
                        attribution: Attribution::LastClick,
                    }))
                }
                // The index outlived the click (a bucket expired in between).
                _ => ConversionOutcome::Wait,
            },
        )
    }

    fn conversion(&mut self, record: &InputRecord<'_>, out: &mut Emitter) -> Result<(), StepError> {
        let conversion: Conversion = record.decode()?;
        out.observe_event_time(conversion.event_time)?;
        let event_time = conversion.event_time;
        if let Some(earlier) = self.already.take(record.input, record.offset) {
            // Decided before a crash (a conversion changes no state).
            skipped_on_resume(&earlier.topic);
            return self.after_event(event_time);
        }
        let headers = emitted::stamped(record.headers, record);
        match self.decide(&conversion)? {
            ConversionOutcome::Join(joined) => {
                let output =
                    self.joined_conversion_output(*joined, record.share(record.key), &headers)?;
                out.emit(output);
            }
            ConversionOutcome::Orphan(reason) => {
                let output = self.orphan_record(
                    "conversion",
                    reason,
                    record.share(record.key),
                    record.share(record.value),
                    &headers,
                );
                out.emit(output);
            }
            ConversionOutcome::Wait => {
                let waiter = match &conversion.click_id {
                    Some(click_id) => Waiter::NamedClick(click_id.clone()),
                    None => Waiter::LastClick(conversion.user_id.clone(), conversion.advertiser_id),
                };
                let timer = self.new_timer(out, event_time, waiter.clone());
                let waiting = Waiting {
                    event: conversion,
                    key: record.share(record.key),
                    value: record.share(record.value),
                    headers,
                    held: out.hold(),
                    timer,
                };
                match waiter {
                    Waiter::NamedClick(click_id) => self
                        .pending
                        .named
                        .entry(click_id)
                        .or_default()
                        .push(waiting),
                    Waiter::LastClick(user, advertiser) => self
                        .pending
                        .last
                        .entry((user, advertiser))
                        .or_default()
                        .push(waiting),
                    Waiter::Click(_) => unreachable!("a conversion's waiter"),
                }
            }
        }
        self.after_event(event_time)
    }
}

/// Counts a record read again whose output `topic` already held (rare:
/// only after a restart, so the counter is looked up each time).
fn skipped_on_resume(topic: &str) {
    metrics::counter!(Metric::RecordsSkippedOnResume.name(), "service" => "joiner", "topic" => topic.to_owned()).increment(1);
}

/// Removes the waiting record with `timer` from `queue[key]`.
fn take_waiting<K: std::hash::Hash + Eq, E>(
    queues: &mut HashMap<K, Vec<Waiting<E>>>,
    key: &K,
    timer: u64,
) -> Option<Waiting<E>> {
    let queue = queues.get_mut(key)?;
    let index = queue.iter().position(|waiting| waiting.timer == timer)?;
    let waiting = queue.swap_remove(index);
    if queue.is_empty() {
        queues.remove(key);
    }
    Some(waiting)
}

impl Step for JoinStep {
    fn event_time(&self, record: &InputRecord<'_>) -> Result<i64, StepError> {
        Ok(record.decode::<EventTime>()?.event_time)
    }

    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        match record.input {
            IMPRESSIONS => self.impression(record, out),
            CLICKS => self.click(record, out),
            CONVERSIONS => self.conversion(record, out),
            other => Err(StepError::fatal(
                "unknown_input",
                format!("the joiner has no input {other}"),
            )),
        }
    }

    async fn on_timer(&mut self, timer: Timer, out: &mut Emitter) -> Result<(), StepError> {
        let Some(waiter) = self.pending.timers.remove(&timer.id) else {
            return Ok(()); // its record was joined meanwhile
        };
        match waiter {
            Waiter::Click(impression_id) => {
                if let Some(waiting) =
                    take_waiting(&mut self.pending.clicks, &impression_id, timer.id)
                {
                    let Waiting {
                        event,
                        key,
                        value,
                        headers,
                        held,
                        ..
                    } = waiting;
                    let changelog = self
                        .state
                        .put_click(&StoredClick::Orphan(event.clone()))
                        .map_err(state_error)?;
                    let mut output = self.orphan_record(
                        "click",
                        OrphanReason::ImpressionNotFound,
                        key,
                        value,
                        &headers,
                    );
                    output.then =
                        changelog_chain(&self.topics.clicks_changelog, self.partition, changelog);
                    out.emit_held(&held, output);
                    held.release();
                    self.conversions_waiting_for(&event, out)?;
                }
            }
            Waiter::NamedClick(click_id) => {
                if let Some(mut waiting) =
                    take_waiting(&mut self.pending.named, &click_id, timer.id)
                {
                    // Its click is here, itself waiting for its impression:
                    // the click's decision decides the conversion
                    // (`conversions_waiting_for`), whichever timer fires
                    // first — after a restart both are read again at once
                    // and their deadlines tie.
                    let click_waits = self
                        .pending
                        .clicks
                        .values()
                        .flatten()
                        .any(|click| click.event.event_id == click_id);
                    if click_waits {
                        let waiter = Waiter::NamedClick(click_id.clone());
                        waiting.timer = self.new_timer(out, self.max_event_time, waiter);
                        self.pending
                            .named
                            .entry(click_id)
                            .or_default()
                            .push(waiting);
                    } else {
                        self.finish_conversion(
                            waiting,
                            ConversionOutcome::Orphan(OrphanReason::ClickNotFound),
                            out,
                        )?;
                    }
                }
            }
            Waiter::LastClick(user, advertiser) => {
                if let Some(waiting) =
                    take_waiting(&mut self.pending.last, &(user, advertiser), timer.id)
                {
                    self.finish_conversion(
                        waiting,
                        ConversionOutcome::Orphan(OrphanReason::NoClick),
                        out,
                    )?;
                }
            }
        }
        self.metrics.waiting.set(self.pending.len() as f64);
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.state
            .stores()
            .iter()
            .map(|store| store.stats().entries as usize)
            .sum()
    }

    fn state_bytes(&self) -> usize {
        self.state
            .stores()
            .iter()
            .map(|store| {
                let stats = store.stats();
                (stats.memory_bytes + stats.disk_bytes) as usize
            })
            .sum()
    }

    fn on_revoke(&mut self, drained: bool) {
        // Local data is always ahead of the changelog (it is written first),
        // so a mark at the changelog's end is valid drained or not.
        let _ = drained;
        self.checkpoint();
    }
}

fn checkpoint(reader: &ChangelogReader, store: &mut dyn StateStore, topic: &str, partition: i32) {
    match reader.checkpoint(store, topic, partition) {
        Ok(Some(mark)) => debug!(
            topic,
            partition,
            offset = mark.offset,
            "joiner state checkpointed"
        ),
        Ok(None) => {}
        Err(error) => {
            warn!(%error, topic, partition, "joiner state not checkpointed; the next owner replays more")
        }
    }
}
