#!/usr/bin/env bash
# The full test suite, against real parts. On a fresh machine with only the
# toolchains it installs what it needs (Kafka jars, Elasticsearch and
# avro-tools via mvn, Python packages (bqemulator too) in venvs, PostgreSQL
# and Redis from Debian's packages), starts the local KRaft clusters,
# MirrorMaker 2, PostgreSQL, Elasticsearch, Redis, the BigQuery emulator
# and adpipe's schema registry, runs every check (the last: the chaos run
# over the whole chain, loadtest/chaos.sh), and stops what it started.
#
#   infra/test-all.sh            everything
#   ADPIPE_KEEP_RUNNING=1 ...    leave this run's clusters running afterwards
#
# It never reuses servers that already run (a developer's clusters, a
# previous run's): it starts its own clusters on free loopback ports with
# their own data directory (.adpipe/test-all/), writes their map to
# .adpipe/test-all/clusters.toml (ADPIPE_CLUSTERS_FILE for every tool and
# test), and stops them at the end. So a warm machine and a fresh one run
# the same checks against the same empty clusters.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ADPIPE_STATE_DIR="$repo/.adpipe/test-all"
export ADPIPE_CLUSTERS_FILE="$ADPIPE_STATE_DIR/clusters.toml"
source "$repo/infra/lib.sh"
cd "$REPO_DIR"
venv="$REPO_DIR/.adpipe/venv"

# Each step logs the free disk too: a CI machine's disk may be small, and a
# full disk shows up as an odd failure (the linker dying with SIGBUS).
step() { log "== $* ($(date +%T), $(df -h --output=avail . | tail -n 1 | tr -d ' ') free)"; }
# A one-shot build gains nothing from incremental caches; they only take disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
started_at=$(date +%s)
cleanup() {
  local status=$?
  [ -n "${registry_pid:-}" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  if [ "${clusters_started:-0}" = 1 ] && [ "${ADPIPE_KEEP_RUNNING:-0}" != 1 ]; then
    "$INFRA_DIR/mirrormaker.sh" stop || true
    ADPIPE_MM2_CENTRAL=secure "$INFRA_DIR/mirrormaker.sh" stop || true
    "$INFRA_DIR/kafka.sh" stop || true
  fi
  if [ "${pg_started:-0}" = 1 ] && [ "${ADPIPE_KEEP_RUNNING:-0}" != 1 ]; then
    "$INFRA_DIR/postgres.sh" stop || true
  fi
  if [ "${es_started:-0}" = 1 ] && [ "${ADPIPE_KEEP_RUNNING:-0}" != 1 ]; then
    "$INFRA_DIR/elasticsearch.sh" stop || true
  fi
  if [ "${redis_started:-0}" = 1 ] && [ "${ADPIPE_KEEP_RUNNING:-0}" != 1 ]; then
    "$INFRA_DIR/redis.sh" stop || true
  fi
  if [ "${bq_started:-0}" = 1 ] && [ "${ADPIPE_KEEP_RUNNING:-0}" != 1 ]; then
    "$INFRA_DIR/bigquery.sh" stop || true
  fi
  log "disk: target/ $(du -sh target 2>/dev/null | cut -f1), $(df -h --output=avail . | tail -n 1 | tr -d ' ') free"
  log "finished with status $status after $(( $(date +%s) - started_at )) s"
  exit $status
}
trap cleanup EXIT

step "toolchain"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
rustup component list --installed 2>/dev/null | grep '^rustfmt' >/dev/null || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep '^clippy' >/dev/null || rustup component add clippy

step "format"
cargo fmt --all --check

step "build"
cargo build --workspace --all-targets --locked

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the Aerospike backends (feature aerospike: the state store, the profile store and its reconciliation): clippy, and their tests, which run only where AEROSPIKE_HOSTS names a server"
cargo clippy -p adpipe-state -p adpipe-joiner -p adpipe-loader -p adpipe-reconciler --features adpipe-state/aerospike,adpipe-joiner/aerospike,adpipe-loader/aerospike,adpipe-reconciler/aerospike --all-targets --locked -- -D warnings
# Without a server the tests are only compiled (the clippy above, all
# targets): building them to print SKIPPED cost a cold run ~3 minutes.
if [ -n "${AEROSPIKE_HOSTS:-}" ]; then
  cargo test -p adpipe-state --features aerospike --locked --test conformance aerospike
  cargo test -p adpipe-loader --features aerospike --locked --test aerospike_profiles
else
  log "SKIPPED: the Aerospike tests (adpipe-state conformance, the loader's aerospike_profiles, the reconciler's aerospike) — AEROSPIKE_HOSTS is not set, no Aerospike server was tested"
fi

step "prometheus rules (promtool check + unit tests) and grafana dashboards (static checks)"
"$INFRA_DIR/prometheus.sh" check
"$INFRA_DIR/grafana.sh" check

step "docker: the compose files as Docker Compose loads them, against the binaries; the Dockerfile (hadolint); a self-test"
"$INFRA_DIR/docker.sh" check

step "kafka clusters of this run (own ports, own data: $ADPIPE_STATE_DIR)"
# A previous run that was killed may have left its servers running there.
if [ -f "$ADPIPE_CLUSTERS_FILE" ]; then
  "$INFRA_DIR/mirrormaker.sh" stop || true
  ADPIPE_MM2_CENTRAL=secure "$INFRA_DIR/mirrormaker.sh" stop || true
  "$INFRA_DIR/kafka.sh" stop || true
fi
rm -rf "$ADPIPE_STATE_DIR"; mkdir -p "$ADPIPE_STATE_DIR"
write_free_port_cluster_map "$INFRA_DIR/clusters.toml" > "$ADPIPE_CLUSTERS_FILE"
# The scripts read the map in pipelines such as `clusters | grep -q NAME`;
# under pipefail a reader that stops early must not fail the pipeline (a CI
# run's chaos step once died of that: mirrormaker.sh found no cluster).
clusters --all name | true || die "clusters fails when its reader stops early"
clusters_started=1
"$INFRA_DIR/kafka.sh" start
# The cluster that takes clients over SASL_SSL only (certificates and a
# password made now, for this run): the TLS/SASL tests.
"$INFRA_DIR/kafka.sh" start secure

step "postgresql of this run (own port, own data)"
ADPIPE_PG_PORT="$(free_port)"
export ADPIPE_PG_PORT
ADPIPE_PG_URL="$("$INFRA_DIR/postgres.sh" url)"
export ADPIPE_PG_URL
"$INFRA_DIR/postgres.sh" wipe
pg_started=1
"$INFRA_DIR/postgres.sh" start

step "elasticsearch of this run (own ports, own data)"
ADPIPE_ES_PORT="$(free_port)"
ADPIPE_ES_TRANSPORT_PORT="$(free_port)"
export ADPIPE_ES_PORT ADPIPE_ES_TRANSPORT_PORT
ADPIPE_ES_URL="$("$INFRA_DIR/elasticsearch.sh" url)"
export ADPIPE_ES_URL
"$INFRA_DIR/elasticsearch.sh" wipe
es_started=1
"$INFRA_DIR/elasticsearch.sh" start
"$INFRA_DIR/avro-tools.sh" jar >/dev/null
"$INFRA_DIR/pyarrow.sh" python >/dev/null

step "redis of this run (own port): the profile store"
ADPIPE_REDIS_PORT="$(free_port)"
export ADPIPE_REDIS_PORT
ADPIPE_REDIS_URL="$("$INFRA_DIR/redis.sh" url)"
export ADPIPE_REDIS_URL
redis_started=1
"$INFRA_DIR/redis.sh" start

step "the BigQuery emulator of this run (own ports)"
ADPIPE_BQ_PORT="$(free_port)"
ADPIPE_BQ_GRPC_PORT="$(free_port)"
export ADPIPE_BQ_PORT ADPIPE_BQ_GRPC_PORT
ADPIPE_BQ_URL="$("$INFRA_DIR/bigquery.sh" url)/bigquery/v2"
export ADPIPE_BQ_URL
bq_started=1
"$INFRA_DIR/bigquery.sh" start

step "topology apply (twice: the second must change nothing)"
target/debug/adpipe topology apply | tail -n 2
target/debug/adpipe topology apply | tail -n 1 | grep -q "applied 0 change(s)" || die "second topology apply was not a no-op"

step "MirrorMaker 2 between the DC clusters and central"
"$INFRA_DIR/mirrormaker.sh" start
# A second instance between the DCs and the SASL_SSL cluster (topics under
# mm2-secured- only): the CLI's secured test mirrors through it.
ADPIPE_MM2_CENTRAL=secure ADPIPE_MM2_TOPIC_PREFIX=mm2-secured- "$INFRA_DIR/mirrormaker.sh" start

step "rust tests"
# The tests' state directories, configs and files go under this run's own
# directory (TMPDIR), emptied before and removed once they pass — not ~600
# entries left in /tmp by every run.
tests_tmp="$ADPIPE_STATE_DIR/tmp"
rm -rf "$tests_tmp" && mkdir -p "$tests_tmp"
# Several test binaries at a time (infra/run-tests.py): the slow ones
# mostly wait on servers and restarted processes; run one after another
# they took 20 of this run's minutes. The few that stop a shared server
# run alone, after the others.
TMPDIR="$tests_tmp" "$INFRA_DIR/run-tests.py" -- --locked
# The reconciliation of Aerospike's profiles needs central too: here.
if [ -n "${AEROSPIKE_HOSTS:-}" ]; then
  TMPDIR="$tests_tmp" cargo test -p adpipe-reconciler --features aerospike --locked --test reconcile aerospike
fi

step "the loader's Elasticsearch sink against OpenSearch (the same _bulk API)"
(
  export ADPIPE_SEARCH=opensearch ADPIPE_ES_PORT="$(free_port)" ADPIPE_ES_TRANSPORT_PORT="$(free_port)"
  "$INFRA_DIR/elasticsearch.sh" wipe
  "$INFRA_DIR/elasticsearch.sh" start
  status=0
  # --workspace, not -p adpipe-loader: the workspace's feature set, so the
  # test built above runs as it is (with -p, 1.5 minutes of rebuilding).
  TMPDIR="$tests_tmp" ADPIPE_ES_URL="$("$INFRA_DIR/elasticsearch.sh" url)" cargo test --workspace --locked --test elasticsearch \
    || status=$?
  "$INFRA_DIR/elasticsearch.sh" stop
  exit $status
)
rm -rf "$tests_tmp"

step "demo on the embedded default (in-process Kafka, no server), and over the real DC clusters, MirrorMaker 2, central, PostgreSQL, Elasticsearch, the BigQuery emulator and Redis; the dashboards' and rules' metrics against its /metrics"
env -u ADPIPE_PG_URL target/debug/adpipe demo --events 5000 | tail -n 34
port_of() { clusters name port | awk -v name="$1" '$1 == name {print "127.0.0.1:" $2}'; }
# Its console serves the process's /metrics — every in-process service's,
# the reconciler's too — while it lingers: the dashboards and rules may
# name only metrics found there (a sample, or the HELP/TYPE each service
# declares at its start).
console_port="$(free_port)"
rm -f "$ADPIPE_STATE_DIR/demo-real.log"   # its "stays up" is the signal below
target/debug/adpipe demo --events 5000 --brokers "$(port_of central)" \
  --dc "dc1=$(port_of dc1)" --dc "dc2=$(port_of dc2)" \
  --postgres-url "$ADPIPE_PG_URL" --es-url "$ADPIPE_ES_URL" \
  --bq-url "$ADPIPE_BQ_URL" --redis-url "$ADPIPE_REDIS_URL" \
  --console "127.0.0.1:$console_port" --console-linger 20s > "$ADPIPE_STATE_DIR/demo-real.log" 2> "$ADPIPE_STATE_DIR/demo-real.err" &
demo_pid=$!
while kill -0 "$demo_pid" 2>/dev/null && ! grep -q "stays up" "$ADPIPE_STATE_DIR/demo-real.log"; do sleep 1; done
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
  "http://127.0.0.1:$console_port/metrics" > "$ADPIPE_STATE_DIR/demo-metrics.txt" || true
demo_status=0
wait "$demo_pid" || demo_status=$?
tail -n 48 "$ADPIPE_STATE_DIR/demo-real.log"
[ "$demo_status" -eq 0 ] || { tail -n 40 "$ADPIPE_STATE_DIR/demo-real.err" >&2; die "the demo over the real clusters failed (exit $demo_status)"; }
"$INFRA_DIR/prometheus.sh" served "$ADPIPE_STATE_DIR/demo-metrics.txt" \
  infra/grafana/dashboards/*.json infra/prometheus/rules/*.yml

step "the console in a real browser: headless Chromium (Debian) driven by Playwright (PyPI) over a demo run"
"$INFRA_DIR/chromium.sh" install
env -u ADPIPE_PG_URL ADPIPE_BIN="$REPO_DIR/target/debug/adpipe" \
  ADPIPE_CONSOLE_SCREENSHOT="$ADPIPE_STATE_DIR/console.png" \
  "$("$INFRA_DIR/chromium.sh" python)" -m pytest -q -s tests/console
log "console screenshots (CI artefacts): $ADPIPE_STATE_DIR/console-live.png, $ADPIPE_STATE_DIR/console.png"

step "python interoperability (Confluent's client)"
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s tests/interop/requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
  cp tests/interop/requirements.txt "$venv/requirements.txt"
fi
central="127.0.0.1:$(clusters name port | awk '$1 == "central" {print $2}')"
registry_port="$(free_port)"
target/debug/adpipe-schema-registry --listen "127.0.0.1:$registry_port" --bootstrap-servers "$central" \
  > "$ADPIPE_STATE_DIR/registry-test.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do port_open "$registry_port" && break; sleep 0.2; done
port_open "$registry_port" || { cat "$ADPIPE_STATE_DIR/registry-test.log" >&2; die "schema registry did not start"; }
ADPIPE_BOOTSTRAP="$central" ADPIPE_REGISTRY_URL="http://127.0.0.1:$registry_port" \
  ADPIPE_BIN="$REPO_DIR/target/debug/adpipe" "$venv/bin/pytest" -q tests/interop

step "chaos over the whole chain: every service as its real binary on the three-broker central, MirrorMaker 2, 1M records from two DCs, kill -9 of every service, SIGTERM restarts, a second instance, a broker, dc1 and Elasticsearch down (loadtest/chaos.sh; the 10M run: README, 'Chaos over the chain')"
# What the chaos run does not use goes first, for the CPU it takes: this
# run's MirrorMaker 2 instances (the central one would also copy the chaos run's
# DC topics to this run's central), central and the SASL_SSL cluster (the
# chaos run has its own three-broker central), the BigQuery emulator and
# the interop tests' schema registry.
{ kill "$registry_pid"; wait "$registry_pid"; } 2>/dev/null || true
registry_pid=
"$INFRA_DIR/mirrormaker.sh" stop
ADPIPE_MM2_CENTRAL=secure "$INFRA_DIR/mirrormaker.sh" stop
"$INFRA_DIR/kafka.sh" stop central secure
"$INFRA_DIR/bigquery.sh" stop
# The harness's own log lines (its clients' broker errors during the
# outages) go to a file; the schedule, progress and checks stay here.
loadtest/chaos.sh --events 1000000 --rate 6000 --kills 12 --outage 45s 2> "$ADPIPE_STATE_DIR/chaos.err" \
  || { tail -n 40 "$ADPIPE_STATE_DIR/chaos.err" >&2; die "the chaos run failed (logs: $ADPIPE_STATE_DIR/chaos/logs)"; }

step "all checks passed"
