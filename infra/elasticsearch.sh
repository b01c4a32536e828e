#!/usr/bin/env bash
# The local Elasticsearch (or OpenSearch) of adpipe: the loader's search
# sink in tests, the demo and the benchmark.
#
#   infra/elasticsearch.sh start    fetch if missing (mvn), start, wait until ready
#   infra/elasticsearch.sh stop     stop (idempotent; the tests' "store down")
#   infra/elasticsearch.sh restart  stop, then start
#   infra/elasticsearch.sh wipe     stop and delete its data
#   infra/elasticsearch.sh status   running or not, with its URL
#   infra/elasticsearch.sh url      prints its URL
#
# ADPIPE_SEARCH=opensearch runs OpenSearch instead (the sink speaks the
# `_bulk` API both share); ADPIPE_ES_PORT picks the HTTP port (default
# 19200, OpenSearch 19201), ADPIPE_ES_TRANSPORT_PORT the node's transport
# port (default HTTP + 100). Both come from Maven Central's integ-test-zip builds
# (ES 8.19 is AGPL-3.0 / SSPL / Elastic: used only as an outside test
# server, never bundled; OpenSearch is Apache-2.0), cached under
# $ADPIPE_CACHE_DIR, and run on the local JDK 17 with a 512 MiB heap, on
# 127.0.0.1 only, security off, one node. They refuse root: as root they
# run as `nobody`, with their data under /var/tmp/adpipe-search/<id of the
# state dir>; the log is $ADPIPE_STATE_DIR/<flavour>/server.log either way.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FLAVOUR="${ADPIPE_SEARCH:-elasticsearch}"
case "$FLAVOUR" in
  elasticsearch)
    VERSION=8.19.21; GROUP=org.elasticsearch.distribution.integ-test-zip; DEFAULT_PORT=19200
    ENV_PREFIX=ES ;;
  opensearch)
    VERSION=2.19.6; GROUP=org.opensearch.distribution.integ-test-zip; DEFAULT_PORT=19201
    ENV_PREFIX=OPENSEARCH ;;
  *) die "ADPIPE_SEARCH must be elasticsearch or opensearch, not $FLAVOUR" ;;
esac
PORT="${ADPIPE_ES_PORT:-$DEFAULT_PORT}"
TRANSPORT_PORT="${ADPIPE_ES_TRANSPORT_PORT:-$((PORT + 100))}"
HOME_DIR="$ADPIPE_STATE_DIR/$FLAVOUR"
if [ "$(id -u)" = 0 ]; then
  RUN_AS=(runuser -u nobody --)
  DATA_ROOT="/var/tmp/adpipe-search/$(printf '%s' "$ADPIPE_STATE_DIR-$FLAVOUR" | cksum | cut -d' ' -f1)"
else
  RUN_AS=()
  DATA_ROOT="$HOME_DIR"
fi
# As root the unpacked distribution must be readable by nobody, which
# cannot traverse /root: it is kept under /var/tmp then.
if [ "$(id -u)" = 0 ]; then DIST_CACHE=/var/tmp/adpipe-search; else DIST_CACHE="$ADPIPE_CACHE_DIR"; fi
DIST="$DIST_CACHE/$FLAVOUR-$VERSION"
URL="http://127.0.0.1:$PORT"
PIDFILE="$DATA_ROOT/server.pid"

fetch() {
  [ -x "$DIST/bin/$FLAVOUR" ] && return 0
  command -v mvn >/dev/null || die "mvn not found; install maven"
  local tmp
  mkdir -p "$DIST_CACHE"
  tmp="$(mktemp -d "$DIST_CACHE/.fetch-XXXXXX")"
  log "$FLAVOUR: fetching $GROUP:$FLAVOUR:$VERSION:zip"
  mvn -q -B dependency:copy -Dartifact="$GROUP:$FLAVOUR:$VERSION:zip" -DoutputDirectory="$tmp" >&2 \
    || die "mvn could not fetch $FLAVOUR $VERSION"
  if command -v unzip >/dev/null; then
    unzip -q "$tmp/$FLAVOUR-$VERSION.zip" -d "$tmp"
  else # Python's zipfile drops the exec bits: the scripts get them back.
    python3 -m zipfile -e "$tmp/$FLAVOUR-$VERSION.zip" "$tmp"
    chmod +x "$tmp/$FLAVOUR-$VERSION"/bin/*
  fi
  rm -rf "$DIST"
  mv "$tmp/$FLAVOUR-$VERSION" "$DIST"
  rm -rf "$tmp"
  chmod -R a+rX "$DIST"
}

ready() { curl -fsS -o /dev/null "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" 2>/dev/null; }

start() {
  if pid_alive "$PIDFILE" && ready; then log "$FLAVOUR: already running on $URL"; return 0; fi
  if port_open "$PORT"; then die "port $PORT is taken by another process"; fi
  mkdir -p "$HOME_DIR"
  fetch
  local java
  java="$(find_java 17)"
  java="$(dirname "$(dirname "$(readlink -f "$java")")")"
  mkdir -p "$DATA_ROOT/data" "$DATA_ROOT/logs" "$DATA_ROOT/tmp" "$DATA_ROOT/config"
  # Its own config dir: the distribution's stays untouched (shared cache).
  cp -rn "$DIST/config/." "$DATA_ROOT/config/"
  # OpenSearch's JVM options name logs/ and data/ relative to where it is
  # installed (the shared, read-only cache): point them at this server's.
  sed -i -e "s#=logs/#=$DATA_ROOT/logs/#g" -e "s#:logs/#:$DATA_ROOT/logs/#g" \
    -e "s#HeapDumpPath=data\$#HeapDumpPath=$DATA_ROOT/data#" "$DATA_ROOT/config/jvm.options"
  [ "$(id -u)" = 0 ] && chown -R nobody "$DATA_ROOT"
  local -a settings=(-E discovery.type=single-node -E network.host=127.0.0.1 -E "http.port=$PORT"
    -E "transport.port=$TRANSPORT_PORT" -E "path.data=$DATA_ROOT/data" -E "path.logs=$DATA_ROOT/logs"
    -E cluster.routing.allocation.disk.threshold_enabled=false)
  [ "$FLAVOUR" = elasticsearch ] && settings+=(-E xpack.security.enabled=false)
  rm -f "$PIDFILE"
  (cd "$DATA_ROOT" && "${RUN_AS[@]}" env "${ENV_PREFIX}_JAVA_HOME=$java" "${ENV_PREFIX}_JAVA_OPTS=-Xms512m -Xmx512m" \
    "${ENV_PREFIX}_TMPDIR=$DATA_ROOT/tmp" "${ENV_PREFIX}_PATH_CONF=$DATA_ROOT/config" \
    "$DIST/bin/$FLAVOUR" -d -p "$PIDFILE" "${settings[@]}") > "$DATA_ROOT/start.log" 2>&1 \
    || { cat "$DATA_ROOT/start.log" >&2; die "$FLAVOUR did not start"; }
  ln -sfn "$DATA_ROOT/logs" "$HOME_DIR/logs"
  local i
  for ((i = 0; i < 1200; i++)); do
    ready && { log "$FLAVOUR: running on $URL (logs $HOME_DIR/logs)"; return 0; }
    pid_alive "$PIDFILE" || [ "$i" -lt 50 ] || break
    sleep 0.1
  done
  tail -n 30 "$DATA_ROOT/start.log" "$DATA_ROOT"/logs/*.log 2>/dev/null >&2 || true
  die "$FLAVOUR did not become ready on $URL"
}

stop() {
  stop_pid "$FLAVOUR" "$PIDFILE" 60
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  wipe) stop; rm -rf "$DATA_ROOT"; log "$FLAVOUR: data deleted ($DATA_ROOT)" ;;
  status)
    if pid_alive "$PIDFILE" && ready; then echo "$FLAVOUR: running on $URL"; else echo "$FLAVOUR: stopped"; fi ;;
  url) echo "$URL" ;;
  fetch) fetch ;;
  *) die "usage: $0 start|stop|restart|wipe|status|url|fetch" ;;
esac
