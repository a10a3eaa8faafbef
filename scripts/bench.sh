#!/usr/bin/env bash
# The benchmarks of issue 9 in one run: every scenario next to a baseline measured in the same
# run, written to docs/bench/report.md and docs/bench/report.json (see docs/BENCHMARKS.md).
# Needs the local stack (scripts/stack.sh up); uses its own streams and databases and removes
# them afterwards. Usage: scripts/bench.sh [--quick] [--out DIR]
#   --quick   every scenario tiny (checks the harness in well under 2 minutes)
#   --out     where the reports go (default docs/bench)
# scripts/bench.sh cluster [--events N] [--duplicate-share S] [--latency-events N]: the
# pipeline scenarios on the cluster profile instead (scripts/cluster.sh up first), next to raw
# JetStream R3 in the same run; prints a markdown table (docs/BENCHMARKS.md, "On the cluster").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tally-benches --bin tally-bench
if [ "${1:-}" = cluster ]; then
    shift
    eval "$(scripts/cluster.sh env)"
    exec ./target/release/tally-bench cluster "$@"
fi
exec ./target/release/tally-bench report --out docs/bench "$@"
