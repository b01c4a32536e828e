//! `adpipe-bench`: the services against real Kafka, beside a bare
//! librdkafka consume→produce loop (the ceiling for the runtime's own
//! overhead) and the broker's own perf tools, all in one run on one
//! machine, so the figures are comparable as ratios.
//!
//! Phases (central cluster of `infra/kafka.sh`, fresh topics per run):
//! 1. publish a simulation (1M impressions + clicks, conversions, 5%
//!    duplicates) to the input topic, and again split by DC into two DC
//!    topics (as MirrorMaker 2 lands them) for the merger;
//! 2. Kafka's ProducerPerformance and ConsumerPerformance with the same
//!    record count and mean size: the broker's ceiling;
//! 3. the bare loop, the pass-through, the deduplicator and the merger
//!    (2 DCs) binaries, each over the whole backlog, alternating rounds:
//!    records/s from first to last commit, peak RSS;
//! 4. allocations per record: the pass-through with a counting allocator;
//! 5. at half the deduplicator's maximum rate, events stamped at publish
//!    time: p50/p99 end-to-end latency through the pass-through, the
//!    deduplicator, the merger and (when it ran) the joiner, as a click's
//!    publication to its joined click (and through the broker alone);
//! 6. state bytes per key: the deduplicator's in-memory set, measured as
//!    RSS growth, and its changelog on the broker's disk.

/// Backlog runs per service, alternating, so neither always runs first.
const ROUNDS: usize = 2;

/// The configs of every topic the benchmark creates that is not compacted.
/// The simulated backlog is dated 2025 (a fixed start keeps runs alike), and
/// its record timestamps are those event times: under the broker's default
/// 7-day retention, a segment is deleted at the next retention check once
/// it rolls, even while a service has not read it yet. That is how the
/// "stalled" deduplicator of 2026-12-06 lost 30,358 records of one
/// partition (fetch out of range, reset to the new log start): no time-based
/// retention on the benchmark's topics.
const KEEP_RECORDS: &[(&str, &str)] = &[("retention.ms", "-1")];

mod chain;
mod latency;
mod loader;
mod peer;
mod service;
mod stats;
mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient};
use adpipe_events::Impression;
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{SimEvent, Simulation};
use clap::Parser;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;

use service::{BacklogRun, Service};

/// Benchmarks the deduplicator against the pass-through and Kafka's tools.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The cluster to run against (the local central cluster by default).
    #[arg(long, default_value = "127.0.0.1:39092")]
    bootstrap: String,
    /// Simulated impressions (clicks, conversions and duplicates are added).
    #[arg(long, default_value_t = 1_000_000)]
    impressions: u64,
    /// Partitions of every benchmark topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// The latency phases' publishing rate (records/s); by default half the
    /// deduplicator's maximum measured in the same run. Set it to compare
    /// runs at the same load.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// How long each latency phase publishes.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Classpath of the Kafka Streams peer (what `loadtest/kstreams/build.sh`
    /// prints); without it the peer is not run.
    #[arg(long)]
    kstreams_classpath: Option<String>,
    /// The JVM that runs the peer.
    #[arg(long, default_value = "java")]
    java: PathBuf,
    /// Stream threads of the peer.
    #[arg(long, default_value_t = 2)]
    kstreams_threads: u32,
    /// A librdkafka consumer property for adpipe's services and the bare
    /// loop (`[kafka.consumer]`), e.g. fetch.queue.backoff.ms=10; repeatable.
    #[arg(long = "consumer-property", value_name = "KEY=VALUE")]
    consumer_properties: Vec<String>,
    /// A librdkafka producer property for adpipe's services and the bare
    /// loop (`[kafka.producer]`), e.g. queue.buffering.max.kbytes=32768;
    /// repeatable.
    #[arg(long = "producer-property", value_name = "KEY=VALUE")]
    producer_properties: Vec<String>,
    /// Run only these contenders of the backlog rounds (bare, pass,
    /// kspass, dedup, ksdedup, poison, merger, joiner, stats (or one of
    /// stats100, stats1000, stats10000, stats10000u), loader (or files, es,
    /// profiles, bigquery, or one variant's key, e.g. parquet5000);
    /// comma-separated); the
    /// allocation count and the latency and state phases run only when
    /// `alloc` and `latency` are listed. `chain` runs the whole chain
    /// instead (adpipe's and Kafka Streams', then its latency; chain.rs)
    /// and nothing else.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The joiner's state backend (`disk` or `memory`): the memory store
    /// shows what the disk costs.
    #[arg(long, default_value = "disk")]
    joiner_store: String,
    /// PostgreSQL for the stats-counter's contenders (`infra/postgres.sh
    /// url`); without it they are not run.
    #[arg(long, env = "ADPIPE_PG_URL")]
    postgres_url: Option<String>,
    /// Elasticsearch for the loader's Elasticsearch contenders and the
    /// plain `_bulk` ceiling (`infra/elasticsearch.sh url`); without it
    /// they are not run.
    #[arg(long, env = "ADPIPE_ES_URL")]
    es_url: Option<String>,
    /// Redis for the loader's profile contender (`infra/redis.sh url`);
    /// without it, it is not run.
    #[arg(long, env = "ADPIPE_REDIS_URL")]
    redis_url: Option<String>,
    /// BigQuery's REST base for the loader's BigQuery contender (the
    /// emulator: `$(infra/bigquery.sh url)/bigquery/v2`); without it, it
    /// is not run.
    #[arg(long, env = "ADPIPE_BQ_URL")]
    bq_url: Option<String>,
}

/// What a run measured: every service on its own, or the whole chain.
enum Outcome {
    Services(Box<Report>),
    Chain(chain::ChainReport),
}

#[derive(Debug, Serialize)]
struct Report {
    records: i64,
    unique_records: u64,
    mean_record_bytes: usize,
    kafka_producer_perf: tools::ToolRun,
    kafka_consumer_perf: tools::ToolRun,
    deduplicator: Vec<BacklogRun>,
    deduplicator_peak_rss_mib: f64,
    passthrough: Vec<BacklogRun>,
    passthrough_peak_rss_mib: f64,
    bare_loop: Vec<BacklogRun>,
    bare_loop_peak_rss_mib: f64,
    merger: Vec<BacklogRun>,
    merger_peak_rss_mib: f64,
    /// The joiner over the unique events in three co-partitioned topics.
    joiner: Vec<BacklogRun>,
    joiner_peak_rss_mib: f64,
    /// Bytes its disk stores hold per stored impression after a round.
    joiner_state_bytes_per_impression: Option<f64>,
    /// The joiner's state backend (`--joiner-store`).
    joiner_store: String,
    /// The stats-counter over the unique impressions, per variant
    /// (`stats::VARIANTS`): its runs, peak RSS, and the PostgreSQL rows the
    /// last round wrote to its minute table.
    stats: Vec<StatsRuns>,
    /// The loader over the unique impressions, per variant
    /// (`loader::VARIANTS`).
    loader: Vec<LoaderRuns>,
    /// Elasticsearch's own `_bulk` ceiling, measured with a plain client.
    es_ceiling: Option<loader::Ceiling>,
    kstreams_passthrough: Vec<BacklogRun>,
    kstreams_passthrough_peak_rss_mib: f64,
    kstreams_dedup: Vec<BacklogRun>,
    kstreams_dedup_peak_rss_mib: f64,
    /// The deduplicator over the backlog with 1% poison records.
    deduplicator_poisoned: Vec<BacklogRun>,
    deduplicator_poisoned_peak_rss_mib: f64,
    /// Poison records in that backlog (all must reach the dead-letter topic).
    poison_records: i64,
    /// Valid events in it whose output is too large to produce (their
    /// outputs must reach the dead-letter topic instead).
    oversize_records: i64,
    /// Allocations per record of the pass-through's hot path, and bytes
    /// allocated per record (with --only: when `alloc` is listed).
    passthrough_allocations_per_record: Option<f64>,
    passthrough_allocated_bytes_per_record: Option<f64>,
    /// The phases after the backlog rounds (skipped with --only).
    phases: Option<Phases>,
}

/// One stats-counter variant's rounds.
#[derive(Debug, Serialize)]
struct StatsRuns {
    name: &'static str,
    batch_records: usize,
    upsert: &'static str,
    runs: Vec<BacklogRun>,
    peak_rss_mib: f64,
    minute_rows: usize,
}

/// One loader variant's rounds.
#[derive(Debug, Serialize)]
struct LoaderRuns {
    name: &'static str,
    sink: &'static str,
    batch_records: usize,
    runs: Vec<BacklogRun>,
    peak_rss_mib: f64,
    /// Bytes on disk per record (files).
    bytes_per_record: Option<f64>,
}

/// Allocations, latency and state: the phases after the backlog rounds.
#[derive(Debug, Serialize)]
struct Phases {
    latency_passthrough: latency::LatencyRun,
    latency_deduplicator: latency::LatencyRun,
    latency_merger: latency::LatencyRun,
    /// Click published → joined click read (when the joiner ran).
    latency_joiner: Option<latency::LatencyRun>,
    deduplicator_latency_phase_peak_rss_mib: f64,
    state_bytes_per_key_in_memory: f64,
    state_keys_measured: u64,
    changelog_bytes_per_key_on_disk: f64,
}

/// One record in this many of the poisoned backlog is followed by an
/// oversize one.
const OVERSIZE_EVERY: usize = 100_000;

/// A valid, unique impression whose value (over 1 MiB) no producer with
/// librdkafka's default `message.max.bytes` can send: its output is
/// rejected and dead-lettered. The page URL is random so compression
/// cannot shrink it.
fn oversize_event(like: &Impression, index: i64) -> SimEvent {
    use rand::Rng;
    let mut event = like.clone();
    event.event_id = format!("oversize-{index}-{}", like.event_id);
    let mut rng = rand::rng();
    event.url = (0..1_100_000)
        .map(|_| char::from(rng.random_range(b'a'..=b'z')))
        .collect();
    SimEvent::Impression(event)
}

/// Sends one record, waiting while the local queue is full.
fn send_blocking(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, str, [u8]>,
) -> Result<(), String> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error.to_string()),
        }
    }
}

/// Poison record number `index`, made from a good value: alternately a
/// value that is not Confluent-framed (bad magic byte) and a framed value
/// whose Avro datum is cut short. Both are poison for any decoding service.
fn poison_value(index: i64, mut good: Vec<u8>) -> Vec<u8> {
    if index % 2 == 0 {
        good[0] = 0xFF;
    } else {
        good.truncate(8);
    }
    good
}

/// What every service's config shares: broker, group, DLQ, commits, HTTP
/// (and `--consumer-property`/`--producer-property`).
fn worker_sections(args: &Args, group: &str, dlq: &str, runtime_extra: &str) -> String {
    let toml_table = |properties: &[String]| -> String {
        properties
            .iter()
            .filter_map(|property| property.split_once('='))
            .map(|(key, value)| format!("{key:?} = {value:?}\n"))
            .collect()
    };
    format!(
        "[kafka]\nbootstrap-servers = \"{}\"\ngroup-id = \"{group}\"\n\
         [kafka.consumer]\n{}\
         [kafka.producer]\n{}\
         [runtime]\ndead-letter-topic = \"{dlq}\"\ncommit-interval = \"100ms\"\n{runtime_extra}\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        args.bootstrap,
        toml_table(&args.consumer_properties),
        toml_table(&args.producer_properties),
    )
}

/// The Kafka Streams peer, when `--kstreams-classpath` is given.
fn kstreams_peer(args: &Args, prefix: &str) -> Option<peer::KafkaStreamsPeer> {
    let peer = args
        .kstreams_classpath
        .as_ref()
        .map(|classpath| peer::KafkaStreamsPeer {
            java: args.java.clone(),
            classpath: classpath.clone(),
            threads: args.kstreams_threads,
            // Not under /tmp: Kafka Streams warns that the OS may clear it.
            state_dir: repo_root().join(format!(".adpipe/bench/{prefix}-kstreams")),
        });
    if peer.is_none() {
        eprintln!(
            "no --kstreams-classpath: the Kafka Streams peer is not run (loadtest/bench.sh builds it)"
        );
    }
    peer
}

/// `--only chain`: the whole chain, adpipe's and Kafka Streams' (chain.rs).
async fn run_chain(args: &Args, prefix: &str) -> Result<chain::ChainReport, String> {
    let postgres_url = args
        .postgres_url
        .as_deref()
        .ok_or("the chain's stats-counter needs --postgres-url (infra/postgres.sh url)")?;
    let registry = adpipe_schema_registry::start(adpipe_schema_registry::RegistrySettings::local(
        &args.bootstrap,
        &format!("{prefix}._schemas"),
    ))
    .await
    .map_err(|error| format!("registry: {error}"))?;
    let codec = Arc::new(Codec::new(
        RegistryClient::new(&registry.url()).map_err(|error| error.to_string())?,
    ));
    let publisher = SimPublisher::new(&codec, &args.bootstrap, |kind| {
        format!("{prefix}.in-{kind}")
    })
    .await
    .map_err(|error| error.to_string())?;
    let dlq = format!("{prefix}.chain-dlq");
    let worker =
        |group: &str, runtime_extra: &str| worker_sections(args, group, &dlq, runtime_extra);
    let peer = kstreams_peer(args, prefix);
    let bin_dir = sibling_binary("adpipe-merger")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let report = chain::run(&chain::ChainBench {
        bootstrap: &args.bootstrap,
        prefix,
        partitions: args.partitions,
        registry_url: registry.url(),
        postgres_url,
        worker_sections: &worker,
        bin_dir,
        peer: peer.as_ref(),
        schemas_dir: repo_root().join("schemas"),
        config_dir: std::env::temp_dir(),
        codec,
        publisher: &publisher,
        impressions: args.impressions,
        latency_duration: args.latency_duration,
    })
    .await;
    registry.stop().await;
    report
}

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (loadtest/bench.sh does)",
            path.display()
        ))
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("{}: {error}", path.display()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(run(&args))) {
        Ok(outcome) => {
            let json = match &outcome {
                Outcome::Services(report) => {
                    print_report(report);
                    serde_json::to_string_pretty(report)
                }
                Outcome::Chain(report) => {
                    chain::print_report(report);
                    serde_json::to_string_pretty(report)
                }
            };
            if let Some(path) = &args.json {
                let json = json.unwrap_or_default();
                if let Err(error) = write_file(path, &json) {
                    eprintln!("{error}");
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<Outcome, String> {
    let bootstrap = &args.bootstrap;
    let kafka_sh = repo_root().join("infra/kafka.sh");
    let dedup_binary = sibling_binary("adpipe-deduplicator")?;
    let pass_binary = sibling_binary("adpipe-passthrough")?;
    let bare_binary = sibling_binary("adpipe-bareloop")?;
    let counted_binary = sibling_binary("adpipe-passthrough-counted")?;
    let merger_binary = sibling_binary("adpipe-merger")?;
    let joiner_binary = sibling_binary("adpipe-joiner")?;
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topic = |suffix: &str| format!("{prefix}.{suffix}");
    let partitions = args.partitions;
    eprintln!("topics {prefix}.* on {bootstrap}");
    if args.only.iter().any(|only| only == "chain") {
        return run_chain(args, &prefix).await.map(Outcome::Chain);
    }
    let (input, pass_out, dlq, raw) = (topic("in"), topic("in.pass"), topic("dlq"), topic("raw"));
    let bare_out = topic("in.bare");
    // The backlog again with one poison record per 99 good ones (1%), for
    // the deduplicator's rate with and without poison; each round its own
    // output, changelog and dead-letter topic.
    let poisoned = topic("poisoned");
    let poisoned_outs: Vec<String> = (0..ROUNDS)
        .map(|round| topic(&format!("poisoned-out{round}")))
        .collect();
    let poisoned_dlqs: Vec<String> = (0..ROUNDS)
        .map(|round| topic(&format!("poisoned-dlq{round}")))
        .collect();
    let runs_poison = args.only.is_empty() || args.only.iter().any(|only| only == "poison");
    // The Kafka Streams peer's outputs: one pass-through topic, a dedup
    // output per round (each round starts with an empty store).
    let ks_pass_out = topic("in.kspass");
    let ks_dedup_outs: Vec<String> = (0..ROUNDS)
        .map(|round| topic(&format!("ksdedup{round}")))
        .collect();
    // The merger's inputs: the backlog split by DC, named as MirrorMaker 2
    // names replicas; an output per round (a merger resumes after what its
    // output already holds).
    let dc_inputs: Vec<String> = ["dc1", "dc2"]
        .iter()
        .map(|dc| format!("{dc}.{prefix}.in"))
        .collect();
    let merged_outs: Vec<String> = (0..=ROUNDS)
        .map(|round| topic(&format!("merged{round}.in")))
        .collect();
    // Each deduplicator round starts with empty state: its own output and changelog.
    let dedup_outs: Vec<String> = (0..ROUNDS)
        .map(|round| topic(&format!("out{round}")))
        .collect();
    let changelogs: Vec<String> = (0..ROUNDS)
        .map(|round| topic(&format!("log{round}")))
        .collect();
    let poisoned_changelogs: Vec<String> = (0..ROUNDS)
        .map(|round| topic(&format!("poisoned-log{round}")))
        .collect();
    // The joiner's inputs: the unique events by kind, as the deduplicator
    // leaves them; per round its outputs and its two changelogs (each round
    // starts with empty state).
    let runs_joiner = args.only.is_empty() || args.only.iter().any(|only| only == "joiner");
    // The stats-counter's contenders: the joiner's impressions input as
    // their `deduplicated.impressions`, three empty inputs, per round and
    // variant a totals topic and a schema.
    let selected = |key: &str| {
        args.only.is_empty()
            || args
                .only
                .iter()
                .any(|only| only == key || (only == "stats" && key.starts_with("stats")))
    };
    let stats_url = args
        .postgres_url
        .clone()
        .filter(|_| stats::VARIANTS.iter().any(|variant| selected(variant.key)));
    if stats_url.is_none() && args.only.iter().any(|only| only.starts_with("stats")) {
        return Err(
            "the stats-counter's contenders need --postgres-url (infra/postgres.sh url)".to_owned(),
        );
    }
    let stores = loader::Stores {
        es_url: args.es_url.as_deref(),
        redis_url: args.redis_url.as_deref(),
        bq_url: args.bq_url.as_deref(),
    };
    let loader_selected = |variant: &loader::Variant| {
        loader::selected(&args.only, variant) && stores.has(variant.sink)
    };
    if args.es_url.is_none()
        && args
            .only
            .iter()
            .any(|only| only == "es" || only.starts_with("es"))
    {
        return Err(
            "the loader's Elasticsearch contenders need --es-url (infra/elasticsearch.sh url)"
                .to_owned(),
        );
    }
    let runs_loader = loader::VARIANTS.iter().any(&loader_selected);
    let loader_binary = if runs_loader {
        Some(sibling_binary("adpipe-loader")?)
    } else {
        None
    };
    let stats_binary = match stats_url {
        Some(_) => Some(sibling_binary("adpipe-stats-counter")?),
        None => None,
    };
    let stats_empty: Vec<String> = stats::EMPTY_INPUTS.iter().map(|name| topic(name)).collect();
    let stats_totals: Vec<Vec<String>> = (0..ROUNDS)
        .map(|round| {
            stats::VARIANTS
                .iter()
                .map(|variant| topic(&format!("{}-totals{round}", variant.key)))
                .collect()
        })
        .collect();
    let joiner_inputs: Vec<String> = ["impressions", "clicks", "conversions"]
        .iter()
        .map(|kind| topic(&format!("j.{kind}")))
        .collect();
    let joiner_outs: Vec<[String; 3]> = (0..ROUNDS)
        .map(|round| ["jclk", "jcnv", "jorph"].map(|what| topic(&format!("{what}{round}"))))
        .collect();
    let joiner_logs: Vec<[String; 2]> = (0..ROUNDS)
        .map(|round| ["jimplog", "jclklog"].map(|what| topic(&format!("{what}{round}"))))
        .collect();
    let mut specs: Vec<adpipe_testkit::TopicSpec<'_>> =
        [&input, &pass_out, &raw, &bare_out, &ks_pass_out]
            .into_iter()
            .chain(&dedup_outs)
            .chain(&poisoned_outs)
            .chain(&poisoned_dlqs)
            .chain(&ks_dedup_outs)
            .chain(&dc_inputs)
            .chain(&merged_outs)
            .chain(&joiner_inputs)
            .chain(joiner_outs.iter().flatten())
            .chain(&stats_empty)
            .chain(stats_totals.iter().flatten())
            .map(|name| (name.as_str(), partitions, KEEP_RECORDS))
            .collect();
    for changelog in changelogs
        .iter()
        .chain(&poisoned_changelogs)
        .chain(joiner_logs.iter().flatten())
    {
        specs.push((changelog, partitions, &[("cleanup.policy", "compact")]));
    }
    specs.push((&dlq, 1, KEEP_RECORDS));
    // The poisoned backlog also holds a few records too large for any
    // output (the topic takes them; the deduplicator's producer cannot).
    let poisoned_configs = [("max.message.bytes", "4194304"), KEEP_RECORDS[0]];
    specs.push((&poisoned, partitions, &poisoned_configs));
    adpipe_testkit::create_topics(bootstrap, &specs).await;
    let registry = adpipe_schema_registry::start(adpipe_schema_registry::RegistrySettings::local(
        bootstrap,
        &topic("_schemas"),
    ))
    .await
    .map_err(|error| format!("registry: {error}"))?;
    let codec = Arc::new(Codec::new(
        RegistryClient::new(&registry.url()).map_err(|error| error.to_string())?,
    ));
    let publisher = SimPublisher::new(&codec, bootstrap, |kind| format!("{prefix}.in-{kind}"))
        .await
        .map_err(|error| error.to_string())?;

    // 1. The backlog.
    let (publications, truth) = Simulation {
        impressions: args.impressions,
        ..Simulation::default()
    }
    .generate();
    eprintln!("publishing {} records", publications.len());
    let publish_started = Instant::now();
    let dc_input =
        |publication: &adpipe_loadtest::Publication| format!("{}.{prefix}.in", publication.dc);
    let mut poison_records: i64 = 0;
    let mut oversize_records: i64 = 0;
    let oversize_producer: BaseProducer = adpipe_runtime::producer_config(bootstrap)
        .set("message.max.bytes", "4194304")
        .create()
        .map_err(|error| error.to_string())?;
    for (index, publication) in publications.iter().enumerate() {
        publisher
            .publish(publication, &input)
            .map_err(|error| error.to_string())?;
        publisher
            .publish(publication, &dc_input(publication))
            .map_err(|error| error.to_string())?;
        if (runs_joiner || stats_url.is_some() || runs_loader) && !publication.duplicate {
            let kind = match publication.event.kind() {
                adpipe_events::EventKind::Impression => 0,
                adpipe_events::EventKind::Click => 1,
                _ => 2,
            };
            publisher
                .publish(publication, &joiner_inputs[kind])
                .map_err(|error| error.to_string())?;
        }
        if runs_poison {
            publisher
                .publish(publication, &poisoned)
                .map_err(|error| error.to_string())?;
            if index % 99 == 98 {
                let value = poison_value(
                    poison_records,
                    publisher
                        .encode(&publication.event)
                        .map_err(|error| error.to_string())?,
                );
                publisher
                    .publish_value(
                        &poisoned,
                        publication.event.user_id(),
                        &value,
                        &publication.dc,
                    )
                    .map_err(|error| error.to_string())?;
                poison_records += 1;
            }
            if index % OVERSIZE_EVERY == OVERSIZE_EVERY - 1
                && let SimEvent::Impression(impression) = &publication.event
            {
                let value = publisher
                    .encode(&oversize_event(impression, oversize_records))
                    .map_err(|error| error.to_string())?;
                send_blocking(
                    &oversize_producer,
                    BaseRecord::to(&poisoned)
                        .key(impression.user_id.as_str())
                        .payload(&value),
                )?;
                oversize_records += 1;
            }
        }
    }
    publisher
        .flush(Duration::from_secs(300))
        .map_err(|error| error.to_string())?;
    oversize_producer
        .flush(Duration::from_secs(60))
        .map_err(|error| error.to_string())?;
    let records = service::topic_end(bootstrap, &input)?;
    eprintln!(
        "published {records} records in {:.1} s",
        publish_started.elapsed().as_secs_f64()
    );
    let sample = &publications[..publications.len().min(10_000)];
    let mut sample_bytes = 0;
    for publication in sample {
        sample_bytes += publisher
            .encode(&publication.event)
            .map_err(|error| error.to_string())?
            .len();
    }
    let mean_record_bytes = sample_bytes / sample.len().max(1);

    // 2. The broker's ceiling.
    eprintln!("Kafka ProducerPerformance: {records} x {mean_record_bytes} B");
    let kafka_producer_perf = tools::producer_perf(
        &kafka_sh,
        bootstrap,
        &raw,
        records as u64,
        mean_record_bytes,
    )?;
    eprintln!("Kafka ConsumerPerformance");
    let kafka_consumer_perf = tools::consumer_perf(
        &kafka_sh,
        bootstrap,
        &raw,
        records as u64,
        &topic("perf-consumer"),
    )?;

    // 3. Each service over the whole backlog, alternating, ROUNDS times.
    let config_dir = std::env::temp_dir();
    let worker_config_to = |group: &str, dlq: &str, runtime_extra: &str| {
        worker_sections(args, &format!("{prefix}-{group}"), dlq, runtime_extra)
    };
    let worker_config =
        |group: &str, runtime_extra: &str| worker_config_to(group, &dlq, runtime_extra);
    let dedup_config_for = |group: &str, input: &str, output: &str, changelog: &str, dlq: &str| {
        let path = config_dir.join(format!("{prefix}-{group}.toml"));
        write_file(
            &path,
            &format!(
                "{}[registry]\nurl = \"{}\"\n\
                 [[deduplicator.stream]]\ninput = \"{input}\"\noutput = \"{output}\"\nchangelog = \"{changelog}\"\n",
                worker_config_to(group, dlq, ""),
                registry.url(),
            ),
        )?;
        Ok::<_, String>(path)
    };
    let dedup_config = |round: usize| {
        dedup_config_for(
            &format!("dedup{round}"),
            &input,
            &dedup_outs[round],
            &changelogs[round],
            &dlq,
        )
    };
    let poisoned_config = |round: usize| {
        dedup_config_for(
            &format!("poisoned{round}"),
            &poisoned,
            &poisoned_outs[round],
            &poisoned_changelogs[round],
            &poisoned_dlqs[round],
        )
    };
    // The pass-through's config serves the bare loop too (same settings).
    let pass_config = |group: &str, suffix: &str| -> Result<PathBuf, String> {
        let path = config_dir.join(format!("{prefix}-{group}.toml"));
        write_file(
            &path,
            &format!(
                "{}[passthrough]\ninputs = [\"{input}\"]\noutput-suffix = \"{suffix}\"\n",
                worker_config(group, ""),
            ),
        )?;
        Ok(path)
    };
    // A backlog has no heartbeats: each DC's tail waits out max-idle.
    let merger_config = |round: usize, max_idle: &str| -> Result<PathBuf, String> {
        let path = config_dir.join(format!("{prefix}-merger{round}.toml"));
        write_file(
            &path,
            &format!(
                "{}[registry]\nurl = \"{}\"\n\
                 [merger]\ndcs = [\"dc1\", \"dc2\"]\nkinds = [\"in\"]\n\
                 input = \"{{dc}}.{prefix}.{{kind}}\"\noutput = \"{prefix}.merged{round}.{{kind}}\"\n",
                worker_config(
                    &format!("merger{round}"),
                    &format!("max-idle = \"{max_idle}\"\n")
                ),
                registry.url(),
            ),
        )?;
        Ok(path)
    };
    let joiner_config = |round: usize| -> Result<PathBuf, String> {
        let path = config_dir.join(format!("{prefix}-joiner{round}.toml"));
        let [clicks, conversions, orphans] = &joiner_outs[round];
        let [impressions_log, clicks_log] = &joiner_logs[round];
        write_file(
            &path,
            &format!(
                "{}[registry]\nurl = \"{}\"\n\
                 [joiner]\nimpressions = \"{}\"\nclicks = \"{}\"\nconversions = \"{}\"\n\
                 joined-clicks = \"{clicks}\"\njoined-conversions = \"{conversions}\"\norphans = \"{orphans}\"\n\
                 impressions-changelog = \"{impressions_log}\"\nclicks-changelog = \"{clicks_log}\"\n\
                 wait = \"2s\"\nstore = \"{}\"\nstate-dir = \"{}\"\n",
                worker_config(&format!("joiner{round}"), "max-idle = \"100ms\"\n"),
                registry.url(),
                joiner_inputs[0],
                joiner_inputs[1],
                joiner_inputs[2],
                args.joiner_store,
                config_dir
                    .join(format!("{prefix}-joiner{round}-state"))
                    .display(),
            ),
        )?;
        Ok(path)
    };
    let stats_schema = |round: usize, variant: &stats::Variant| {
        format!("bench_{}_{}{round}", &prefix[6..], variant.key)
    };
    let stats_config = |round: usize, index: usize| -> Result<PathBuf, String> {
        let variant = &stats::VARIANTS[index];
        let path = config_dir.join(format!("{prefix}-{}{round}.toml", variant.key));
        write_file(
            &path,
            &format!(
                "{}{}",
                worker_config(&format!("{}{round}", variant.key), ""),
                stats::sections(
                    variant,
                    &registry.url(),
                    &joiner_inputs[0],
                    &stats_empty,
                    &stats_totals[round][index],
                    stats_url.as_deref().unwrap_or_default(),
                    &stats_schema(round, variant),
                ),
            ),
        )?;
        Ok(path)
    };
    let stats_input_refs: Vec<&str> = std::iter::once(joiner_inputs[0].as_str())
        .chain(stats_empty.iter().map(String::as_str))
        .collect();
    let loader_place = |round: usize, variant: &loader::Variant| match variant.sink {
        "files" => loader::files_dir(&config_dir, &prefix, variant.key, round)
            .display()
            .to_string(),
        "profiles" => format!("{prefix}-{}{round}:", variant.key),
        "bigquery" => format!("{prefix}_{}{round}", variant.key).replace('-', "_"),
        _ => format!("{prefix}-{}{round}-", variant.key),
    };
    let loader_config = |round: usize, index: usize| -> Result<PathBuf, String> {
        let variant = &loader::VARIANTS[index];
        let path = config_dir.join(format!("{prefix}-{}{round}.toml", variant.key));
        write_file(
            &path,
            &format!(
                "{}{}",
                worker_config(&format!("{}{round}", variant.key), ""),
                loader::sections(
                    variant,
                    &registry.url(),
                    &joiner_inputs[0],
                    &stores,
                    &loader_place(round, variant),
                ),
            ),
        )?;
        Ok(path)
    };
    let mut loader_runs: Vec<Vec<BacklogRun>> =
        loader::VARIANTS.iter().map(|_| Vec::new()).collect();
    let mut loader_peaks: Vec<u64> = vec![0; loader::VARIANTS.len()];
    let mut loader_bytes: Vec<Option<f64>> = vec![None; loader::VARIANTS.len()];
    let mut stats_runs: Vec<Vec<BacklogRun>> = stats::VARIANTS.iter().map(|_| Vec::new()).collect();
    let mut stats_peaks: Vec<u64> = vec![0; stats::VARIANTS.len()];
    let mut stats_rows: Vec<usize> = vec![0; stats::VARIANTS.len()];
    let joiner_input_refs: Vec<&str> = joiner_inputs.iter().map(String::as_str).collect();
    let dc_input_refs: Vec<&str> = dc_inputs.iter().map(String::as_str).collect();
    let unique_records = truth.uniques() as i64;
    let peer = kstreams_peer(args, &prefix);
    let (mut deduplicator, mut passthrough, mut bare_loop, mut merger) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut kstreams_passthrough, mut kstreams_dedup) = (Vec::new(), Vec::new());
    let mut deduplicator_poisoned = Vec::new();
    let mut poisoned_peak_rss_kb = 0;
    let (mut deduplicator_peak_rss_kb, mut passthrough_peak_rss_kb) = (0, 0);
    let (mut bare_peak_rss_kb, mut merger_peak_rss_kb) = (0, 0);
    let (mut joiner, mut joiner_peak_rss_kb) = (Vec::new(), 0);
    let (mut ks_pass_peak_rss_kb, mut ks_dedup_peak_rss_kb) = (0, 0);
    // Elasticsearch's own ceiling, before the rounds (after a warm-up pass): the unique
    // impressions, bulks as the loader's default batch, six requests in
    // flight (as many as the loader's partitions).
    let es_ceiling = match &args.es_url {
        Some(es_url)
            if loader::VARIANTS
                .iter()
                .any(|v| v.sink == "elasticsearch" && loader_selected(v)) =>
        {
            let impressions: Vec<Impression> = publications
                .iter()
                .filter(|publication| !publication.duplicate)
                .filter_map(|publication| match &publication.event {
                    SimEvent::Impression(impression) => Some(impression.clone()),
                    _ => None,
                })
                .collect();
            eprintln!(
                "Elasticsearch's _bulk ceiling: {} documents",
                impressions.len()
            );
            let ceiling = loader::ceiling(
                es_url,
                &format!("{prefix}-ceiling"),
                &impressions,
                5_000,
                usize::try_from(partitions).unwrap_or(6),
            )
            .await?;
            Some(ceiling)
        }
        _ => None,
    };
    for round in 0..ROUNDS {
        let ks_pass_app = format!("{prefix}-kspass{round}");
        let ks_dedup_app = format!("{prefix}-ksdedup{round}");
        let mut contenders = vec![
            Contender {
                key: "bare",
                name: "bare loop",
                launch: Launch::Binary(
                    &bare_binary,
                    pass_config(&format!("bare{round}"), ".bare")?,
                ),
                group: format!("{prefix}-bare{round}"),
                inputs: vec![input.as_str()],
                output: &bare_out,
                expected: records,
                runs: &mut bare_loop,
                peak_rss_kb: &mut bare_peak_rss_kb,
            },
            Contender {
                key: "pass",
                name: "passthrough",
                launch: Launch::Binary(
                    &pass_binary,
                    pass_config(&format!("pass{round}"), ".pass")?,
                ),
                group: format!("{prefix}-pass{round}"),
                inputs: vec![input.as_str()],
                output: &pass_out,
                expected: records,
                runs: &mut passthrough,
                peak_rss_kb: &mut passthrough_peak_rss_kb,
            },
            Contender {
                key: "kspass",
                name: "Kafka Streams pass-through",
                launch: Launch::Peer(peer::PeerJob {
                    job: "passthrough",
                    application_id: &ks_pass_app,
                    input: &input,
                    output: &ks_pass_out,
                    option: "",
                }),
                group: ks_pass_app.clone(),
                inputs: vec![input.as_str()],
                output: &ks_pass_out,
                expected: records,
                runs: &mut kstreams_passthrough,
                peak_rss_kb: &mut ks_pass_peak_rss_kb,
            },
            Contender {
                key: "dedup",
                name: "deduplicator",
                launch: Launch::Binary(&dedup_binary, dedup_config(round)?),
                group: format!("{prefix}-dedup{round}"),
                inputs: vec![input.as_str()],
                output: &dedup_outs[round],
                expected: unique_records,
                runs: &mut deduplicator,
                peak_rss_kb: &mut deduplicator_peak_rss_kb,
            },
            Contender {
                key: "poison",
                name: "deduplicator, 1% poison",
                launch: Launch::Binary(&dedup_binary, poisoned_config(round)?),
                group: format!("{prefix}-poisoned{round}"),
                inputs: vec![poisoned.as_str()],
                output: &poisoned_outs[round],
                expected: unique_records,
                runs: &mut deduplicator_poisoned,
                peak_rss_kb: &mut poisoned_peak_rss_kb,
            },
            Contender {
                key: "ksdedup",
                name: "Kafka Streams dedup",
                launch: Launch::Peer(peer::PeerJob {
                    job: "dedup",
                    application_id: &ks_dedup_app,
                    input: &input,
                    output: &ks_dedup_outs[round],
                    option: "24",
                }),
                group: ks_dedup_app.clone(),
                inputs: vec![input.as_str()],
                output: &ks_dedup_outs[round],
                expected: unique_records,
                runs: &mut kstreams_dedup,
                peak_rss_kb: &mut ks_dedup_peak_rss_kb,
            },
            Contender {
                key: "merger",
                name: "merger",
                launch: Launch::Binary(&merger_binary, merger_config(round, "100ms")?),
                group: format!("{prefix}-merger{round}"),
                inputs: dc_input_refs.clone(),
                output: &merged_outs[round],
                expected: records,
                runs: &mut merger,
                peak_rss_kb: &mut merger_peak_rss_kb,
            },
            Contender {
                key: "joiner",
                name: "joiner",
                launch: Launch::Binary(&joiner_binary, joiner_config(round)?),
                group: format!("{prefix}-joiner{round}"),
                inputs: joiner_input_refs.clone(),
                output: &joiner_outs[round][0],
                // Every click finds its impression: one join per click.
                expected: truth.clicks.len() as i64,
                runs: &mut joiner,
                peak_rss_kb: &mut joiner_peak_rss_kb,
            },
        ];
        if let Some(binary) = &stats_binary {
            for (index, (runs, peak)) in stats_runs
                .iter_mut()
                .zip(stats_peaks.iter_mut())
                .enumerate()
            {
                let variant = &stats::VARIANTS[index];
                contenders.push(Contender {
                    key: variant.key,
                    name: variant.name,
                    launch: Launch::Binary(binary, stats_config(round, index)?),
                    group: format!("{prefix}-{}{round}", variant.key),
                    inputs: stats_input_refs.clone(),
                    output: &stats_totals[round][index],
                    // Checked in PostgreSQL instead (see below).
                    expected: -1,
                    runs,
                    peak_rss_kb: peak,
                });
            }
        }
        if let Some(binary) = &loader_binary {
            for (index, (runs, peak)) in loader_runs
                .iter_mut()
                .zip(loader_peaks.iter_mut())
                .enumerate()
            {
                let variant = &loader::VARIANTS[index];
                if !loader_selected(variant) {
                    continue;
                }
                contenders.push(Contender {
                    key: variant.key,
                    name: variant.name,
                    launch: Launch::Binary(binary, loader_config(round, index)?),
                    group: format!("{prefix}-{}{round}", variant.key),
                    inputs: vec![joiner_inputs[0].as_str()],
                    // Nothing dead-lettered; the store is checked below.
                    output: &dlq,
                    expected: 0,
                    runs,
                    peak_rss_kb: peak,
                });
            }
        }
        for Contender {
            key,
            name,
            launch,
            group,
            inputs,
            output,
            expected,
            runs,
            peak_rss_kb: peak,
        } in contenders
        {
            let loader_variant = loader::VARIANTS
                .iter()
                .position(|variant| variant.key == key);
            if !selected(key) && loader_variant.is_none() {
                continue;
            }
            let mut service = match launch {
                Launch::Binary(binary, config) => Service::spawn(name, binary, &config)?,
                Launch::Peer(job) => match &peer {
                    Some(peer) => peer.spawn(name, bootstrap, &job, &registry.url())?,
                    None => continue,
                },
            };
            eprintln!("round {round}: {name} over the backlog");
            let output_before = service::topic_end(bootstrap, output)?;
            let backlog = if key == "poison" {
                records + poison_records + oversize_records
            } else if key == "joiner" {
                unique_records
            } else if key.starts_with("stats") || loader_variant.is_some() {
                truth.impressions.len() as i64
            } else {
                records
            };
            let mut run = service.run_backlog(bootstrap, &group, &inputs, backlog)?;
            *peak = (*peak).max(service.stop()?);
            run.output_records = service::topic_end(bootstrap, output)? - output_before;
            if let Some(index) = stats::VARIANTS
                .iter()
                .position(|variant| variant.key == key)
            {
                // Exactly every impression once in PostgreSQL.
                let schema = stats_schema(round, &stats::VARIANTS[index]);
                let (counted, rows) =
                    stats::counted(stats_url.as_deref().unwrap_or_default(), &schema).await?;
                if counted != truth.impressions.len() as i64 {
                    return Err(format!(
                        "{name} (round {round}) counted {counted} impressions, {} were published",
                        truth.impressions.len()
                    ));
                }
                stats_rows[index] = rows;
            }
            if let Some(index) = loader_variant {
                // Every impression once in the store.
                let variant = &loader::VARIANTS[index];
                let place = loader_place(round, variant);
                let written = match variant.sink {
                    "files" => {
                        let (records, bytes) = loader::files_written(Path::new(&place))?;
                        loader_bytes[index] = Some(bytes as f64 / records.max(1) as f64);
                        records
                    }
                    "profiles" => {
                        loader::profile_entries(stores.redis_url.unwrap_or_default(), &place)
                            .await?
                    }
                    "bigquery" => {
                        let (rows, distinct) = loader::bigquery_rows(
                            stores.bq_url.unwrap_or_default(),
                            &place,
                            &joiner_inputs[0],
                        )
                        .await?;
                        if rows != distinct {
                            return Err(format!(
                                "{name} (round {round}): {rows} rows for {distinct} events"
                            ));
                        }
                        rows
                    }
                    _ => loader::documents(stores.es_url.unwrap_or_default(), &place).await?,
                };
                if written != truth.impressions.len() as u64 {
                    return Err(format!(
                        "{name} (round {round}) wrote {written} records, {} impressions were published",
                        truth.impressions.len()
                    ));
                }
            }
            if run.output_records != expected && !key.starts_with("stats") {
                return Err(format!(
                    "{name} (round {round}) wrote {} records to {output}, expected {expected}",
                    run.output_records
                ));
            }
            if key == "poison" {
                // Every poison record and every oversize output in the
                // dead-letter topic, none lost.
                let dead_letters = service::topic_end(bootstrap, &poisoned_dlqs[round])?;
                if dead_letters != poison_records + oversize_records {
                    return Err(format!(
                        "{name} (round {round}) dead-lettered {dead_letters} records, expected {poison_records} poison + {oversize_records} oversize"
                    ));
                }
            }
            runs.push(run);
        }
    }

    // What the joiner's stores hold on disk per stored impression (tables
    // and journal, the last round's, after its clean stop).
    let joiner_state_bytes_per_impression = (!joiner.is_empty()).then(|| {
        let dir = config_dir.join(format!("{prefix}-joiner{}-state", ROUNDS - 1));
        let bytes = dir_bytes(&dir);
        let _ = (0..ROUNDS).try_for_each(|round| {
            std::fs::remove_dir_all(config_dir.join(format!("{prefix}-joiner{round}-state")))
        });
        bytes as f64 / truth.impressions.len().max(1) as f64
    });

    if let Some(peer) = &peer {
        let _ = std::fs::remove_dir_all(&peer.state_dir);
    }

    let mib = |kb: u64| kb as f64 / 1024.0;
    let mut report = Report {
        records,
        unique_records: truth.uniques(),
        mean_record_bytes,
        kafka_producer_perf,
        kafka_consumer_perf,
        deduplicator,
        deduplicator_peak_rss_mib: mib(deduplicator_peak_rss_kb),
        passthrough,
        passthrough_peak_rss_mib: mib(passthrough_peak_rss_kb),
        bare_loop,
        bare_loop_peak_rss_mib: mib(bare_peak_rss_kb),
        merger,
        merger_peak_rss_mib: mib(merger_peak_rss_kb),
        joiner,
        joiner_peak_rss_mib: mib(joiner_peak_rss_kb),
        joiner_state_bytes_per_impression,
        joiner_store: args.joiner_store.clone(),
        stats: stats::VARIANTS
            .iter()
            .zip(stats_runs)
            .zip(stats_peaks.iter().zip(&stats_rows))
            .filter(|((_, runs), _)| !runs.is_empty())
            .map(|((variant, runs), (peak, rows))| StatsRuns {
                name: variant.name,
                batch_records: variant.batch_records,
                upsert: variant.upsert,
                runs,
                peak_rss_mib: mib(*peak),
                minute_rows: *rows,
            })
            .collect(),
        loader: loader::VARIANTS
            .iter()
            .zip(loader_runs)
            .zip(loader_peaks.iter().zip(&loader_bytes))
            .filter(|((_, runs), _)| !runs.is_empty())
            .map(|((variant, runs), (peak, bytes))| LoaderRuns {
                name: variant.name,
                sink: variant.sink,
                batch_records: variant.batch_records,
                runs,
                peak_rss_mib: mib(*peak),
                bytes_per_record: *bytes,
            })
            .collect(),
        es_ceiling,
        kstreams_passthrough,
        kstreams_passthrough_peak_rss_mib: mib(ks_pass_peak_rss_kb),
        kstreams_dedup,
        kstreams_dedup_peak_rss_mib: mib(ks_dedup_peak_rss_kb),
        deduplicator_poisoned,
        deduplicator_poisoned_peak_rss_mib: mib(poisoned_peak_rss_kb),
        poison_records,
        oversize_records,
        passthrough_allocations_per_record: None,
        passthrough_allocated_bytes_per_record: None,
        phases: None,
    };
    let runs_alloc = args.only.is_empty() || args.only.iter().any(|only| only == "alloc");

    // 4. Allocations per record of the pass-through's hot path.
    if runs_alloc {
        eprintln!("pass-through with a counting allocator over the backlog");
        let alloc_report = config_dir.join(format!("{prefix}-allocations.txt"));
        let alloc_report_text = alloc_report.display().to_string();
        let mut counted = Service::spawn_with(
            "passthrough (counted)",
            &counted_binary,
            &pass_config("counted", ".pass")?,
            &[("ADPIPE_ALLOC_REPORT", &alloc_report_text)],
        )?;
        counted.run_backlog(bootstrap, &format!("{prefix}-counted"), &[&input], records)?;
        counted.stop()?;
        let counts: Vec<f64> = std::fs::read_to_string(&alloc_report)
            .map_err(|error| format!("{}: {error}", alloc_report.display()))?
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        let [allocations, reallocations, allocated_bytes] = counts[..] else {
            return Err(format!("unreadable allocation report {counts:?}"));
        };
        report.passthrough_allocations_per_record =
            Some((allocations + reallocations) / records as f64);
        report.passthrough_allocated_bytes_per_record = Some(allocated_bytes / records as f64);
    }
    let runs_latency = args.only.is_empty() || args.only.iter().any(|only| only == "latency");
    if !runs_latency {
        registry.stop().await;
        return Ok(Outcome::Services(Box::new(report)));
    }
    let mean_rate = |runs: &[BacklogRun]| {
        runs.iter().map(|run| run.records_per_sec).sum::<f64>() / runs.len().max(1) as f64
    };

    // 4. Latency at half the deduplicator's maximum rate (or --latency-rate).
    let rate = match (args.latency_rate, report.deduplicator.is_empty()) {
        (Some(rate), _) => rate,
        (None, false) => mean_rate(&report.deduplicator) / 2.0,
        (None, true) => {
            return Err("--only latency needs dedup in the list or --latency-rate".to_owned());
        }
    };
    let wanted = (rate * args.latency_duration.as_secs_f64() * 1.2) as u64;
    let latency_events = |seed| {
        Simulation {
            seed,
            impressions: wanted,
            ..Simulation::default()
        }
        .generate()
        .0
    };
    eprintln!("latency through the pass-through at {rate:.0} records/s");
    let to_input = |_: &adpipe_loadtest::Publication| input.clone();
    let pass = Service::spawn("passthrough", &pass_binary, &pass_config("pass0", ".pass")?)?;
    let latency_passthrough = latency::run(
        bootstrap,
        &publisher,
        Arc::clone(&codec),
        latency_events(7),
        &to_input,
        &input,
        &pass_out,
        rate,
        args.latency_duration,
    )?;
    pass.stop()?;
    eprintln!("latency through the deduplicator at {rate:.0} records/s");
    let mut dedup = Service::spawn("deduplicator", &dedup_binary, &dedup_config(0)?)?;
    // Wait for the restore and the catch-up on what the last phase published.
    dedup.run_backlog(
        bootstrap,
        &format!("{prefix}-dedup0"),
        &[&input],
        service::topic_end(bootstrap, &input)?,
    )?;
    let latency_deduplicator = latency::run(
        bootstrap,
        &publisher,
        Arc::clone(&codec),
        latency_events(8),
        &to_input,
        &input,
        &dedup_outs[0],
        rate,
        args.latency_duration,
    )?;
    let deduplicator_latency_phase_peak_rss_kb = dedup.stop()?;
    // Live events in both DCs, with each DC's heartbeats (every 100 ms)
    // advancing the merge when a DC's queue is momentarily empty.
    eprintln!("latency through the merger at {rate:.0} records/s");
    let heartbeats = adpipe_runtime::heartbeat::HeartbeatPublisher::start(
        adpipe_runtime::heartbeat::HeartbeatSettings {
            bootstrap_servers: bootstrap.to_owned(),
            topics: dc_inputs.clone(),
            interval: Duration::from_millis(100),
            grace: Duration::from_millis(20),
        },
    )
    .map_err(|error| error.to_string())?;
    let mut live_merger = Service::spawn("merger", &merger_binary, &merger_config(ROUNDS, "5s")?)?;
    live_merger.run_backlog(
        bootstrap,
        &format!("{prefix}-merger{ROUNDS}"),
        &dc_input_refs,
        service::topic_end(bootstrap, &dc_inputs[0])?
            + service::topic_end(bootstrap, &dc_inputs[1])?,
    )?;
    let latency_merger = latency::run(
        bootstrap,
        &publisher,
        Arc::clone(&codec),
        latency_events(9),
        &dc_input,
        &dc_inputs[0],
        &merged_outs[ROUNDS],
        rate,
        args.latency_duration,
    )?;
    live_merger.stop()?;
    heartbeats.stop();
    // Live unique events to the joiner's three inputs, each with heartbeats
    // as the deduplicators upstream send them: a click is joined once no
    // input may still deliver an earlier record.
    let latency_joiner = if runs_joiner {
        eprintln!("latency through the joiner at {rate:.0} records/s");
        let heartbeats = adpipe_runtime::heartbeat::HeartbeatPublisher::start(
            adpipe_runtime::heartbeat::HeartbeatSettings {
                bootstrap_servers: bootstrap.to_owned(),
                topics: joiner_inputs.clone(),
                interval: Duration::from_millis(100),
                grace: Duration::from_millis(20),
            },
        )
        .map_err(|error| error.to_string())?;
        let mut joiner = Service::spawn("joiner", &joiner_binary, &joiner_config(0)?)?;
        let mut caught_up = 0;
        for topic in &joiner_inputs {
            caught_up += service::topic_end(bootstrap, topic)?;
        }
        joiner.run_backlog(
            bootstrap,
            &format!("{prefix}-joiner0"),
            &joiner_input_refs,
            caught_up,
        )?;
        let unique: Vec<_> = latency_events(10)
            .into_iter()
            .filter(|publication| !publication.duplicate)
            .collect();
        let to_joiner_input = |publication: &adpipe_loadtest::Publication| {
            joiner_inputs[match publication.event.kind() {
                adpipe_events::EventKind::Impression => 0,
                adpipe_events::EventKind::Click => 1,
                _ => 2,
            }]
            .clone()
        };
        let run = latency::run(
            bootstrap,
            &publisher,
            Arc::clone(&codec),
            unique,
            &to_joiner_input,
            &joiner_inputs[1],
            &joiner_outs[0][0],
            rate,
            args.latency_duration,
        )?;
        joiner.stop()?;
        heartbeats.stop();
        Some(run)
    } else {
        None
    };

    // 5. State bytes per key.
    let state_keys_measured = truth.uniques();
    let state_bytes_per_key_in_memory = state_bytes_per_key(state_keys_measured);
    let changelog_bytes_per_key_on_disk =
        topic_bytes_on_disk(changelogs.last().map_or("", String::as_str)) as f64
            / truth.uniques() as f64;
    registry.stop().await;

    report.phases = Some(Phases {
        latency_passthrough,
        latency_deduplicator,
        latency_merger,
        latency_joiner,
        deduplicator_latency_phase_peak_rss_mib: mib(deduplicator_latency_phase_peak_rss_kb),
        state_bytes_per_key_in_memory,
        state_keys_measured,
        changelog_bytes_per_key_on_disk,
    });
    Ok(Outcome::Services(Box::new(report)))
}

/// CPU per record at steady state (50% to 99% of the backlog) and over
/// the whole run, beside the Kafka Streams peer.
fn print_cpu(report: &Report) {
    let mean = |runs: &[BacklogRun], field: fn(&BacklogRun) -> f64| {
        runs.iter().map(field).sum::<f64>() / runs.len().max(1) as f64
    };
    // None for a contender `--only` left out: its ratios say "not run"
    // rather than inf or NaN.
    let steady = |runs: &[BacklogRun]| {
        (!runs.is_empty()).then(|| mean(runs, |run| run.steady_cpu_seconds_per_million))
    };
    println!(
        "{:<30} {:>10} {:>10} {:>6} {:>10} {:>10} {:>8} {:>9}  steady CPU-s/1M by round",
        "CPU (steady = 50-99%)",
        "records/s",
        "CPU-s/1M",
        "cores",
        "whole run",
        "warm-up",
        "RSS MiB",
        "vs bare"
    );
    let bare = steady(&report.bare_loop);
    for (name, runs, rss) in [
        (
            "bare loop",
            &report.bare_loop,
            report.bare_loop_peak_rss_mib,
        ),
        (
            "pass-through",
            &report.passthrough,
            report.passthrough_peak_rss_mib,
        ),
        (
            "Kafka Streams pass-through",
            &report.kstreams_passthrough,
            report.kstreams_passthrough_peak_rss_mib,
        ),
        (
            "deduplicator",
            &report.deduplicator,
            report.deduplicator_peak_rss_mib,
        ),
        (
            "Kafka Streams dedup",
            &report.kstreams_dedup,
            report.kstreams_dedup_peak_rss_mib,
        ),
        (
            "deduplicator, 1% poison",
            &report.deduplicator_poisoned,
            report.deduplicator_poisoned_peak_rss_mib,
        ),
        ("merger (2 DCs)", &report.merger, report.merger_peak_rss_mib),
        (
            "joiner (3 inputs aligned)",
            &report.joiner,
            report.joiner_peak_rss_mib,
        ),
    ] {
        if runs.is_empty() {
            continue;
        }
        let rounds: Vec<String> = runs
            .iter()
            .map(|run| format!("{:.2}", run.steady_cpu_seconds_per_million))
            .collect();
        println!(
            "{name:<30} {:>10.0} {:>10.2} {:>6.2} {:>10.2} {:>10.2} {rss:>8.0} {:>9}  {}",
            mean(runs, |run| run.steady_records_per_sec),
            steady(runs).unwrap_or_default(),
            mean(runs, |run| run.steady_cores_busy),
            mean(runs, |run| run.cpu_seconds_per_million),
            mean(runs, |run| run.warmup_cpu_seconds_per_million),
            ratio(steady(runs), bare, 2, "x"),
            rounds.join(" ")
        );
    }
    let passthrough = steady(&report.passthrough);
    println!(
        "records per CPU-second vs Kafka Streams (steady): pass-through {}, deduplicator {}; pass-through vs bare loop {}; deduplicator costs {} the pass-through",
        ratio(steady(&report.kstreams_passthrough), passthrough, 2, "x"),
        ratio(
            steady(&report.kstreams_dedup),
            steady(&report.deduplicator),
            2,
            "x"
        ),
        ratio(bare.map(|bare| bare * 100.0), passthrough, 0, "%"),
        ratio(steady(&report.deduplicator), passthrough, 2, "x")
    );
}

/// `numerator / denominator` with `precision` decimals and `unit`, or
/// "not run" where either contender was left out (`--only`).
fn ratio(numerator: Option<f64>, denominator: Option<f64>, precision: usize, unit: &str) -> String {
    match (numerator, denominator) {
        (Some(numerator), Some(denominator)) if denominator > 0.0 => {
            format!("{:.precision$}{unit}", numerator / denominator)
        }
        _ => "not run".to_owned(),
    }
}

/// One service of the backlog rounds: how it starts, its group, inputs,
/// output and the records its output must gain; where its runs and peak
/// RSS go.
struct Contender<'a, 'r> {
    /// What `--only` calls it.
    key: &'static str,
    name: &'static str,
    launch: Launch<'a>,
    group: String,
    inputs: Vec<&'a str>,
    output: &'a str,
    expected: i64,
    runs: &'r mut Vec<BacklogRun>,
    peak_rss_kb: &'r mut u64,
}

/// How a contender of the backlog rounds starts.
enum Launch<'a> {
    /// One of adpipe's binaries with its config file.
    Binary(&'a Path, PathBuf),
    /// A job of the Kafka Streams peer.
    Peer(peer::PeerJob<'a>),
}

/// Heap bytes per remembered id of a deduplicator state holding `keys`
/// ids (from the tables' capacities, as the `adpipe_state_bytes` metric).
fn state_bytes_per_key(keys: u64) -> f64 {
    use adpipe_deduplicator::state::{DedupState, id_hash};
    let mut state = DedupState::new(86_400_000, 3_600_000);
    for n in 0..keys {
        state.check_and_insert(
            id_hash(&format!("imp-42-{n}")),
            1_763_700_000_000 + n as i64,
        );
    }
    state.heap_bytes() as f64 / state.len().max(1) as f64
}

/// Bytes of a topic's log segments in the local central cluster's data dir.
/// Bytes of the files below `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |metadata| metadata.len()),
        })
        .sum()
}

fn topic_bytes_on_disk(topic: &str) -> u64 {
    let data = repo_root().join(".adpipe/kafka/central/data");
    let Ok(entries) = std::fs::read_dir(&data) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .rsplit_once('-')
                .is_some_and(|(name, _)| name == topic)
        })
        .flat_map(|entry| {
            std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|file| file.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

fn print_report(report: &Report) {
    let kafka_in = report.kafka_producer_perf.records_per_sec;
    let kafka_out = report.kafka_consumer_perf.records_per_sec;
    let rates =
        |runs: &[BacklogRun]| -> Vec<f64> { runs.iter().map(|run| run.records_per_sec).collect() };
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let (dedup_rates, pass_rates) = (rates(&report.deduplicator), rates(&report.passthrough));
    let (bare_rates, merger_rates) = (rates(&report.bare_loop), rates(&report.merger));
    let (dedup, pass) = (mean(&dedup_rates), mean(&pass_rates));
    let (bare, merger) = (mean(&bare_rates), mean(&merger_rates));
    let joiner_rates = rates(&report.joiner);
    let joiner = mean(&joiner_rates);
    println!();
    println!(
        "adpipe-bench: {} records ({} unique), mean value {} B, one run, this machine",
        report.records, report.unique_records, report.mean_record_bytes
    );
    println!(
        "{:<46} {:>12} {:>13}  rounds",
        "throughput", "records/s", "vs bare loop"
    );
    for (name, rate, rounds) in [
        (
            "Kafka ProducerPerformance (broker, write)",
            kafka_in,
            vec![],
        ),
        (
            "Kafka ConsumerPerformance (broker, read)",
            kafka_out,
            vec![],
        ),
        ("bare librdkafka consume->produce loop", bare, bare_rates),
        ("pass-through (runtime, no logic)", pass, pass_rates),
        ("deduplicator", dedup, dedup_rates),
        ("merger (2 DCs, event-time aligned)", merger, merger_rates),
        ("joiner (3 inputs aligned)", joiner, joiner_rates),
    ] {
        let rounds: Vec<String> = rounds.iter().map(|rate| format!("{rate:.0}")).collect();
        println!(
            "{name:<46} {rate:>12.0} {:>12.2}x  {}",
            rate / bare,
            rounds.join(" ")
        );
    }
    if let Some(bytes) = report.joiner_state_bytes_per_impression {
        let what = if report.joiner_store == "disk" {
            "on disk (tables + journal)"
        } else {
            "in its snapshot file"
        };
        println!(
            "joiner state ({} store): {bytes:.0} bytes per stored impression {what}",
            report.joiner_store
        );
    }
    println!(
        "merger vs pass-through: {:.2}x; deduplicator vs pass-through: {:.2}x; joiner vs pass-through: {:.2}x",
        merger / pass,
        dedup / pass,
        joiner / pass
    );
    let steady_rate = |runs: &[BacklogRun]| {
        runs.iter()
            .map(|run| run.steady_records_per_sec)
            .sum::<f64>()
            / runs.len().max(1) as f64
    };
    println!(
        "steady state (50% to 99% of the backlog committed): merger vs pass-through {:.2}x; deduplicator {:.2}x; joiner {:.2}x",
        steady_rate(&report.merger) / steady_rate(&report.passthrough),
        steady_rate(&report.deduplicator) / steady_rate(&report.passthrough),
        steady_rate(&report.joiner) / steady_rate(&report.passthrough),
    );
    for stats in &report.stats {
        let rate = steady_rate(&stats.runs);
        let cpu = stats
            .runs
            .iter()
            .map(|run| run.steady_cpu_seconds_per_million)
            .sum::<f64>()
            / stats.runs.len().max(1) as f64;
        let totals = stats.runs.last().map_or(0, |run| run.output_records);
        println!(
            "{:<46} steady {rate:>9.0} records/s = {:.2}x pass-through, {cpu:.2} CPU-s/1M, peak RSS {:.0} MiB; {} minute rows, {totals} stats.totals records (last round); counted exactly",
            stats.name,
            rate / steady_rate(&report.passthrough).max(1.0),
            stats.peak_rss_mib,
            stats.minute_rows,
        );
    }
    if let Some(ceiling) = &report.es_ceiling {
        println!(
            "Elasticsearch's own _bulk ceiling (plain client, bulks of {}, {} in flight): {:.0} docs/s",
            ceiling.bulk, ceiling.concurrency, ceiling.docs_per_sec
        );
    }
    for loader in &report.loader {
        let rate = steady_rate(&loader.runs);
        let overall = mean(&rates(&loader.runs));
        let cpu = loader
            .runs
            .iter()
            .map(|run| run.steady_cpu_seconds_per_million)
            .sum::<f64>()
            / loader.runs.len().max(1) as f64;
        let against = match (loader.sink, &report.es_ceiling, loader.bytes_per_record) {
            ("elasticsearch", Some(ceiling), _) => {
                format!(
                    "; {:.0}% of the _bulk ceiling",
                    100.0 * overall / ceiling.docs_per_sec
                )
            }
            (_, _, Some(bytes)) => format!("; {bytes:.1} bytes per record on disk"),
            _ => String::new(),
        };
        println!(
            "{:<52} {overall:>9.0} records/s overall, steady {rate:>9.0} = {:.2}x pass-through, {cpu:.2} CPU-s/1M, peak RSS {:.0} MiB{against}; every record once in the store",
            loader.name,
            rate / steady_rate(&report.passthrough).max(1.0),
            loader.peak_rss_mib,
        );
    }
    if !report.deduplicator_poisoned.is_empty() {
        let poisoned = mean(&rates(&report.deduplicator_poisoned));
        println!(
            "deduplicator with 1% poison: {poisoned:.0} records/s, {:.2}x its rate without; all {} poison records and {} oversize outputs dead-lettered, outputs exactly the unique events",
            poisoned / dedup,
            report.poison_records,
            report.oversize_records
        );
    }
    print_cpu(report);
    if let (Some(allocations), Some(bytes)) = (
        report.passthrough_allocations_per_record,
        report.passthrough_allocated_bytes_per_record,
    ) {
        println!(
            "pass-through hot path: {allocations:.2} allocations and {bytes:.0} bytes allocated per record (Rust heap; librdkafka's own not counted)"
        );
    }
    let Some(phases) = &report.phases else {
        return;
    };
    println!(
        "peak RSS: bare loop {:.0} MiB, pass-through {:.0} MiB, merger {:.0} MiB",
        report.bare_loop_peak_rss_mib, report.passthrough_peak_rss_mib, report.merger_peak_rss_mib
    );
    println!(
        "peak RSS: deduplicator {:.0} MiB (backlog), {:.0} MiB (latency phase); pass-through {:.0} MiB",
        report.deduplicator_peak_rss_mib,
        phases.deduplicator_latency_phase_peak_rss_mib,
        report.passthrough_peak_rss_mib
    );
    let first_commits = |runs: &[BacklogRun]| -> Vec<String> {
        runs.iter()
            .map(|run| format!("{:.1} s", run.first_commit_seconds))
            .collect()
    };
    println!(
        "start to first commit: deduplicator {}, pass-through {}",
        first_commits(&report.deduplicator).join(" / "),
        first_commits(&report.passthrough).join(" / ")
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "end-to-end latency (ms)", "p50", "p99", "p99.9", "max", "records"
    );
    for (name, percentiles) in [
        (
            "pass-through phase: broker only (1 hop)",
            &phases.latency_passthrough.input,
        ),
        (
            "pass-through phase: through the service",
            &phases.latency_passthrough.output,
        ),
        (
            "deduplicator phase: broker only (1 hop)",
            &phases.latency_deduplicator.input,
        ),
        (
            "deduplicator phase: through the service",
            &phases.latency_deduplicator.output,
        ),
        (
            "merger phase: broker only (1 hop, dc1)",
            &phases.latency_merger.input,
        ),
        (
            "merger phase: through the merger (2 DCs)",
            &phases.latency_merger.output,
        ),
    ]
    .into_iter()
    .chain(phases.latency_joiner.iter().flat_map(|joiner| {
        [
            ("joiner phase: broker only (1 hop, clicks)", &joiner.input),
            ("joiner phase: click to joined click", &joiner.output),
        ]
    })) {
        println!(
            "{name:<44} {:>8} {:>8} {:>8} {:>8} {:>9}",
            percentiles.p50_ms,
            percentiles.p99_ms,
            percentiles.p999_ms,
            percentiles.max_ms,
            percentiles.records
        );
    }
    println!(
        "at {:.0} records/s target (--latency-rate, or half the deduplicator's maximum); published {:.0} and {:.0}",
        phases.latency_deduplicator.target_rate,
        phases.latency_passthrough.published_rate,
        phases.latency_deduplicator.published_rate
    );
    println!(
        "state: {:.1} bytes/key in memory ({} keys), {:.1} bytes/key of changelog on the broker's disk",
        phases.state_bytes_per_key_in_memory,
        phases.state_keys_measured,
        phases.changelog_bytes_per_key_on_disk
    );
}

#[cfg(test)]
mod tests {
    use super::ratio;

    #[test]
    fn a_ratio_with_a_contender_left_out_says_so() {
        assert_eq!(ratio(Some(3.0), Some(2.0), 2, "x"), "1.50x");
        assert_eq!(ratio(Some(250.0), Some(3.0), 0, "%"), "83%");
        assert_eq!(ratio(None, Some(2.0), 2, "x"), "not run");
        assert_eq!(ratio(Some(2.0), None, 2, "x"), "not run");
        assert_eq!(ratio(Some(2.0), Some(0.0), 2, "x"), "not run");
    }
}
