#!/usr/bin/env python3
"""Writes adpipe's Grafana dashboards (provisioned JSON) into dashboards/.

One dashboard for the whole pipeline and one per service, all on the
Prometheus data source chosen by the `datasource` variable and the scrape
jobs of infra/prometheus/prometheus.yml (`adpipe-<service>`). The JSON is
generated so that every dashboard shares the same panel layout and the same
runtime panels; `infra/grafana.sh check` regenerates it and fails when the
committed files differ, when a query does not parse (promtool) or when it
names a metric no service exports.

    python3 infra/grafana/generate.py [OUT_DIR]
"""

import json
import pathlib
import sys

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel(title, targets, unit="short", kind="timeseries"):
    """A panel: `targets` are (PromQL, legend) pairs."""
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid, title, description, panels):
    """Lays `panels` out two per row, 12 wide and 8 high."""
    for index, each in enumerate(panels):
        each["id"] = index + 1
        each["gridPos"] = {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)}
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["adpipe"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def pipeline():
    return dashboard(
        "adpipe-pipeline",
        "adpipe: the pipeline",
        "Every stage of the chain: rates, lags, latency, late records, orphans, dead letters, state, commits, reconciliation, memory and CPU.",
        [
            panel("Records consumed per second, by stage",
                  [('sum by (job) (rate(adpipe_records_consumed_total[1m]))', "{{job}}")], "rps"),
            panel("Records produced per second, by stage and topic",
                  [('sum by (job, topic) (rate(adpipe_records_produced_total[1m]))', "{{job}} → {{topic}}")], "rps"),
            panel("Consumer lag (records), by stage",
                  [('sum by (job) (adpipe_consumer_lag_records)', "{{job}}")]),
            panel("Time to catch up at the current rate",
                  [('adpipe:consumer_lag_seconds:estimate', "{{job}} {{topic}}")], "s"),
            panel("End-to-end latency p99 (now − event time), by stage",
                  [('adpipe:event_lag_seconds:p99', "{{job}}")], "s"),
            panel("Late records per second",
                  [('sum by (service, reason) (rate(adpipe_late_records_total[5m]))', "{{service}} {{reason}}")], "rps"),
            panel("Orphans per second, by kind and reason",
                  [('sum by (kind, reason) (rate(adpipe_joiner_orphans_total[5m]))', "{{kind}} {{reason}}")], "rps"),
            panel("Dead-lettered per second",
                  [('sum by (service, reason) (rate(adpipe_dead_lettered_total[5m]))', "{{service}} {{reason}}")], "rps"),
            panel("State on disk against its cap",
                  [('sum by (service, store) (adpipe_state_disk_bytes)', "{{service}} {{store}}"),
                   ('sum by (service, store) (adpipe_state_cap_bytes)', "cap {{service}} {{store}}")], "bytes"),
            panel("State in memory",
                  [('sum by (job) (adpipe_state_bytes)', "{{job}}")], "bytes"),
            panel("Commits per second and commit failures",
                  [('sum by (job) (rate(adpipe_commits_total[5m]))', "{{job}}"),
                   ('sum by (service) (rate(adpipe_commit_failures_total[5m]))', "failures {{service}}")], "ops"),
            panel("Paused partitions (backpressure)",
                  [('sum by (job) (adpipe_paused_partitions)', "{{job}}")]),
            panel("Reconciliation: unexplained and explained differences",
                  [('sum by (flow, what) (adpipe_reconcile_unexplained)', "unexplained {{flow}} {{what}}"),
                   ('sum by (why) (adpipe_reconcile_explained)', "explained {{why}}")]),
            panel("Instances up",
                  [('sum by (job) (up{job=~"adpipe-.*"})', "{{job}}")]),
            panel("Resident memory (RSS), by stage",
                  [('sum by (job) (process_resident_memory_bytes{job=~"adpipe-.*"})', "{{job}}")], "bytes"),
            panel("CPU cores busy, by stage",
                  [('sum by (job) (rate(process_cpu_seconds_total{job=~"adpipe-.*"}[5m]))', "{{job}}")]),
        ],
    )


def runtime_panels(job):
    """What every service has: the worker runtime's metrics."""
    sel = f'job="{job}"'
    return [
        panel("Records consumed per second, by topic",
              [(f'sum by (topic) (rate(adpipe_records_consumed_total{{{sel}}}[1m]))', "{{topic}}")], "rps"),
        panel("Records produced per second, by topic",
              [(f'sum by (topic) (rate(adpipe_records_produced_total{{{sel}}}[1m]))', "{{topic}}")], "rps"),
        panel("Consumer lag (records), by topic and partition",
              [(f'sum by (topic, partition) (adpipe_consumer_lag_records{{{sel}}})', "{{topic}}/{{partition}}")]),
        panel("Processing time p99 and end-to-end latency p99",
              [(f'histogram_quantile(0.99, sum by (le) (rate(adpipe_processing_seconds_bucket{{{sel}}}[5m])))', "processing"),
               (f'histogram_quantile(0.99, sum by (le) (rate(adpipe_event_lag_seconds_bucket{{{sel}}}[5m])))', "now − event time")], "s"),
        panel("Queued bytes and paused partitions",
              [(f'sum by (instance) (adpipe_queue_bytes{{{sel}}})', "queued {{instance}}"),
               (f'sum by (instance) (adpipe_paused_partitions{{{sel}}})', "paused {{instance}}")]),
        panel("Partitions assigned, rebalances",
              [(f'sum by (instance) (adpipe_assigned_partitions{{{sel}}})', "{{instance}}"),
               (f'sum by (kind) (increase(adpipe_rebalances_total{{{sel}}}[5m]))', "rebalances {{kind}}")]),
        panel("Retries and dead letters per second",
              [(f'sum by (reason) (rate(adpipe_retries_total{{{sel}}}[5m]))', "retry {{reason}}"),
               (f'sum by (reason) (rate(adpipe_dead_lettered_total{{{sel}}}[5m]))', "dead letter {{reason}}"),
               (f'sum (rate(adpipe_outputs_rejected_total{{{sel}}}[5m]))', "outputs rejected")], "rps"),
        panel("Commits per second and failures",
              [(f'sum (rate(adpipe_commits_total{{{sel}}}[5m]))', "commits"),
               (f'sum (rate(adpipe_commit_failures_total{{{sel}}}[5m]))', "failures")], "ops"),
        panel("Records the broker deleted before they were read (lost), per hour",
              [(f'sum by (topic, partition) (increase(adpipe_records_deleted_unread_total{{{sel}}}[1h]))', "{{topic}}/{{partition}}")]),
        panel("Resident memory (RSS), by instance",
              [(f'sum by (instance) (process_resident_memory_bytes{{{sel}}})', "{{instance}}")], "bytes"),
        panel("CPU cores busy, by instance",
              [(f'sum by (instance) (rate(process_cpu_seconds_total{{{sel}}}[5m]))', "{{instance}}")]),
    ]


# Per service: (job, title, its own panels).
SERVICES = [
    ("merger", "adpipe: merger", [
        panel("Late records (stragglers) and how late",
              [('sum by (topic) (rate(adpipe_late_records_total{job="adpipe-merger"}[5m]))', "{{topic}}"),
               ('histogram_quantile(0.99, sum by (le) (rate(adpipe_lateness_seconds_bucket{job="adpipe-merger"}[5m])))', "p99 lateness (s)")]),
        panel("Records skipped on resume (already merged)",
              [('sum by (topic) (increase(adpipe_records_skipped_on_resume_total{job="adpipe-merger"}[5m]))', "{{topic}}")]),
    ]),
    ("deduplicator", "adpipe: deduplicator", [
        panel("Outside the window (passed undeduplicated)",
              [('sum by (topic) (rate(adpipe_late_records_total{job="adpipe-deduplicator",reason="outside_window"}[5m]))', "{{topic}}")], "rps"),
        panel("Seen ids held and their memory",
              [('sum by (topic) (adpipe_state_entries{job="adpipe-deduplicator"})', "{{topic}}"),
               ('sum (adpipe_state_bytes{job="adpipe-deduplicator"})', "bytes")]),
        panel("Records not emitted again after a restart",
              [('sum by (topic) (increase(adpipe_records_skipped_on_resume_total{job="adpipe-deduplicator"}[5m]))', "{{topic}}")]),
    ]),
    ("joiner", "adpipe: joiner", [
        panel("Joins per second",
              [('sum by (kind, attribution) (rate(adpipe_joiner_joins_total{job="adpipe-joiner"}[5m]))', "{{kind}} by {{attribution}}")], "rps"),
        panel("Orphans per second",
              [('sum by (kind, reason) (rate(adpipe_joiner_orphans_total{job="adpipe-joiner"}[5m]))', "{{kind}} {{reason}}")], "rps"),
        panel("Waiting for a partner",
              [('sum (adpipe_joiner_waiting{job="adpipe-joiner"})', "waiting")]),
        panel("Stores on disk against their caps",
              [('sum by (store) (adpipe_state_disk_bytes{job="adpipe-joiner"})', "{{store}}"),
               ('sum by (store) (adpipe_state_cap_bytes{job="adpipe-joiner"})', "cap {{store}}")], "bytes"),
        panel("Buckets expired and evicted, restores",
              [('sum by (store) (increase(adpipe_state_expired_buckets_total{job="adpipe-joiner"}[1h]))', "expired {{store}}"),
               ('sum by (store) (increase(adpipe_state_evicted_buckets_total{job="adpipe-joiner"}[1h]))', "evicted {{store}}"),
               ('sum (increase(adpipe_state_restores_total{job="adpipe-joiner"}[1h]))', "restores")]),
        panel("Impression conflicts, records not emitted again",
              [('sum (increase(adpipe_joiner_conflicts_total{job="adpipe-joiner"}[1h]))', "conflicts"),
               ('sum by (topic) (increase(adpipe_records_skipped_on_resume_total{job="adpipe-joiner"}[1h]))', "skipped on resume {{topic}}")]),
    ]),
    ("stats-counter", "adpipe: stats-counter", [
        panel("Corrections (late events into closed buckets)",
              [('sum (rate(adpipe_stats_corrections_total{job="adpipe-stats-counter"}[5m]))', "corrections")], "rps"),
    ]),
    ("dispatcher", "adpipe: dispatcher", [
        panel("Events routed to other DCs",
              [('sum by (dc) (rate(adpipe_dispatcher_routed_total{job="adpipe-dispatcher"}[5m]))', "{{dc}}")], "rps"),
    ]),
    ("loader", "adpipe: loader", [
        panel("Records written per second, by sink",
              [('sum by (sink) (rate(adpipe_loader_records_total{job="adpipe-loader"}[1m]))', "{{sink}}")], "rps"),
        panel("Batch write time p99",
              [('max by (sink) (adpipe_loader_write_seconds{job="adpipe-loader",quantile="0.99"})', "{{sink}}")], "s"),
        panel("Write failures and refusals",
              [('sum by (sink, kind) (rate(adpipe_loader_write_failures_total{job="adpipe-loader"}[5m]))', "failed {{sink}} {{kind}}"),
               ('sum by (sink, reason) (rate(adpipe_loader_refused_total{job="adpipe-loader"}[5m]))', "refused {{sink}} {{reason}}"),
               ('sum by (sink) (rate(adpipe_loader_item_retries_total{job="adpipe-loader"}[5m]))', "item retries {{sink}}")], "rps"),
        panel("File bytes written",
              [('sum (rate(adpipe_loader_file_bytes_total{job="adpipe-loader"}[5m]))', "bytes/s")], "Bps"),
    ]),
    ("reconciler", "adpipe: reconciler", [
        panel("Unexplained differences",
              [('sum by (flow, what) (adpipe_reconcile_unexplained{job="adpipe-reconciler"})', "{{flow}} {{what}}")]),
        panel("Explained differences",
              [('sum by (why) (adpipe_reconcile_explained{job="adpipe-reconciler"})', "{{why}}")]),
        panel("Since the last successful check",
              [('time() - max(adpipe_reconcile_last_success_timestamp_seconds{job="adpipe-reconciler"})', "age")], "s"),
        panel("Check duration, closed hours",
              [('max(adpipe_reconcile_duration_seconds{job="adpipe-reconciler"})', "duration (s)"),
               ('max(adpipe_reconcile_closed_hours{job="adpipe-reconciler"})', "closed hours")]),
    ]),
]


def registry():
    sel = 'job="adpipe-schema-registry"'
    return dashboard(
        "adpipe-schema-registry",
        "adpipe: schema registry",
        "The schema registry: requests by access and status, latency, memory and CPU.",
        [
            panel("Requests per second, by access and status",
                  [(f'sum by (access, status) (rate(adpipe_registry_requests_total{{{sel}}}[5m]))', "{{access}} {{status}}")], "rps"),
            panel("Request time p99, by access",
                  [(f'max by (access) (adpipe_registry_request_seconds{{{sel},quantile="0.99"}})', "{{access}}")], "s"),
            panel("Instances up",
                  [(f'sum (up{{{sel}}})', "up")]),
            panel("Resident memory (RSS) and CPU cores busy, by instance",
                  [(f'sum by (instance) (process_resident_memory_bytes{{{sel}}})', "RSS {{instance}}"),
                   (f'sum by (instance) (rate(process_cpu_seconds_total{{{sel}}}[5m]))', "cores {{instance}}")]),
        ],
    )


def dashboards():
    yield "pipeline.json", pipeline()
    yield "schema-registry.json", registry()
    for name, title, own in SERVICES:
        job = f"adpipe-{name}"
        panels = own + runtime_panels(job)
        yield f"{name}.json", dashboard(
            job, title, f"The {name}: its own metrics first, then the worker runtime's.", panels
        )


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "dashboards"
    out.mkdir(parents=True, exist_ok=True)
    for file_name, content in dashboards():
        (out / file_name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
