//! `adpipe simulate`: the bidders of one or more datacenters publishing
//! impressions, clicks and conversions (RTB House's ratios, keyed by
//! user_id, with retries, cross-DC copies and late copies) to each DC's
//! cluster at a given rate, and the ground truth written to a file for
//! `adpipe check`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adpipe_codec::{Codec, value_subject};
use adpipe_events::EventKind;
use adpipe_loadtest::bidders::{Bidders, DcCluster};
use adpipe_loadtest::pace::Pacer;
use adpipe_loadtest::{GroundTruth, Simulation};
use anyhow::{Context, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::target::{ClusterMapFile, RegistryTarget};

/// Arguments of `adpipe simulate`.
#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// A datacenter to publish to: a cluster name from the cluster map, or
    /// `NAME=host:port,...`. Repeat for several DCs.
    #[arg(long = "dc", default_values_t = ["dc1".to_owned(), "dc2".to_owned()])]
    pub dcs: Vec<String>,
    /// Impressions to simulate (clicks and conversions follow the ratios).
    #[arg(long, default_value_t = 100_000)]
    pub impressions: u64,
    /// Publications per second over all DCs; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Fraction of events published twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    /// Distinct users.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Simulation seed: the same seed gives the same events (and ids).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Prefix of the topics `impressions`, `clicks`, `conversions`.
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// Where to write the ground truth (JSON).
    #[arg(long, default_value = "truth.json")]
    pub truth: PathBuf,
    #[command(flatten)]
    pub clusters: ClusterMapFile,
    #[command(flatten)]
    pub registry: RegistryTarget,
}

/// What a simulation published.
#[derive(Debug, Clone)]
pub struct SimulateReport {
    /// The truth written to the file.
    pub truth: GroundTruth,
    /// Publications per DC, in DC order.
    pub per_dc: Vec<(String, u64)>,
    /// Publications per second achieved.
    pub achieved_rate: f64,
}

impl SimulateArgs {
    /// The topic events of `kind` go to.
    pub fn topic(&self, kind: EventKind) -> String {
        format!("{}{}", self.topic_prefix, kind.plural())
    }

    fn dc_clusters(&self) -> anyhow::Result<Vec<DcCluster>> {
        if self.dcs.is_empty() {
            bail!("give at least one --dc");
        }
        self.dcs
            .iter()
            .map(|dc| {
                Ok(match dc.split_once('=') {
                    Some((name, bootstrap)) => DcCluster {
                        dc: name.to_owned(),
                        bootstrap: bootstrap.to_owned(),
                    },
                    None => DcCluster {
                        dc: dc.clone(),
                        bootstrap: self
                            .clusters
                            .bootstrap_servers(dc)
                            .context("or give --dc NAME=host:port")?,
                    },
                })
            })
            .collect()
    }
}

/// Runs the simulation, printing progress and a summary to `out`.
pub async fn run(args: &SimulateArgs, out: &mut dyn Write) -> anyhow::Result<SimulateReport> {
    let clusters = args.dc_clusters()?;
    for cluster in &clusters {
        let topics = EventKind::PUBLISHED.map(|kind| args.topic(kind));
        require_topics(&cluster.bootstrap, &topics)
            .with_context(|| format!("DC {} ({})", cluster.dc, cluster.bootstrap))?;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    let mut simulation = Simulation {
        seed: args.seed,
        impressions: args.impressions,
        dcs: clusters.iter().map(|cluster| cluster.dc.clone()).collect(),
        users: args.users,
        duplicate_rate: args.duplicate_rate,
        ..Simulation::default()
    };
    // Live event times, so windows and lags downstream see fresh events,
    // advancing with the wall clock when paced.
    simulation.follow_wall_clock(now_ms, args.rate);
    let (publications, truth) = simulation.generate();
    let codec = Codec::new(args.registry.client()?);
    let bidders = Bidders::new(&codec, &clusters, |kind| value_subject(&args.topic(kind)))
        .await
        .context("registering the event schemas")?;

    let bar = crate::progress::bar(publications.len() as u64, "publishing");
    let mut pacer = Pacer::new(Some(args.rate));
    let mut per_dc: Vec<(String, u64)> = clusters
        .iter()
        .map(|cluster| (cluster.dc.clone(), 0))
        .collect();
    // Publishing blocks while librdkafka's queue is full, and the pacer sleeps.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for publication in &publications {
            pacer.wait_turn();
            bidders.publish(publication, &args.topic(publication.event.kind()))?;
            if let Some((_, count)) = per_dc.iter_mut().find(|(dc, _)| *dc == publication.dc) {
                *count += 1;
            }
            bar.inc(1);
        }
        bidders.flush(Duration::from_secs(60))?;
        Ok(())
    })?;
    bar.finish();
    let achieved_rate = pacer.achieved_rate();
    truth
        .save(&args.truth)
        .context("writing the ground truth")?;

    writeln!(
        out,
        "published {} records ({} duplicates injected) at {achieved_rate:.0}/s: {}",
        truth.published,
        truth.duplicates,
        per_dc
            .iter()
            .map(|(dc, count)| format!("{dc} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        out,
        "ground truth: {} impressions, {} clicks, {} conversions unique -> {}",
        truth.impressions.len(),
        truth.clicks.len(),
        truth.conversions.len(),
        args.truth.display()
    )?;
    Ok(SimulateReport {
        truth,
        per_dc,
        achieved_rate,
    })
}

/// Fails with a hint when one of `topics` does not exist (brokers here do
/// not auto-create topics, and a record for a missing topic is only reported
/// as undelivered after the delivery timeout).
fn require_topics(bootstrap: &str, topics: &[String]) -> anyhow::Result<()> {
    let consumer: BaseConsumer = adpipe_kafka_client::env_client_config(bootstrap).create()?;
    // One metadata request for the whole cluster.
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching metadata")?;
    for topic in topics {
        let exists = metadata
            .topics()
            .iter()
            .any(|found| found.name() == topic && !found.partitions().is_empty());
        if !exists {
            bail!("topic {topic} does not exist (create it with `adpipe topology apply`)");
        }
    }
    Ok(())
}
