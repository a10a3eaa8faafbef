#!/usr/bin/env python3
"""Runs a cargo workspace's test binaries a few at a time instead of one after another.

`cargo test` builds every test target, then runs the binaries serially; ours spend most of
their time waiting on NATS, ClickHouse and the services they start, so on two cores two
binaries at a time take about half the wall time. This script builds with
`cargo test --no-run --message-format=json-render-diagnostics <selection>`, then runs each
test executable the way cargo would (working directory = its package's directory, the
CARGO_* variables cargo sets), JOBS at a time, and prints each binary's whole output when it
ends, under cargo's own "Running" heading, so logs never interleave and the "test result:"
lines the callers count are unchanged. The binaries listed in ALONE run first, one at a time
with nothing beside them.

Usage: cargo_tests.py [--jobs N] [--only PKG[:TEST] ...] [cargo selection ...] [-- test-binary args ...]
  --jobs N          binaries at a time (default: TALLY_TEST_JOBS, else 2)
  --only PKG        run only package PKG's test binaries (its unit tests and every test file)
  --only PKG:TEST   run only the integration test TEST (tests/TEST.rs) of package PKG
                    (several --only add up; the build is still the whole selection's, so a
                    subset of `--workspace` reuses the workspace's build instead of building
                    the packages again with other features)
Exit status: 0 when the build and every binary passed; 101 when a binary failed; the
build's own status when it failed (nothing runs then, as with cargo test).
Never runs doc tests (`cargo test --doc` does).
"""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# Binaries that run alone, before the others: the fault-injection run starts its own NATS and
# ClickHouse, publishes 20,000 events through kills and outages within fixed deadlines, and
# uses both cores by itself (beside another binary its publisher missed its 5-minute deadline).
ALONE = [
    "aggregator/tests/faults.rs",
]

# The binaries that take longest (docs/OPERATIONS.md, "CI"), started first so that the last
# minute is not one long binary alone; every other binary keeps cargo's order.
SLOW_FIRST = [
    "e2e/tests/history.rs",
    "e2e/tests/spend.rs",
    "aggregator/tests/crash_points.rs",
    "aggregator/src/lib.rs",
    "e2e/tests/ingest_nats_services.rs",
    "e2e/tests/report.rs",
    "payments/tests/portal_browser.rs",
]


def parse_args(argv):
    jobs = int(os.environ.get("TALLY_TEST_JOBS", "2"))
    selection, passthrough, only = [], [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            passthrough = argv[i + 1 :]
            break
        if arg in ("--jobs", "--only"):
            if i + 1 >= len(argv):
                sys.exit(f"cargo_tests.py: {arg} needs a value")
            if arg == "--jobs":
                jobs = int(argv[i + 1])
            else:
                only.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--jobs="):
            jobs = int(arg.split("=", 1)[1])
        else:
            selection.append(arg)
        i += 1
    if jobs < 1:
        sys.exit("cargo_tests.py: --jobs must be at least 1")
    return jobs, selection, passthrough, only


def package_name(binary):
    """The package's name from cargo's package id ("path+file:///dir#name@1.0" or
    "path+file:///name#1.0")."""
    base, _, tail = binary["package_id"].rpartition("#")
    name, _, _ = tail.rpartition("@")
    return name or base.rstrip("/").rsplit("/", 1)[-1]


def selected(binaries, only):
    """`binaries` narrowed to the --only filters (all of them when there are none); exits when
    a filter matches nothing, so a renamed test cannot silently drop out of a run."""
    if not only:
        return binaries
    keep = []
    for spec in only:
        package, _, test = spec.partition(":")
        matched = [
            b
            for b in binaries
            if package_name(b) == package
            and (not test or (b["target"]["name"] == test and "test" in b["target"]["kind"]))
        ]
        if not matched:
            sys.exit(f"cargo_tests.py: --only {spec} matches no test binary")
        keep.extend(b for b in matched if b not in keep)
    return [b for b in binaries if b in keep]


def build(selection):
    """The test executables of `selection`, in cargo's order, or exits with cargo's status."""
    cmd = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics", *selection]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    binaries = []
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-artifact":
            continue
        if not message.get("profile", {}).get("test") or not message.get("executable"):
            continue
        binaries.append(message)
    status = proc.wait()
    if status != 0:
        print(f"cargo_tests.py: {' '.join(cmd)} failed with exit code {status}", flush=True)
        sys.exit(status)
    return binaries


def relative_source(binary):
    manifest_dir = os.path.dirname(binary["manifest_path"])
    root = os.getcwd()
    return os.path.relpath(binary["target"]["src_path"], root), manifest_dir


def order(binaries):
    def rank(binary):
        source, _ = relative_source(binary)
        return SLOW_FIRST.index(source) if source in SLOW_FIRST else len(SLOW_FIRST)

    return sorted(binaries, key=rank)  # stable: cargo's order among the rest


def package_env(binary):
    """The variables cargo sets when it runs a test binary of this package."""
    manifest_dir = os.path.dirname(binary["manifest_path"])
    package_id = binary["package_id"]
    env = dict(os.environ)
    env["CARGO_MANIFEST_DIR"] = manifest_dir
    env["CARGO_CRATE_NAME"] = binary["target"]["name"].replace("-", "_")
    env["CARGO_PKG_NAME"] = package_name(binary)
    env["CARGO_PKG_VERSION"] = package_id.rsplit("#", 1)[-1].rpartition("@")[2]
    env.setdefault("CARGO", "cargo")
    return env


def main():
    jobs, selection, passthrough, only = parse_args(sys.argv[1:])
    binaries = order(selected(build(selection), only))
    lock = threading.Lock()
    failed = []
    started_all = time.monotonic()

    def run(binary):
        source, manifest_dir = relative_source(binary)
        exe = binary["executable"]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [exe, *passthrough],
                cwd=manifest_dir,
                env=package_env(binary),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            output, code = proc.stdout.decode("utf-8", "replace"), proc.returncode
        except OSError as e:  # a binary that cannot start fails alone, the others still run
            output, code = f"cargo_tests.py: cannot run {exe}: {e}\n", 127
        took = time.monotonic() - started
        with lock:
            out = sys.stdout
            out.write(f"     Running {source} ({os.path.relpath(exe)})\n")
            out.write(output)
            out.write(f"cargo_tests.py: {source}: exit code {code} in {took:.1f}s\n")
            out.flush()
            if code != 0:
                failed.append(source)

    alone = [b for b in binaries if relative_source(b)[0] in ALONE]
    for binary in alone:
        run(binary)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in pool.map(run, [b for b in binaries if b not in alone]):
            pass
    took = time.monotonic() - started_all
    print(
        f"cargo_tests.py: {len(binaries)} test binaries, {jobs} at a time, in {took:.0f}s;"
        f" {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}",
        flush=True,
    )
    return 101 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
