//! `adpipe-chaos`: the whole chain as its real binaries against real
//! clusters, under faults, checked against the simulator's ground truth
//! (shared/design.md, "Guarantees", as one test).
//!
//! Central is a three-broker cluster (`infra/kafka.sh start chaos`; its
//! topics made here with replication factor 3 and min.insync.replicas 2),
//! the bidders of two DCs publish into their own clusters at a steady rate,
//! MirrorMaker 2 carries their topics to central and `events-for-<dc>`
//! back; every service runs as its own process ([`fleet`]), the profile
//! loaders writing into Redis, the stats-counter into PostgreSQL, a loader
//! into Elasticsearch and one into Avro files. While the bidders publish,
//! the [`schedule`] drawn from the seed is carried out: kill -9 of service
//! instances (each only while it owns partitions and has made progress,
//! restarted after a moment), SIGTERM restarts, a second instance joining
//! and leaving, a central broker killed and restarted, a DC's cluster down,
//! Elasticsearch down.
//!
//! Then, once every group has committed its inputs to the end, the
//! services stop and the outputs are read back: the deduplicated events
//! against the ground truth (none lost, none unknown; copies counted), every
//! click and conversion decided once (joined or orphaned, never both), and
//! `adpipe reconcile` over the run (0 unexplained: stats totals exact, one
//! file record and one Elasticsearch document per event), each store
//! counted directly too, each DC's profiles holding each event dispatched
//! to it once, nothing dead-lettered (no bad input is published), and
//! every service's peak RSS under the limit. Any failure exits 1.
//!
//! The servers are started by `loadtest/chaos.sh`, which runs this.

pub mod fleet;
pub mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient, value_subject};
use adpipe_events::EventKind;
use adpipe_loadtest::Simulation;
use adpipe_loadtest::bidders::{Bidders, DcCluster};
use adpipe_loadtest::pace::Pacer;
use adpipe_schema_registry::RegistrySettings;
use anyhow::Context;
use clap::Parser;
use indicatif::ProgressBar;

use crate::demo::chain::{ChainPlan, ProfileStore};
use crate::demo::checks::{self, Id, ReadRecord, Tally};
use crate::demo::names::Names;
use fleet::{Fleet, Stopped};
use schedule::{Described, Fault, Planned, Shape};

/// How long MirrorMaker 2 may take to make its topics (its first start on
/// a fresh cluster creates its own topics first).
const MIRROR_WAIT: Duration = Duration::from_secs(180);

/// Arguments of `adpipe-chaos`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "adpipe-chaos",
    about = "The whole chain as processes, under faults, checked against the ground truth"
)]
pub struct ChaosArgs {
    /// Records the bidders publish (copies included), across the DCs.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Records per second the bidders publish, together.
    #[arg(long, default_value_t = 5_000.0)]
    pub rate: f64,
    /// SIGKILLs of service instances, at least (a tenth more are planned,
    /// at least 2, for kills that find nothing to interrupt; the other
    /// faults scale with it).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// How long a DC's cluster and Elasticsearch are down.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Seed of the events and of the fault schedule.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Central: the three-broker cluster's bootstrap servers.
    #[arg(long)]
    pub central: String,
    /// Central's name in the cluster map (`infra/kafka.sh kill NAME N`).
    #[arg(long, default_value = "chaos")]
    pub central_name: String,
    /// Brokers of central.
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// A DC's cluster, `NAME=host:port` (dc1 and dc2).
    #[arg(long = "dc", required = true)]
    pub dc_clusters: Vec<String>,
    /// PostgreSQL for the stats-counter.
    #[arg(long, env = "ADPIPE_PG_URL")]
    pub postgres_url: String,
    /// Elasticsearch for a loader.
    #[arg(long, env = "ADPIPE_ES_URL")]
    pub es_url: String,
    /// Redis for the profile loaders.
    #[arg(long, env = "ADPIPE_REDIS_URL")]
    pub redis_url: String,
    /// Where the services' binaries are (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The project's infra/ scripts (they stop and start the servers).
    #[arg(long, default_value = "infra")]
    pub infra_dir: PathBuf,
    /// Where state, files and logs go (emptied first).
    #[arg(long, default_value = ".adpipe/chaos")]
    pub work_dir: PathBuf,
    /// Peak RSS allowed to any service instance, MiB.
    #[arg(long, default_value_t = 1024)]
    pub rss_limit_mib: u64,
    /// Topic prefix, before the run's own suffix (MirrorMaker 2's instance
    /// for this run mirrors only it). Not `<cluster alias>.`: MirrorMaker 2
    /// takes such topics for replicas and never mirrors them back.
    #[arg(long, default_value = "chaos-")]
    pub topic_prefix: String,
}

/// What the run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// (what, figure) lines, in order.
    pub figures: Vec<(String, String)>,
    /// What failed, in words; empty when the run passed.
    pub failures: Vec<String>,
}

impl ChaosReport {
    fn figure(&mut self, what: &str, value: impl std::fmt::Display) {
        self.figures.push((what.to_owned(), value.to_string()));
    }
    fn require(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }
    fn tally(&mut self, tally: &Tally) {
        self.figure(
            &tally.what,
            format!(
                "{} expected, {} found, {} twice, {} unexpected",
                tally.expected, tally.found, tally.twice, tally.unexpected
            ),
        );
        self.require(
            tally.exact(),
            format!("{}: not each event exactly once", tally.what),
        );
    }
}

/// Runs the chaos test, narrating to `out`.
pub async fn run(args: &ChaosArgs, out: &mut dyn Write) -> anyhow::Result<ChaosReport> {
    let mut report = ChaosReport::default();
    let work_dir = std::path::absolute(&args.work_dir)?;
    match std::fs::remove_dir_all(&work_dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("emptying {}", work_dir.display()));
        }
        _ => {}
    }
    std::fs::create_dir_all(&work_dir)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_owned(),
    };
    let mut simulation = Simulation {
        seed: args.seed,
        ..Simulation::default()
    };
    simulation.impressions = (args.events as f64 / simulation.publications_per_impression()) as u64;
    simulation.users = (simulation.impressions / 5).max(1_000);
    let suffix = crate::demo::unique_suffix();
    let names = Names {
        prefix: format!("{}{suffix}.", args.topic_prefix),
        dcs: simulation.dcs.clone(),
        dc_clusters: crate::demo::dc_clusters(&args.dc_clusters, &simulation.dcs)?,
        central_alias: args.central_name.clone(),
    };
    anyhow::ensure!(names.mirrored(), "--dc dc1=… --dc dc2=…: the DCs' clusters");
    writeln!(out, "topics under {}", names.prefix)?;
    crate::demo::create_topics(&args.central, &names.all(), 3, Some("2")).await?;
    for dc_bootstrap in names.dc_clusters.values() {
        crate::demo::create_topics(dc_bootstrap, &names.dc_topics(), 1, None).await?;
    }
    let registry = adpipe_schema_registry::start(RegistrySettings::local(
        &args.central,
        &format!("{}_schemas", names.prefix),
    ))
    .await
    .context("starting the schema registry")?;
    let codec = Codec::new(RegistryClient::new(&registry.url())?);
    let plan = ChainPlan {
        names: &names,
        bootstrap: &args.central,
        registry_url: registry.url(),
        state_dir: work_dir.join("state"),
        files_dir: work_dir.join("files"),
        postgres: Some((args.postgres_url.clone(), format!("chaos_{suffix}"))),
        elasticsearch: Some((
            args.es_url.clone(),
            // The index names carry the topic's, prefix included.
            "adpipe-".to_owned(),
        )),
        bigquery: None,
        profiles: ProfileStore::Redis(args.redis_url.clone()),
        // Live: a partner late by more than this (a DC down) makes an orphan.
        joiner_wait: "30s".to_owned(),
        // A DC down or slow holds the merge back this long, then it goes on.
        max_idle: "5s".to_owned(),
    };

    // MirrorMaker 2 makes the replicas on central and the DCs' copies of
    // events-for-<dc>; the services start once they exist.
    for dc in &names.dcs {
        for kind in EventKind::PUBLISHED {
            crate::demo::wait_topic(&args.central, &names.replica(dc, kind), MIRROR_WAIT).await?;
        }
        if let (Some(cluster), topic) = names.events_at(dc) {
            crate::demo::wait_topic(cluster, &topic, MIRROR_WAIT).await?;
        }
    }
    let fleet = Fleet::new(&bin_dir, &work_dir, plan.services())?;
    let stages: Vec<String> = fleet
        .specs()
        .iter()
        .map(|spec| spec.stage.clone())
        .collect();
    fleet.start_all()?;
    writeln!(
        out,
        "{} services started from {} (logs: {})",
        stages.len(),
        bin_dir.display(),
        fleet.logs().display()
    )?;
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        // Weak: a run that ends early drops the fleet, and with it the
        // processes, whatever the sampler is doing.
        let fleet = Arc::downgrade(&fleet);
        let stop = Arc::clone(&sampler_stop);
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match fleet.upgrade() {
                    Some(fleet) => fleet.sample_rss(&runtime),
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // The events, with event times that follow the wall clock at the rate.
    simulation.follow_wall_clock(adpipe_runtime::event_time::now_ms(), args.rate);
    let (publications, truth) = simulation.generate();
    let publishing = Duration::from_secs_f64(publications.len() as f64 / args.rate);
    let schedule = schedule::draw(
        args.seed,
        &Shape {
            publishing,
            services: stages.clone(),
            // Spare kills: one whose service has nothing to interrupt for
            // 5 min (its input idle behind a mirror catching up after a DC
            // outage) is skipped, and `--kills` must still be carried out.
            kills: args.kills + spare_kills(args.kills),
            dcs: names.dcs.clone(),
            brokers: args.brokers,
            search: true,
            outage: args.outage,
        },
    );
    writeln!(
        out,
        "publishing {} records at {}/s for {:.0?}; {} faults planned:",
        publications.len(),
        args.rate,
        publishing,
        schedule.len()
    )?;
    for planned in &schedule {
        writeln!(
            out,
            "  at {:>6.1?}  {}",
            planned.at,
            Described(&planned.fault, &stages)
        )?;
    }
    let bidders = Bidders::new(
        &codec,
        &names
            .dc_clusters
            .iter()
            .map(|(dc, bootstrap)| DcCluster {
                dc: dc.clone(),
                bootstrap: bootstrap.clone(),
            })
            .collect::<Vec<_>>(),
        |kind| value_subject(&names.merged(kind)),
    )
    .await?;
    let published = Arc::new(AtomicU64::new(0));
    let first_event_ms = publications
        .iter()
        .map(|publication| publication.event.event_time())
        .min()
        .unwrap_or_default();
    // What the checks need of the truth, as id hashes: the truth itself
    // holds every id as text (gigabytes at 10M events).
    let mut uniques: HashSet<Id> = HashSet::new();
    let mut to_decide: HashSet<Id> = HashSet::new();
    for publication in publications
        .iter()
        .filter(|publication| !publication.duplicate)
    {
        let id = checks::id(publication.event.event_id());
        uniques.insert(id);
        if publication.event.kind() != EventKind::Impression {
            to_decide.insert(id);
        }
    }
    let published_in_all = truth.published;
    drop(truth);
    let started = Instant::now();
    let publisher = {
        let published = Arc::clone(&published);
        let rate = args.rate;
        let topics: BTreeMap<(String, EventKind), String> = names
            .dcs
            .iter()
            .flat_map(|dc| {
                EventKind::PUBLISHED
                    .map(|kind| ((dc.clone(), kind), names.publish_target(dc, kind).1))
            })
            .collect();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut pacer = Pacer::new(Some(rate));
            for publication in &publications {
                pacer.wait_turn();
                let topic = &topics[&(publication.dc.clone(), publication.event.kind())];
                bidders.publish(publication, topic)?;
                published.fetch_add(1, Ordering::Relaxed);
            }
            // A DC that was down gets what its bidders queued meanwhile.
            bidders.flush(Duration::from_secs(600))?;
            Ok(())
        })
    };

    // The faults, each at its moment (a fault waits for the one before it
    // on the same service).
    let locks: Arc<Vec<tokio::sync::Mutex<()>>> = Arc::new(
        (0..stages.len())
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
    );
    let log: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let mut faults = tokio::task::JoinSet::new();
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    let mut pending = schedule.clone().into_iter().peekable();
    let mut carried_out = Vec::new();
    loop {
        tokio::select! {
            _ = progress.tick() => {
                writeln!(
                    out,
                    "[{:>5.0?}] published {} of {}",
                    started.elapsed(),
                    published.load(Ordering::Relaxed),
                    published_in_all,
                )?;
                for line in std::mem::take(&mut *log.lock()) {
                    writeln!(out, "  {line}")?;
                }
                restart_exited(&fleet, out, &mut report)?;
            }
            _ = tokio::time::sleep(
                pending
                    .peek()
                    .map_or(Duration::from_secs(3600), |next| next.at.saturating_sub(started.elapsed())),
            ), if pending.peek().is_some() => {
                let Some(Planned { fault, .. }) = pending.next() else { continue };
                let context = FaultContext {
                    fleet: Arc::clone(&fleet),
                    locks: Arc::clone(&locks),
                    log: Arc::clone(&log),
                    stages: stages.clone(),
                    infra: args.infra_dir.clone(),
                    central_name: args.central_name.clone(),
                    started,
                    logs: fleet.logs(),
                };
                faults.spawn(context.carry_out(fault));
            }
            Some(done) = faults.join_next(), if !faults.is_empty() => {
                match done? {
                    Ok(kind) => carried_out.push(kind),
                    Err(error) => {
                        writeln!(out, "  fault not carried out: {error:#}")?;
                        report.failures.push(format!("fault not carried out: {error:#}"));
                    }
                }
            }
        }
        if pending.peek().is_none() && faults.is_empty() && publisher.is_finished() {
            break;
        }
    }
    publisher
        .join()
        .map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    for line in std::mem::take(&mut *log.lock()) {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        // The time is the schedule's end (the last fault over), not the
        // publishing's: the progress lines above show when that ended.
        "published {} records; the faults over at {:.0?}, {} carried out",
        published_in_all,
        started.elapsed(),
        carried_out.len()
    )?;
    report.figure("records published", published_in_all);
    let kills = carried_out.iter().filter(|kind| **kind == "kill").count();
    let skipped = carried_out
        .iter()
        .filter(|kind| **kind == SKIPPED_KILL)
        .count();
    report.figure(
        "faults carried out",
        format!(
            "{} ({kills} kill -9 of services; {skipped} spare kills skipped: nothing to interrupt)",
            carried_out.len() - skipped,
        ),
    );
    report.require(
        carried_out.len() == schedule.len(),
        "not every planned fault was carried out",
    );
    report.require(
        kills >= args.kills,
        format!("{kills} kill -9 carried out, {} asked for", args.kills),
    );

    // Drain: MirrorMaker 2 has copied everything to central, then every
    // group committed to the end of its inputs, twice in a row. Services
    // are still supervised meanwhile, and progress is shown every 30 s (a
    // 10M run's mirror backlog takes minutes).
    let copied = ProgressBar::hidden();
    let replicating = crate::demo::wait_replicated(&names, &args.central, copied.clone());
    tokio::pin!(replicating);
    let mut every_30s = tokio::time::interval(Duration::from_secs(30));
    every_30s.tick().await;
    let replicated = loop {
        tokio::select! {
            replicated = &mut replicating => break replicated?,
            _ = every_30s.tick() => {
                writeln!(
                    out,
                    "[{:>5.0?}] MirrorMaker 2 copied {} of {} records to central",
                    started.elapsed(),
                    copied.position(),
                    copied.length().unwrap_or_default(),
                )?;
                restart_exited(&fleet, out, &mut report)?;
            }
        }
    };
    writeln!(out, "MirrorMaker 2 copied {replicated} records to central")?;
    let back_copies = BackCopies {
        pairs: names
            .dcs
            .iter()
            .filter_map(|dc| match names.events_at(dc) {
                (Some(bootstrap), copy) => Some((names.events_for(dc), bootstrap.to_owned(), copy)),
                (None, _) => None,
            })
            .collect(),
        instance: (args.central_name.clone(), args.topic_prefix.clone()),
        infra: args.infra_dir.clone(),
        logs: fleet.logs(),
    };
    let drained = wait_drained(
        &fleet,
        &args.central,
        &back_copies,
        out,
        &mut report,
        Duration::from_secs(1200),
    )
    .await?;
    report.require(drained, "the chain did not drain within 20 min");
    report.figure(
        "time to drain after publishing",
        format!("{:.0?}", started.elapsed().saturating_sub(publishing)),
    );
    restart_exited(&fleet, out, &mut report)?;
    let slow = fleet.stop_all();
    report.require(
        slow.is_empty(),
        format!("did not stop cleanly on SIGTERM: {slow:?}"),
    );
    sampler_stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();

    // Every stage against the ground truth; what the checks hold is gone
    // before the reconciliation reads every stage again.
    check_outputs(
        &Checked {
            codec: &codec,
            central: &args.central,
            names: &names,
            plan: &plan,
            redis_url: &args.redis_url,
            first_event_ms,
        },
        uniques,
        to_decide,
        &mut report,
    )
    .await?;

    // Nothing dead-lettered: no bad input was published.
    let dead_letters = checks::count_records(
        &args.central,
        &adpipe_reconciler::SERVICES
            .iter()
            .map(|service| names.dlq(service))
            .collect::<Vec<_>>(),
    )?;
    report.figure("dead letters", dead_letters);
    report.require(
        dead_letters == 0,
        "records dead-lettered (no bad input was published)",
    );

    // `adpipe reconcile` over the run.
    let reconciliation = crate::demo::reconcile(&plan, first_event_ms).await?;
    writeln!(out)?;
    reconciliation.print(out)?;
    let unexplained = reconciliation.unexplained().count();
    report.figure("reconciliation: unexplained differences", unexplained);
    report.require(
        unexplained == 0,
        "the reconciliation found unexplained differences",
    );
    registry.stop().await;

    for (stage, peak) in fleet.peaks() {
        report.figure(&format!("peak RSS: {stage}"), peak.describe());
        report.require(
            peak.bytes <= args.rss_limit_mib << 20,
            format!(
                "{stage}: peak RSS {} MiB over {} MiB",
                peak.bytes >> 20,
                args.rss_limit_mib
            ),
        );
    }
    // The harness's own (its checks and the reconciliation hold every id
    // of every stage): reported, not bounded.
    if let Some(peak) = adpipe_testkit::peak_rss_bytes(std::process::id()) {
        report.figure(
            "peak RSS: the harness (checks, reconciliation)",
            format!("{} MiB", peak >> 20),
        );
    }
    writeln!(out)?;
    for (what, figure) in &report.figures {
        writeln!(out, "{what:<48} {figure}")?;
    }
    if report.failures.is_empty() {
        writeln!(out, "\nPASSED: no loss at any stage, every store exact")?;
    } else {
        writeln!(out, "\nFAILED:")?;
        for failure in &report.failures {
            writeln!(out, "  - {failure}")?;
        }
    }
    Ok(report)
}

/// What the checks of the outputs read from.
struct Checked<'a> {
    codec: &'a Codec,
    central: &'a str,
    names: &'a Names,
    plan: &'a ChainPlan<'a>,
    redis_url: &'a str,
    first_event_ms: i64,
}

/// Checks every stage's output against the ground truth (`uniques`: the
/// unique events; `to_decide`: the clicks and conversions among them):
/// none lost, every click and conversion decided once, each store exact.
async fn check_outputs(
    on: &Checked<'_>,
    uniques: HashSet<Id>,
    to_decide: HashSet<Id>,
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    let names = on.names;
    let read = async |topics: &[String], want: u64| -> anyhow::Result<Vec<ReadRecord>> {
        checks::read_ids(
            on.codec,
            on.central,
            names,
            topics,
            want,
            &ProgressBar::hidden(),
        )
        .await
    };

    // The deduplicated events against the ground truth.
    let deduplicated_topics = EventKind::PUBLISHED.map(|kind| names.deduplicated(kind));
    let delivered = read(&deduplicated_topics, uniques.len() as u64).await?;
    let check = Tally::of(
        "deduplicated",
        &uniques,
        delivered.iter().map(|record| record.id),
    );
    report.figure(
        "deduplicated: unique events",
        format!(
            "{} expected, {} missing, {} unknown, {} extra copies (at-least-once, counted)",
            check.expected,
            check.missing(),
            check.unexpected,
            check.extra_copies
        ),
    );
    report.require(
        check.missing() == 0 && check.unexpected == 0,
        "deduplicated: events lost or unknown",
    );
    drop(uniques);

    // Every click and conversion decided once: joined or orphaned.
    let decided_topics = ["clicks", "conversions", "orphans"].map(|what| names.joined(what));
    // Every record there (copies too): the reader stops 3 s after it has
    // them all, not at the first pause of a loaded machine.
    let decided = read(
        &decided_topics,
        checks::count_records(on.central, &decided_topics)?,
    )
    .await?;
    let orphans_topic = 2;
    let mut decisions: HashMap<Id, (u64, u64)> = HashMap::new();
    for record in &decided {
        let entry = decisions.entry(record.id).or_default();
        if record.topic == orphans_topic {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    let undecided = to_decide
        .iter()
        .filter(|id| !decisions.contains_key(*id))
        .count();
    let both = decisions
        .values()
        .filter(|(joined, orphaned)| *joined > 0 && *orphaned > 0)
        .count();
    let copies: u64 = decisions
        .values()
        .map(|(joined, orphaned)| (joined + orphaned).saturating_sub(1))
        .sum();
    report.figure(
        "clicks and conversions decided",
        format!(
            "{} to decide, {} undecided, {} both joined and orphaned, {} re-emitted copies (counted)",
            to_decide.len(),
            undecided,
            both,
            copies
        ),
    );
    report.require(
        undecided == 0,
        "clicks or conversions neither joined nor orphaned",
    );
    report.require(both == 0, "clicks or conversions both joined and orphaned");
    drop((decisions, to_decide));

    // Each store: every event of its topics exactly once.
    let loaded_topics = [
        names.deduplicated(EventKind::Impression),
        names.joined("clicks"),
        names.joined("conversions"),
        names.joined("orphans"),
    ];
    // Per loaded topic (same order), the ids it must hold.
    let mut by_topic: Vec<HashSet<Id>> = vec![HashSet::new(); loaded_topics.len()];
    for (topics, records) in [
        (&deduplicated_topics[..], &delivered),
        (&decided_topics[..], &decided),
    ] {
        // Each read topic's loaded topic, found once, not per record.
        let loaded: Vec<Option<usize>> = topics
            .iter()
            .map(|topic| loaded_topics.iter().position(|loaded| loaded == topic))
            .collect();
        for record in records {
            if let Some(index) = loaded[record.topic] {
                by_topic[index].insert(record.id);
            }
        }
    }
    drop((delivered, decided));
    let in_files = checks::file_ids(&on.plan.files_dir)?;
    for (topic, expected) in loaded_topics.iter().zip(&by_topic) {
        let found = in_files.get(topic).into_iter().flatten().copied();
        report.tally(&Tally::of(&format!("files: {topic}"), expected, found));
    }
    drop(in_files);
    let span = adpipe_reconciler::Span {
        from: on.first_event_ms,
        to: adpipe_runtime::event_time::now_ms() + 1,
        slack_ms: 0,
    };
    if let Some((url, prefix)) = &on.plan.elasticsearch {
        for (topic, expected) in loaded_topics.iter().zip(&by_topic) {
            let documents =
                adpipe_reconciler::stores::elasticsearch_documents(url, prefix, topic, span)
                    .await?;
            report.tally(&Tally::of(
                &format!("elasticsearch: {topic}"),
                expected,
                documents.iter().map(|(id, _)| checks::id(id)),
            ));
        }
    }
    drop(by_topic);

    // Each DC's profiles: every event dispatched to it, once.
    let dispatched_topics: Vec<String> = names.dcs.iter().map(|dc| names.events_for(dc)).collect();
    let dispatched = read(
        &dispatched_topics,
        checks::count_records(on.central, &dispatched_topics)?,
    )
    .await?;
    for (index, dc) in names.dcs.iter().enumerate() {
        let expected: HashSet<Id> = dispatched
            .iter()
            .filter(|record| record.topic == index)
            .map(|record| record.id)
            .collect();
        let found = checks::redis_profile_ids(on.redis_url, &on.plan.profile_prefix(dc)).await?;
        report.tally(&Tally::of(&format!("{dc}'s profiles"), &expected, found));
    }
    Ok(())
}

/// Runs `<infra>/<script> ARGS` with `envs` (its output to `logs`/infra.log).
async fn run_infra(
    infra: &std::path::Path,
    logs: &std::path::Path,
    script: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("infra.log"))?;
    let status = tokio::process::Command::new(infra.join(script))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await
        .with_context(|| format!("running {script}"))?;
    anyhow::ensure!(
        status.success(),
        "{script} {args:?}: {status} (see infra.log)"
    );
    Ok(())
}

/// MirrorMaker 2's copies of `events-for-<dc>` on the DCs' clusters (what
/// each DC's profile loader reads), and how to restart the run's instance
/// when its copying stalls: its worker for a DC's cluster gave up during
/// that cluster's outage in a 400K run ("worker poll timeout has
/// expired") and copied nothing more — an operator restarts it; so does
/// the harness, saying so.
struct BackCopies {
    /// (central's topic, the DC's bootstrap, the DC's copy).
    pairs: Vec<(String, String, String)>,
    /// The `ADPIPE_MM2_CENTRAL` and `ADPIPE_MM2_TOPIC_PREFIX` of the run's instance.
    instance: (String, String),
    infra: PathBuf,
    logs: PathBuf,
}

impl BackCopies {
    /// Records behind: in central's topics and not (yet) in the copies.
    fn behind(&self, central: &str) -> u64 {
        tokio::task::block_in_place(|| {
            self.pairs
                .iter()
                .map(|(topic, dc_bootstrap, copy)| {
                    let at_central = checks::count_records(central, std::slice::from_ref(topic));
                    let at_dc = checks::count_records(dc_bootstrap, std::slice::from_ref(copy));
                    match (at_central, at_dc) {
                        (Ok(at_central), Ok(at_dc)) => at_central.saturating_sub(at_dc),
                        // A cluster that does not answer: behind, by one at least.
                        _ => 1,
                    }
                })
                .sum()
        })
    }

    /// Stops and starts MirrorMaker 2 (it resumes from its committed
    /// source offsets: copies, never gaps).
    async fn restart_mirrormaker(&self) -> anyhow::Result<()> {
        let envs = [
            ("ADPIPE_MM2_CENTRAL", self.instance.0.as_str()),
            ("ADPIPE_MM2_TOPIC_PREFIX", self.instance.1.as_str()),
        ];
        run_infra(&self.infra, &self.logs, "mirrormaker.sh", &["stop"], &envs).await?;
        run_infra(&self.infra, &self.logs, "mirrormaker.sh", &["start"], &envs).await
    }
}

/// What a fault needs to be carried out.
struct FaultContext {
    fleet: Arc<Fleet>,
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
    log: Arc<parking_lot::Mutex<Vec<String>>>,
    stages: Vec<String>,
    infra: PathBuf,
    central_name: String,
    started: Instant,
    logs: PathBuf,
}

impl FaultContext {
    fn note(&self, line: String) {
        self.log
            .lock()
            .push(format!("[{:>5.0?}] {line}", self.started.elapsed()));
    }

    /// SIGTERM to instance `slot` of `service`, waiting (off the async
    /// threads) up to 30 s for its clean exit; whether it exited cleanly.
    async fn terminate(&self, service: usize, slot: u32) -> anyhow::Result<Stopped> {
        let fleet = Arc::clone(&self.fleet);
        Ok(tokio::task::spawn_blocking(move || {
            fleet.terminate(service, slot, Duration::from_secs(30))
        })
        .await?)
    }

    /// Runs `infra/<script> ARGS` (its output to the run's infra.log).
    async fn infra(&self, script: &str, args: &[&str]) -> anyhow::Result<()> {
        run_infra(&self.infra, &self.logs, script, args, &[]).await
    }

    /// Starts a stopped server again (`kafka.sh start`, `elasticsearch.sh
    /// start`), as its orchestrator would: a start that does not answer in
    /// its script's time (a broker recovering its logs on a loaded
    /// machine) is asked again, three times in all. Each start is
    /// idempotent.
    async fn bring_back(&self, script: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut tries = 1;
        loop {
            match self.infra(script, args).await {
                Ok(()) => return Ok(()),
                Err(error) if tries < 3 => {
                    self.note(format!(
                        "{script} {args:?} not back yet ({error:#}): asking again"
                    ));
                    tries += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The slot of a running instance of `service` that owns partitions and
    /// has made progress, waiting up to 5 min for one (a store down and
    /// slow to come back holds its loader that long).
    async fn working_slot(&self, service: usize) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            for slot in [1, 2] {
                if self.fleet.working(service, slot).await {
                    return Some(slot);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    /// Carries `fault` out; returns its kind.
    async fn carry_out(self, fault: Fault) -> anyhow::Result<&'static str> {
        let what = Described(&fault, &self.stages).to_string();
        match fault {
            Fault::Kill { service, after } => {
                let _turn = self.locks[service].lock().await;
                let Some(slot) = self.working_slot(service).await else {
                    // Not a failure of the chain: its input was idle (the
                    // spare kills make up for it; too few kills fail the run).
                    self.note(format!(
                        "{what}: skipped, no instance owned partitions and made progress within 5 min"
                    ));
                    return Ok(SKIPPED_KILL);
                };
                let uptime = self.fleet.uptime(service, slot).unwrap_or_default();
                self.fleet.kill(service, slot);
                self.note(format!("{what} (#{slot}, up {uptime:.0?})"));
                tokio::time::sleep(after).await;
                self.fleet.start(service, slot)?;
                Ok("kill")
            }
            Fault::Restart { service } => {
                let _turn = self.locks[service].lock().await;
                let stopped = self.terminate(service, 1).await?;
                self.note(format!("{what} ({stopped})"));
                // Started again either way: a service left down would hold
                // the drain forever.
                self.fleet.start(service, 1)?;
                anyhow::ensure!(stopped.clean(), "{what}: {stopped}");
                Ok("restart")
            }
            Fault::SecondInstance { service, stay } => {
                let turn = self.locks[service].lock().await;
                self.fleet.start(service, 2)?;
                self.note(format!("{what}: joined"));
                drop(turn);
                tokio::time::sleep(stay).await;
                let _turn = self.locks[service].lock().await;
                let stopped = self.terminate(service, 2).await?;
                self.note(format!("{what}: left ({stopped})"));
                anyhow::ensure!(stopped.clean(), "{what}: {stopped}");
                Ok("second instance")
            }
            Fault::Broker { node, down } => {
                self.infra("kafka.sh", &["kill", &self.central_name, &node.to_string()])
                    .await?;
                self.note(format!("{what}: killed"));
                tokio::time::sleep(down).await;
                self.bring_back("kafka.sh", &["start", &self.central_name])
                    .await?;
                self.note(format!("{what}: back"));
                Ok("broker")
            }
            Fault::DcDown { dc, down } => {
                self.infra("kafka.sh", &["stop", &dc]).await?;
                self.note(format!("{what}: stopped"));
                tokio::time::sleep(down).await;
                self.bring_back("kafka.sh", &["start", &dc]).await?;
                self.note(format!("{what}: back"));
                Ok("dc")
            }
            Fault::SearchDown { down } => {
                self.infra("elasticsearch.sh", &["stop"]).await?;
                self.note(format!("{what}: stopped"));
                tokio::time::sleep(down).await;
                self.bring_back("elasticsearch.sh", &["start"]).await?;
                self.note(format!("{what}: back"));
                Ok("search")
            }
        }
    }
}

/// What a kill that found nothing to interrupt counts as.
const SKIPPED_KILL: &str = "kill skipped";

/// Kills planned beyond `--kills`: a tenth more, at least 2.
fn spare_kills(kills: usize) -> usize {
    (kills / 10).max(2)
}

/// A service that stops by itself fails the run; it is started again (as
/// its orchestrator's restart policy would) so the rest of the run still
/// tells what else holds — and a drain does not wait forever for a stage
/// nobody runs.
fn restart_exited(
    fleet: &Fleet,
    out: &mut dyn Write,
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    for (index, slot, stage, status) in fleet.exited() {
        writeln!(
            out,
            "  {stage} #{slot} exited by itself ({status}): started again"
        )?;
        report
            .failures
            .push(format!("{stage} #{slot} exited by itself: {status}"));
        fleet.start(index, slot)?;
    }
    Ok(())
}

/// Waits until every service's group has committed each of its inputs to
/// the end, twice in a row 5 s apart (so nothing upstream was still on its
/// way); prints who is behind every 30 s. False after `timeout`.
async fn wait_drained(
    fleet: &Fleet,
    central: &str,
    back_copies: &BackCopies,
    out: &mut dyn Write,
    report: &mut ChaosReport,
    timeout: Duration,
) -> anyhow::Result<bool> {
    /// A copying behind that moved no record for this long has stalled.
    const STALLED: Duration = Duration::from_secs(180);
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    let mut in_a_row = 0;
    let mut copies_behind = (u64::MAX, Instant::now());
    let mut restarts = 0;
    while Instant::now() < deadline {
        restart_exited(fleet, out, report)?;
        let mut behind: Vec<String> = tokio::task::block_in_place(|| {
            fleet
                .specs()
                .iter()
                .filter(|spec| {
                    let bootstrap = spec.probe.bootstrap.as_deref().unwrap_or(central);
                    !spec.probe.inputs.iter().all(|topic| {
                        adpipe_testkit::committed_to_end(bootstrap, &spec.probe.group, topic)
                    })
                })
                .map(|spec| spec.stage.clone())
                .collect()
        });
        let copying = back_copies.behind(central);
        if copying > 0 {
            behind.push(format!("MirrorMaker 2 to the DCs ({copying} records)"));
            if copying != copies_behind.0 {
                copies_behind = (copying, Instant::now());
            } else if copies_behind.1.elapsed() > STALLED {
                writeln!(
                    out,
                    "MirrorMaker 2 copied nothing to the DCs for {STALLED:?} ({copying} records behind): restarting it"
                )?;
                back_copies.restart_mirrormaker().await?;
                restarts += 1;
                copies_behind = (copying, Instant::now());
            }
        }
        if behind.is_empty() {
            in_a_row += 1;
            if in_a_row == 2 {
                break;
            }
        } else {
            in_a_row = 0;
            if last_print.elapsed() > Duration::from_secs(30) {
                writeln!(out, "draining: behind: {}", behind.join(", "))?;
                last_print = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    report.figure(
        "MirrorMaker 2 restarted by the harness (its copying to a DC stalled)",
        restarts,
    );
    Ok(in_a_row == 2)
}
