//! `adpipe demo`: the project's main job on its embedded default.
//!
//! With no servers at all it starts librdkafka's in-process mock cluster and
//! adpipe's schema registry (storing its schemas in that cluster), has the
//! bidders of two DCs publish impressions, clicks and conversions — with
//! retries, cross-DC copies and late copies mixed in — runs the merger, the
//! deduplicator and the joiner on the shared worker runtime, and checks what
//! comes out against the simulator's ground truth: every unique event once,
//! every expected join with the right click and impression, every orphan
//! with the right reason. `--brokers` runs the same against a
//! real cluster (topics get a unique prefix there).
//!
//! One cluster stands in for the DCs and central: the bidders write each
//! DC's events straight into `<dc>.<kind>`, the name under which
//! MirrorMaker 2 replicates a DC's topic to central (the tests in
//! `services/merger` run the real multi-cluster path).

use std::io::Write;
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient, value_subject};
use adpipe_deduplicator::DedupSettings;
use adpipe_deduplicator::config::Stream;
use adpipe_events::EventKind;
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{CheckReport, GroundTruth, Simulation};
use adpipe_schema_registry::RegistrySettings;
use anyhow::{Context, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Partitions of every keyed demo topic (the pipeline's count).
const PARTITIONS: i32 = 12;

/// Arguments of `adpipe demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Impressions to simulate (clicks and conversions follow RTB House's ratios).
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    /// Fraction of events the bidders publish twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    /// Simulation seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Real Kafka bootstrap servers instead of the in-process mock cluster.
    #[arg(long)]
    pub brokers: Option<String>,
    /// PostgreSQL for the stats-counter (`infra/postgres.sh url`); without
    /// it the stats stage is skipped (no embedded store keeps its SQL and
    /// transactions: see the README).
    #[arg(long, env = "ADPIPE_PG_URL")]
    pub postgres_url: Option<String>,
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Records published by the simulator.
    pub published: u64,
    /// Duplicate copies among them.
    pub duplicates_injected: u64,
    /// Records the deduplicator emitted.
    pub delivered: u64,
    /// The check against the ground truth.
    pub check: CheckReport,
    /// The joins against the rules.
    pub joins: JoinReport,
    /// The stats-counter's totals against the expectation (when it ran).
    pub stats: Option<StatsReport>,
}

/// The stats-counter's totals in PostgreSQL against what the ground truth
/// and the join rules make them.
#[derive(Debug, Clone)]
pub struct StatsReport {
    /// Where they are: the schema (views `minute`, `hour`).
    pub schema: String,
    /// (measure, expected, counted), over every minute row.
    pub measures: Vec<(&'static str, i64, i64)>,
}

impl StatsReport {
    /// Whether every measure is exact.
    pub fn exact(&self) -> bool {
        self.measures
            .iter()
            .all(|(_, expected, counted)| expected == counted)
    }
}

/// The joiner's outputs against the expected joins (`adpipe_loadtest::joins`).
#[derive(Debug, Clone, Default)]
pub struct JoinReport {
    /// Joined clicks expected, produced (distinct), and produced with other contents.
    pub clicks: (u64, u64, u64),
    /// Joined conversions expected, produced (distinct), produced with other contents.
    pub conversions: (u64, u64, u64),
    /// Orphans by reason: expected, produced (distinct) with that reason.
    pub orphans: std::collections::BTreeMap<String, (u64, u64)>,
    /// Outputs for events no rule expects there.
    pub unexpected: u64,
}

impl JoinReport {
    /// Whether every expected output came as expected, and nothing else.
    pub fn complete(&self) -> bool {
        let exact =
            |(expected, produced, wrong): (u64, u64, u64)| expected == produced && wrong == 0;
        exact(self.clicks)
            && exact(self.conversions)
            && self
                .orphans
                .values()
                .all(|(expected, produced)| expected == produced)
            && self.unexpected == 0
    }
}

struct Names {
    prefix: String,
    dcs: Vec<String>,
}

impl Names {
    fn replica(&self, dc: &str, kind: EventKind) -> String {
        format!("{}{dc}.{}", self.prefix, kind.plural())
    }
    fn merged(&self, kind: EventKind) -> String {
        format!("{}merged.{}", self.prefix, kind.plural())
    }
    fn deduplicated(&self, kind: EventKind) -> String {
        format!("{}deduplicated.{}", self.prefix, kind.plural())
    }
    fn changelog(&self, kind: EventKind) -> String {
        format!("{}deduplicator.{}.changelog", self.prefix, kind.plural())
    }
    /// `joined.clicks`, `joined.conversions`, `joined.orphans`.
    fn joined(&self, what: &str) -> String {
        format!("{}joined.{what}", self.prefix)
    }
    fn joiner_changelog(&self, store: &str) -> String {
        format!("{}joiner.{store}.changelog", self.prefix)
    }
    fn all(&self) -> Vec<(String, i32)> {
        let mut topics: Vec<(String, i32)> = EventKind::PUBLISHED
            .into_iter()
            .flat_map(|kind| {
                let replicas = self.dcs.iter().map(move |dc| self.replica(dc, kind));
                replicas.chain([
                    self.merged(kind),
                    self.deduplicated(kind),
                    self.changelog(kind),
                ])
            })
            .chain(["clicks", "conversions", "orphans"].map(|what| self.joined(what)))
            .chain(["impressions", "clicks"].map(|store| self.joiner_changelog(store)))
            .map(|topic| (topic, PARTITIONS))
            .collect();
        topics.push((format!("{}stats.totals", self.prefix), PARTITIONS));
        for service in ["merger", "deduplicator", "joiner", "stats-counter"] {
            topics.push((format!("{}dlq.{service}", self.prefix), 1));
        }
        topics.push((format!("{}_schemas", self.prefix), 1));
        topics
    }
}

/// Runs the demo, printing progress and the result table to `out`.
pub async fn run(args: &DemoArgs, out: &mut dyn Write) -> anyhow::Result<DemoReport> {
    let mut simulation = Simulation {
        seed: args.seed,
        impressions: args.events,
        duplicate_rate: args.duplicate_rate,
        ..Simulation::default()
    };
    // Recent event times, the last one a moment ago: as if replayed from
    // the DCs' topics after a short outage.
    let span_ms = (args.events as f64 * simulation.publications_per_impression()) as i64;
    simulation.follow_wall_clock(adpipe_runtime::event_time::now_ms() - span_ms - 1_000, 0.0);
    let names = Names {
        prefix: if args.brokers.is_some() {
            format!("demo-{}.", unique_suffix())
        } else {
            String::new()
        },
        dcs: simulation.dcs.clone(),
    };
    // The mock cluster must outlive every client that talks to it.
    let (_mock, bootstrap) = match &args.brokers {
        Some(brokers) => {
            create_topics(brokers, &names.all()).await?;
            (None, brokers.clone())
        }
        None => {
            let mock = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
            for (topic, partitions) in names.all() {
                mock.create_topic(&topic, partitions, 1)?;
            }
            let bootstrap = mock.bootstrap_servers();
            (Some(mock), bootstrap)
        }
    };
    writeln!(
        out,
        "kafka: {}",
        args.brokers.as_deref().unwrap_or("in-process mock cluster")
    )?;
    let registry = adpipe_schema_registry::start(RegistrySettings::local(
        &bootstrap,
        &format!("{}_schemas", names.prefix),
    ))
    .await
    .context("starting the schema registry")?;
    writeln!(out, "schema registry: {}", registry.url())?;
    let started = Instant::now();

    let (publications, truth) = simulation.generate();
    let codec = Codec::new(RegistryClient::new(&registry.url())?);
    publish(&codec, &bootstrap, &names, &publications).await?;

    let common = |service: &str| {
        [
            ("ADPIPE__KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
            (
                "ADPIPE__KAFKA__GROUP_ID",
                format!("{}adpipe-{service}", names.prefix),
            ),
            ("ADPIPE__REGISTRY__URL", registry.url()),
            ("ADPIPE__HTTP__LISTEN", "127.0.0.1:0".to_owned()),
            (
                "ADPIPE__RUNTIME__DEAD_LETTER_TOPIC",
                format!("{}dlq.{service}", names.prefix),
            ),
            ("ADPIPE__KAFKA__SESSION_TIMEOUT", "10s".to_owned()),
            ("ADPIPE__RUNTIME__REVOKE_DEADLINE", "5s".to_owned()),
        ]
        .map(|(key, value)| (key.to_owned(), value))
    };
    let merger_env = common("merger").into_iter().chain(
        [
            (
                "ADPIPE__MERGER__INPUT",
                format!("{}{{dc}}.{{kind}}", names.prefix),
            ),
            (
                "ADPIPE__MERGER__OUTPUT",
                format!("{}merged.{{kind}}", names.prefix),
            ),
            // Replayed events: no live heartbeats; a DC silent this long is done.
            ("ADPIPE__RUNTIME__MAX_IDLE", "1s".to_owned()),
        ]
        .map(|(key, value)| (key.to_owned(), value)),
    );
    let mut merger_settings = adpipe_merger::MergerSettings::load(None, merger_env)?;
    merger_settings.dcs = names.dcs.clone();
    let merger = adpipe_merger::start(merger_settings).context("starting the merger")?;
    writeln!(
        out,
        "merger: running, metrics on http://{}/metrics",
        merger.http_address
    )?;

    let dedup_env = common("deduplicator").into_iter().chain([(
        "ADPIPE__DEDUPLICATOR__STATE_DIR".to_owned(),
        std::env::temp_dir()
            .join(format!("adpipe-demo-{}-state", std::process::id()))
            .join("deduplicator")
            .display()
            .to_string(),
    )]);
    let mut settings = DedupSettings::load(None, dedup_env)?;
    settings.set_streams(
        EventKind::PUBLISHED
            .into_iter()
            .map(|kind| Stream {
                input: names.merged(kind),
                output: names.deduplicated(kind),
                changelog: names.changelog(kind),
            })
            .collect(),
    );
    let worker = adpipe_deduplicator::start(settings).context("starting the deduplicator")?;
    writeln!(
        out,
        "deduplicator: running, metrics on http://{}/metrics",
        worker.http_address
    )?;

    let state_root = std::env::temp_dir().join(format!("adpipe-demo-{}-state", std::process::id()));
    let joiner_env = common("joiner").into_iter().chain(
        [
            (
                "ADPIPE__JOINER__IMPRESSIONS",
                names.deduplicated(EventKind::Impression),
            ),
            (
                "ADPIPE__JOINER__CLICKS",
                names.deduplicated(EventKind::Click),
            ),
            (
                "ADPIPE__JOINER__CONVERSIONS",
                names.deduplicated(EventKind::Conversion),
            ),
            ("ADPIPE__JOINER__JOINED_CLICKS", names.joined("clicks")),
            (
                "ADPIPE__JOINER__JOINED_CONVERSIONS",
                names.joined("conversions"),
            ),
            ("ADPIPE__JOINER__ORPHANS", names.joined("orphans")),
            (
                "ADPIPE__JOINER__IMPRESSIONS_CHANGELOG",
                names.joiner_changelog("impressions"),
            ),
            (
                "ADPIPE__JOINER__CLICKS_CHANGELOG",
                names.joiner_changelog("clicks"),
            ),
            (
                "ADPIPE__JOINER__STATE_DIR",
                state_root.join("joiner").display().to_string(),
            ),
            // A replay: what finds no partner within 2 s never will.
            ("ADPIPE__JOINER__WAIT", "2s".to_owned()),
            ("ADPIPE__RUNTIME__MAX_IDLE", "1s".to_owned()),
        ]
        .map(|(key, value)| (key.to_owned(), value)),
    );
    let joiner_settings = adpipe_joiner::JoinerSettings::load(None, joiner_env)?;
    let joiner = adpipe_joiner::start(joiner_settings).context("starting the joiner")?;
    writeln!(
        out,
        "joiner: running, metrics on http://{}/metrics",
        joiner.http_address
    )?;

    let stats_schema = format!("demo_{}", unique_suffix());
    let stats_counter = match &args.postgres_url {
        Some(url) => {
            let env = common("stats-counter").into_iter().chain(
                [
                    (
                        "ADPIPE__STATS__IMPRESSIONS",
                        names.deduplicated(EventKind::Impression),
                    ),
                    ("ADPIPE__STATS__JOINED_CLICKS", names.joined("clicks")),
                    (
                        "ADPIPE__STATS__JOINED_CONVERSIONS",
                        names.joined("conversions"),
                    ),
                    ("ADPIPE__STATS__ORPHANS", names.joined("orphans")),
                    (
                        "ADPIPE__STATS__TOTALS_TOPIC",
                        format!("{}stats.totals", names.prefix),
                    ),
                    ("ADPIPE__STATS__POSTGRES_URL", url.clone()),
                    ("ADPIPE__STATS__SCHEMA", stats_schema.clone()),
                    ("ADPIPE__STATS__BATCH_WAIT", "200ms".to_owned()),
                ]
                .map(|(key, value)| (key.to_owned(), value)),
            );
            let settings = adpipe_stats_counter::StatsSettings::load(None, env)?;
            let worker =
                adpipe_stats_counter::start(settings).context("starting the stats-counter")?;
            writeln!(
                out,
                "stats-counter: running, PostgreSQL schema {stats_schema}, budget on http://{}/budget/today",
                worker.http_address
            )?;
            Some(worker)
        }
        None => {
            writeln!(
                out,
                "stats-counter: skipped (no --postgres-url; `infra/postgres.sh start` runs one, `infra/postgres.sh url` names it)"
            )?;
            None
        }
    };

    let delivered = collect_output(&codec, &bootstrap, &names, &truth).await?;
    let uniques: Vec<adpipe_loadtest::SimEvent> = publications
        .iter()
        .filter(|publication| !publication.duplicate)
        .map(|publication| publication.event.clone())
        .collect();
    let expected = adpipe_loadtest::joins::expected(&uniques);
    let joins = collect_joins(&codec, &bootstrap, &names, &expected).await?;
    let stats = match (&args.postgres_url, &stats_counter) {
        (Some(url), Some(_)) => {
            let impressions: Vec<&adpipe_events::Impression> = uniques
                .iter()
                .filter_map(|event| match event {
                    adpipe_loadtest::SimEvent::Impression(impression) => Some(impression),
                    _ => None,
                })
                .collect();
            let want = vec![
                ("impressions", impressions.len() as i64),
                (
                    "cost (micros)",
                    impressions
                        .iter()
                        .map(|impression| impression.cost_micros)
                        .sum(),
                ),
                ("joined clicks", expected.clicks.len() as i64),
                ("joined conversions", expected.conversions.len() as i64),
                ("orphans", expected.orphans.len() as i64),
            ];
            Some(count_stats(url, &stats_schema, want).await?)
        }
        _ => None,
    };
    if let Some(worker) = stats_counter {
        let _ = tokio::time::timeout(Duration::from_secs(20), worker.stop()).await;
    }
    for (name, worker) in [
        ("joiner", joiner),
        ("deduplicator", worker),
        ("merger", merger),
    ] {
        if tokio::time::timeout(Duration::from_secs(20), worker.stop())
            .await
            .is_err()
        {
            writeln!(out, "(the {name} took over 20 s to stop)")?;
        }
    }
    registry.stop().await;

    let check = truth.check(delivered.iter().map(String::as_str));
    let report = DemoReport {
        published: truth.published,
        duplicates_injected: truth.duplicates,
        delivered: delivered.len() as u64,
        check,
        joins,
        stats,
    };
    print_table(out, &report, &truth, started.elapsed())?;
    if !report.check.complete() || report.check.extra_copies > 0 {
        bail!("the output does not match the ground truth");
    }
    if !report.joins.complete() {
        bail!("the joins do not match the rules");
    }
    if report.stats.as_ref().is_some_and(|stats| !stats.exact()) {
        bail!("the stats totals do not match the ground truth");
    }
    let _ = std::fs::remove_dir_all(state_root);
    Ok(report)
}

async fn publish(
    codec: &Codec,
    bootstrap: &str,
    names: &Names,
    publications: &[adpipe_loadtest::Publication],
) -> anyhow::Result<()> {
    let publisher =
        SimPublisher::new(codec, bootstrap, |kind| value_subject(&names.merged(kind))).await?;
    let bar = crate::progress::bar(publications.len() as u64, "publishing");
    // Publishing blocks while librdkafka's queue is full.
    tokio::task::block_in_place(|| {
        for publication in publications {
            let topic = names.replica(&publication.dc, publication.event.kind());
            publisher.publish(publication, &topic)?;
            bar.inc(1);
        }
        publisher.flush(Duration::from_secs(30))
    })?;
    bar.finish();
    Ok(())
}

/// Reads the deduplicated topics until every unique arrived or nothing new
/// came for a while.
async fn collect_output(
    codec: &Codec,
    bootstrap: &str,
    names: &Names,
    truth: &GroundTruth,
) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Identity {
        event_id: String,
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{}adpipe-demo-checker", names.prefix))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for kind in EventKind::PUBLISHED {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(
                &names.deduplicated(kind),
                partition,
                Offset::Beginning,
            )?;
        }
    }
    consumer.assign(&assignment)?;
    let bar = crate::progress::bar(truth.uniques(), "deduplicated");
    let mut delivered = Vec::new();
    let mut last_progress = Instant::now();
    while last_progress.elapsed()
        < Duration::from_secs(if delivered.len() as u64 >= truth.uniques() {
            3
        } else {
            30
        })
    {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let identity: Identity = codec.decode(message.payload().unwrap_or_default()).await?;
        delivered.push(identity.event_id);
        bar.inc(1);
        last_progress = Instant::now();
    }
    bar.finish();
    Ok(delivered)
}

/// Reads the joiner's three outputs until every expected join and orphan
/// came or nothing new came for a while, and compares them with the rules.
async fn collect_joins(
    codec: &Codec,
    bootstrap: &str,
    names: &Names,
    expected: &adpipe_loadtest::joins::ExpectedJoins,
) -> anyhow::Result<JoinReport> {
    use adpipe_events::{Click, Conversion, JoinedClick, JoinedConversion};
    use std::collections::{HashMap, HashSet};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("{}adpipe-demo-join-checker", names.prefix),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let topics = ["clicks", "conversions", "orphans"].map(|what| names.joined(what));
    let mut assignment = TopicPartitionList::new();
    for topic in &topics {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let wanted =
        (expected.clicks.len() + expected.conversions.len() + expected.orphans.len()) as u64;
    let bar = crate::progress::bar(wanted, "joined");
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
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|headers| {
                        use rdkafka::message::Headers as _;
                        headers.iter().find(|h| h.key == name).and_then(|h| h.value)
                    })
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default()
            };
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

fn print_table(
    out: &mut dyn Write,
    report: &DemoReport,
    truth: &GroundTruth,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let check = &report.check;
    writeln!(out)?;
    writeln!(out, "{:<34} {:>10}", "events published", report.published)?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "  of which duplicates injected", report.duplicates_injected
    )?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "duplicates removed",
        report.published.saturating_sub(report.delivered)
    )?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "uniques delivered", check.delivered_uniques
    )?;
    writeln!(
        out,
        "{:<34} {:>10}  ({} impressions, {} clicks, {} conversions)",
        "uniques in the ground truth",
        check.expected_uniques,
        truth.impressions.len(),
        truth.clicks.len(),
        truth.conversions.len()
    )?;
    writeln!(out, "{:<34} {:>10}", "missing (lost)", check.missing)?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "delivered more than once", check.delivered_more_than_once
    )?;
    let joins = &report.joins;
    writeln!(
        out,
        "\n{:<34} {:>10} {:>10} {:>10}",
        "joiner", "expected", "produced", "wrong"
    )?;
    for (what, (expected, produced, wrong)) in [
        ("joined clicks", joins.clicks),
        ("joined conversions", joins.conversions),
    ] {
        writeln!(out, "{what:<34} {expected:>10} {produced:>10} {wrong:>10}")?;
    }
    for (reason, (expected, produced)) in &joins.orphans {
        writeln!(
            out,
            "{:<34} {expected:>10} {produced:>10}",
            format!("orphans: {reason}")
        )?;
    }
    writeln!(
        out,
        "{:<34} {:>10} {:>10}",
        "unexpected outputs", 0, joins.unexpected
    )?;
    if let Some(stats) = &report.stats {
        writeln!(
            out,
            "\n{:<34} {:>10} {:>10}",
            format!("stats-counter ({})", stats.schema),
            "expected",
            "counted"
        )?;
        for (what, expected, counted) in &stats.measures {
            writeln!(out, "{what:<34} {expected:>10} {counted:>10}")?;
        }
    }
    let stats_exact = report.stats.as_ref().is_none_or(StatsReport::exact);
    let verdict = if check.complete() && check.extra_copies == 0 && joins.complete() && stats_exact
    {
        "matches the ground truth"
    } else {
        "DOES NOT match the ground truth"
    };
    writeln!(out, "\noutput {verdict} ({elapsed:.1?})")?;
    Ok(())
}

/// Waits (up to 60 s) until the stats-counter's totals in `schema` reach
/// `want` — (measure, expected) over every minute row — and reports them.
async fn count_stats(
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

async fn create_topics(brokers: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topics: Vec<_> = topics
        .iter()
        .map(|(topic, partitions)| NewTopic::new(topic, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}", nanos % 0xffff_ffff)
}
