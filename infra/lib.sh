#!/usr/bin/env bash
# Shared helpers for the infra/ scripts. Sourced, never run.
#
# Everything the scripts create goes under $ADPIPE_STATE_DIR (default
# <repo>/.adpipe): downloads are cached under $ADPIPE_CACHE_DIR (default
# ~/.cache/adpipe) so fresh clones on the same machine reuse them.

set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$INFRA_DIR/.." && pwd)"
ADPIPE_STATE_DIR="${ADPIPE_STATE_DIR:-$REPO_DIR/.adpipe}"
ADPIPE_CACHE_DIR="${ADPIPE_CACHE_DIR:-$HOME/.cache/adpipe}"
CLUSTERS_FILE="${ADPIPE_CLUSTERS_FILE:-$INFRA_DIR/clusters.toml}"
export ADPIPE_STATE_DIR ADPIPE_CACHE_DIR

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# find_java MIN_MAJOR: prints a java binary of at least that major version.
find_java() {
  local min="$1" candidate version
  for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
    [ -x "$candidate" ] || continue
    version="$("$candidate" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
    if [ -n "$version" ] && [ "${version%%.*}" -ge "$min" ]; then
      echo "$candidate"; return 0
    fi
  done
  die "no Java $min+ found (looked at \$JAVA_HOME, /usr/lib/jvm/*, PATH); install openjdk-$min-jre-headless"
}

# port_open PORT: true when something accepts TCP connections on loopback.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PIDFILE: true when the pid in the file is a live process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid NAME PIDFILE [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local name="$1" pidfile="$2" grace="${3:-30}" pid i
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; log "$name: not running"; return 0; fi
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "$name: stopped"; return 0; }
    sleep 0.1
  done
  log "$name: did not stop within ${grace}s; killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# clusters [--all] [FIELD...]: prints one line per cluster in clusters.toml
# with the requested fields (name role port controller_port more_ports
# more_controller_ports on_demand), space separated; a list field comes
# comma-joined, a missing one as "-". Clusters marked on_demand (started
# only when named) are left out unless --all.
clusters() {
  python3 - "$CLUSTERS_FILE" "$@" <<'PY'
import os, sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
args = sys.argv[2:]
every = "--all" in args
fields = [arg for arg in args if arg != "--all"] or ["name", "role", "port", "controller_port"]
def text(value):
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
lines = [" ".join(text(cluster.get(field, "-")) for field in fields)
         for cluster in config["cluster"]
         if every or not cluster.get("on_demand", False)]
try:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
except BrokenPipeError:
    # A reader that stopped early (grep -q, awk exit) has what it wanted;
    # under pipefail a traceback here would fail the caller's pipeline.
    # (Python's documented way: point stdout at devnull so exit's flush passes.)
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
PY
}

# ensure_venv NAME DIR REQUIREMENTS: a Python venv at DIR holding exactly
# REQUIREMENTS (pip specifiers, space-separated); made again when they change.
ensure_venv() {
  local name="$1" venv="$2" requirements="$3"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/requirements" 2>/dev/null)" = "$requirements" ]; then
    return 0
  fi
  log "$name: installing $requirements into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements >&2 \
    || die "pip could not install $requirements"
  echo "$requirements" > "$venv/requirements"
}

# free_port: prints a loopback TCP port nothing listens on right now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# write_free_port_cluster_map TEMPLATE: prints TEMPLATE's cluster map with
# every port and controller port replaced by a free loopback port, so a run
# can start clusters of its own beside any that already run.
write_free_port_cluster_map() {
  python3 - "$1" <<'PY'
import re, socket, sys
sockets = []
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)  # held until all are chosen, so no two are the same
    return s.getsockname()[1]
text = open(sys.argv[1]).read()
text = re.sub(r"^(port|controller_port|internal_port) = \d+$",
              lambda m: f"{m.group(1)} = {free_port()}", text, flags=re.M)
text = re.sub(r"^(more_ports|more_controller_ports) = \[([\d, ]*)\]$",
              lambda m: f"{m.group(1)} = [" + ", ".join(
                  str(free_port()) for _ in re.findall(r"\d+", m.group(2))) + "]",
              text, flags=re.M)
print(text, end="")
PY
}
