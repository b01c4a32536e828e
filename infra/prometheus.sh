#!/usr/bin/env bash
# Prometheus rules of adpipe: fetches promtool and checks them.
#
#   infra/prometheus.sh check     promtool check config + check rules + test rules
#   infra/prometheus.sh promtool  prints the path of promtool (fetching it)
#   infra/prometheus.sh names F…  checks that the metrics F… name are exported
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
  deb="$(ls "$dir"/download/prometheus_*.deb | head -n 1)"
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

case "${1:-}" in
  promtool) promtool_path ;;
  names) shift; names "$@" ;;
  check)
    promtool="$(promtool_path)"
    names "$INFRA_DIR"/prometheus/rules/*.yml
    "$promtool" check config "$INFRA_DIR"/prometheus/prometheus.yml
    "$promtool" check rules "$INFRA_DIR"/prometheus/rules/*.yml
    "$promtool" test rules "$INFRA_DIR"/prometheus/tests/*.yml
    ;;
  *) die "usage: $0 check|promtool" ;;
esac
