#!/usr/bin/env bash
# The local PostgreSQL of adpipe (the stats-counter's store, tests, demo).
#
#   infra/postgres.sh start    install if missing, initialise once, start
#   infra/postgres.sh stop     fast shutdown (idempotent)
#   infra/postgres.sh restart  stop, then start (the tests' "PostgreSQL
#                              restarted mid-run")
#   infra/postgres.sh wipe     stop and delete its data (a fresh server next start)
#   infra/postgres.sh status   running or not, with its URL
#   infra/postgres.sh url      prints the connection URL of database adpipe
#
# PostgreSQL comes from Debian's packages (`apt-get install postgresql` when
# no /usr/lib/postgresql/*/bin/initdb exists; root only). The server listens
# on 127.0.0.1:${ADPIPE_PG_PORT:-15432} only, trusts local connections (a
# test server: no password) and runs with fsync off (it tests what a crash
# of adpipe's services does, not an OS crash).
#
# PostgreSQL refuses to run as root: as root it runs as `nobody`, with its
# data directory under /var/tmp/adpipe-postgres/<id of the state dir> (a
# clone under /root is not readable by nobody); otherwise under
# $ADPIPE_STATE_DIR/postgres. Either way the log is
# $ADPIPE_STATE_DIR/postgres/postgres.log (a link when running as root).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ADPIPE_PG_PORT:-15432}"
HOME_DIR="$ADPIPE_STATE_DIR/postgres"
if [ "$(id -u)" = 0 ]; then
  RUN_AS=(runuser -u nobody --)
  DATA_ROOT="/var/tmp/adpipe-postgres/$(printf '%s' "$ADPIPE_STATE_DIR" | cksum | cut -d' ' -f1)"
else
  RUN_AS=()
  DATA_ROOT="$HOME_DIR"
fi
DATA="$DATA_ROOT/db"
LOG="$DATA_ROOT/postgres.log"
URL="postgresql://postgres@127.0.0.1:$PORT/adpipe"

pg_bin() {
  local initdb
  initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$initdb" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; as root run: apt-get install postgresql"
    command -v apt-get >/dev/null || die "apt-get not found: install PostgreSQL (Debian's postgresql package)"
    log "installing PostgreSQL from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2 \
      || die "apt-get install postgresql failed"
    initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
  fi
  dirname "$initdb"
}

running() { [ -f "$DATA/postmaster.pid" ] && port_open "$PORT"; }

start() {
  if running; then log "postgres: already running on 127.0.0.1:$PORT"; return 0; fi
  if port_open "$PORT"; then die "port $PORT is taken by another process"; fi
  local bin
  bin="$(pg_bin)"
  mkdir -p "$DATA_ROOT" "$HOME_DIR"
  if [ "$(id -u)" = 0 ]; then
    chown nobody "$DATA_ROOT"
    ln -sfn "$LOG" "$HOME_DIR/postgres.log"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "postgres: initialising $DATA"
    "${RUN_AS[@]}" "$bin/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
      --locale=C.UTF-8 >"$DATA_ROOT/initdb.log" 2>&1 \
      || { cat "$DATA_ROOT/initdb.log" >&2; die "initdb failed"; }
  fi
  # A server killed with -9 leaves its pid file; pg_ctl starts anyway when
  # that pid is gone.
  "${RUN_AS[@]}" "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -s -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA_ROOT -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    || { tail -n 30 "$LOG" >&2; die "postgres did not start (log: $LOG)"; }
  # Compared whole, not piped to `grep -q`: under pipefail a reader that
  # stops early can fail its writer (see clusters() in lib.sh).
  if [ "$(psql "postgresql://postgres@127.0.0.1:$PORT/postgres" -Atqc \
    "select 1 from pg_database where datname = 'adpipe'")" != 1 ]; then
    psql "postgresql://postgres@127.0.0.1:$PORT/postgres" -qc "create database adpipe" >/dev/null
  fi
  log "postgres: running on 127.0.0.1:$PORT ($URL; log $LOG)"
}

stop() {
  if [ ! -f "$DATA/postmaster.pid" ]; then log "postgres: not running"; return 0; fi
  local bin
  bin="$(pg_bin)"
  "${RUN_AS[@]}" "$bin/pg_ctl" -D "$DATA" -m fast -w -s -t 60 stop || true
  log "postgres: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  wipe) stop; rm -rf "$DATA_ROOT"; log "postgres: data deleted ($DATA_ROOT)" ;;
  status)
    if running; then echo "postgres: running on 127.0.0.1:$PORT ($URL)"; else echo "postgres: stopped"; fi ;;
  url) echo "$URL" ;;
  *) die "usage: $0 start|stop|restart|wipe|status|url" ;;
esac
