#!/usr/bin/env bash
# The local Redis of adpipe: the user-profile store a DC's bidders read
# (the profile loader's real backend here; Aerospike in production).
#
#   infra/redis.sh start    install if missing, start
#   infra/redis.sh stop     shut down (idempotent)
#   infra/redis.sh status   running or not, with its URL
#   infra/redis.sh url      prints its URL
#
# Redis comes from Debian's packages (`apt-get install redis-server` when
# redis-server is missing; root only; the package's own service is not
# used). It listens on 127.0.0.1:${ADPIPE_REDIS_PORT:-16379} only, keeps
# nothing on disk (a test server), and logs to
# $ADPIPE_STATE_DIR/redis-<port>/redis.log.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ADPIPE_REDIS_PORT:-16379}"
DATA="$ADPIPE_STATE_DIR/redis-$PORT"
URL="redis://127.0.0.1:$PORT"

install() {
  command -v redis-server >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "Redis is not installed; as root run: apt-get install redis-server"
  command -v apt-get >/dev/null || die "apt-get not found: install Redis (Debian's redis-server package)"
  log "installing Redis from Debian's packages"
  # The package starts its own service on the default port: not ours.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >&2 \
    || die "apt-get install redis-server failed"
  command -v systemctl >/dev/null && systemctl stop redis-server >/dev/null 2>&1 || true
  command -v service >/dev/null && service redis-server stop >/dev/null 2>&1 || true
}

running() { pid_alive "$DATA/redis.pid" && port_open "$PORT"; }

start() {
  if running; then log "redis: already running on $URL"; return 0; fi
  if port_open "$PORT"; then die "port $PORT is taken by another process"; fi
  install
  mkdir -p "$DATA"
  # zset-max-listpack-value: a profile's entries (event JSON, ~130–400
  # bytes) over Redis's 64-byte default made every profile a skiplist,
  # ~700 bytes an entry: 9 GB for a 10M-event chaos run. As a listpack a
  # profile of up to `keep` (50) entries takes a fifth (the production
  # profile store wants the same).
  redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DATA" \
    --zset-max-listpack-value 1024 \
    --daemonize yes --pidfile "$DATA/redis.pid" --logfile "$DATA/redis.log" \
    || die "redis did not start (log: $DATA/redis.log)"
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(redis-cli -p "$PORT" ping 2>/dev/null)" = PONG ] && { log "redis: running on $URL (log $DATA/redis.log)"; return 0; }
    sleep 0.1
  done
  die "redis did not answer on $URL (log: $DATA/redis.log)"
}

stop() {
  if ! running; then rm -f "$DATA/redis.pid"; log "redis: not running"; return 0; fi
  # SIGTERM is Redis's own clean shutdown (nothing to save here). A
  # `redis-cli shutdown` first made stop_pid find the pid file gone and
  # log "not running" for a server it had just stopped.
  stop_pid redis "$DATA/redis.pid" 10
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "redis: running on $URL"; else echo "redis: stopped"; fi ;;
  url) echo "$URL" ;;
  *) die "usage: $0 start|stop|status|url" ;;
esac
