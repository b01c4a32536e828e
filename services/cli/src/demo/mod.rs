//! `adpipe demo`: the project's main job on its embedded default — the
//! whole chain in one process.
//!
//! With no servers at all it starts librdkafka's in-process mock cluster and
//! adpipe's schema registry (storing its schemas in that cluster), starts
//! every service on the shared runtime ([`chain`]: merger, deduplicator,
//! joiner, stats-counter with `--postgres-url`, dispatcher, the Avro files
//! loader and a profile loader per DC with its embedded store) once the
//! bidders of two DCs published impressions, clicks and conversions — with
//! retries, cross-DC copies and late copies mixed in — and while they
//! work through them a live view
//! ([`live`]) shows each stage's rates, lag, late records, orphans and dead
//! letters, then reads every stage's output back ([`checks`]) and prints one
//! table per stage against the simulator's ground truth and the join rules
//! ([`table`]); it fails on any difference. `--brokers` runs the same
//! against a real cluster (topics get a unique prefix there).
//!
//! One cluster stands in for the DCs and central: the bidders write each
//! DC's events straight into `<dc>.<kind>`, the name under which
//! MirrorMaker 2 replicates a DC's topic to central (the tests in
//! `services/merger` and `services/dispatcher` run the real multi-cluster
//! paths).

mod bad_input;
pub(crate) mod chain;
pub(crate) mod checks;
pub mod live;
pub(crate) mod names;
mod table;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient, value_subject};
use adpipe_events::EventKind;
use adpipe_loader::config::BigQuerySettings;
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{CheckReport, Simulation};
use adpipe_reconciler::Span;
use adpipe_schema_registry::RegistrySettings;
use anyhow::{Context, bail};
use clap::Args;
use indicatif::ProgressBar;
use rdkafka::consumer::Consumer;
use rdkafka::mocking::MockCluster;

pub use checks::Tally;
use names::Names;

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
    /// A DC's own cluster, `NAME=host:port` (dc1 and dc2; with `--brokers`
    /// as central): the bidders publish there and MirrorMaker 2
    /// (`infra/mirrormaker.sh start`) carries their topics to central and
    /// `events-for-<dc>` back to the DC's profile loader.
    #[arg(long = "dc", requires = "brokers")]
    pub dc_clusters: Vec<String>,
    /// Elasticsearch or OpenSearch (`infra/elasticsearch.sh`): a loader
    /// writes the processed events there too, checked one document each.
    #[arg(long)]
    pub es_url: Option<String>,
    /// BigQuery's REST base (the emulator: `$(infra/bigquery.sh
    /// url)/bigquery/v2`): a loader streams the processed events there too
    /// (a dataset of this run), checked one row each.
    #[arg(long)]
    pub bq_url: Option<String>,
    /// BigQuery credentials: `none` (an emulator), `application-default`
    /// or a service-account key file.
    #[arg(long, default_value = "none")]
    pub bq_credentials: String,
    /// Redis (`infra/redis.sh url`) for the DCs' profile loaders instead
    /// of their embedded stores: each DC's entries under the run's key
    /// prefix, checked one entry per dispatched event and reconciled.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Where the files loader writes (default `$ADPIPE_STATE_DIR/demo/files`,
    /// else `.adpipe/demo/files`); emptied at the start of each run.
    #[arg(long)]
    pub files_dir: Option<PathBuf>,
    /// Where the live console (a page: the chain as a graph with its rates
    /// and lags, the reconciliation) is served while the demo runs;
    /// loopback and any free port unless said otherwise.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub console: std::net::SocketAddr,
    /// Keep the console up this long after the run, to look at the final
    /// reconciliation.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub console_linger: Duration,
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
    /// Records in the merged topics (every publication, copies included).
    pub merged: u64,
    /// The dispatched copies: each processed event once, to a DC other
    /// than its origin.
    pub dispatched: Vec<Tally>,
    /// The Avro files, per topic: each event once.
    pub files: Vec<Tally>,
    /// Elasticsearch (with `--es-url`), per topic: one document per event.
    pub elasticsearch: Vec<Tally>,
    /// BigQuery (with `--bq-url`), per topic: one row per event.
    pub bigquery: Vec<Tally>,
    /// Records MirrorMaker 2 copied to central (with `--dc`).
    pub replicated: Option<u64>,
    /// Each DC's profiles: each event dispatched to it once.
    pub profiles: Vec<Tally>,
    /// Where the outputs are: (what, where).
    pub outputs: Vec<(String, String)>,
    /// Differences `adpipe reconcile` could not explain.
    pub unexplained: usize,
    /// The bad records injected, each with the dead letter found for it.
    pub bad_input: Vec<bad_input::BadRecord>,
}

impl DemoReport {
    /// Whether every stage's output is what the ground truth makes it.
    pub fn matches(&self) -> bool {
        self.check.complete()
            && self.check.extra_copies == 0
            && self.merged == self.published
            && self.joins.complete()
            && self.stats.as_ref().is_none_or(StatsReport::exact)
            && self.unexplained == 0
            && self
                .bad_input
                .iter()
                .all(bad_input::BadRecord::ended_where_it_should)
            && [
                &self.dispatched,
                &self.files,
                &self.elasticsearch,
                &self.bigquery,
                &self.profiles,
            ]
            .into_iter()
            .flatten()
            .all(Tally::exact)
    }
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

/// Runs the demo, printing progress and the result tables to `out`.
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
        dc_clusters: dc_clusters(&args.dc_clusters, &simulation.dcs)?,
        central_alias: "central".to_owned(),
    };
    // The mock cluster must outlive every client that talks to it.
    let (_mock, bootstrap) = match &args.brokers {
        Some(brokers) => {
            create_topics(brokers, &names.all(), 1, None).await?;
            for dc_bootstrap in names.dc_clusters.values() {
                create_topics(dc_bootstrap, &names.dc_topics(), 1, None).await?;
            }
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

    let files_dir = std::path::absolute(args.files_dir.clone().unwrap_or_else(|| {
        adpipe_runtime::config::resolve_state_dir(
            std::path::Path::new("demo/files"),
            std::env::var_os(adpipe_runtime::config::STATE_DIR_ENV).as_deref(),
        )
    }))
    .context("the files directory")?;
    // A previous run's files and markers would stand for this run's offsets.
    match std::fs::remove_dir_all(&files_dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("emptying {}", files_dir.display()));
        }
        _ => {}
    }
    let state_dir = std::env::temp_dir().join(format!("adpipe-demo-{}-state", std::process::id()));
    let stats_schema = format!("demo_{}", unique_suffix());
    let plan = chain::ChainPlan {
        names: &names,
        bootstrap: &bootstrap,
        registry_url: registry.url(),
        state_dir: state_dir.clone(),
        files_dir: files_dir.clone(),
        postgres: args
            .postgres_url
            .clone()
            .map(|url| (url, stats_schema.clone())),
        elasticsearch: args
            .es_url
            .clone()
            .map(|url| (url, es_index_prefix(&names))),
        bigquery: args.bq_url.as_ref().map(|url| BigQuerySettings {
            url: url.trim_end_matches('/').to_owned(),
            project: "adpipe".to_owned(),
            dataset: stats_schema.clone(),
            table_prefix: String::new(),
            credentials: args.bq_credentials.clone(),
            rows_per_request: 500,
        }),
        profiles: match &args.redis_url {
            Some(url) => chain::ProfileStore::Redis(url.clone()),
            None => chain::ProfileStore::Embedded,
        },
        joiner_wait: "15s".to_owned(),
        max_idle: "1s".to_owned(),
    };
    let console = crate::console::Console::start(
        crate::console::collect::Reading {
            title: "adpipe demo".to_owned(),
            source: crate::console::collect::Source::Recorder,
            probes: plan
                .services()
                .into_iter()
                .map(|service| service.probe)
                .collect(),
            bootstrap: bootstrap.clone(),
            reconciler: None,
        },
        args.console,
    )?;
    writeln!(out, "console: {}", console.url())?;
    // The bidders publish first, then the chain replays it (as after an
    // outage): with every input already there, the joiner's short wait
    // decides each join exactly as the ground truth expects.
    let (mut publications, mut truth) = simulation.generate();
    // Only Elasticsearch refuses it; without one it is simply an event.
    let store_refused = bad_input::add_store_refused(&mut publications, &mut truth);
    let codec = Codec::new(RegistryClient::new(&registry.url())?);
    publish(
        &codec,
        &bootstrap,
        &names,
        &publications,
        crate::progress::bar(0, "published"),
    )
    .await?;
    let mut bad_input = bad_input::publish(&codec, &bootstrap, &names).await?;
    if plan.elasticsearch.is_some() {
        bad_input.push(store_refused);
    }
    let replicated = if names.mirrored() {
        let replicated =
            wait_replicated(&names, &bootstrap, crate::progress::bar(0, "replicated")).await?;
        writeln!(
            out,
            "MirrorMaker 2 copied {replicated} records from the DCs to central"
        )?;
        // Its copies of events-for-<dc> (empty yet) for the profile loaders.
        for dc in &names.dcs {
            if let (Some(cluster), topic) = names.events_at(dc) {
                wait_topic(cluster, &topic, Duration::from_secs(60)).await?;
            }
        }
        Some(replicated)
    } else {
        None
    };
    let chain = plan.start(out)?;
    let view = live::LiveView::start(chain.probes.clone(), &bootstrap);

    // The deduplicated events against the ground truth.
    let deduplicated_topics = EventKind::PUBLISHED.map(|kind| names.deduplicated(kind));
    let delivered = checks::read_ids(
        &codec,
        &bootstrap,
        &names,
        &deduplicated_topics,
        truth.uniques(),
        &view.bar(0, "deduplicated"),
    )
    .await?;
    let uniques: Vec<adpipe_loadtest::SimEvent> = publications
        .iter()
        .filter(|publication| !publication.duplicate)
        .map(|publication| publication.event.clone())
        .collect();
    let expected = adpipe_loadtest::joins::expected(&uniques);
    let joins =
        checks::collect_joins(&codec, &bootstrap, &names, &expected, view.bar(0, "joined")).await?;
    let impressions: Vec<&adpipe_events::Impression> = uniques
        .iter()
        .filter_map(|event| match event {
            adpipe_loadtest::SimEvent::Impression(impression) => Some(impression),
            _ => None,
        })
        .collect();
    let stats = match &args.postgres_url {
        Some(url) => {
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
            Some(checks::count_stats(url, &stats_schema, want).await?)
        }
        None => None,
    };

    // What each later stage should hold: the ids of the processed events.
    let ids = |items: &mut dyn Iterator<Item = &String>| -> HashSet<checks::Id> {
        items.map(|id| checks::id(id)).collect()
    };
    let impression_ids = ids(&mut impressions.iter().map(|impression| &impression.event_id));
    let click_ids = ids(&mut expected.clicks.keys());
    let conversion_ids = ids(&mut expected.conversions.keys());
    let orphan_ids = ids(&mut expected.orphans.keys());
    let processed: HashSet<checks::Id> = impression_ids
        .iter()
        .chain(&click_ids)
        .chain(&conversion_ids)
        .copied()
        .collect();

    // The dispatcher: each processed event once, to the DC(s) it was not seen in.
    let dispatched_topics: Vec<String> = names.dcs.iter().map(|dc| names.events_for(dc)).collect();
    let dispatched_records = checks::read_ids(
        &codec,
        &bootstrap,
        &names,
        &dispatched_topics,
        processed.len() as u64 * (names.dcs.len() as u64 - 1),
        &view.bar(0, "dispatched"),
    )
    .await?;
    let mut dispatched = vec![Tally::of(
        "each event, over every DC",
        &processed,
        dispatched_records.iter().map(|record| record.id),
    )];
    let per_dc: Vec<(String, HashSet<checks::Id>)> = names
        .dcs
        .iter()
        .enumerate()
        .map(|(index, dc)| {
            let ids: HashSet<checks::Id> = dispatched_records
                .iter()
                .filter(|record| record.topic == index)
                .map(|record| record.id)
                .collect();
            (dc.clone(), ids)
        })
        .collect();
    for (dc, ids) in &per_dc {
        dispatched.push(Tally {
            what: format!("to {dc}"),
            expected: ids.len() as u64,
            found: ids.len() as u64,
            ..Tally::default()
        });
    }

    // The files: every processed event and orphan once, in its topic's files.
    let file_expectations = [
        (names.deduplicated(EventKind::Impression), &impression_ids),
        (names.joined("clicks"), &click_ids),
        (names.joined("conversions"), &conversion_ids),
        (names.joined("orphans"), &orphan_ids),
    ];
    let files_want: u64 = file_expectations
        .iter()
        .map(|(_, ids)| ids.len() as u64)
        .sum();
    let files_bar = view.bar(0, "in files");
    checks::wait_for_count(
        files_want,
        Duration::from_secs(30),
        &files_bar,
        async || {
            Ok(checks::file_ids(&files_dir)?
                .values()
                .map(|ids| ids.len() as u64)
                .sum())
        },
    )
    .await?;
    let in_files = checks::file_ids(&files_dir)?;
    let files: Vec<Tally> = file_expectations
        .iter()
        .map(|(topic, expected)| {
            let found = in_files.get(topic).into_iter().flatten().copied();
            Tally::of(topic, expected, found)
        })
        .collect();

    // Elasticsearch and BigQuery: one document / row per processed event
    // and orphan, in the days of the run's events.
    let span = adpipe_reconciler::Span {
        from: publications
            .iter()
            .map(|publication| publication.event.event_time())
            .min()
            .unwrap_or_default(),
        to: adpipe_runtime::event_time::now_ms() + 1,
        slack_ms: 0,
    };
    let mut elasticsearch = Vec::new();
    if let Some((url, prefix)) = &plan.elasticsearch {
        // Every event, but the one whose id is too long for an `_id`.
        let refused: HashSet<checks::Id> = truth
            .impressions
            .iter()
            .filter(|id| !bad_input::elasticsearch_takes(id))
            .map(|id| checks::id(id))
            .collect();
        let taken: Vec<HashSet<checks::Id>> = file_expectations
            .iter()
            .map(|(_, ids)| ids.difference(&refused).copied().collect())
            .collect();
        let expectations: Vec<(String, &HashSet<checks::Id>)> = file_expectations
            .iter()
            .zip(&taken)
            .map(|((topic, _), ids)| (topic.clone(), ids))
            .collect();
        elasticsearch = checks::store_tallies(
            view.bar(0, "in Elasticsearch"),
            &expectations,
            async |topic: &str| {
                Ok(
                    adpipe_reconciler::stores::elasticsearch_documents(url, prefix, topic, span)
                        .await?
                        .iter()
                        .map(|(id, _)| checks::id(id))
                        .collect(),
                )
            },
        )
        .await?;
    }
    let mut bigquery = Vec::new();
    if let Some(settings) = &plan.bigquery {
        let client = adpipe_loader::bigquery::client(settings)
            .await
            .map_err(anyhow::Error::msg)?;
        bigquery = checks::store_tallies(
            view.bar(0, "in BigQuery"),
            &file_expectations,
            async |topic: &str| {
                let kinds = chain::loader_kinds(&names, topic);
                Ok(adpipe_loader::bigquery::row_identities(
                    &client,
                    settings,
                    topic,
                    &kinds,
                    (span.from, span.to),
                )
                .await
                .map_err(anyhow::Error::msg)?
                .iter()
                .map(|(id, _)| checks::id(id))
                .collect())
            },
        )
        .await?;
    }

    // The profiles: each DC holds every event dispatched to it, once.
    let mut profiles = Vec::new();
    for (dc, expected) in &per_dc {
        let bar = view.bar(0, &format!("{dc} profiles"));
        let read = async || match &plan.profiles {
            chain::ProfileStore::Redis(url) => {
                checks::redis_profile_ids(url, &plan.profile_prefix(dc)).await
            }
            chain::ProfileStore::Embedded => Ok(chain
                .profiles
                .iter()
                .filter(|(store_dc, _)| store_dc == dc)
                .flat_map(|(_, store)| checks::profile_ids(store))
                .collect()),
        };
        checks::wait_for_count(
            expected.len() as u64,
            Duration::from_secs(30),
            &bar,
            async || Ok(read().await?.len() as u64),
        )
        .await?;
        let found = read().await?;
        profiles.push(Tally::of(&format!("{dc}: entries"), expected, found));
    }
    let merged = checks::count_merged(&bootstrap, &names)?;
    bad_input::find_dead_letters(&bootstrap, &names, &mut bad_input)?;
    view.stop();
    for name in chain.stop().await {
        writeln!(out, "(the {name} took over 20 s to stop)")?;
    }
    // What `adpipe reconcile` says of the same run (before the registry
    // it decodes with stops).
    let first_event_ms = publications
        .iter()
        .map(|publication| publication.event.event_time())
        .min()
        .unwrap_or_default();
    let reconciliation = reconcile(&plan, first_event_ms).await?;
    console.set_reconciliation(serde_json::to_value(&reconciliation)?);
    writeln!(out)?;
    reconciliation.print(out)?;
    registry.stop().await;

    let mut outputs = vec![
        ("Avro files".to_owned(), files_dir.display().to_string()),
        (
            "processed events (Kafka)".to_owned(),
            format!(
                "{}, {}, {}, {} on {}",
                names.deduplicated(EventKind::Impression),
                names.joined("clicks"),
                names.joined("conversions"),
                names.joined("orphans"),
                args.brokers
                    .as_deref()
                    .unwrap_or("the in-process cluster (gone)")
            ),
        ),
        (
            "profiles".to_owned(),
            match &plan.profiles {
                chain::ProfileStore::Redis(url) => format!(
                    "keys {}<user>:<kind> at {}",
                    plan.profile_prefix("<dc>"),
                    redact(url)
                ),
                chain::ProfileStore::Embedded => {
                    "one embedded store per DC (in memory, gone with the demo)".to_owned()
                }
            },
        ),
    ];
    if let Some((url, prefix)) = &plan.elasticsearch {
        outputs.push((
            "Elasticsearch".to_owned(),
            format!("indices {prefix}*-YYYY.MM.DD at {url}"),
        ));
    }
    if let Some(settings) = &plan.bigquery {
        outputs.push((
            "BigQuery".to_owned(),
            format!(
                "dataset {}.{} (a table per topic) at {}",
                settings.project, settings.dataset, settings.url
            ),
        ));
    }
    if let Some(url) = &args.postgres_url {
        outputs.push((
            "stats (PostgreSQL)".to_owned(),
            format!(
                "schema {stats_schema} (views minute, hour) at {}",
                redact(url)
            ),
        ));
    }
    let check = truth.check_ids(delivered.iter().map(|record| record.id), checks::id);
    let report = DemoReport {
        published: truth.published,
        duplicates_injected: truth.duplicates,
        delivered: delivered.len() as u64,
        check,
        joins,
        stats,
        merged,
        dispatched,
        files,
        elasticsearch,
        bigquery,
        replicated,
        profiles,
        outputs,
        unexplained: reconciliation.unexplained().count(),
        bad_input,
    };
    table::print_table(out, &report, &truth, started.elapsed())?;
    let _ = std::fs::remove_dir_all(state_dir);
    if !args.console_linger.is_zero() {
        writeln!(
            out,
            "console: {} stays up for {}",
            console.url(),
            humantime::format_duration(args.console_linger)
        )?;
        out.flush()?;
        tokio::time::sleep(args.console_linger).await;
    }
    console.stop().await;
    if !report.matches() {
        bail!("the output does not match the ground truth (see the tables above)");
    }
    Ok(report)
}

/// Reconciles the demo's run: every hour since its first event; records
/// the run in the reconciler's metrics.
pub(crate) async fn reconcile(
    plan: &chain::ChainPlan<'_>,
    first_event_ms: i64,
) -> anyhow::Result<adpipe_reconciler::Reconciliation> {
    let names = plan.names;
    let group = |name: &str| format!("{:?}", format!("{}adpipe-{name}", names.prefix));
    let quoted: Vec<String> = names.dcs.iter().map(|dc| format!("{dc:?}")).collect();
    let mut env = vec![
        ("KAFKA__BOOTSTRAP_SERVERS", format!("{:?}", plan.bootstrap)),
        ("REGISTRY__URL", format!("{:?}", plan.registry_url)),
        ("RECONCILE__DCS", format!("[{}]", quoted.join(", "))),
        ("RECONCILE__TOPIC_PREFIX", format!("{:?}", names.prefix)),
        (
            "RECONCILE__REPLICA",
            format!("{:?}", names.replica_template()),
        ),
        (
            "RECONCILE__DC_CLUSTERS",
            format!(
                "[{}]",
                names
                    .dc_clusters
                    .iter()
                    .map(|(dc, bootstrap)| format!("{:?}", format!("{dc}={bootstrap}")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("RECONCILE__GROUPS__MERGER", group("merger")),
        ("RECONCILE__GROUPS__DEDUPLICATOR", group("deduplicator")),
        ("RECONCILE__GROUPS__JOINER", group("joiner")),
        ("RECONCILE__GROUPS__STATS_COUNTER", group("stats-counter")),
        ("RECONCILE__GROUPS__FILES", group("loader-files")),
        (
            "RECONCILE__GROUPS__ELASTICSEARCH",
            match &plan.elasticsearch {
                Some(_) => group("loader-elasticsearch"),
                None => "\"\"".to_owned(),
            },
        ),
        (
            "RECONCILE__GROUPS__BIGQUERY",
            match &plan.bigquery {
                Some(_) => group("loader-bigquery"),
                None => "\"\"".to_owned(),
            },
        ),
        (
            "FILES__DIR",
            format!("{:?}", plan.files_dir.display().to_string()),
        ),
        // The dispatcher's routing: its default, every DC but the origin.
        ("DISPATCHER__SERVING", "\"all\"".to_owned()),
        ("RECONCILE__GROUPS__DISPATCHER", group("dispatcher")),
        (
            "RECONCILE__DISPATCHED",
            format!("{:?}", names.events_for("{dc}")),
        ),
        (
            "RECONCILE__DISPATCHED_AT_DC",
            format!("{:?}", names.events_at_dc("{dc}")),
        ),
    ];
    if let Some((url, prefix)) = &plan.elasticsearch {
        env.push(("ELASTICSEARCH__URL", format!("{url:?}")));
        env.push(("ELASTICSEARCH__INDEX_PREFIX", format!("{prefix:?}")));
    }
    if let Some(settings) = &plan.bigquery {
        env.push(("BIGQUERY__URL", format!("{:?}", settings.url)));
        env.push(("BIGQUERY__PROJECT", format!("{:?}", settings.project)));
        env.push(("BIGQUERY__DATASET", format!("{:?}", settings.dataset)));
        env.push((
            "BIGQUERY__CREDENTIALS",
            format!("{:?}", settings.credentials),
        ));
    }
    if let chain::ProfileStore::Redis(url) = &plan.profiles {
        env.push(("PROFILES__URL", format!("{url:?}")));
        env.push((
            "PROFILES__KEY_PREFIX",
            format!("{:?}", plan.profile_prefix("{dc}")),
        ));
        env.push(("PROFILES__GROUP", group("loader-profiles-{dc}")));
        env.push(("PROFILES__KEEP", chain::PROFILE_KEEP.to_string()));
    }
    if let Some((url, schema)) = &plan.postgres {
        env.push(("STATS__POSTGRES_URL", format!("{url:?}")));
        env.push(("STATS__SCHEMA", format!("{schema:?}")));
    }
    let settings = adpipe_reconciler::ReconcileSettings::load(
        None,
        env.into_iter()
            .map(|(key, value)| (format!("ADPIPE__{key}"), value)),
    )?;
    let hour = adpipe_reconciler::ledger::HOUR_MS;
    let now = adpipe_runtime::event_time::now_ms();
    let from = first_event_ms - first_event_ms.rem_euclid(hour);
    let span = Span {
        from,
        to: now - now.rem_euclid(hour) + hour,
        // Whole topics: they hold this run only, and the mock cluster
        // cannot look offsets up by time.
        slack_ms: from,
    };
    let started = std::time::Instant::now();
    let result = adpipe_reconciler::reconcile(&settings, span).await;
    // As the continuous reconciler would: the console's /metrics is a
    // deployment's, `adpipe_reconcile_*` included.
    adpipe_reconciler::serve::RunMetrics::default().record(result.as_ref().ok(), started.elapsed());
    result
}

/// The Elasticsearch loader's index prefix: the run's topic prefix,
/// lowercase, dots as dashes (`adpipe-demo-` on the mock cluster).
fn es_index_prefix(names: &Names) -> String {
    format!("adpipe-demo-{}", names.prefix.replace('.', "-")).to_ascii_lowercase()
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `NAME=host:port` per DC of the simulation.
pub(crate) fn dc_clusters(
    entries: &[String],
    dcs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let clusters: std::collections::BTreeMap<String, String> = entries
        .iter()
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(dc, bootstrap)| (dc.to_owned(), bootstrap.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--dc {entry:?}: use NAME=host:port"))
        })
        .collect::<anyhow::Result<_>>()?;
    if !clusters.is_empty() && dcs.iter().any(|dc| !clusters.contains_key(dc)) {
        bail!(
            "--dc names {:?}; the simulation's DCs are {dcs:?}: name each",
            clusters.keys()
        );
    }
    Ok(clusters)
}

/// Publishes every publication to its DC: into its own cluster's topic
/// (MirrorMaker 2 carries it), or on one cluster straight into the
/// replica's name.
async fn publish(
    codec: &Codec,
    central: &str,
    names: &Names,
    publications: &[adpipe_loadtest::Publication],
    bar: ProgressBar,
) -> anyhow::Result<()> {
    bar.set_length(publications.len() as u64);
    let mut publishers = std::collections::BTreeMap::new();
    for dc in &names.dcs {
        let (cluster, _) = names.publish_target(dc, EventKind::Impression);
        let publisher = SimPublisher::new(codec, cluster.unwrap_or(central), |kind| {
            value_subject(&names.merged(kind))
        })
        .await?;
        publishers.insert(dc.clone(), publisher);
    }
    // Publishing blocks while librdkafka's queue is full.
    tokio::task::block_in_place(|| {
        for publication in publications {
            let (_, topic) = names.publish_target(&publication.dc, publication.event.kind());
            let publisher = publishers
                .get(&publication.dc)
                .ok_or_else(|| anyhow::anyhow!("no publisher for {}", publication.dc))?;
            publisher.publish(publication, &topic)?;
            bar.inc(1);
        }
        for publisher in publishers.values() {
            publisher.flush(Duration::from_secs(30))?;
        }
        anyhow::Ok(())
    })?;
    bar.finish();
    Ok(())
}

/// Waits (up to `timeout`) until `topic` exists on `bootstrap` (made by
/// MirrorMaker 2).
pub(crate) async fn wait_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client: rdkafka::consumer::BaseConsumer =
        adpipe_kafka_client::env_client_config(bootstrap).create()?;
    let deadline = Instant::now() + timeout;
    loop {
        let exists = tokio::task::block_in_place(|| {
            client
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .is_ok_and(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .any(|meta| meta.error().is_none() && !meta.partitions().is_empty())
                })
        });
        if exists {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "MirrorMaker 2 did not make {topic} on {bootstrap} within {timeout:?}: is it running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (up to 2 min) until MirrorMaker 2 copied every DC topic to central
/// (as many records in each replica as in its source); returns the count.
pub(crate) async fn wait_replicated(
    names: &Names,
    central: &str,
    bar: ProgressBar,
) -> anyhow::Result<u64> {
    let count = |bootstrap: &str, topic: &str| -> u64 {
        let Ok(client) = adpipe_kafka_client::env_client_config(bootstrap)
            .create::<rdkafka::consumer::BaseConsumer>()
        else {
            return 0;
        };
        (0..names::PARTITIONS)
            .filter_map(|partition| {
                client
                    .fetch_watermarks(topic, partition, Duration::from_secs(5))
                    .ok()
            })
            .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
            .sum()
    };
    let pairs: Vec<(String, String, String)> = names
        .dc_clusters
        .iter()
        .flat_map(|(dc, bootstrap)| {
            EventKind::PUBLISHED.into_iter().map(move |kind| {
                (
                    bootstrap.clone(),
                    names.source(kind),
                    names.replica(dc, kind),
                )
            })
        })
        .collect();
    let want: u64 = tokio::task::block_in_place(|| {
        pairs
            .iter()
            .map(|(bootstrap, source, _)| count(bootstrap, source))
            .sum()
    });
    let replicated = checks::wait_for_count(want, Duration::from_secs(120), &bar, async || {
        Ok(tokio::task::block_in_place(|| {
            pairs
                .iter()
                .map(|(_, _, replica)| count(central, replica))
                .sum()
        }))
    })
    .await?;
    if replicated < want {
        bail!(
            "MirrorMaker 2 copied {replicated} of {want} records to central in 2 min: is it running (`infra/mirrormaker.sh start`)?"
        );
    }
    Ok(replicated)
}

/// Creates `topics` with `replication` copies (and `min_insync` replicas
/// needed for a write, when given).
pub(crate) async fn create_topics(
    brokers: &str,
    topics: &[(String, i32)],
    replication: i32,
    min_insync: Option<&str>,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = adpipe_kafka_client::env_client_config(brokers).create()?;
    let new_topics: Vec<_> = topics
        .iter()
        .map(|(topic, partitions)| {
            let topic = NewTopic::new(topic, *partitions, TopicReplication::Fixed(replication));
            match min_insync {
                Some(min) => topic.set("min.insync.replicas", min),
                None => topic,
            }
        })
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

pub(crate) fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}", nanos % 0xffff_ffff)
}
