#!/usr/bin/env bash
# The local BigQuery emulator (PyPI bqemulator, Apache-2.0; DuckDB inside):
# the loader's BigQuery sink in tests. Production talks to the real
# endpoint, chosen by configuration.
#
#   infra/bigquery.sh start    install if missing (venv), start, wait until ready
#   infra/bigquery.sh stop     stop (idempotent)
#   infra/bigquery.sh status   running or not, with its URL
#   infra/bigquery.sh url      prints its REST base URL
#
# Offline fix (see the README): bqemulator's default DuckDB (2.x) breaks
# insertAll after a paginated read, and at start it downloads DuckDB's
# spatial extension. So DuckDB is pinned to 1.5.5 and the spatial and avro
# extensions come from PyPI wheels, installed into DuckDB's extension
# directory once. REST on 127.0.0.1:${ADPIPE_BQ_PORT:-19050}, gRPC on
# ${ADPIPE_BQ_GRPC_PORT:-19060}, project `adpipe`, data in memory (a
# restart empties it). Log: $ADPIPE_STATE_DIR/bigquery-<port>/bqemulator.log.
#
# Time travel off: bqemulator copies the whole table into a snapshot after
# every insertAll (for FOR SYSTEM_TIME AS OF, kept 7 days) — quadratic in
# the table's size: a kill test over 1M rows filled 51 GB of DuckDB temp
# files. adpipe never reads old versions, so the emulator is started with
# its change hook publishing the change event without the copy. DuckDB's
# temp files go to the state dir (removed at stop), never to the caller's
# working directory.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ADPIPE_BQ_PORT:-19050}"
GRPC_PORT="${ADPIPE_BQ_GRPC_PORT:-19060}"
STATE="$ADPIPE_STATE_DIR/bigquery-$PORT"
PIDFILE="$STATE/bqemulator.pid"
URL="http://127.0.0.1:$PORT"
VENV="$ADPIPE_CACHE_DIR/bqemulator-venv"
REQUIREMENTS="bqemulator==1.4.0 numpy duckdb==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5"

# bqemulator's command line, with the per-insert table snapshot left out.
NO_SNAPSHOTS='
import sys
from bqemulator.domain.events import TableDataChanged
from bqemulator.versioning.snapshots import SnapshotManager
def record_change(self, project_id, dataset_id, table_id):
    self._events.publish(TableDataChanged(project_id, dataset_id, table_id))
SnapshotManager.record_change = record_change
from bqemulator.cli import main
sys.argv[0] = "bqemulator"
sys.exit(main())
'

install() {
  ensure_venv bigquery "$VENV" "$REQUIREMENTS"
  # DuckDB's INSTALL from the wheels' files: offline, once per $HOME.
  "$VENV/bin/python" - <<'PY' >&2 || die "installing DuckDB's spatial and avro extensions failed"
import duckdb, importlib, pathlib
for name in ("spatial", "avro"):
    module = importlib.import_module(f"duckdb_extension_{name}")
    path = pathlib.Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    duckdb.execute(f"INSTALL '{path}'")
PY
}

ready() { curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null; }

start() {
  if pid_alive "$PIDFILE" && ready; then log "bigquery: already running on $URL"; return 0; fi
  for port in "$PORT" "$GRPC_PORT"; do
    port_open "$port" && die "port $port is taken by another process"
  done
  install
  rm -rf "$STATE/.tmp"
  mkdir -p "$STATE"
  (cd "$STATE" && exec nohup "$VENV/bin/python" -c "$NO_SNAPSHOTS" start --rest-host 127.0.0.1 --grpc-host 127.0.0.1 --rest-port "$PORT" --grpc-port "$GRPC_PORT" \
    --project adpipe > "$STATE/bqemulator.log" 2>&1) &
  echo $! > "$PIDFILE"
  local i
  for ((i = 0; i < 300; i++)); do
    ready && { log "bigquery: emulator running on $URL (log $STATE/bqemulator.log)"; return 0; }
    pid_alive "$PIDFILE" || break
    sleep 0.1
  done
  tail -n 30 "$STATE/bqemulator.log" >&2
  die "the BigQuery emulator did not become ready on $URL"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid bigquery "$PIDFILE" 15 && rm -rf "$STATE/.tmp" ;;
  status) if pid_alive "$PIDFILE" && ready; then echo "bigquery: running on $URL"; else echo "bigquery: stopped"; fi ;;
  url) echo "$URL" ;;
  *) die "usage: $0 start|stop|status|url" ;;
esac
