#!/usr/bin/env bash
# Runs the benchmark on this machine: builds the release binaries, starts
# the local central cluster if needed (infra/kafka.sh) and runs adpipe-bench
# (bare librdkafka loop, pass-through, deduplicator, merger and Kafka's perf
# tools, in one run). Arguments go to adpipe-bench (see --help), e.g.
#   loadtest/bench.sh --impressions 200000 --json /tmp/bench.json
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -p adpipe-deduplicator -p adpipe-merger -p adpipe-loadtest --bins
infra/kafka.sh start central
exec target/release/adpipe-bench "$@"
