#!/usr/bin/env bash
# Runs the benchmark on this machine: builds the release binaries, starts
# the local central cluster if needed (infra/kafka.sh) and runs adpipe-bench
# (bare librdkafka loop, pass-through, deduplicator, merger, the same jobs
# in Kafka Streams, and Kafka's perf tools, in one run). Arguments go to
# adpipe-bench (see --help), e.g.
#   loadtest/bench.sh --impressions 200000 --json /tmp/bench.json
# The whole chain (merger → deduplicator → joiner → stats-counter, and the
# same chain in Kafka Streams; README, "The whole chain against Kafka
# Streams"):
#   loadtest/bench.sh --only chain --postgres-url "$(infra/postgres.sh url)"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -p adpipe-deduplicator -p adpipe-merger -p adpipe-joiner -p adpipe-stats-counter -p adpipe-loader -p adpipe-loadtest --bins
# The Kafka Streams peer (same jobs, same broker): jars by mvn, javac.
kstreams_classpath="$(loadtest/kstreams/build.sh)"
java="$(source infra/lib.sh && find_java 17)"
infra/kafka.sh start central
exec target/release/adpipe-bench --kstreams-classpath "$kstreams_classpath" --java "$java" "$@"
