//! The continuous reconciler: every `interval`, the hours within
//! `lookback` that are closed (their end `close-after` behind every DC's
//! heartbeat watermark — [`crate::watermarks`] — or, configured so, behind
//! the wall clock) are reconciled again; the differences become metrics and the
//! last result is served as JSON at `/reconcile`. An hour whose holdings
//! changed since the previous check (late data arrived) counts as
//! re-checked. So a loss shows as `adpipe_reconcile_unexplained > 0`
//! within `close-after` + `interval` of its hour's end.
//!
//! Metrics: `adpipe_reconcile_unexplained{flow,what}` and
//! `adpipe_reconcile_explained{flow,why}` (events, over the closed hours
//! of the lookback), `adpipe_reconcile_closed_hours`,
//! `adpipe_reconcile_rechecked_hours_total`, `adpipe_reconcile_runs_total{result}`,
//! `adpipe_reconcile_last_success_timestamp_seconds`,
//! `adpipe_reconcile_duration_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use adpipe_runtime::telemetry::{AdminRoutes, Described, Health, MetricKind};

use crate::config::CloseBy;
use crate::ledger::{Bucket, HOUR_MS, Kind};
use crate::report::{Holding, Reconciliation};
use crate::{ReconcileSettings, Span, reconcile};

/// The label values of an explanation: its first words.
fn why(explanation: &str) -> &str {
    if explanation.starts_with("dead-lettered") {
        "dead-lettered"
    } else if explanation.starts_with("in flight") {
        "in flight"
    } else if explanation.starts_with("copies") {
        "copies"
    } else {
        "other"
    }
}

/// The hours `[from, to)` closed when the clock says `now_ms` and the
/// watermarks (or the clock) `until_ms`: within `lookback` of now, ended
/// `close_after` before `until_ms`. None when no hour is closed yet.
pub fn closed_hours(
    now_ms: i64,
    until_ms: i64,
    lookback: Duration,
    close_after: Duration,
) -> Option<(i64, i64)> {
    let floor = |ms: i64| ms - ms.rem_euclid(HOUR_MS);
    let from = floor(now_ms - lookback.as_millis() as i64);
    let to = floor(until_ms - close_after.as_millis() as i64);
    (to > from).then_some((from, to))
}

/// Where the closed hours end now: the clock, or the slowest DC's
/// heartbeat watermark (None while a DC has none); exports the
/// watermarks.
async fn closed_until(settings: &ReconcileSettings) -> Option<i64> {
    let now = adpipe_runtime::event_time::now_ms();
    if settings.close_by == CloseBy::WallClock {
        return Some(now);
    }
    let reading = settings.clone();
    let watermarks = tokio::task::spawn_blocking(move || {
        crate::watermarks::dc_watermarks(&reading, reading.heartbeat_scan)
    })
    .await;
    let watermarks = match watermarks {
        Ok(Ok(watermarks)) => watermarks,
        Ok(Err(error)) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "reading the DCs' heartbeats failed"
            );
            return None;
        }
        Err(_) => return None,
    };
    let mut without = 0;
    for (dc, watermark) in &watermarks {
        match watermark {
            Some(ms) => metrics::gauge!("adpipe_reconcile_watermark_seconds", "dc" => dc.clone())
                .set(*ms as f64 / 1000.0),
            None => without += 1,
        }
    }
    metrics::gauge!("adpipe_reconcile_dcs_without_heartbeat").set(f64::from(without));
    crate::watermarks::closed_until(&watermarks)
}

/// The reconciler's metrics, declared at the start so /metrics names them
/// before the first run (and before the first difference).
const METRICS: [Described; 9] = [
    Described {
        name: "adpipe_reconcile_unexplained",
        kind: MetricKind::Gauge,
        help: "Events of an unexplained difference over the closed hours, by flow and what.",
    },
    Described {
        name: "adpipe_reconcile_explained",
        kind: MetricKind::Gauge,
        help: "Events of an explained difference over the closed hours, by flow and why.",
    },
    Described {
        name: "adpipe_reconcile_closed_hours",
        kind: MetricKind::Gauge,
        help: "Closed hours reconciled in the last run.",
    },
    Described {
        name: "adpipe_reconcile_rechecked_hours_total",
        kind: MetricKind::Counter,
        help: "Hours checked again because late data changed them.",
    },
    Described {
        name: "adpipe_reconcile_runs_total",
        kind: MetricKind::Counter,
        help: "Reconciliation runs, by result (ok, failed).",
    },
    Described {
        name: "adpipe_reconcile_last_success_timestamp_seconds",
        kind: MetricKind::Gauge,
        help: "When the last run succeeded, Unix seconds.",
    },
    Described {
        name: "adpipe_reconcile_duration_seconds",
        kind: MetricKind::Gauge,
        help: "How long the last run took, seconds.",
    },
    Described {
        name: "adpipe_reconcile_watermark_seconds",
        kind: MetricKind::Gauge,
        help: "Each DC's heartbeat watermark, Unix seconds.",
    },
    Described {
        name: "adpipe_reconcile_dcs_without_heartbeat",
        kind: MetricKind::Gauge,
        help: "DCs with no heartbeat read yet.",
    },
];

/// A reconciler's metrics across its runs: what they last said, so label
/// sets that went quiet drop to 0. The demo records its one run with it
/// too, so its /metrics is a deployment's.
pub struct RunMetrics {
    unexplained: BTreeSet<(String, String)>,
    explained: BTreeSet<(String, String)>,
    holdings: BTreeMap<(Bucket, Kind), Vec<Holding>>,
}

impl Default for RunMetrics {
    fn default() -> Self {
        adpipe_runtime::telemetry::describe(&METRICS);
        RunMetrics {
            unexplained: BTreeSet::new(),
            explained: BTreeSet::new(),
            holdings: BTreeMap::new(),
        }
    }
}

impl RunMetrics {
    /// Records one run: its result (None: it failed) and how long it took.
    pub fn record(&mut self, result: Option<&Reconciliation>, took: Duration) {
        match result {
            Some(result) => {
                self.publish(result);
                metrics::counter!("adpipe_reconcile_runs_total", "result" => "ok").increment(1);
                metrics::gauge!("adpipe_reconcile_last_success_timestamp_seconds")
                    .set(adpipe_runtime::event_time::now_ms() as f64 / 1000.0);
            }
            None => {
                metrics::counter!("adpipe_reconcile_runs_total", "result" => "failed").increment(1)
            }
        }
        metrics::gauge!("adpipe_reconcile_duration_seconds").set(took.as_secs_f64());
    }

    fn publish(&mut self, result: &Reconciliation) {
        let mut unexplained: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut explained: BTreeMap<(String, String), i64> = BTreeMap::new();
        for difference in &result.differences {
            let (map, label) = match &difference.explanation {
                None => (&mut unexplained, difference.what.clone()),
                Some(explanation) => (&mut explained, why(explanation).to_owned()),
            };
            *map.entry((difference.flow.clone(), label)).or_default() += difference.count.abs();
        }
        for key in std::mem::take(&mut self.unexplained) {
            unexplained.entry(key).or_default();
        }
        for key in std::mem::take(&mut self.explained) {
            explained.entry(key).or_default();
        }
        for ((flow, what), count) in unexplained {
            metrics::gauge!("adpipe_reconcile_unexplained", "flow" => flow.clone(), "what" => what.clone())
                .set(count as f64);
            self.unexplained.insert((flow, what));
        }
        for ((flow, why), count) in explained {
            metrics::gauge!("adpipe_reconcile_explained", "flow" => flow.clone(), "why" => why.clone())
                .set(count as f64);
            self.explained.insert((flow, why));
        }
        let hours: BTreeSet<Bucket> = result.rows.iter().map(|row| row.bucket).collect();
        metrics::gauge!("adpipe_reconcile_closed_hours").set(hours.len() as f64);
        // An hour checked before whose holdings changed: late data arrived.
        let holdings: BTreeMap<(Bucket, Kind), Vec<Holding>> = result
            .rows
            .iter()
            .map(|row| ((row.bucket, row.kind), row.holdings.clone()))
            .collect();
        let rechecked: BTreeSet<Bucket> = holdings
            .iter()
            .filter(|(key, now)| self.holdings.get(key).is_some_and(|before| before != *now))
            .map(|((bucket, _), _)| *bucket)
            .collect();
        metrics::counter!("adpipe_reconcile_rechecked_hours_total")
            .increment(rechecked.len() as u64);
        self.holdings = holdings;
    }
}

/// Its admin address could not be bound (a port in use): a setting that
/// cannot work, so the binary exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListenError(String);

/// Serves the continuous reconciler until `stop` resolves.
pub async fn serve(
    settings: ReconcileSettings,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let last: Arc<Mutex<Option<Reconciliation>>> = Arc::new(Mutex::new(None));
    let routes: AdminRoutes = {
        let last = Arc::clone(&last);
        Arc::new(move |config: &mut web::ServiceConfig| {
            let last = Arc::clone(&last);
            config.route(
                "/reconcile",
                web::get().to(move || {
                    let body = last
                        .lock()
                        .map(|last| serde_json::to_string(&*last).unwrap_or_default())
                        .unwrap_or_default();
                    async move {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(body)
                    }
                }),
            );
        })
    };
    let health = Arc::new(Health::default());
    let (address, http) =
        adpipe_runtime::telemetry::serve(settings.listen, Arc::clone(&health), Some(routes))
            .map_err(|error| ListenError(format!("http.listen {}: {error}", settings.listen)))?;
    tracing::info!(%address, "reconciler serving /metrics and /reconcile");
    health
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut run_metrics = RunMetrics::default();
    tokio::pin!(stop);
    loop {
        let closed = closed_until(&settings).await.and_then(|until| {
            closed_hours(
                adpipe_runtime::event_time::now_ms(),
                until,
                settings.lookback,
                settings.close_after,
            )
        });
        if let Some((from, to)) = closed {
            let started = Instant::now();
            let span = Span {
                from,
                to,
                slack_ms: settings.slack.as_millis() as i64,
            };
            match reconcile(&settings, span).await {
                Ok(result) => {
                    run_metrics.record(Some(&result), started.elapsed());
                    let unexplained = result.unexplained().count();
                    if unexplained > 0 {
                        tracing::warn!(unexplained, "unexplained differences: see /reconcile");
                    }
                    if let Ok(mut last) = last.lock() {
                        *last = Some(result);
                    }
                }
                Err(error) => {
                    run_metrics.record(None, started.elapsed());
                    tracing::error!(error = format!("{error:#}"), "reconciliation failed");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            () = &mut stop => break,
        }
    }
    http.stop(true).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_is_closed_once_its_end_is_close_after_behind() {
        let lookback = Duration::from_secs(3 * 3600);
        let close_after = Duration::from_secs(600);
        // 10:05: 09:00–10:00 ended 5 min ago, not closed yet.
        let now = 10 * HOUR_MS + 5 * 60_000;
        assert_eq!(
            closed_hours(now, now, lookback, close_after),
            Some((7 * HOUR_MS, 9 * HOUR_MS))
        );
        // 10:10: now it is.
        let now = 10 * HOUR_MS + 10 * 60_000;
        assert_eq!(
            closed_hours(now, now, lookback, close_after),
            Some((7 * HOUR_MS, 10 * HOUR_MS))
        );
        assert_eq!(
            closed_hours(now, now, Duration::from_secs(60), close_after),
            None
        );
        // The watermarks lag the clock: 08:00–09:00 is the last closed.
        let watermark = 9 * HOUR_MS + 5 * 60_000;
        assert_eq!(
            closed_hours(now, watermark, lookback, close_after),
            Some((7 * HOUR_MS, 8 * HOUR_MS))
        );
    }
}
