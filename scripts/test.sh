#!/usr/bin/env bash
# The test command: brings up the local stack (scripts/stack.sh up), runs the Rust workspace's
# tests against it, then the SQL compatibility test (tests/sql: the migrations and public views
# on chdb and on the stack's ClickHouse 18.16) and the operations tests (tests/ops: compose file,
# dashboards, alert rules, Prometheus against the real services) and the SDK suites (sdk/python with
# pytest, sdk/typescript with node's test runner, both against a real tally-gateway and NATS).
# Runs every suite even when one fails; exits non-zero when any failed. Ports follow
# scripts/stack.sh (TALLY_NATS_PORT, TALLY_CH_HTTP_PORT).
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

# The workspace's test binaries two at a time (scripts/lib/cargo_tests.py: they mostly wait on
# the servers; the fault-injection run still runs alone), then the doc tests; TALLY_TEST_JOBS=1
# runs them one after another as `cargo test` does.
log "scripts/lib/cargo_tests.py --workspace (${TALLY_TEST_JOBS:-2} test binaries at a time), then cargo test --workspace --doc"
set +e
python3 scripts/lib/cargo_tests.py --workspace 2>&1 | tee "$logs/cargo.log"
cargo_status=${PIPESTATUS[0]}
cargo test --workspace --doc 2>&1 | tee -a "$logs/cargo.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || cargo_status=1
log "python3 -m unittest discover -s tests/sql -v"
python3 -m unittest discover -s tests/sql -v 2>&1 | tee "$logs/sql.log"
sql_status=${PIPESTATUS[0]}
# tests/ops: docker-compose.yml against the Compose schema, dashboards and alert rules (promtool),
# every dashboard query on ClickHouse, every PromQL expression against the running services.
log "python3 -m unittest discover -s tests/ops -v"
python3 -m unittest discover -s tests/ops -v 2>&1 | tee "$logs/ops.log"
ops_status=${PIPESTATUS[0]}

# The SDK suites start tally-gateway, tally-migrate, tally-access, tally-rater, tally-spend and
# tally-aggregator as `cargo test` built them for the integration tests (the same command again
# is a no-op), each suite over its own streams and database. When some other test target does
# not compile, the binaries are built by themselves, so the SDK suites still run.
export TALLY_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
cargo test --workspace --no-run --quiet >"$logs/sdk-bins.log" 2>&1
sdk_bins_status=$?
if [ "$sdk_bins_status" -ne 0 ]; then
    log "the workspace's tests did not build; building the SDK suites' binaries alone"
    cargo build --quiet -p tally-ingest -p tally-platform -p tally-rater -p tally-aggregator --bins
    sdk_bins_status=$?
fi

# sdk/python: a virtualenv (git-ignored, sdk/python/.venv; the system python3 when venv is
# missing) with pytest, nats-py, and the OpenTelemetry SDK and its OTLP/HTTP exporter (for
# tests/test_otlp.py: real SDK spans sent to /v1/traces) from PyPI, the package installed from
# its source each run (pip install ./sdk/python), then pytest.
sdk_python() {
    local venv="$ROOT/sdk/python/.venv" py
    local deps=(pytest nats-py opentelemetry-sdk opentelemetry-exporter-otlp-proto-http)
    if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv"; then
        rm -rf "$venv"
    fi
    py="$venv/bin/python"
    [ -x "$py" ] || py=python3
    if ! "$py" -c "import pytest, nats, opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http" 2>/dev/null; then
        log "installing ${deps[*]} (pip)"
        "$py" -m pip install --quiet "${deps[@]}" \
            || "$py" -m pip install --quiet --break-system-packages "${deps[@]}" || return 1
    fi
    "$py" -m pip install --quiet --force-reinstall --no-deps "$ROOT/sdk/python" \
        || "$py" -m pip install --quiet --break-system-packages --force-reinstall --no-deps "$ROOT/sdk/python" \
        || return 1
    "$py" -m pytest -v -p no:cacheprovider "$ROOT/sdk/python/tests"
}
# sdk/typescript: typescript, nats and @types/node from the npm registry (npm ci, as locked),
# compiled by tsc into dist/ and build/, then node --test.
sdk_typescript() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        || { log "node and npm are needed for the TypeScript SDK tests"; return 1; }
    (
        cd "$ROOT/sdk/typescript" || exit 1
        if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
            log "installing typescript, nats and @types/node (npm ci)"
            npm ci --no-audit --no-fund || exit 1
        fi
        rm -rf dist build
        node_modules/.bin/tsc -p tsconfig.json && node_modules/.bin/tsc -p tsconfig.test.json || exit 1
        node --test --test-reporter=tap build/test/*.test.js
    )
}
# run_sdk_suite TITLE LOG COMMAND...: COMMAND's output into LOG, its exit status; failed at once
# when the binaries did not build
run_sdk_suite() {
    local title=$1 out=$2 started=$SECONDS status
    shift 2
    log "$title"
    if [ "$sdk_bins_status" -eq 0 ]; then
        "$@" 2>&1 | tee "$out"
        status=${PIPESTATUS[0]}
    else
        echo "the SDK suites' binaries (tally-gateway, tally-migrate, ...) did not build" | tee "$out"
        status=1
    fi
    log "$title: $((SECONDS - started))s"
    return "$status"
}
run_sdk_suite "sdk/python: pytest sdk/python/tests" "$logs/sdk-python.log" sdk_python
py_status=$?
run_sdk_suite "sdk/typescript: node --test build/test/*.test.js" "$logs/sdk-ts.log" sdk_typescript
ts_status=$?
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
# pytest's closing line ("3 failed, 20 passed, 1 skipped, 2 errors in 3.1s"): "<passed> <failed> <skipped>"
pytest_counts() {
    local line
    line="$(grep -E '[0-9]+ (passed|failed|skipped|errors?)\b.* in [0-9.]+s' "$1" | tail -n 1 || true)"
    count() { { grep -oE "[0-9]+ $1" <<<"$line" || echo 0; } | grep -oE '^[0-9]+' | head -n 1; }
    echo "$(count passed) $(( $(count failed) + $(count 'errors?') )) $(count skipped)"
}
# node's TAP closing lines ("# pass N", "# fail N", "# cancelled N", "# skipped N")
node_counts() {
    count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$2" | tail -n 1 | grep . || echo 0; }
    echo "$(count pass "$1") $(( $(count fail "$1") + $(count cancelled "$1") )) $(count skipped "$1")"
}
read -r py_passed py_failed py_skipped <<<"$(pytest_counts "$logs/sdk-python.log")"
read -r ts_passed ts_failed ts_skipped <<<"$(node_counts "$logs/sdk-ts.log")"

echo
log "cargo test: $cargo_passed passed, $cargo_failed failed, $cargo_ignored ignored (exit $cargo_status)"
log "sql compat: $sql_passed passed, $sql_failed failed, $sql_skipped skipped (exit $sql_status)"
log "ops: $ops_passed passed, $ops_failed failed, $ops_skipped skipped (exit $ops_status)"
log "python sdk: $py_passed passed, $py_failed failed, $py_skipped skipped (exit $py_status)"
log "typescript sdk: $ts_passed passed, $ts_failed failed, $ts_skipped skipped (exit $ts_status)"
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
if [ "$py_status" -ne 0 ] && [ "$py_failed" -eq 0 ]; then
    py_failed=1
fi
if [ "$ts_status" -ne 0 ] && [ "$ts_failed" -eq 0 ]; then
    ts_failed=1
fi
# When a suite failed, what the servers logged as warnings and errors: some failures reach a
# client only as a fixed sentence (NATS's "error creating store for stream") whose cause only
# the server's log holds.
if [ $((cargo_failed + sql_failed + ops_failed + py_failed + ts_failed)) -ne 0 ]; then
    stack_dir="${TALLY_STACK_DIR:-$ROOT/.stack}"
    for server_log in "$stack_dir/nats/nats-server.log" "$stack_dir/clickhouse/log/clickhouse-server.err.log"; do
        [ -f "$server_log" ] || continue
        log "the last warnings and errors in $server_log:"
        grep -E '\[(WRN|ERR|FTL)\]|<Error>|<Fatal>' "$server_log" | tail -n 40 || true
    done
fi
echo "$((cargo_passed + sql_passed + ops_passed + py_passed + ts_passed)) passed, $((cargo_failed + sql_failed + ops_failed + py_failed + ts_failed)) failed, $((cargo_ignored + sql_skipped + ops_skipped + py_skipped + ts_skipped)) skipped"
[ "$cargo_status" -eq 0 ] && [ "$sql_status" -eq 0 ] && [ "$ops_status" -eq 0 ] \
    && [ "$py_status" -eq 0 ] && [ "$ts_status" -eq 0 ]
