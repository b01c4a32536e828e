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
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ADPIPE_BQ_PORT:-19050}"
GRPC_PORT="${ADPIPE_BQ_GRPC_PORT:-19060}"
STATE="$ADPIPE_STATE_DIR/bigquery-$PORT"
PIDFILE="$STATE/bqemulator.pid"
URL="http://127.0.0.1:$PORT"
VENV="$ADPIPE_CACHE_DIR/bqemulator-venv"
REQUIREMENTS="bqemulator==1.4.0 numpy duckdb==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5"

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
  mkdir -p "$STATE"
  nohup "$VENV/bin/bqemulator" start --rest-host 127.0.0.1 --grpc-host 127.0.0.1 --rest-port "$PORT" --grpc-port "$GRPC_PORT" \
    --project adpipe > "$STATE/bqemulator.log" 2>&1 &
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
  stop) stop_pid bigquery "$PIDFILE" 15 ;;
  status) if pid_alive "$PIDFILE" && ready; then echo "bigquery: running on $URL"; else echo "bigquery: stopped"; fi ;;
  url) echo "$URL" ;;
  *) die "usage: $0 start|stop|status|url" ;;
esac
