#!/usr/bin/env python3
"""Runs the workspace's Rust test binaries, several at a time.

    infra/run-tests.py [--jobs N] [--list] [-- extra cargo args]

Why: `cargo test` runs one test binary after another. Most of adpipe's
slow binaries (the kill -9 tests, the BigQuery and Elasticsearch ones)
spend their time waiting on real servers and on restarted processes, not
on the CPU: run one after another they took 20 of CI's minutes on two
cores. Here they share the machine, N at a time (ADPIPE_TEST_JOBS,
default 3).

What stays the same as `cargo test --workspace`: the same binaries (built
by `cargo test --no-run`, so the same features and profile), each run in
its package's directory with CARGO_MANIFEST_DIR and CARGO_PKG_NAME set as
cargo sets them, and the doc tests after them (`cargo test --doc`). Each
binary's output is printed whole when it ends, under its own header, so
the log of concurrent binaries does not interleave.

What differs: a failing binary does not stop the others. Every binary
runs, the failures are listed at the end, and the exit status is 1 if
any failed.

The binaries that stop or restart a server the others use (EXCLUSIVE)
run afterwards, apart from them: a test that stops the Kafka cluster
would fail every test running beside it. Among themselves they run side
by side where none stops a server another one needs (NEEDS); the one
that stops central, which every test needs, runs alone. A new test that
stops a shared server belongs in those lists; a name there that matches
no binary stops the run before anything starts.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor

# (package, test target) of the binaries that take a shared server away,
# and the server each stops.
EXCLUSIVE = {
    ("adpipe-deduplicator", "broker_restart"): "central",
    ("adpipe-merger", "dc_outage"): "dc2",
    ("adpipe-loader", "elasticsearch_down"): "elasticsearch",
    ("adpipe-stats-counter", "postgres_restart"): "postgresql",
}
# The servers each of them needs besides the one it stops: every test
# needs central (the main Kafka cluster).
NEEDS = {
    ("adpipe-deduplicator", "broker_restart"): {"central"},
    ("adpipe-merger", "dc_outage"): {"central", "dc1", "mirrormaker"},
    ("adpipe-loader", "elasticsearch_down"): {"central"},
    ("adpipe-stats-counter", "postgres_restart"): {"central"},
}

# Started first, so the longest do not start last and leave the pool idle
# at the end. Seconds measured in a cold CI run (opt-level 1, one at a time).
SLOW_FIRST = {
    ("adpipe-loader", "crash"): 215,
    ("adpipe-loader", "bigquery"): 133,
    ("adpipe-joiner", "crash"): 114,
    ("adpipe-deduplicator", "crash"): 95,
    ("adpipe-stats-counter", "crash"): 76,
    ("adpipe-merger", "crash"): 73,
    ("adpipe-reconciler", "reconcile"): 44,
    ("adpipe-runtime", "runtime"): 44,
}


def log(message):
    print(f"[run-tests.py] {message}", file=sys.stderr, flush=True)


def test_binaries(cargo_args):
    """Builds the tests and returns (package, target, executable, package dir)."""
    command = ["cargo", "test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"]
    built = subprocess.run(command + cargo_args, stdout=subprocess.PIPE, text=True)
    if built.returncode != 0:
        sys.exit(built.returncode)
    binaries = []
    for line in built.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message["profile"]["test"]:
            continue
        package = package_name(message["manifest_path"])
        binaries.append((package, message["target"]["name"], message["executable"],
                         os.path.dirname(message["manifest_path"])))
    return binaries


@functools.cache
def package_name(manifest_path):
    # The package id's form changed across cargo versions; the manifest says it plainly.
    with open(manifest_path, "rb") as manifest:
        return tomllib.load(manifest)["package"]["name"]


def run(binary):
    package, target, executable, directory = binary
    env = dict(os.environ, CARGO_MANIFEST_DIR=directory, CARGO_PKG_NAME=package)
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as output:
        status = subprocess.run([executable], cwd=directory, env=env,
                                stdout=output, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - started
        output.seek(0)
        text = output.read()
    header = f"     Running {package} {target} ({os.path.relpath(executable)})"
    print(f"{header}\n{text}     Finished {package} {target}: status {status} in {seconds:.1f} s",
          flush=True)
    return binary, status, seconds


def waves(alone):
    """Splits the exclusive binaries into waves run one after another, each
    wave's binaries side by side: none in a wave stops a server another
    one in it needs or stops."""
    def stops(binary):
        return EXCLUSIVE[(binary[0], binary[1])]

    def uses(binary):
        return NEEDS[(binary[0], binary[1])] | {stops(binary)}

    def apart(one, other):
        return stops(one) not in uses(other) and stops(other) not in uses(one)

    result = []
    # The one that stops central first, then by name: the same waves in
    # the same order every run, whatever order cargo built them in.
    for binary in sorted(alone, key=lambda b: (stops(b) != "central", b[0], b[1])):
        wave = next((wave for wave in result if all(apart(binary, other) for other in wave)), None)
        if wave is None:
            result.append([binary])
        else:
            wave.append(binary)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("ADPIPE_TEST_JOBS", "3")))
    parser.add_argument("--list", action="store_true",
                        help="build and list the test binaries, run nothing")
    parser.add_argument("cargo_args", nargs="*")
    args = parser.parse_args()

    binaries = test_binaries(args.cargo_args)
    # A renamed exclusive test would otherwise run beside the others and
    # take their server away from under them.
    if set(EXCLUSIVE) != set(NEEDS):
        log("EXCLUSIVE and NEEDS must name the same binaries: "
            + ", ".join(f"{package}/{target}" for package, target in sorted(set(EXCLUSIVE) ^ set(NEEDS))))
        sys.exit(2)
    missing = set(EXCLUSIVE) - {(b[0], b[1]) for b in binaries}
    if missing:
        log("EXCLUSIVE and NEEDS name test binaries that do not exist (renamed? update them): "
            + ", ".join(f"{package}/{target}" for package, target in sorted(missing)))
        sys.exit(2)
    if args.list:
        for package, target, executable, _ in binaries:
            alone = " (apart, after the others)" if (package, target) in EXCLUSIVE else ""
            print(f"{package}/{target}{alone}: {os.path.relpath(executable)}")
        return
    shared = [b for b in binaries if (b[0], b[1]) not in EXCLUSIVE]
    alone = [b for b in binaries if (b[0], b[1]) in EXCLUSIVE]
    shared.sort(key=lambda b: -SLOW_FIRST.get((b[0], b[1]), 0))
    alone_waves = waves(alone)
    log(f"{len(shared)} test binaries, {args.jobs} at a time; then {len(alone)} apart, in waves: "
        + "; ".join(", ".join(f"{b[0]}/{b[1]}" for b in wave) for wave in alone_waves))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run, shared))
    log(f"the shared binaries took {time.monotonic() - started:.0f} s")
    for wave in alone_waves:
        with ThreadPoolExecutor(max_workers=len(wave)) as pool:
            results += list(pool.map(run, wave))

    doc = subprocess.run(["cargo", "test", "--workspace", "--doc"] + args.cargo_args)
    failed = [f"{b[0]}/{b[1]} (status {status})" for b, status, _ in results if status != 0]
    if doc.returncode != 0:
        failed.append("the doc tests")
    log(f"{len(results)} test binaries in {time.monotonic() - started:.0f} s; "
        + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
