//! `adpipe console`: the pipeline in a browser. One page served by
//! actix-web — the chain drawn as a graph (DC topics → merger →
//! deduplicator → joiner → stats-counter, dispatcher, loaders → profiles),
//! each edge with its live rate and lag, each stage with its instances,
//! partitions owned, dead letters and orphans; the reconciliation per hour
//! with its differences; charts of the last five minutes — and its data as
//! JSON at `/api/state`; its process's own `/metrics` (the demo's: every
//! in-process service's). Plain HTML and JavaScript embedded in the binary:
//! no front-end build, nothing fetched from elsewhere.
//!
//! `adpipe demo` starts one over its in-process services and prints its
//! address; `adpipe console` watches a deployment: the services' own
//! `/metrics`, their consumer groups, and the reconciler's `/reconcile`.
//!
//! Contract: it only reads, so it changes nothing and needs no token; it
//! listens on loopback unless `--listen` says otherwise.

pub mod collect;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use clap::Args;

use crate::demo::chain::{ChainPlan, ProfileStore};
use crate::demo::live::StageProbe;
use crate::demo::names::Names;
use collect::{Collector, ConsoleState, Reading, Source};

/// The page.
const PAGE: &str = include_str!("page.html");

/// Where the deployment is.
#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// Where to serve the page (loopback unless said otherwise).
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    /// Central Kafka (the services' consumer groups).
    #[arg(long, env = "ADPIPE_BROKERS", default_value = "127.0.0.1:39092")]
    pub brokers: String,
    /// The DCs (their profile loaders).
    #[arg(long = "dcs", value_delimiter = ',', default_value = "dc1,dc2")]
    pub dcs: Vec<String>,
    /// A DC's own Kafka, `dc=host:port` (repeatable), where its profile
    /// loader's group is.
    #[arg(long = "dc")]
    pub dc_clusters: Vec<String>,
    /// A service instance's metrics (repeatable); default: every service's
    /// default admin port on this host (9101–9107).
    #[arg(long = "metrics")]
    pub metrics: Vec<String>,
    /// The continuous reconciler (its `/reconcile`).
    #[arg(long, default_value = "http://127.0.0.1:9107")]
    pub reconciler: String,
}

/// A running console: the collector and the server.
pub struct Console {
    address: SocketAddr,
    collector: Collector,
    server: actix_web::dev::ServerHandle,
}

impl Console {
    /// Starts reading `reading` and serving the page at `listen`.
    pub fn start(reading: Reading, listen: SocketAddr) -> anyhow::Result<Console> {
        let collector = Collector::start(reading).context("starting the console's collector")?;
        let state = collector.state();
        let server = HttpServer::new(move || {
            let state = Arc::clone(&state);
            App::new()
                .route(
                    "/",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("text/html; charset=utf-8")
                            .body(PAGE)
                    }),
                )
                .route(
                    "/livez",
                    web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                )
                // This process's metrics, as every service serves them: in
                // the demo, those of all its in-process services.
                .route(
                    "/metrics",
                    web::get().to(adpipe_runtime::telemetry::metrics_endpoint),
                )
                .route(
                    "/api/state",
                    web::get().to(move || {
                        let body = state
                            .lock()
                            .map(|state| serde_json::to_string(&*state).unwrap_or_default())
                            .unwrap_or_default();
                        async move {
                            HttpResponse::Ok()
                                .content_type("application/json")
                                .insert_header(("cache-control", "no-store"))
                                .body(body)
                        }
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .bind(listen)
        .with_context(|| format!("console: listening on {listen}"))?;
        let address = server.addrs().first().copied().unwrap_or(listen);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Console {
            address,
            collector,
            server: handle,
        })
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// Shows `reconciliation` (as `adpipe reconcile` found it).
    pub fn set_reconciliation(&self, reconciliation: serde_json::Value) {
        if let Ok(mut state) = self.collector.state().lock() {
            state.reconcile = Some(reconciliation);
        }
    }

    /// What the page shows now.
    pub fn state(&self) -> Arc<Mutex<ConsoleState>> {
        self.collector.state()
    }

    /// Stops serving and reading.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let collector = self.collector;
        let _ = tokio::task::spawn_blocking(move || collector.stop()).await;
    }
}

/// The stages of a deployment with the services' defaults: their groups
/// (`adpipe-<service>`), topics (topologies/pipeline.toml) and metrics.
pub fn deployment_stages(dcs: &[String], dc_clusters: BTreeMap<String, String>) -> Vec<StageProbe> {
    let names = Names {
        prefix: String::new(),
        dcs: dcs.to_vec(),
        dc_clusters,
        central_alias: "central".to_owned(),
    };
    let plan = ChainPlan {
        names: &names,
        bootstrap: "",
        registry_url: String::new(),
        state_dir: PathBuf::new(),
        files_dir: PathBuf::new(),
        // Present, so that their stages are drawn (their settings unused).
        postgres: Some((String::new(), String::new())),
        elasticsearch: Some((String::new(), String::new())),
        bigquery: None,
        profiles: ProfileStore::Redis(String::new()),
        joiner_wait: String::new(),
        max_idle: String::new(),
    };
    plan.services()
        .into_iter()
        .map(|service| service.probe)
        .collect()
}

/// Runs `adpipe console` until Ctrl-C or SIGTERM.
pub async fn run(args: &ConsoleArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let mut dc_clusters = BTreeMap::new();
    for entry in &args.dc_clusters {
        let (dc, bootstrap) = entry
            .split_once('=')
            .with_context(|| format!("--dc {entry:?}: expected dc=host:port"))?;
        dc_clusters.insert(dc.to_owned(), bootstrap.to_owned());
    }
    let targets = if args.metrics.is_empty() {
        (9101..=9107)
            .map(|port| format!("http://127.0.0.1:{port}/metrics"))
            .collect()
    } else {
        args.metrics.clone()
    };
    let console = Console::start(
        Reading {
            title: "adpipe".to_owned(),
            source: Source::Scrape(targets),
            probes: deployment_stages(&args.dcs, dc_clusters),
            bootstrap: args.brokers.clone(),
            reconciler: Some(args.reconciler.clone()),
        },
        args.listen,
    )?;
    writeln!(out, "console: {}", console.url())?;
    out.flush()?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    console.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `group-id` in a service's embedded defaults.
    fn default_group(defaults: &str) -> String {
        defaults
            .lines()
            .find_map(|line| line.strip_prefix("group-id = "))
            .map(|value| value.trim_matches('"').to_owned())
            .expect("a group-id in the defaults")
    }

    #[test]
    fn a_deployment_is_watched_through_the_groups_its_services_use_by_default() {
        let stages = deployment_stages(&["dc1".to_owned(), "dc2".to_owned()], BTreeMap::new());
        let group = |name: &str| {
            stages
                .iter()
                .find(|stage| stage.name == name)
                .map(|stage| stage.group.clone())
                .unwrap_or_else(|| panic!("no stage {name}"))
        };
        assert_eq!(
            group("merger"),
            default_group(adpipe_merger::config::DEFAULTS)
        );
        assert_eq!(
            group("deduplicator"),
            default_group(adpipe_deduplicator::config::DEFAULTS)
        );
        assert_eq!(
            group("joiner"),
            default_group(adpipe_joiner::config::DEFAULTS)
        );
        assert_eq!(
            group("stats-counter"),
            default_group(adpipe_stats_counter::config::DEFAULTS)
        );
        assert_eq!(
            group("dispatcher"),
            default_group(adpipe_dispatcher::config::DEFAULTS)
        );
        assert_eq!(
            group("loader (es)"),
            default_group(adpipe_loader::config::DEFAULTS)
        );
        // The compose files' profile loaders and files loader use these.
        assert_eq!(group("profiles (dc1)"), "adpipe-loader-profiles-dc1");
        assert_eq!(group("loader (files)"), "adpipe-loader-files");
        let merger = stages.iter().find(|s| s.name == "merger").expect("merger");
        assert!(
            merger.inputs.contains(&"dc1.impressions".to_owned()),
            "{:?}",
            merger.inputs
        );
    }
}
