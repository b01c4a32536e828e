#!/usr/bin/env bash
# Builds the Kafka Streams peer of the benchmark and prints its classpath.
#   loadtest/kstreams/build.sh        -> prints CLASSPATH (jars + classes)
# Jars are fetched with mvn into $ADPIPE_CACHE_DIR (keyed by the pom's hash);
# the sources are compiled with the local JDK's javac into the same place.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../../infra/lib.sh"
key="$(cat "$here/pom.xml" "$here"/src/io/adpipe/peer/*.java | sha256sum | cut -c1-12)"
out="$ADPIPE_CACHE_DIR/kstreams-peer-$key"
if [[ ! -f "$out/.built" ]]; then
  command -v mvn >/dev/null || die "mvn not found; install maven"
  javac="$(dirname "$(find_java 17)")/javac"
  [[ -x "$javac" ]] || die "no javac next to $(find_java 17); install openjdk-17-jdk-headless"
  rm -rf "$out" && mkdir -p "$out/classes"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$out/libs" -DincludeScope=runtime >&2 \
    || die "mvn could not fetch Kafka Streams (see output above)"
  "$javac" -nowarn -d "$out/classes" -cp "$out/libs/*" "$here"/src/io/adpipe/peer/*.java >&2 \
    || die "javac failed on the Kafka Streams peer"
  touch "$out/.built"
fi
echo "$out/classes:$out/libs/*"
