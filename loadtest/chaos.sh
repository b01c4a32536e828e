#!/usr/bin/env bash
# The chaos test over the whole chain (issue 13; adpipe_cli::chaos): starts
# what it needs — the three-broker central `chaos`, the DC clusters, a
# MirrorMaker 2 instance between them and `chaos` (topics under `chaos-`
# only), PostgreSQL, Elasticsearch, Redis — runs adpipe-chaos with the
# given arguments, and stops the chaos cluster and its MirrorMaker 2
# instance again (the other servers are left as they were, started or not).
#
#   loadtest/chaos.sh --events 1000000 --rate 6000 --kills 12 --outage 45s
#                                         CI's run (infra/test-all.sh): the debug
#                                         binaries (opt-level 1), 1M records, ~20 faults
#   cargo build --release --workspace --bins &&
#   ADPIPE_CHAOS_PROFILE=release loadtest/chaos.sh --events 10000000 --rate 4000 --kills 50 --outage 3m
#                                         the full run (README, "Chaos over the chain")
#
# Output: the fault schedule, progress every 10 s, the checks; logs of every
# service instance and of the infra scripts under $ADPIPE_STATE_DIR/chaos/logs.
source "$(dirname "${BASH_SOURCE[0]}")/../infra/lib.sh"
cd "$REPO_DIR"
profile="${ADPIPE_CHAOS_PROFILE:-debug}"
bin="$REPO_DIR/target/$profile"
[ -x "$bin/adpipe-chaos" ] || die "no $bin/adpipe-chaos: cargo build --workspace --bins$([ "$profile" = release ] && echo ' --release')"

cleanup() {
  local status=$?
  ADPIPE_MM2_CENTRAL=chaos "$INFRA_DIR/mirrormaker.sh" stop || true
  "$INFRA_DIR/kafka.sh" stop chaos || true
  exit $status
}
trap cleanup EXIT
dcs="$(clusters name role | awk '$2 == "dc" {print $1}')"
# shellcheck disable=SC2086 # one argument per DC
"$INFRA_DIR/kafka.sh" start chaos $dcs
# Earlier runs' topics (each run has its own `chaos-<id>.` prefix) are
# deleted: thousands of partitions left behind made a killed broker's
# restart outlast kafka.sh's wait. (Wiping the whole chaos cluster instead
# broke MirrorMaker 2's replication to it: its state on the DCs remained.)
for port in $(clusters --all name port | awk '$1 == "chaos" {print $2}') \
            $(clusters name role port | awk '$2 == "dc" {print $3}'); do
  "$INFRA_DIR/kafka.sh" tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
    --delete --if-exists --topic '(dc[0-9]+\.|chaos\.)?chaos[-.][0-9a-f]{8}\..*' >/dev/null 2>&1 || true
done
"$INFRA_DIR/postgres.sh" start
"$INFRA_DIR/elasticsearch.sh" start
"$INFRA_DIR/redis.sh" start
# Likewise earlier runs' profiles and documents: a 10M run leaves ~5 GB
# in Redis, and many large indices slowed Elasticsearch's restart (the
# outage) to ten minutes. Indices go by name, a batch at a time
# (Elasticsearch refuses wildcard deletes).
redis-cli -u "$("$INFRA_DIR/redis.sh" url)" --scan --pattern 'chaos-*' \
  | xargs -r -n 1000 redis-cli -u "$("$INFRA_DIR/redis.sh" url)" unlink >/dev/null
es="$("$INFRA_DIR/elasticsearch.sh" url)"
curl -fsS "$es/_cat/indices/adpipe-chaos-*?h=index" | xargs -r -n 50 | tr ' ' ',' \
  | while read -r indices; do curl -fsS -X DELETE "$es/$indices" >/dev/null; done
ADPIPE_MM2_CENTRAL=chaos ADPIPE_MM2_TOPIC_PREFIX=chaos- "$INFRA_DIR/mirrormaker.sh" start

central="$(clusters --all name port more_ports | awk '$1 == "chaos" {
  servers = "127.0.0.1:" $2; n = split($3, more, ",")
  for (i = 1; i <= n; i++) if (more[i] != "-") servers = servers ",127.0.0.1:" more[i]
  print servers }')"
dc_args=()
for dc in $dcs; do
  dc_args+=(--dc "$dc=127.0.0.1:$(clusters name port | awk -v name="$dc" '$1 == name {print $2}')")
done
"$bin/adpipe-chaos" --central "$central" "${dc_args[@]}" \
  --postgres-url "$("$INFRA_DIR/postgres.sh" url)" \
  --es-url "$("$INFRA_DIR/elasticsearch.sh" url)" \
  --redis-url "$("$INFRA_DIR/redis.sh" url)" \
  --bin-dir "$bin" --infra-dir "$INFRA_DIR" --work-dir "$ADPIPE_STATE_DIR/chaos" "$@"
