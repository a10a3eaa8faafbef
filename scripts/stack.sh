#!/usr/bin/env bash
# The local stack: NATS (JetStream) and ClickHouse from Debian's packages, data under .stack/.
#
# Usage: scripts/stack.sh up|down|status|migrate|reset
#   up       install the servers if missing, start them unless something already answers on
#            their ports, wait until both are healthy, apply the ClickHouse migrations
#   down     stop the servers this script started (pid files under .stack/); data is kept
#   status   for each server: answers or not, pid, port, data dir (exit 1 if one is down)
#   migrate  apply the migrations only (the servers must be up)
#   reset    down, then delete the servers' data and logs under .stack/
#
# Environment (all optional):
#   TALLY_NATS_PORT (4222)  TALLY_NATS_MONITOR_PORT (8222)
#   TALLY_CH_HTTP_PORT (8123)  TALLY_CH_TCP_PORT (9000)
#   TALLY_STACK_WAIT_SECS (60): how long `up` waits for a server to become healthy
#   TALLY_NATS_MAX_FILE_STORE (1T): JetStream's storage limit (scripts/lib/servers.sh)
#   TALLY_STACK_DIR (.stack): where pid files, logs and data go
#   TALLY_CONFIG: configuration file for tally-migrate (default config/tally.toml)
#
# Idempotent: a server that already answers on its port (started by an earlier `up`, by CI or
# by hand) is used as it is and never started twice. See docs/OPERATIONS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STACK_DIR="${TALLY_STACK_DIR:-$ROOT/.stack}"
NATS_DIR="$STACK_DIR/nats"
CH_DIR="$STACK_DIR/clickhouse"
NATS_PID_FILE="$NATS_DIR/nats-server.pid"
CH_PID_FILE="$CH_DIR/clickhouse-server.pid"
NATS_LOG="$NATS_DIR/nats-server.log"
CH_LOG="$CH_DIR/log/clickhouse-server.log"
CH_ERR_LOG="$CH_DIR/log/clickhouse-server.err.log"
CH_STDOUT_LOG="$CH_DIR/log/stdout.log"

NATS_PORT="${TALLY_NATS_PORT:-4222}"
NATS_MONITOR_PORT="${TALLY_NATS_MONITOR_PORT:-8222}"
CH_HTTP_PORT="${TALLY_CH_HTTP_PORT:-8123}"
CH_TCP_PORT="${TALLY_CH_TCP_PORT:-9000}"
WAIT_SECS="${TALLY_STACK_WAIT_SECS:-60}"
STOP_WAIT_SECS=60

log() { echo "stack: $*"; }
warn() { echo "stack: warning: $*" >&2; }
die() { echo "stack: error: $*" >&2; exit 1; }
log_prefix() { echo "stack: "; }
# shellcheck source=lib/servers.sh
. "$ROOT/scripts/lib/servers.sh"

for setting in TALLY_NATS_PORT:"$NATS_PORT" TALLY_NATS_MONITOR_PORT:"$NATS_MONITOR_PORT" \
    TALLY_CH_HTTP_PORT:"$CH_HTTP_PORT" TALLY_CH_TCP_PORT:"$CH_TCP_PORT" TALLY_STACK_WAIT_SECS:"$WAIT_SECS"; do
    value="${setting#*:}"
    if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt 1 ] || [ "$value" -gt 65535 ]; then
        die "${setting%%:*}=$value is not a number between 1 and 65535"
    fi
done

# --- probes -------------------------------------------------------------------------------

ch_answers() {
    [ "$(http_get "http://127.0.0.1:$CH_HTTP_PORT/ping" || true)" = "Ok." ]
}

nats_healthy() {
    http_get "http://127.0.0.1:$NATS_MONITOR_PORT/healthz" | grep -q '"ok"'
}

# NATS "answers" when its client port greets with INFO; healthz is checked separately since
# a server started elsewhere may run without the monitoring port.
nats_answers() {
    nats_info "$NATS_PORT" | grep -q '^INFO '
}

# --- installation -------------------------------------------------------------------------

# --- starting -----------------------------------------------------------------------------

start_nats() {
    local bin
    bin="$(find_bin nats-server)"
    mkdir -p "$NATS_DIR"
    log "starting nats-server on 127.0.0.1:$NATS_PORT (monitoring $NATS_MONITOR_PORT, store $NATS_DIR)"
    setsid "$bin" -c "$(write_nats_store_config "$NATS_DIR/jetstream.conf")" \
        -js -sd "$NATS_DIR" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
        -l "$NATS_LOG" </dev/null >>"$NATS_DIR/stdout.log" 2>&1 9>&- &
    echo $! >"$NATS_PID_FILE"
    echo "$NATS_PORT $NATS_MONITOR_PORT" >"$NATS_DIR/ports"
}

start_clickhouse() {
    local bin
    bin="$(find_bin clickhouse-server)"
    write_clickhouse_config "$CH_DIR" "$CH_HTTP_PORT" "$CH_TCP_PORT" ""
    log "starting clickhouse-server on 127.0.0.1:$CH_HTTP_PORT (tcp $CH_TCP_PORT, data $CH_DIR/data)"
    setsid "$bin" --config-file="$CH_DIR/config.xml" </dev/null >>"$CH_STDOUT_LOG" 2>&1 9>&- &
    echo $! >"$CH_PID_FILE"
    echo "$CH_HTTP_PORT $CH_TCP_PORT" >"$CH_DIR/ports"
}

# Fails when the server this script started from $STACK_DIR listens on other ports than asked:
# one data dir serves one server at a time.
same_ports() {
    local file="$1" wanted="$2" name="$3" recorded
    recorded="$(cat "$file" 2>/dev/null || echo unknown)"
    if [ "$recorded" != "$wanted" ]; then
        die "$name from $STACK_DIR is already running on ports $recorded (asked for $wanted); run scripts/stack.sh down with the same TALLY_* ports first, or set TALLY_STACK_DIR"
    fi
}

# Decides what to do with one server: "running", "starting" (our process, not healthy yet)
# or "start". Fails when the port is taken by something that is not the expected server.
plan_nats() {
    if nats_answers; then
        require_jetstream
        echo running
    elif [ -n "$(live_pid "$NATS_PID_FILE" nats-server)" ]; then
        same_ports "$NATS_DIR/ports" "$NATS_PORT $NATS_MONITOR_PORT" nats-server
        echo starting
    elif port_open "$NATS_PORT"; then
        die "port $NATS_PORT is in use but does not answer like a NATS server; set TALLY_NATS_PORT"
    elif port_open "$NATS_MONITOR_PORT"; then
        die "monitoring port $NATS_MONITOR_PORT is in use by something else; set TALLY_NATS_MONITOR_PORT"
    else
        echo start
    fi
}

plan_clickhouse() {
    if ch_answers; then
        echo running
    elif [ -n "$(live_pid "$CH_PID_FILE" clickhouse-server)" ]; then
        same_ports "$CH_DIR/ports" "$CH_HTTP_PORT $CH_TCP_PORT" clickhouse-server
        echo starting
    elif port_open "$CH_HTTP_PORT"; then
        die "port $CH_HTTP_PORT is in use but does not answer like ClickHouse (/ping); set TALLY_CH_HTTP_PORT"
    elif port_open "$CH_TCP_PORT"; then
        die "port $CH_TCP_PORT is in use by something else; set TALLY_CH_TCP_PORT"
    else
        echo start
    fi
}

require_jetstream() {
    if ! nats_info "$NATS_PORT" | grep -q '"jetstream":true'; then
        die "the NATS server on port $NATS_PORT runs without JetStream; stop it or set TALLY_NATS_PORT"
    fi
}

# --- migrations ---------------------------------------------------------------------------

# The configuration tally-migrate reads: TALLY_CONFIG, config/tally.toml, or a minimal file
# generated under .stack/ when the repository has none yet.
migrate_config() {
    if [ -n "${TALLY_CONFIG:-}" ]; then
        echo "$TALLY_CONFIG"
    elif [ -f "$ROOT/config/tally.toml" ]; then
        echo "$ROOT/config/tally.toml"
    else
        mkdir -p "$STACK_DIR"
        cat >"$STACK_DIR/tally.toml" <<EOF
# Generated by scripts/stack.sh because config/tally.toml does not exist.
[clickhouse]
url = "http://127.0.0.1:$CH_HTTP_PORT"
database = "tally"

[nats]
url = "nats://127.0.0.1:$NATS_PORT"
EOF
        echo "$STACK_DIR/tally.toml"
    fi
}

cmd_migrate() {
    ch_answers || die "ClickHouse does not answer on port $CH_HTTP_PORT; run scripts/stack.sh up"
    local config
    config="$(migrate_config)"
    log "applying migrations (config $config, clickhouse http://127.0.0.1:$CH_HTTP_PORT)"
    TALLY_CONFIG="$config" TALLY_CLICKHOUSE__URL="http://127.0.0.1:$CH_HTTP_PORT" \
        cargo run --quiet -p tally-platform --bin tally-migrate
}

# --- commands -----------------------------------------------------------------------------

cmd_up() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/stack.lock"
    flock -w 120 9 || die "another scripts/stack.sh holds $STACK_DIR/stack.lock"

    local nats_plan ch_plan missing=()
    nats_plan="$(plan_nats)"
    ch_plan="$(plan_clickhouse)"
    if [ "$nats_plan" = start ] && [ -z "$(find_bin nats-server)" ]; then missing+=(nats-server); fi
    if [ "$ch_plan" = start ] && [ -z "$(find_bin clickhouse-server)" ]; then missing+=(clickhouse-server); fi
    # curl: the health probes here and scripts/demo.sh's queries.
    [ -n "$(find_bin curl)" ] || missing+=(curl)
    # The test suite's tools (TALLY_TEST_TOOLS=1, set by scripts/test.sh): Prometheus and
    # promtool for the metrics and alert-rule tests, headless Chromium for the portal test,
    # pdftotext for the invoice PDF tests and the fonts they embed (DejaVu Sans: Latin, Arabic;
    # Droid Sans Fallback: Japanese), nginx for the TLS-terminating proxy test; python3 for tests/sql and tests/ops, PyYAML for
    # tests/ops, and pip where scripts/test.sh still has to install chdb-core. Same single
    # apt-get run as the servers.
    if [ "${TALLY_TEST_TOOLS:-0}" = 1 ]; then
        [ -n "$(find_bin promtool)" ] || missing+=(prometheus)
        [ -n "$(find_bin chromium)" ] || missing+=(chromium)
        [ -n "$(find_bin pdftotext)" ] || missing+=(poppler-utils)
        [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
        [ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || missing+=(fonts-droid-fallback)
        [ -n "$(find_bin nginx)" ] || missing+=(nginx-light)
        [ -n "$(find_bin python3)" ] || missing+=(python3)
        python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
        if ! python3 -c 'import chdb' 2>/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
            missing+=(python3-pip)
        fi
    fi
    install_packages "${missing[@]}"

    case "$nats_plan" in
        running) log "nats-server already answers on port $NATS_PORT; not starting another" ;;
        starting) log "nats-server (pid $(live_pid "$NATS_PID_FILE" nats-server)) is starting" ;;
        start) start_nats ;;
    esac
    case "$ch_plan" in
        running) log "clickhouse-server already answers on port $CH_HTTP_PORT; not starting another" ;;
        starting) log "clickhouse-server (pid $(live_pid "$CH_PID_FILE" clickhouse-server)) is starting" ;;
        start) start_clickhouse ;;
    esac

    wait_for "nats-server" nats_answers "$NATS_PID_FILE" nats-server "$NATS_LOG" "$NATS_DIR/stdout.log"
    require_jetstream
    wait_for "nats-server monitoring on port $NATS_MONITOR_PORT" nats_healthy "$NATS_PID_FILE" nats-server "$NATS_LOG"
    log "nats-server healthy: nats://127.0.0.1:$NATS_PORT, http://127.0.0.1:$NATS_MONITOR_PORT/healthz"
    wait_for "clickhouse-server" ch_answers "$CH_PID_FILE" clickhouse-server "$CH_ERR_LOG" "$CH_STDOUT_LOG"
    log "clickhouse-server healthy: http://127.0.0.1:$CH_HTTP_PORT ($(http_get "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%20version()" || echo '?'))"

    flock -u 9
    cmd_migrate
    log "up"
}

# stop NAME PID_FILE PROGRAM PORT
stop_server() {
    local name="$1" pid_file="$2" program="$3" port="$4" pid
    pid="$(live_pid "$pid_file" "$program")"
    if [ -z "$pid" ]; then
        rm -f "$pid_file"
        if port_open "$port"; then
            log "$name on port $port was not started by stack.sh; leaving it running"
        else
            log "$name is not running"
        fi
        return 0
    fi
    log "stopping $name (pid $pid)"
    stop_pid "$name" "$pid"
    rm -f "$pid_file"
}

cmd_down() {
    stop_server nats-server "$NATS_PID_FILE" nats-server "$NATS_PORT"
    stop_server clickhouse-server "$CH_PID_FILE" clickhouse-server "$CH_HTTP_PORT"
}

# status_line NAME ANSWERS PID_FILE PROGRAM PORTS DATA
status_line() {
    local name="$1" answers="$2" pid_file="$3" program="$4" ports="$5" data="$6" pid
    pid="$(live_pid "$pid_file" "$program")"
    printf '%-18s %-8s pid %-16s %-28s data %s\n' "$name" "$answers" "${pid:-"-"}${pid:+" (stack.sh)"}" "$ports" "$data"
}

cmd_status() {
    local ok=0 nats="down" ch="down" pid
    if nats_answers; then
        nats="up"
        nats_healthy || nats="up (no healthz)"
    else
        ok=1
    fi
    if ch_answers; then ch="up"; else ok=1; fi
    status_line nats-server "$nats" "$NATS_PID_FILE" nats-server \
        "port $NATS_PORT, monitor $NATS_MONITOR_PORT" "$NATS_DIR/jetstream"
    status_line clickhouse-server "$ch" "$CH_PID_FILE" clickhouse-server \
        "http $CH_HTTP_PORT, tcp $CH_TCP_PORT" "$CH_DIR/data"
    for pair in "nats-server:$NATS_PID_FILE:$NATS_PORT" "clickhouse-server:$CH_PID_FILE:$CH_HTTP_PORT"; do
        IFS=: read -r name file port <<<"$pair"
        pid="$(live_pid "$file" "$name")"
        if [ -z "$pid" ] && port_open "$port"; then
            echo "  note: $name on port $port was not started by stack.sh (data dir unknown)"
        fi
    done
    return "$ok"
}

cmd_reset() {
    cmd_down
    if nats_answers || ch_answers; then
        die "a server still answers on the stack's ports (not started by stack.sh); not deleting data"
    fi
    log "deleting $NATS_DIR and $CH_DIR"
    rm -rf "$NATS_DIR" "$CH_DIR" "$STACK_DIR/tally.toml"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    migrate) cmd_migrate ;;
    reset) cmd_reset ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
