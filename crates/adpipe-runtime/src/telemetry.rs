//! Metric names (one enum, so names live in one place), the Prometheus
//! recorder, and the /metrics, /livez, /readyz endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
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
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

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
        })
        .clone()
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
/// the returned handle is stopped, and runs the recorder's upkeep on a timer.
pub fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    routes: Option<AdminRoutes>,
) -> std::io::Result<(SocketAddr, actix_web::dev::ServerHandle)> {
    let handle = install_recorder();
    if let Some(handle) = handle.clone() {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                ticks.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let server = HttpServer::new(move || {
        let metrics = handle.clone();
        let health = Arc::clone(&health);
        let routes = routes.clone();
        App::new()
            .configure(move |config| {
                if let Some(routes) = &routes {
                    routes(config);
                }
            })
            .route(
                "/metrics",
                web::get().to(move || {
                    let body = metrics.as_ref().map(PrometheusHandle::render);
                    async move {
                        HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(body.unwrap_or_default())
                    }
                }),
            )
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
