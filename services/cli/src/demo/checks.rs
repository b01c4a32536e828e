//! What the demo reads back from every stage, compared with what the
//! simulator's ground truth and the join rules make it: the merged count,
//! the deduplicated events, the joins and orphans, the stats totals, the
//! dispatched copies, the files and the profiles. Each reader waits until
//! what it expects arrived or nothing new came for a while, so a loss
//! shows as a shortfall, not a hang.
//!
//! Ids are compared as 64-bit hashes ([`Id`]): a 10M-event chaos run's
//! checks hold every id of every stage, which as text outgrew the machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use adpipe_codec::Codec;
use adpipe_events::EventKind;
use anyhow::Context;
use indicatif::ProgressBar;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::names::{Names, PARTITIONS};
use super::{JoinReport, StatsReport};

/// An event id as the checks hold it: its hash (the reconciliation's).
pub type Id = u64;

/// The [`Id`] of an event id.
pub fn id(event_id: &str) -> Id {
    adpipe_reconciler::ledger::id_hash(event_id)
}

/// Expected identities against the ones found at one place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// What was counted (a topic, a DC's profiles, …).
    pub what: String,
    /// Distinct ids expected.
    pub expected: u64,
    /// Expected ids found (at least once).
    pub found: u64,
    /// Expected ids found more than once.
    pub twice: u64,
    /// Ids found that nothing expects there.
    pub unexpected: u64,
    /// Copies of expected ids beyond the first.
    pub extra_copies: u64,
}

impl Tally {
    /// Counts `found` (one item per record) against `expected`.
    pub fn of(what: &str, expected: &HashSet<Id>, found: impl IntoIterator<Item = Id>) -> Tally {
        let mut copies: HashMap<Id, u32> = HashMap::new();
        for id in found {
            *copies.entry(id).or_default() += 1;
        }
        let mut tally = Tally {
            what: what.to_owned(),
            expected: expected.len() as u64,
            ..Tally::default()
        };
        for (id, copies) in copies {
            if expected.contains(&id) {
                tally.found += 1;
                tally.twice += u64::from(copies > 1);
                tally.extra_copies += u64::from(copies - 1);
            } else {
                tally.unexpected += 1;
            }
        }
        tally
    }

    /// Missing expected ids.
    pub fn missing(&self) -> u64 {
        self.expected - self.found
    }

    /// Each expected id exactly once, nothing else.
    pub fn exact(&self) -> bool {
        self.missing() == 0 && self.twice == 0 && self.unexpected == 0
    }
}

/// The id a record is known by: its own `event_id`, or the joined
/// conversion's or click's.
#[derive(serde::Deserialize)]
struct IdFields {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    conversion: Option<Nested>,
    #[serde(default)]
    click: Option<Nested>,
}

#[derive(serde::Deserialize)]
struct Nested {
    event_id: String,
}

impl IdFields {
    fn id(self) -> Option<String> {
        self.event_id
            .or(self.conversion.map(|nested| nested.event_id))
            .or(self.click.map(|nested| nested.event_id))
    }
}

/// A record read back: its topic and id.
#[derive(Debug, Clone, Copy)]
pub struct ReadRecord {
    /// Its topic: the index into the topics read.
    pub topic: usize,
    /// Its event id.
    pub id: Id,
}

/// A client reading `topics` from their beginning, outside any group.
fn reader(bootstrap: &str, names: &Names, topics: &[String]) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = adpipe_kafka_client::env_client_config(bootstrap)
        .set("group.id", format!("{}adpipe-demo-checker", names.prefix))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Reads the ids of `topics` until `want` records came (then 3 s more, for
/// copies) or nothing came for 30 s.
pub async fn read_ids(
    codec: &Codec,
    bootstrap: &str,
    names: &Names,
    topics: &[String],
    want: u64,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<ReadRecord>> {
    let consumer = reader(bootstrap, names, topics)?;
    bar.set_length(want);
    let mut records = Vec::new();
    let mut last_progress = Instant::now();
    while last_progress.elapsed()
        < Duration::from_secs(if records.len() as u64 >= want { 3 } else { 30 })
    {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let fields: IdFields = codec.decode(message.payload().unwrap_or_default()).await?;
        let event_id = fields
            .id()
            .with_context(|| format!("a record of {} without an event id", message.topic()))?;
        let topic = topics
            .iter()
            .position(|topic| topic == message.topic())
            .context("a record of a topic not asked for")?;
        records.push(ReadRecord {
            topic,
            id: id(&event_id),
        });
        bar.inc(1);
        last_progress = Instant::now();
    }
    bar.finish();
    Ok(records)
}

/// The records in the merged topics (every publication, copies included).
pub fn count_merged(bootstrap: &str, names: &Names) -> anyhow::Result<u64> {
    count_records(
        bootstrap,
        &EventKind::PUBLISHED.map(|kind| names.merged(kind)),
    )
}

/// The records in `topics` (every partition, start to end).
pub fn count_records(bootstrap: &str, topics: &[String]) -> anyhow::Result<u64> {
    let client: BaseConsumer = adpipe_kafka_client::env_client_config(bootstrap).create()?;
    let mut total = 0;
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading the partitions of {topic}"))?;
        for partition in metadata.topics().iter().flat_map(|meta| meta.partitions()) {
            let (low, high) = client
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .with_context(|| format!("reading the end of {topic}-{}", partition.id()))?;
            total += u64::try_from(high - low).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Waits until `count()` reaches `want` or stops growing for `idle`; returns the last count.
pub async fn wait_for_count(
    want: u64,
    idle: Duration,
    bar: &ProgressBar,
    mut count: impl AsyncFnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    bar.set_length(want);
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        let now = count().await?;
        bar.set_position(now);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if now >= want || last_change.elapsed() > idle {
            bar.finish();
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (up to 60 s) until a store holds as many ids as `expectations`
/// (topic, the ids expected) want in all, read with `list` (a topic's ids
/// in the store), then tallies each topic against its expectation.
pub async fn store_tallies(
    bar: ProgressBar,
    expectations: &[(String, &HashSet<Id>)],
    list: impl AsyncFn(&str) -> anyhow::Result<Vec<Id>>,
) -> anyhow::Result<Vec<Tally>> {
    let want: u64 = expectations.iter().map(|(_, ids)| ids.len() as u64).sum();
    bar.set_length(want);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut found = Vec::new();
        for (topic, _) in expectations {
            found.push(list(topic).await?);
        }
        let total: u64 = found.iter().map(|ids| ids.len() as u64).sum();
        bar.set_position(total);
        if total >= want || Instant::now() >= deadline {
            bar.finish();
            return Ok(expectations
                .iter()
                .zip(&found)
                .map(|((topic, expected), ids)| Tally::of(topic, expected, ids.iter().copied()))
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The entry ids in one DC's embedded profile store (one per entry).
pub fn profile_ids(store: &adpipe_loader::memory_profiles::MemoryProfiles) -> Vec<Id> {
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
    }
    store
        .snapshot(adpipe_runtime::event_time::now_ms())
        .into_values()
        .flat_map(|profile| profile.entries.into_iter())
        .filter_map(|(_, entry)| serde_json::from_str::<Entry>(&entry).ok())
        .map(|entry| id(&entry.id))
        .collect()
}

/// The entry ids in one DC's profiles in Redis (keys under `prefix`),
/// read a page of profiles at a time.
pub async fn redis_profile_ids(url: &str, prefix: &str) -> anyhow::Result<Vec<Id>> {
    let mut ids = Vec::new();
    adpipe_loader::profiles::RedisProfiles::new(url, prefix)
        .map_err(anyhow::Error::msg)?
        .visit_stored(|profile| {
            ids.extend(profile.event_ids()?.iter().map(|event_id| id(event_id)));
            Ok(())
        })
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(ids)
}

/// The ids in the Avro files under `dir`, per topic.
pub fn file_ids(dir: &std::path::Path) -> anyhow::Result<BTreeMap<String, Vec<Id>>> {
    Ok(adpipe_loader::read_back::avro_identities(dir)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|(topic, identities)| {
            (
                topic,
                identities
                    .into_iter()
                    .map(|identity| id(&identity.id))
                    .collect(),
            )
        })
        .collect())
}

/// Reads the joiner's three outputs until every expected join and orphan
/// came or nothing new came for a while, and compares them with the rules.
pub async fn collect_joins(
    codec: &Codec,
    bootstrap: &str,
    names: &Names,
    expected: &adpipe_loadtest::joins::ExpectedJoins,
    bar: ProgressBar,
) -> anyhow::Result<JoinReport> {
    use adpipe_events::{Click, Conversion, JoinedClick, JoinedConversion};
    let topics = ["clicks", "conversions", "orphans"].map(|what| names.joined(what));
    let consumer = reader(bootstrap, names, &topics)?;
    let wanted =
        (expected.clicks.len() + expected.conversions.len() + expected.orphans.len()) as u64;
    bar.set_length(wanted);
    let mut report = JoinReport::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut orphan_reasons: HashMap<String, String> = HashMap::new();
    let mut last_progress = Instant::now();
    while last_progress.elapsed()
        < Duration::from_secs(if seen.len() as u64 >= wanted { 3 } else { 30 })
    {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let value = message.payload().unwrap_or_default();
        let (id, right) = if message.topic() == topics[0] {
            let joined: JoinedClick = codec.decode(value).await?;
            let right = expected.clicks.get(&joined.click.event_id) == Some(&joined);
            (joined.click.event_id, right)
        } else if message.topic() == topics[1] {
            let joined: JoinedConversion = codec.decode(value).await?;
            let right = expected.conversions.get(&joined.conversion.event_id) == Some(&joined);
            (joined.conversion.event_id, right)
        } else {
            let header =
                |name: &str| adpipe_runtime::header_text(&message, name).unwrap_or_default();
            let id = match header(adpipe_joiner::HEADER_ORPHAN_KIND).as_str() {
                "click" => codec.decode::<Click>(value).await?.event_id,
                _ => codec.decode::<Conversion>(value).await?.event_id,
            };
            orphan_reasons.insert(id.clone(), header(adpipe_joiner::HEADER_ORPHAN_REASON));
            (id, true)
        };
        if message.topic() == topics[0] && !right {
            report.clicks.2 += 1;
        }
        if message.topic() == topics[1] && !right {
            report.conversions.2 += 1;
        }
        if seen.insert(id) {
            bar.inc(1);
            last_progress = Instant::now();
        }
    }
    bar.finish();
    report.clicks.0 = expected.clicks.len() as u64;
    report.clicks.1 = expected
        .clicks
        .keys()
        .filter(|id| seen.contains(*id))
        .count() as u64;
    report.conversions.0 = expected.conversions.len() as u64;
    report.conversions.1 = expected
        .conversions
        .keys()
        .filter(|id| seen.contains(*id))
        .count() as u64;
    for (id, reason) in &expected.orphans {
        let entry = report.orphans.entry((*reason).to_owned()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(orphan_reasons.get(id).map(String::as_str) == Some(*reason));
    }
    report.unexpected = seen
        .iter()
        .filter(|id| {
            !expected.clicks.contains_key(*id)
                && !expected.conversions.contains_key(*id)
                && !expected.orphans.contains_key(*id)
        })
        .count() as u64;
    Ok(report)
}

/// Waits (up to 60 s) until the stats-counter's totals in `schema` reach
/// `want` — (measure, expected) over every minute row — and reports them.
pub async fn count_stats(
    url: &str,
    schema: &str,
    want: Vec<(&'static str, i64)>,
) -> anyhow::Result<StatsReport> {
    use adpipe_stats_counter::{BucketSize, PgStore};
    let store = PgStore::connect(url, schema)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = store.totals(BucketSize::Minute).await?;
        let orphans: i64 = store
            .orphan_totals(BucketSize::Minute)
            .await?
            .values()
            .sum();
        let sum = |measure: fn(&adpipe_stats_counter::Counts) -> i64| -> i64 {
            rows.values().map(measure).sum()
        };
        let counted = [
            sum(|counts| counts.impressions),
            sum(|counts| counts.cost_micros),
            sum(|counts| counts.clicks),
            sum(|counts| counts.conversions),
            orphans,
        ];
        let measures: Vec<(&'static str, i64, i64)> = want
            .iter()
            .zip(counted)
            .map(|((what, expected), counted)| (*what, *expected, counted))
            .collect();
        let report = StatsReport {
            schema: schema.to_owned(),
            measures,
        };
        if report.exact() || Instant::now() > deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
