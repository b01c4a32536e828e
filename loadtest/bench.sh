#!/usr/bin/env bash
# Runs the benchmark of issue 3 on this machine: builds the release
# binaries, starts the local central cluster if needed (infra/kafka.sh) and
# runs adpipe-bench (deduplicator vs pass-through vs Kafka's perf tools, in
# one run). Arguments go to adpipe-bench (see --help), e.g.
#   loadtest/bench.sh --impressions 200000 --json /tmp/bench.json
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -p adpipe-deduplicator -p adpipe-loadtest --bins
infra/kafka.sh start central
exec target/release/adpipe-bench "$@"
