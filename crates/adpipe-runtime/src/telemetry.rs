//! Metric names (one enum, so names live in one place), the Prometheus
//! recorder, the process's own metrics (resident memory, CPU seconds,
//! threads, open files: `process_*`, as Prometheus' own clients name them),
//! and the /metrics, /livez, /readyz endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric the runtime records. Prometheus conventions: one prefix,
/// base units, `_total` for counters; never an event or user id as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Records consumed (`service`, `topic`).
    RecordsConsumed,
    /// Records produced and acknowledged (`service`, `topic`).
    RecordsProduced,
    /// Records sent to the dead-letter topic (`service`, `topic`, `reason`).
    DeadLettered,
    /// Transient failures retried (`service`, `reason`).
    Retries,
    /// Time to process one record, seconds (histogram).
    ProcessingSeconds,
    /// End-to-end latency now − event_time, seconds (histogram).
    EventLagSeconds,
    /// Consumer lag in records (`topic`, `partition`), from librdkafka statistics.
    ConsumerLag,
    /// Bytes queued for a partition's actors (`topic`, `partition`).
    QueueBytes,
    /// Partitions currently paused for backpressure.
    PausedPartitions,
    /// Entries held in state (`service`, `topic`, `partition`, `sub_partition`).
    StateEntries,
    /// Heap bytes held in state (same labels).
    StateBytes,
    /// Offset commits (`service`).
    Commits,
    /// Rebalances seen (`service`, `kind`).
    Rebalances,
    /// Partitions assigned to this instance.
    AssignedPartitions,
    /// 1 while this instance owns the partition, 0 once revoked (`topic`, `partition`).
    PartitionAssigned,
    /// Outputs the broker rejected for good, dead-lettered instead (`service`, `topic`).
    OutputsRejected,
    /// Late records (`service`, `topic`, `reason`): `out_of_order` — handed to
    /// a time-aligned step after later ones (stragglers); a service's own
    /// rule, e.g. the deduplicator's `outside_window`.
    LateRecords,
    /// How late those records were, seconds of event time (histogram, `service`).
    LatenessSeconds,
    /// Offset commits the broker refused or that timed out (`service`); retried.
    CommitFailures,
    /// Steps that panicked (`service`); the worker stops after one.
    StepPanics,
    /// Time-aligned tasks waiting for an input they were not assigned (`service`).
    IncompleteTasks,
    /// Records a restarted task found already in its output and did not
    /// emit again (`service`, `topic`).
    RecordsSkippedOnResume,
    /// Offsets the broker deleted (retention, DeleteRecords) before this
    /// service read them (`service`, `topic`, `partition`).
    RecordsDeletedUnread,
}

impl Metric {
    /// The Prometheus name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RecordsConsumed => "adpipe_records_consumed_total",
            Metric::RecordsProduced => "adpipe_records_produced_total",
            Metric::DeadLettered => "adpipe_dead_lettered_total",
            Metric::Retries => "adpipe_retries_total",
            Metric::ProcessingSeconds => "adpipe_processing_seconds",
            Metric::EventLagSeconds => "adpipe_event_lag_seconds",
            Metric::ConsumerLag => "adpipe_consumer_lag_records",
            Metric::QueueBytes => "adpipe_queue_bytes",
            Metric::PausedPartitions => "adpipe_paused_partitions",
            Metric::StateEntries => "adpipe_state_entries",
            Metric::StateBytes => "adpipe_state_bytes",
            Metric::Commits => "adpipe_commits_total",
            Metric::Rebalances => "adpipe_rebalances_total",
            Metric::AssignedPartitions => "adpipe_assigned_partitions",
            Metric::PartitionAssigned => "adpipe_partition_assigned",
            Metric::OutputsRejected => "adpipe_outputs_rejected_total",
            Metric::LateRecords => "adpipe_late_records_total",
            Metric::LatenessSeconds => "adpipe_lateness_seconds",
            Metric::CommitFailures => "adpipe_commit_failures_total",
            Metric::StepPanics => "adpipe_step_panics_total",
            Metric::IncompleteTasks => "adpipe_incomplete_tasks",
            Metric::RecordsSkippedOnResume => "adpipe_records_skipped_on_resume_total",
            Metric::RecordsDeletedUnread => "adpipe_records_deleted_unread_total",
        }
    }
}

impl Metric {
    /// Every runtime metric.
    pub const ALL: [Metric; 23] = [
        Metric::RecordsConsumed,
        Metric::RecordsProduced,
        Metric::DeadLettered,
        Metric::Retries,
        Metric::ProcessingSeconds,
        Metric::EventLagSeconds,
        Metric::ConsumerLag,
        Metric::QueueBytes,
        Metric::PausedPartitions,
        Metric::StateEntries,
        Metric::StateBytes,
        Metric::Commits,
        Metric::Rebalances,
        Metric::AssignedPartitions,
        Metric::PartitionAssigned,
        Metric::OutputsRejected,
        Metric::LateRecords,
        Metric::LatenessSeconds,
        Metric::CommitFailures,
        Metric::StepPanics,
        Metric::IncompleteTasks,
        Metric::RecordsSkippedOnResume,
        Metric::RecordsDeletedUnread,
    ];

    /// Its `# HELP` and `# TYPE`.
    pub fn described(self) -> Described {
        use MetricKind::{Counter, Gauge, Histogram};
        let (kind, help) = match self {
            Metric::RecordsConsumed => (Counter, "Records consumed."),
            Metric::RecordsProduced => {
                (Counter, "Records produced and acknowledged by the broker.")
            }
            Metric::DeadLettered => (Counter, "Records sent to the dead-letter topic, by reason."),
            Metric::Retries => (Counter, "Transient failures retried, by reason."),
            Metric::ProcessingSeconds => (Histogram, "Time to process one record, seconds."),
            Metric::EventLagSeconds => (
                Histogram,
                "Now minus the record's event time when it is processed, seconds.",
            ),
            Metric::ConsumerLag => (
                Gauge,
                "Records not yet consumed, per partition (librdkafka statistics).",
            ),
            Metric::QueueBytes => (Gauge, "Bytes queued for a partition's actors."),
            Metric::PausedPartitions => (Gauge, "Partitions paused for backpressure."),
            Metric::StateEntries => (Gauge, "Entries held in a task's state."),
            Metric::StateBytes => (Gauge, "Heap bytes held in a task's state."),
            Metric::Commits => (Counter, "Offset commits."),
            Metric::Rebalances => (Counter, "Rebalances seen, by kind (assign, revoke)."),
            Metric::AssignedPartitions => (Gauge, "Partitions assigned to this instance."),
            Metric::PartitionAssigned => (
                Gauge,
                "1 while this instance owns the partition, 0 once revoked.",
            ),
            Metric::OutputsRejected => (
                Counter,
                "Outputs the broker rejected for good, dead-lettered instead.",
            ),
            Metric::LateRecords => (Counter, "Late records, by reason."),
            Metric::LatenessSeconds => (
                Histogram,
                "How late late records were, seconds of event time.",
            ),
            Metric::CommitFailures => (Counter, "Offset commits refused or timed out (retried)."),
            Metric::StepPanics => (Counter, "Steps that panicked (the worker stops after one)."),
            Metric::IncompleteTasks => (
                Gauge,
                "Time-aligned tasks waiting for an input they were not assigned.",
            ),
            Metric::RecordsSkippedOnResume => (
                Counter,
                "Records a restarted task found already in its output and did not emit again.",
            ),
            Metric::RecordsDeletedUnread => (
                Counter,
                "Offsets the broker deleted (retention, DeleteRecords) before this service read them: lost to it.",
            ),
        };
        Described {
            name: self.name(),
            kind,
            help,
        }
    }
}

/// A metric's type, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (`_total`).
    Counter,
    /// Any value.
    Gauge,
    /// Observations in buckets (the runtime's latency histograms, which
    /// have buckets configured).
    Histogram,
    /// Observations as quantiles: what the exporter makes of any other
    /// `metrics::histogram!`.
    Summary,
}

impl MetricKind {
    fn text(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
        }
    }
}

/// A metric as /metrics declares it before its first sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    /// The Prometheus name.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its `# HELP` text.
    pub help: &'static str,
}

/// Declares `metrics` for this process: /metrics shows each one's `# HELP`
/// and `# TYPE` from now on, with no sample until the first is recorded.
/// So a fault counter (commit failures, a store's refusals) is visible — to
/// an operator reading /metrics, to the dashboards' name check — before the
/// fault. Each service declares its own where it creates them; again is a
/// no-op.
pub fn describe(metrics: &[Described]) {
    // Announced now (a no-op before the recorder is installed, whose
    // installation announces every one declared so far; twice is harmless):
    // so none is missed by a declaration racing the installation.
    register(metrics).iter().for_each(announce);
}

/// Adds `metrics` to the declared ones; returns those not declared before.
fn register(metrics: &[Described]) -> Vec<Described> {
    let mut described = DESCRIBED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    metrics
        .iter()
        .filter(|metric| described.insert(metric.name, **metric).is_none())
        .copied()
        .collect()
}

/// Gives the recorder a metric's help text (the HELP of its samples).
fn announce(metric: &Described) {
    match metric.kind {
        MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
        MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
        MetricKind::Histogram | MetricKind::Summary => {
            metrics::describe_histogram!(metric.name, metric.help)
        }
    }
}

static DESCRIBED: Mutex<BTreeMap<&'static str, Described>> = Mutex::new(BTreeMap::new());

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle). Histograms get buckets so they aggregate across
/// instances. Series never time out (see below).
pub fn install_recorder() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let processing = [
                0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ];
            let lag = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                3600.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(Metric::ProcessingSeconds.name().to_owned()),
                    &processing,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(Metric::EventLagSeconds.name().to_owned()),
                        &lag,
                    )
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(Metric::LatenessSeconds.name().to_owned()),
                        &lag,
                    )
                })
                // No idle timeout: it dropped every series not updated for
                // 5 min — a stable instance's `adpipe_assigned_partitions`,
                // the state's cap, an idle service's counters — so panels
                // emptied and alerts on them went blind. Per-partition
                // series are set to 0 when their partition or task goes.
                .and_then(|builder| builder.install_recorder())
                .map_err(|error| tracing::warn!(%error, "metrics recorder not installed"))
                .ok()
                .inspect(|handle| {
                    process_metrics().describe();
                    register(&Metric::ALL.map(Metric::described));
                    // Those declared before the recorder was there too.
                    let described: Vec<Described> = DESCRIBED
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .values()
                        .copied()
                        .collect();
                    described.iter().for_each(announce);
                    spawn_upkeep(handle.clone());
                })
        })
        .clone()
}

/// Compacts the histograms every [`UPKEEP_INTERVAL`], so their memory
/// stays flat when nobody scrapes (the exporter only does it on render):
/// one thread per process, whatever serves its /metrics (a worker, the
/// registry, the demo's console).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no metrics upkeep thread: histograms compact only when scraped");
    }
}

fn process_metrics() -> &'static metrics_process::Collector {
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// Every metric of this process in Prometheus' text format, its `process_*`
/// series read from /proc just now (they are sampled at each scrape rather
/// than on a timer, so a scrape never shows a stale RSS). None without a
/// recorder.
pub fn render() -> Option<String> {
    let handle = install_recorder()?;
    process_metrics().collect();
    let mut text = handle.render();
    // The exporter writes a family only once it has a sample; the metrics
    // declared without one yet get their HELP and TYPE lines (valid in the
    // text format: a family with no samples).
    let rendered: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let missing: String = DESCRIBED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .filter(|metric| !rendered.contains(metric.name))
        .map(|metric| {
            let (name, help, kind) = (metric.name, metric.help, metric.kind.text());
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")
        })
        .collect();
    text.push_str(&missing);
    Some(text)
}

/// `GET /metrics`: [`render`] in Prometheus' text format — the handler of
/// every admin server (a worker's, the registry's, the console's).
pub async fn metrics_endpoint() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(render().unwrap_or_default())
}

/// Liveness and readiness flags the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// The consumer joined its group and holds its assignment.
    pub ready: AtomicBool,
}

/// Routes a service adds to its admin server beside /metrics, /livez and
/// /readyz (e.g. the stats-counter's budget endpoint). Called once per
/// HTTP worker; handlers run on that worker's runtime.
pub type AdminRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// How often histograms are compacted even when nobody scrapes, so their
/// memory stays flat (metrics-exporter-prometheus only does it on render).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Serves /metrics, /livez, /readyz and the service's own `routes` until
/// the returned handle is stopped (the recorder, with its upkeep, is
/// installed on the way).
pub fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    routes: Option<AdminRoutes>,
) -> std::io::Result<(SocketAddr, actix_web::dev::ServerHandle)> {
    install_recorder();
    let server = HttpServer::new(move || {
        let health = Arc::clone(&health);
        let routes = routes.clone();
        App::new()
            .configure(move |config| {
                if let Some(routes) = &routes {
                    routes(config);
                }
            })
            .route("/metrics", web::get().to(metrics_endpoint))
            // Liveness checks only the process: failing it restarts the
            // container and triggers a rebalance, so it must not depend on Kafka.
            .route(
                "/livez",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route(
                "/readyz",
                web::get().to(move || {
                    let ready = health.ready.load(Ordering::Relaxed);
                    async move {
                        if ready {
                            HttpResponse::Ok().body("ready")
                        } else {
                            HttpResponse::ServiceUnavailable().body("not ready: no assignment yet")
                        }
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(listen)?;
    let address = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok((address, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_metric_is_named_before_its_first_sample_and_once_after() {
        let name = "adpipe_telemetry_test_declared_total";
        // Declared before the recorder exists, as a step may be made first.
        describe(&[Described {
            name,
            kind: MetricKind::Counter,
            help: "A counter of this test.",
        }]);
        let before = render().expect("a recorder");
        assert!(
            before.contains(&format!(
                "# HELP {name} A counter of this test.\n# TYPE {name} counter\n"
            )),
            "{before}"
        );
        assert!(
            !before
                .lines()
                .any(|line| line.starts_with(&format!("{name} "))),
            "no sample yet"
        );
        // Runtime metrics and the process's own are declared too.
        assert!(before.contains("# TYPE adpipe_commit_failures_total counter"));
        assert!(
            before
                .lines()
                .any(|line| line.starts_with("process_resident_memory_bytes ")),
            "RSS sampled at render"
        );

        metrics::counter!(name).increment(2);
        let after = render().expect("a recorder");
        assert_eq!(
            after.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{after}"
        );
        assert!(after.contains(&format!("{name} 2")), "{after}");
        assert!(
            after.contains(&format!("# HELP {name} A counter of this test.")),
            "the sample has its help: {after}"
        );
    }
}
