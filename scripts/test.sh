#!/usr/bin/env bash
# The test command: brings up the local stack (scripts/stack.sh up), runs the Rust workspace's
# tests against it, then the SQL compatibility test (tests/sql: the migrations and public views
# on chdb and on the stack's ClickHouse 18.16) and the operations tests (tests/ops: compose file,
# dashboards, alert rules, Prometheus against the real services). Runs every suite even when one
# fails; exits non-zero when any failed. Ports follow scripts/stack.sh (TALLY_NATS_PORT,
# TALLY_CH_HTTP_PORT).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "test: $*"; }

log "bringing up the local stack"
TALLY_TEST_TOOLS=1 scripts/stack.sh up

export TALLY_TEST_NATS_URL="nats://127.0.0.1:${TALLY_NATS_PORT:-4222}"
export TALLY_TEST_CLICKHOUSE_URL="http://127.0.0.1:${TALLY_CH_HTTP_PORT:-8123}"
log "TALLY_TEST_NATS_URL=$TALLY_TEST_NATS_URL TALLY_TEST_CLICKHOUSE_URL=$TALLY_TEST_CLICKHOUSE_URL"

if ! python3 -c "import chdb" 2>/dev/null; then
    log "installing chdb-core (pip)"
    python3 -m pip install --quiet chdb-core \
        || python3 -m pip install --quiet --break-system-packages chdb-core
fi

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

log "cargo test --workspace --no-fail-fast"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$logs/cargo.log"
cargo_status=${PIPESTATUS[0]}
log "python3 -m unittest discover -s tests/sql -v"
python3 -m unittest discover -s tests/sql -v 2>&1 | tee "$logs/sql.log"
sql_status=${PIPESTATUS[0]}
# tests/ops: docker-compose.yml against the Compose schema, dashboards and alert rules (promtool),
# every dashboard query on ClickHouse, every PromQL expression against the running services.
log "python3 -m unittest discover -s tests/ops -v"
python3 -m unittest discover -s tests/ops -v 2>&1 | tee "$logs/ops.log"
ops_status=${PIPESTATUS[0]}
set -e

# One summary for both runners: cargo's "test result:" lines and unittest's closing lines.
cargo_counts="$(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i
        }
    } END { printf "%d %d %d", p, f, s }' "$logs/cargo.log")"
read -r cargo_passed cargo_failed cargo_ignored <<<"$cargo_counts"
# unittest's closing lines of one log: "<passed> <failed> <skipped>"
unittest_counts() {
    local ran tail
    ran="$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1/p' "$1" | tail -n 1)"
    tail="$(grep -E '^(OK|FAILED)' "$1" | tail -n 1 || true)"
    count() {
        local v
        v="$(sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$tail")"
        echo "${v:-0}"
    }
    local failed=$(( $(count failures) + $(count errors) )) skipped
    skipped="$(count skipped)"
    echo "$(( ${ran:-0} - failed - skipped )) $failed $skipped"
}
read -r sql_passed sql_failed sql_skipped <<<"$(unittest_counts "$logs/sql.log")"
read -r ops_passed ops_failed ops_skipped <<<"$(unittest_counts "$logs/ops.log")"

echo
log "cargo test: $cargo_passed passed, $cargo_failed failed, $cargo_ignored ignored (exit $cargo_status)"
log "sql compat: $sql_passed passed, $sql_failed failed, $sql_skipped skipped (exit $sql_status)"
log "ops: $ops_passed passed, $ops_failed failed, $ops_skipped skipped (exit $ops_status)"
if [ "$cargo_status" -ne 0 ] && [ "$cargo_failed" -eq 0 ]; then
    log "cargo test failed before running every test (build error?); see the output above"
    cargo_failed=1
fi
if [ "$sql_status" -ne 0 ] && [ "$sql_failed" -eq 0 ]; then
    sql_failed=1
fi
if [ "$ops_status" -ne 0 ] && [ "$ops_failed" -eq 0 ]; then
    ops_failed=1
fi
echo "$((cargo_passed + sql_passed + ops_passed)) passed, $((cargo_failed + sql_failed + ops_failed)) failed, $((cargo_ignored + sql_skipped + ops_skipped)) skipped"
[ "$cargo_status" -eq 0 ] && [ "$sql_status" -eq 0 ] && [ "$ops_status" -eq 0 ]
