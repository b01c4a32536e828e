#!/usr/bin/env bash
# Apache avro-tools, the independent reader the tests check Avro files with.
#
#   infra/avro-tools.sh jar         fetch if missing (mvn), print the jar's path
#   infra/avro-tools.sh ARGS...     run it (e.g. tojson FILE, getschema FILE)
#
# Pinned to 1.12.2 from Maven Central, cached under $ADPIPE_CACHE_DIR; runs
# on the local JDK 17.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=1.12.2
JAR="$ADPIPE_CACHE_DIR/avro-tools-$VERSION.jar"

fetch() {
  [ -f "$JAR" ] && return 0
  command -v mvn >/dev/null || die "mvn not found; install maven"
  mkdir -p "$ADPIPE_CACHE_DIR"
  local tmp
  tmp="$(mktemp -d "$ADPIPE_CACHE_DIR/.fetch-XXXXXX")"
  mvn -q -B dependency:copy -Dartifact="org.apache.avro:avro-tools:$VERSION" -DoutputDirectory="$tmp" >&2 \
    || die "mvn could not fetch avro-tools $VERSION"
  mv "$tmp/avro-tools-$VERSION.jar" "$JAR"
  rm -rf "$tmp"
}

case "${1:-}" in
  "") die "usage: $0 jar | ARGS..." ;;
  jar) fetch; echo "$JAR" ;;
  *) fetch; exec "$(find_java 17)" -jar "$JAR" "$@" 2>/dev/null ;;
esac
