#!/usr/bin/env bash
# Prometheus rules of adpipe: fetches promtool and checks them.
#
#   infra/prometheus.sh check     promtool check config + check rules + test rules
#   infra/prometheus.sh promtool  prints the path of promtool (fetching it)
#   infra/prometheus.sh names F…  checks that the metrics F… name are exported
#                                 (their names are in the Rust sources)
#   infra/prometheus.sh served M F…
#                                 checks that every metric F… name is in M, the
#                                 text of running services' /metrics (a sample
#                                 or the HELP/TYPE every service declares at
#                                 its start)
#
# promtool comes from Debian's prometheus package, downloaded with
# `apt-get download` (no root) and unpacked under $ADPIPE_CACHE_DIR: nothing
# is installed system-wide and no Prometheus server is started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

promtool_path() {
  local dir="$ADPIPE_CACHE_DIR/prometheus-deb" deb
  if [ -x "$dir/usr/bin/promtool" ]; then echo "$dir/usr/bin/promtool"; return; fi
  command -v apt-get >/dev/null || die "apt-get not found: install promtool (Debian's prometheus package) yourself"
  mkdir -p "$dir/download"
  (cd "$dir/download" && apt-get download prometheus >&2) || die "apt-get download prometheus failed"
  local debs=("$dir"/download/prometheus_*.deb)
  deb="${debs[0]}"
  dpkg-deb -x "$deb" "$dir" || die "cannot unpack $deb"
  [ -x "$dir/usr/bin/promtool" ] || die "no promtool in $deb"
  echo "$dir/usr/bin/promtool"
}

# Every metric FILES name is one a service exports (its name appears quoted
# in the Rust sources: telemetry.rs's enum or a service's own), and every
# recording rule they use (`adpipe:…`) is defined in prometheus/rules.
names() {
  local name
  for name in $(grep -ohE 'adpipe_[a-z_]+' "$@" | sed -E 's/_(bucket|count|sum)$//' | sort -u); do
    grep -rqF --include='*.rs' "\"$name\"" "$REPO_DIR/crates" "$REPO_DIR/services" \
      || die "$name (named in $*) is not a metric any service exports"
  done
  for name in $(grep -ohE 'adpipe:[a-z_0-9]+:[a-z_0-9]+' "$@" | sort -u); do
    grep -qE "record: $name\$" "$INFRA_DIR"/prometheus/rules/*.yml \
      || die "$name (used in $*) is not a recording rule of infra/prometheus/rules"
  done
}

# Every metric FILES name (adpipe_*, process_*) is in SERVED, the text of
# running services' /metrics.
served() {
  local served_text="$1" name missing=0 known
  shift
  [ -s "$served_text" ] || die "$served_text is empty: no /metrics was read"
  known="$(sed -nE 's/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) .*/\1/p; s/^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ].*/\1/p' "$served_text" \
    | sed -E 's/_(bucket|count|sum)$//' | sort -u)"
  for name in $(grep -ohE '\b(adpipe|process)_[a-z0-9_]+' "$@" | sed -E 's/_(bucket|count|sum)$//' | sort -u); do
    if ! grep -qxF "$name" <<<"$known"; then
      echo "$name (named in $(grep -lE "\b$name" "$@" | xargs -n1 basename | tr '\n' ' ')) is not in the services' /metrics" >&2
      missing=$((missing + 1))
    fi
  done
  [ "$missing" -eq 0 ] || die "$missing metric(s) named by dashboards or rules are not served"
  log "every metric named in $# file(s) is served ($(wc -l <<<"$known") names in $served_text)"
}

case "${1:-}" in
  promtool) promtool_path ;;
  names) shift; names "$@" ;;
  served) shift; served "$@" ;;
  check)
    promtool="$(promtool_path)"
    names "$INFRA_DIR"/prometheus/rules/*.yml
    "$promtool" check config "$INFRA_DIR"/prometheus/prometheus.yml
    "$promtool" check rules "$INFRA_DIR"/prometheus/rules/*.yml
    "$promtool" test rules "$INFRA_DIR"/prometheus/tests/*.yml
    ;;
  *) die "usage: $0 check|promtool" ;;
esac
