//! The whole chain at once (`--only chain`): merger → deduplicator →
//! joiner → stats-counter, each its own process, all running together over
//! one backlog in the two DCs' replicas (as MirrorMaker 2 lands them), and
//! the same four stages built with Kafka Streams (`loadtest/kstreams`:
//! merge, dedup, join, count) on the same broker and backlog, alternating
//! rounds in one run.
//!
//! A stage is done when its group has committed its inputs to their end
//! (the stats-counter's in PostgreSQL's transaction, and Kafka Streams'
//! count once its repartition topic is consumed too). Measured to 99% of
//! every stage's inputs (the last 1% is the drain: the joiners hold a
//! click whose impression is not there yet up to 60 s, adpipe's by its
//! `wait`, Kafka Streams' in a store of held records, so that no stage
//! running ahead of another makes orphans): the chain's events/s,
//! each stage's CPU-seconds per million chain events; and each stage's
//! peak RSS. Checked: the
//! joined clicks, joined conversions and orphans equal what the join rules
//! give for the simulation (`adpipe_loadtest::joins`), for both chains, and
//! adpipe's stats count every unique impression once.
//!
//! Then the latency phase: the adpipe chain live at half its measured rate,
//! with DC heartbeats, events stamped at publication: the p50/p99 of a
//! click's publication to its joined click read, and of an event's
//! publication to the stats-counter's commit of it (sampled: the event time
//! of the last record its group has committed, against the clock).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adpipe_codec::Codec;
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{Publication, Simulation};
use serde::Serialize;

use crate::peer::{KafkaStreamsPeer, PeerJob};
use crate::service::{self, CommitWatcher, Service};
use crate::{latency, stats};

/// The event kinds, in the order of the DC topics.
const KINDS: [&str; 3] = ["impressions", "clicks", "conversions"];
/// Alternating rounds of each chain.
const ROUNDS: usize = 2;
/// The joiner's wait over a backlog: longer than any stage runs ahead of
/// another here (a click waits for its impression; a shorter wait makes
/// orphans of clicks whose impressions are still upstream).
const BACKLOG_WAIT: &str = "60s";
/// The stats-counter variant the chain runs (its defaults: copy-merge,
/// batches of 10,000, totals topic).
const STATS_VARIANT: usize = 2;

/// What the chain needs from the benchmark's set-up.
pub struct ChainBench<'a> {
    pub bootstrap: &'a str,
    pub prefix: &'a str,
    pub partitions: i32,
    pub registry_url: String,
    pub postgres_url: &'a str,
    /// The `[kafka]`, `[runtime]` and `[http]` sections for a group, with
    /// extra `[runtime]` lines.
    pub worker_sections: &'a dyn Fn(&str, &str) -> String,
    pub bin_dir: PathBuf,
    pub peer: Option<&'a KafkaStreamsPeer>,
    pub schemas_dir: PathBuf,
    pub config_dir: PathBuf,
    pub codec: Arc<Codec>,
    pub publisher: &'a SimPublisher,
    pub impressions: u64,
    pub latency_duration: Duration,
}

/// One stage of a chain run.
#[derive(Debug, Clone, Serialize)]
pub struct StageRun {
    pub stage: &'static str,
    /// Records it consumed (committed).
    pub records: i64,
    /// Seconds from the chain's start to 99% of its inputs committed.
    pub almost_seconds: f64,
    /// Seconds from the chain's start to all of its inputs committed.
    pub done_seconds: f64,
    /// CPU seconds of the process up to 99%, per million chain events.
    pub cpu_seconds_per_million_events: f64,
    pub peak_rss_mib: f64,
}

/// One run of a whole chain over the backlog.
#[derive(Debug, Clone, Serialize)]
pub struct ChainRun {
    pub chain: &'static str,
    pub events: i64,
    /// 99% of the events over `wall_seconds`.
    pub events_per_sec: f64,
    /// Seconds from the start until every stage had committed 99% of its
    /// inputs.
    pub wall_seconds: f64,
    /// Seconds until every stage had committed all of them.
    pub drained_seconds: f64,
    /// Every stage's CPU seconds per million chain events, summed.
    pub cpu_seconds_per_million_events: f64,
    pub stages: Vec<StageRun>,
}

/// The chain's report.
#[derive(Debug, Serialize)]
pub struct ChainReport {
    pub events: i64,
    pub unique_events: u64,
    pub adpipe: Vec<ChainRun>,
    pub kafka_streams: Vec<ChainRun>,
    pub latency: Option<ChainLatency>,
}

/// The adpipe chain live at half its rate.
#[derive(Debug, Serialize)]
pub struct ChainLatency {
    /// Click published → joined click read (merger, deduplicator, joiner).
    pub to_joined_click: latency::LatencyRun,
    /// Event published → committed by the stats-counter (in PostgreSQL's
    /// transaction), sampled every 100 ms per partition.
    pub to_stats_committed: latency::Percentiles,
}

/// The stats-counter's commits at a moment: (ms, [(topic, partition, offset)]).
type CommitSample = (i64, Vec<(String, i32, i64)>);

/// A stage under way.
struct Running {
    stage: &'static str,
    service: Service,
    group: String,
    inputs: Vec<String>,
    expected: i64,
    watcher: Option<CommitWatcher>,
    /// When it had committed 99% of `expected`, and its CPU seconds then.
    almost: Option<(Instant, f64)>,
    done: Option<(Instant, f64, i64)>,
}

impl Running {
    fn new(
        stage: &'static str,
        service: Service,
        group: &str,
        inputs: Vec<String>,
        expected: i64,
    ) -> Self {
        Running {
            stage,
            service,
            group: group.to_owned(),
            inputs,
            expected,
            watcher: None,
            almost: None,
            done: None,
        }
    }
}

/// Names of one round's topics of a chain.
struct Topics {
    dc: Vec<String>,
    merged: String,
    deduplicated: String,
    joined: String,
    totals: String,
}

impl Topics {
    fn of(prefix: &str, chain: &str, round: usize) -> Topics {
        Topics {
            dc: ["dc1", "dc2"]
                .iter()
                .map(|dc| format!("{dc}.{prefix}.{{kind}}"))
                .collect(),
            merged: format!("{prefix}.{chain}{round}.merged.{{kind}}"),
            deduplicated: format!("{prefix}.{chain}{round}.dedup.{{kind}}"),
            joined: format!("{prefix}.{chain}{round}.joined.{{kind}}"),
            totals: format!("{prefix}.{chain}{round}.totals"),
        }
    }

    fn each(template: &str, kinds: &[&str]) -> Vec<String> {
        kinds
            .iter()
            .map(|kind| template.replace("{kind}", kind))
            .collect()
    }

    fn dc_topics(&self) -> Vec<String> {
        self.dc
            .iter()
            .flat_map(|template| Topics::each(template, &KINDS))
            .collect()
    }

    /// The stats-counter's inputs: impressions, joined clicks, joined
    /// conversions, orphans.
    fn counted(&self) -> Vec<String> {
        let mut inputs = Topics::each(&self.deduplicated, &["impressions"]);
        inputs.extend(Topics::each(
            &self.joined,
            &["clicks", "conversions", "orphans"],
        ));
        inputs
    }

    /// Every topic a round writes that is not internal to Kafka Streams.
    fn outputs(&self) -> Vec<String> {
        let mut topics = Topics::each(&self.merged, &KINDS);
        topics.extend(Topics::each(&self.deduplicated, &KINDS));
        topics.extend(Topics::each(
            &self.joined,
            &["clicks", "conversions", "orphans"],
        ));
        topics.push(self.totals.clone());
        topics
    }
}

/// Runs the chains and the latency phase.
pub async fn run(bench: &ChainBench<'_>) -> Result<ChainReport, String> {
    let (bootstrap, prefix) = (bench.bootstrap, bench.prefix);
    let mut specs_owned: Vec<(String, &[(&str, &str)])> = Vec::new();
    for round in 0..=ROUNDS {
        for chain in ["adpipe", "ks"] {
            let topics = Topics::of(prefix, chain, round);
            for topic in topics.outputs() {
                specs_owned.push((topic, crate::KEEP_RECORDS));
            }
            if chain == "adpipe" {
                for kind in KINDS {
                    specs_owned.push((
                        format!("{prefix}.{chain}{round}.dedup-log.{kind}"),
                        &[("cleanup.policy", "compact")],
                    ));
                }
                for kind in ["impressions", "clicks"] {
                    specs_owned.push((
                        format!("{prefix}.{chain}{round}.join-log.{kind}"),
                        &[("cleanup.policy", "compact")],
                    ));
                }
            }
        }
    }
    for topic in Topics::of(prefix, "adpipe", 0).dc_topics() {
        specs_owned.push((topic, crate::KEEP_RECORDS));
    }
    specs_owned.push((format!("{prefix}.chain-dlq"), crate::KEEP_RECORDS));
    let specs: Vec<adpipe_testkit::TopicSpec<'_>> = specs_owned
        .iter()
        .map(|(name, config)| (name.as_str(), bench.partitions, *config))
        .collect();
    adpipe_testkit::create_topics(bootstrap, &specs).await;

    // The backlog: each publication to its DC's topic of its kind.
    let (publications, truth) = Simulation {
        impressions: bench.impressions,
        ..Simulation::default()
    }
    .generate();
    let unique: Vec<_> = publications
        .iter()
        .filter(|publication| !publication.duplicate)
        .map(|publication| publication.event.clone())
        .collect();
    let expected = adpipe_loadtest::joins::expected(&unique);
    drop(unique);
    let dc_topic = |publication: &Publication| {
        format!("{}.{prefix}.{}", publication.dc, kind_name(publication))
    };
    eprintln!(
        "chain: publishing {} records to the DCs' topics",
        publications.len()
    );
    for publication in &publications {
        bench
            .publisher
            .publish(publication, &dc_topic(publication))
            .map_err(|error| error.to_string())?;
    }
    bench
        .publisher
        .flush(Duration::from_secs(300))
        .map_err(|error| error.to_string())?;
    let dc_topics = Topics::of(prefix, "adpipe", 0).dc_topics();
    let mut events = 0;
    for topic in &dc_topics {
        events += service::topic_end(bootstrap, topic)?;
    }
    let uniques = truth.uniques() as i64;
    let partitions = usize::try_from(bench.partitions).unwrap_or(1);

    let mut report = ChainReport {
        events,
        unique_events: truth.uniques(),
        adpipe: Vec::new(),
        kafka_streams: Vec::new(),
        latency: None,
    };
    for round in 0..ROUNDS {
        eprintln!("round {round}: the adpipe chain over the backlog");
        let topics = Topics::of(prefix, "adpipe", round);
        let stages = start_adpipe(bench, &topics, round, (events, uniques), BACKLOG_WAIT)?;
        let run = finish(bootstrap, partitions, "adpipe", stages, events)?;
        check_outputs(bootstrap, "adpipe", &topics, &expected)?;
        let schema = stats_schema(prefix, round);
        let (counted, _) = stats::counted(bench.postgres_url, &schema).await?;
        if counted != truth.impressions.len() as i64 {
            return Err(format!(
                "the adpipe chain (round {round}) counted {counted} impressions of {}",
                truth.impressions.len()
            ));
        }
        print_run(&run);
        report.adpipe.push(run);
        if let Some(peer) = bench.peer {
            eprintln!("round {round}: the Kafka Streams chain over the backlog");
            let topics = Topics::of(prefix, "ks", round);
            let stages = start_kafka_streams(bench, peer, &topics, round, events, uniques)?;
            let run = finish(bootstrap, partitions, "Kafka Streams", stages, events)?;
            check_outputs(bootstrap, "Kafka Streams", &topics, &expected)?;
            print_run(&run);
            report.kafka_streams.push(run);
        }
    }
    if let Some(peer) = bench.peer {
        let _ = std::fs::remove_dir_all(&peer.state_dir);
    }

    let rate = report
        .adpipe
        .iter()
        .map(|run| run.events_per_sec)
        .sum::<f64>()
        / report.adpipe.len().max(1) as f64
        / 2.0;
    report.latency = Some(live(bench, rate, (events, uniques)).await?);
    Ok(report)
}

fn kind_name(publication: &Publication) -> &'static str {
    match publication.event.kind() {
        adpipe_events::EventKind::Impression => "impressions",
        adpipe_events::EventKind::Click => "clicks",
        _ => "conversions",
    }
}

fn stats_schema(prefix: &str, round: usize) -> String {
    format!("bench_{}_chain{round}", &prefix[6..])
}

/// Writes a service's config file.
fn config(bench: &ChainBench<'_>, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = bench
        .config_dir
        .join(format!("{}-{name}.toml", bench.prefix));
    crate::write_file(&path, text)?;
    Ok(path)
}

/// Starts adpipe's four services on a round's topics.
fn start_adpipe(
    bench: &ChainBench<'_>,
    topics: &Topics,
    round: usize,
    (events, uniques): (i64, i64),
    joiner_wait: &str,
) -> Result<Vec<Running>, String> {
    let prefix = bench.prefix;
    let registry = format!("[registry]\nurl = \"{}\"\n", bench.registry_url);
    let group = |stage: &str| format!("{prefix}-chain{round}-{stage}");
    let merger = config(
        bench,
        &format!("chain{round}-merger"),
        &format!(
            "{}{registry}[merger]\ndcs = [\"dc1\", \"dc2\"]\n\
             kinds = [\"impressions\", \"clicks\", \"conversions\"]\n\
             input = \"{{dc}}.{prefix}.{{kind}}\"\noutput = \"{}\"\n",
            (bench.worker_sections)(&group("merger"), "max-idle = \"100ms\"\n"),
            topics.merged,
        ),
    )?;
    let mut streams = String::new();
    for kind in KINDS {
        streams.push_str(&format!(
            "[[deduplicator.stream]]\ninput = \"{}\"\noutput = \"{}\"\n\
             changelog = \"{prefix}.adpipe{round}.dedup-log.{kind}\"\n",
            topics.merged.replace("{kind}", kind),
            topics.deduplicated.replace("{kind}", kind),
        ));
    }
    let deduplicator = config(
        bench,
        &format!("chain{round}-dedup"),
        &format!(
            "{}{registry}{streams}",
            (bench.worker_sections)(&group("dedup"), "")
        ),
    )?;
    let [impressions, clicks, conversions] =
        KINDS.map(|kind| topics.deduplicated.replace("{kind}", kind));
    let [joined_clicks, joined_conversions, orphans] =
        ["clicks", "conversions", "orphans"].map(|kind| topics.joined.replace("{kind}", kind));
    let state_dir = bench
        .config_dir
        .join(format!("{prefix}-chain{round}-joiner-state"));
    let joiner = config(
        bench,
        &format!("chain{round}-joiner"),
        &format!(
            "{}{registry}[joiner]\nimpressions = \"{impressions}\"\nclicks = \"{clicks}\"\n\
             conversions = \"{conversions}\"\njoined-clicks = \"{joined_clicks}\"\n\
             joined-conversions = \"{joined_conversions}\"\norphans = \"{orphans}\"\n\
             impressions-changelog = \"{prefix}.adpipe{round}.join-log.impressions\"\n\
             clicks-changelog = \"{prefix}.adpipe{round}.join-log.clicks\"\n\
             wait = \"{joiner_wait}\"\nstate-dir = \"{}\"\n",
            (bench.worker_sections)(&group("joiner"), "max-idle = \"1s\"\n"),
            state_dir.display(),
        ),
    )?;
    let counted = topics.counted();
    let stats_config = config(
        bench,
        &format!("chain{round}-stats"),
        &format!(
            "{}{}",
            (bench.worker_sections)(&group("stats"), ""),
            stats::sections(
                &stats::VARIANTS[STATS_VARIANT],
                &bench.registry_url,
                &counted[0],
                &counted[1..],
                &topics.totals,
                bench.postgres_url,
                &stats_schema(prefix, round),
            )
        ),
    )?;
    let binary = |name: &str| bench.bin_dir.join(name);
    let mut stages = vec![Running::new(
        "merger",
        Service::spawn("merger", &binary("adpipe-merger"), &merger)?,
        &group("merger"),
        topics.dc_topics(),
        events,
    )];
    stages.push(Running::new(
        "deduplicator",
        Service::spawn(
            "deduplicator",
            &binary("adpipe-deduplicator"),
            &deduplicator,
        )?,
        &group("dedup"),
        Topics::each(&topics.merged, &KINDS),
        events,
    ));
    stages.push(Running::new(
        "joiner",
        Service::spawn("joiner", &binary("adpipe-joiner"), &joiner)?,
        &group("joiner"),
        Topics::each(&topics.deduplicated, &KINDS),
        uniques,
    ));
    stages.push(Running::new(
        "stats-counter",
        Service::spawn(
            "stats-counter",
            &binary("adpipe-stats-counter"),
            &stats_config,
        )?,
        &group("stats"),
        counted,
        uniques,
    ));
    Ok(stages)
}

/// Starts the Kafka Streams chain's four applications on a round's topics.
fn start_kafka_streams(
    bench: &ChainBench<'_>,
    peer: &KafkaStreamsPeer,
    topics: &Topics,
    round: usize,
    events: i64,
    uniques: i64,
) -> Result<Vec<Running>, String> {
    let prefix = bench.prefix;
    let app = |stage: &str| format!("{prefix}-kschain{round}-{stage}");
    let registry = bench.registry_url.as_str();
    let schemas = bench.schemas_dir.display().to_string();
    let dc_templates = topics.dc.join(",");
    let counted = topics.counted().join(",");
    let jobs = [
        (
            "merge",
            "Kafka Streams merge",
            dc_templates.as_str(),
            topics.merged.as_str(),
            "-",
        ),
        (
            "dedup",
            "Kafka Streams dedup",
            topics.merged.as_str(),
            topics.deduplicated.as_str(),
            "24",
        ),
        (
            "join",
            "Kafka Streams join",
            topics.deduplicated.as_str(),
            topics.joined.as_str(),
            schemas.as_str(),
        ),
        (
            "count",
            "Kafka Streams count",
            counted.as_str(),
            topics.totals.as_str(),
            schemas.as_str(),
        ),
    ];
    let mut stages = Vec::new();
    for (job, name, input, output, option) in jobs {
        let application_id = app(job);
        let service = peer.spawn(
            name,
            bench.bootstrap,
            &PeerJob {
                job,
                application_id: &application_id,
                input,
                output,
                option,
            },
            registry,
        )?;
        let (inputs, expected) = match job {
            "merge" => (topics.dc_topics(), events),
            "dedup" => (Topics::each(&topics.merged, &KINDS), events),
            "join" => (Topics::each(&topics.deduplicated, &KINDS), uniques),
            // Its inputs, then its repartition topic: each event twice
            // (a minute and an hour key).
            _ => {
                let mut inputs = topics.counted();
                inputs.push(format!("{application_id}-totals-repartition"));
                (inputs, uniques * 3)
            }
        };
        stages.push(Running::new(
            name,
            service,
            &application_id,
            inputs,
            expected,
        ));
    }
    Ok(stages)
}

/// Watches the stages until every one has committed its inputs, then
/// stops them (SIGTERM, clean exit).
fn finish(
    bootstrap: &str,
    partitions: usize,
    chain: &'static str,
    mut stages: Vec<Running>,
    events: i64,
) -> Result<ChainRun, String> {
    let started = Instant::now();
    wait_done(bootstrap, partitions, chain, &mut stages)?;
    // The rate and the CPU up to 99% of every stage's input: the last 1%
    // is the drain (the joiners' held orphans waiting out their wait).
    let seconds_to = |at: Instant| at.duration_since(started).as_secs_f64();
    let wall_seconds = stages
        .iter()
        .filter_map(|stage| stage.almost)
        .map(|(at, _)| seconds_to(at))
        .fold(0.0, f64::max);
    let drained_seconds = stages
        .iter()
        .filter_map(|stage| stage.done)
        .map(|(at, _, _)| seconds_to(at))
        .fold(0.0, f64::max);
    let almost_events = events as f64 * 0.99;
    let mut runs = Vec::new();
    for stage in stages {
        let (almost_at, cpu) = stage.almost.unwrap_or((started, 0.0));
        let (done_at, _, committed) = stage.done.unwrap_or((started, 0.0, 0));
        let peak_kb = stage.service.stop()?;
        runs.push(StageRun {
            stage: stage.stage,
            records: committed,
            almost_seconds: seconds_to(almost_at),
            done_seconds: seconds_to(done_at),
            cpu_seconds_per_million_events: cpu * 1e6 / almost_events.max(1.0),
            peak_rss_mib: peak_kb as f64 / 1024.0,
        });
    }
    Ok(ChainRun {
        chain,
        events,
        events_per_sec: almost_events / wall_seconds.max(1e-3),
        wall_seconds,
        drained_seconds,
        cpu_seconds_per_million_events: runs
            .iter()
            .map(|run| run.cpu_seconds_per_million_events)
            .sum(),
        stages: runs,
    })
}

/// Waits until every stage has committed its inputs to `expected`,
/// printing progress every 5 s.
fn wait_done(
    bootstrap: &str,
    partitions: usize,
    chain: &str,
    stages: &mut [Running],
) -> Result<(), String> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    while stages.iter().any(|stage| stage.done.is_none()) {
        for stage in stages.iter_mut() {
            if let Some(status) = stage.service.exited() {
                return Err(format!("{chain}: {} exited early: {status}", stage.stage));
            }
            stage.service.sample_rss();
            if stage.done.is_some() {
                continue;
            }
            if stage.watcher.is_none() {
                // Kafka Streams makes its repartition topic at start-up:
                // watched once it has every partition.
                let inputs: Vec<&str> = stage.inputs.iter().map(String::as_str).collect();
                let watcher = CommitWatcher::new(bootstrap, &stage.group, &inputs)?;
                if watcher.partitions() == inputs.len() * partitions {
                    stage.watcher = Some(watcher);
                }
            }
            let committed = stage.watcher.as_ref().map_or(0, CommitWatcher::committed);
            if committed * 100 >= stage.expected * 99 && stage.almost.is_none() {
                stage.almost = Some((Instant::now(), stage.service.cpu_seconds()));
            }
            if committed >= stage.expected {
                stage.done = Some((Instant::now(), stage.service.cpu_seconds(), committed));
            }
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            let progress: Vec<String> = stages
                .iter()
                .map(|stage| {
                    let committed = stage
                        .done
                        .map(|(_, _, committed)| committed)
                        .or_else(|| stage.watcher.as_ref().map(CommitWatcher::committed))
                        .unwrap_or(0);
                    format!("{} {committed}/{}", stage.stage, stage.expected)
                })
                .collect();
            eprintln!(
                "  {:.0} s: {}",
                started.elapsed().as_secs_f64(),
                progress.join(", ")
            );
            last_print = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("the {chain} chain did not finish in 30 minutes"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The joined clicks, joined conversions and orphans must be what the join
/// rules give for the simulation.
fn check_outputs(
    bootstrap: &str,
    chain: &str,
    topics: &Topics,
    expected: &adpipe_loadtest::joins::ExpectedJoins,
) -> Result<(), String> {
    for (kind, want) in [
        ("clicks", expected.clicks.len()),
        ("conversions", expected.conversions.len()),
        ("orphans", expected.orphans.len()),
    ] {
        let got = service::topic_end(bootstrap, &topics.joined.replace("{kind}", kind))?;
        if got != want as i64 {
            return Err(format!(
                "the {chain} chain wrote {got} joined {kind}; the join rules give {want}"
            ));
        }
    }
    Ok(())
}

fn print_run(run: &ChainRun) {
    eprintln!(
        "  {}: 99% of {} events in {:.1} s = {:.0} events/s, {:.2} CPU-s per 1M events; drained at {:.1} s",
        run.chain,
        run.events,
        run.wall_seconds,
        run.events_per_sec,
        run.cpu_seconds_per_million_events,
        run.drained_seconds
    );
    for stage in &run.stages {
        eprintln!(
            "    {:<22} 99% at {:>6.1} s, all at {:>6.1} s, {:>6.2} CPU-s/1M events, peak RSS {:>6.0} MiB",
            stage.stage,
            stage.almost_seconds,
            stage.done_seconds,
            stage.cpu_seconds_per_million_events,
            stage.peak_rss_mib
        );
    }
}

/// The adpipe chain live at `rate` events/s: it first takes the backlog,
/// then events stamped at publication go to the DCs' topics while readers
/// time the joined clicks and a sampler the stats-counter's commits.
async fn live(
    bench: &ChainBench<'_>,
    rate: f64,
    (events, uniques): (i64, i64),
) -> Result<ChainLatency, String> {
    let (bootstrap, prefix) = (bench.bootstrap, bench.prefix);
    let partitions = usize::try_from(bench.partitions).unwrap_or(1);
    let topics = Topics::of(prefix, "adpipe", ROUNDS);
    let heartbeats = adpipe_runtime::heartbeat::HeartbeatPublisher::start(
        adpipe_runtime::heartbeat::HeartbeatSettings {
            bootstrap_servers: bootstrap.to_owned(),
            topics: topics.dc_topics(),
            interval: Duration::from_millis(100),
            grace: Duration::from_millis(20),
        },
    )
    .map_err(|error| error.to_string())?;
    // The backlog's counts (the DC topics hold heartbeats now too, which
    // only the merger reads).
    eprintln!("latency: the adpipe chain takes the backlog first");
    // Live, events arrive in time order with heartbeats: the joiner's
    // usual short wait (a genuine orphan's commit waits it out).
    let mut stages = start_adpipe(bench, &topics, ROUNDS, (events, uniques), "2s")?;
    wait_done(bootstrap, partitions, "adpipe", &mut stages)?;

    eprintln!("latency: the adpipe chain live at {rate:.0} events/s");
    let counted = topics.counted();
    let mut live_from = Vec::new();
    for topic in &counted {
        live_from.push(service::topic_ends(bootstrap, topic)?);
    }
    let group = format!("{prefix}-chain{ROUNDS}-stats");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (bootstrap, group, counted, stop) = (
            bootstrap.to_owned(),
            group.clone(),
            counted.clone(),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || -> Result<Vec<CommitSample>, String> {
            let inputs: Vec<&str> = counted.iter().map(String::as_str).collect();
            let watcher = CommitWatcher::new(&bootstrap, &group, &inputs)?;
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let offsets = watcher.committed_by_partition();
                samples.push((latency::now_ms(), offsets));
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(samples)
        })
    };
    let wanted = (rate * bench.latency_duration.as_secs_f64() * 1.2) as u64;
    let (publications, _) = Simulation {
        seed: 11,
        impressions: wanted,
        ..Simulation::default()
    }
    .generate();
    let dc_topic = |publication: &Publication| {
        format!("{}.{prefix}.{}", publication.dc, kind_name(publication))
    };
    let measured_from_ms = latency::now_ms() + 3_000;
    let to_joined_click = latency::run(
        bootstrap,
        bench.publisher,
        Arc::clone(&bench.codec),
        publications,
        &dc_topic,
        &topics.dc_topics()[1],
        &topics.joined.replace("{kind}", "clicks"),
        rate,
        bench.latency_duration,
    )?;
    // The stats-counter's batches wait up to their batch-wait: the tail.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let samples = sampler
        .join()
        .map_err(|_| "the commit sampler panicked".to_owned())??;
    for stage in stages {
        stage.service.stop()?;
    }
    heartbeats.stop();
    // Each partition's commits over time, made monotonic (a sample taken
    // during a rebalance may read an older commit).
    let mut commits: std::collections::HashMap<(String, i32), Vec<(i64, i64)>> =
        std::collections::HashMap::new();
    for (at, offsets) in &samples {
        for (topic, partition, committed) in offsets {
            let series = commits.entry((topic.clone(), *partition)).or_default();
            let highest = series.last().map_or(0, |(_, offset)| *offset);
            series.push((*at, highest.max(*committed)));
        }
    }
    let mut lags = Vec::new();
    for (topic, from) in counted.iter().zip(&live_from) {
        for (partition, offset, event_time) in
            latency::event_times(bootstrap, topic, from, &bench.codec).await?
        {
            if event_time < measured_from_ms {
                continue;
            }
            // The first sample whose commit is past this record.
            let series = commits
                .get(&(topic.clone(), partition))
                .map_or(&[][..], Vec::as_slice);
            let first = series.partition_point(|(_, committed)| *committed <= offset);
            match series.get(first) {
                Some((at, _)) => lags.push(at - event_time),
                None => {
                    return Err(format!(
                        "{topic}/{partition} offset {offset}: not committed by the stats-counter"
                    ));
                }
            }
        }
    }
    Ok(ChainLatency {
        to_joined_click,
        to_stats_committed: latency::Percentiles::of(lags),
    })
}

/// The chain's table: per round and chain, per stage, and the ratios of
/// the means.
pub fn print_report(report: &ChainReport) {
    println!(
        "\nThe whole chain: {} events ({} unique), merger → deduplicator → joiner → stats-counter",
        report.events, report.unique_events
    );
    println!(
        "{:<16} {:<22} {:>10} {:>14} {:>12}",
        "chain", "stage", "99% at (s)", "CPU-s/1M ev", "RSS (MiB)"
    );
    for run in report.adpipe.iter().chain(&report.kafka_streams) {
        for stage in &run.stages {
            println!(
                "{:<16} {:<22} {:>10.1} {:>14.2} {:>12.0}",
                run.chain,
                stage.stage,
                stage.almost_seconds,
                stage.cpu_seconds_per_million_events,
                stage.peak_rss_mib
            );
        }
        println!(
            "{:<16} {:<22} {:>10.1} {:>14.2}   {:.0} events/s",
            run.chain,
            "(chain)",
            run.wall_seconds,
            run.cpu_seconds_per_million_events,
            run.events_per_sec
        );
    }
    if !report.kafka_streams.is_empty() {
        let mean = |runs: &[ChainRun], value: &dyn Fn(&ChainRun) -> f64| {
            runs.iter().map(value).sum::<f64>() / runs.len().max(1) as f64
        };
        println!("\nadpipe against Kafka Streams (means of the rounds)");
        for (index, stage) in report.adpipe[0].stages.iter().enumerate() {
            let cpu = |runs: &[ChainRun]| {
                mean(runs, &|run| {
                    run.stages[index].cpu_seconds_per_million_events
                })
            };
            let rss = |runs: &[ChainRun]| mean(runs, &|run| run.stages[index].peak_rss_mib);
            println!(
                "  {:<14} {:>5.2}× the events per CPU-second, {:>4.2}× the RSS",
                stage.stage,
                cpu(&report.kafka_streams) / cpu(&report.adpipe).max(1e-9),
                rss(&report.adpipe) / rss(&report.kafka_streams).max(1e-9),
            );
        }
        let cpu = |runs: &[ChainRun]| mean(runs, &|run| run.cpu_seconds_per_million_events);
        let rate = |runs: &[ChainRun]| mean(runs, &|run| run.events_per_sec);
        println!(
            "  {:<14} {:>5.2}× the events per CPU-second, {:>4.2}× the events/s",
            "chain",
            cpu(&report.kafka_streams) / cpu(&report.adpipe).max(1e-9),
            rate(&report.adpipe) / rate(&report.kafka_streams).max(1e-9),
        );
    }
    if let Some(latency) = &report.latency {
        let click = &latency.to_joined_click.output;
        let stats = &latency.to_stats_committed;
        println!(
            "\nLive at {:.0} events/s (half the chain's rate; published {:.0}/s):",
            latency.to_joined_click.target_rate, latency.to_joined_click.published_rate
        );
        println!(
            "  click published → joined click read: p50 {} ms, p99 {} ms, max {} ms ({} clicks)",
            click.p50_ms, click.p99_ms, click.max_ms, click.records
        );
        println!(
            "  event published → committed by the stats-counter: p50 {} ms, p99 {} ms, max {} ms ({} events)",
            stats.p50_ms, stats.p99_ms, stats.max_ms, stats.records
        );
    }
}
