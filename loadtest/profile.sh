#!/usr/bin/env bash
# Profiles one contender of the benchmark over its backlog and draws its
# flame graph:
#   loadtest/profile.sh [pass|dedup|merger|joiner|bare] [seconds]
# Runs `adpipe-bench --only <contender>` (two million impressions unless
# IMPRESSIONS is set), attaches `perf` to the service process for <seconds>
# (default 3) once it is past start-up (steady state), then folds the stacks
# and draws them with inferno (installed once by cargo into the cache dir).
# Writes target/profile/<contender>.svg (the flame graph) and
# target/profile/<contender>.txt (the hottest symbols); generated, never
# committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
contender="${1:-pass}"
seconds="${2:-3}"
case "$contender" in
  pass) process=adpipe-passthrough ;;
  dedup) process=adpipe-deduplicator ;;
  merger) process=adpipe-merger ;;
  joiner) process=adpipe-joiner ;;
  bare) process=adpipe-bareloop ;;
  *) echo "usage: $0 [pass|dedup|merger|joiner|bare] [seconds]" >&2; exit 2 ;;
esac
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
cache="${ADPIPE_CACHE_DIR:-$HOME/.cache/adpipe}"
inferno="$cache/inferno/bin"
if [ ! -x "$inferno/inferno-flamegraph" ]; then
  cargo install --locked --root "$cache/inferno" inferno
fi
cargo build --release -p adpipe-deduplicator -p adpipe-merger -p adpipe-joiner -p adpipe-loadtest --bins
infra/kafka.sh start central
out="$root/target/profile"
mkdir -p "$out"
target/release/adpipe-bench --only "$contender" --impressions "${IMPRESSIONS:-2000000}" \
  >"$out/$contender-bench.log" 2>&1 &
bench=$!
pid=""
for _ in $(seq 1 3000); do
  pid="$(pgrep -n -f "release/$process( |$)" || true)"
  [ -n "$pid" ] && break
  kill -0 "$bench" 2>/dev/null || { cat "$out/$contender-bench.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$pid" ] || { echo "$process never started" >&2; exit 1; }
sleep 1.5 # past start-up and the group join
# perf ends early (and non-zero) if the service finishes its backlog first.
perf record -q -F 999 -g -p "$pid" -o "$out/$contender.perf" -- sleep "$seconds" || true
wait "$bench"
perf script -i "$out/$contender.perf" 2>/dev/null \
  | "$inferno/inferno-collapse-perf" \
  | "$inferno/inferno-flamegraph" --title "adpipe $contender (steady state)" >"$out/$contender.svg"
# awk reads to the end: an early exit would kill perf with SIGPIPE (pipefail).
perf report -i "$out/$contender.perf" --no-children --sort sym --stdio -g none 2>/dev/null \
  | awk '!/^#/ && NF && shown++ < 40' >"$out/$contender.txt"
echo "flame graph: $out/$contender.svg; hottest symbols: $out/$contender.txt"
