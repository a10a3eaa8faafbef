#!/usr/bin/env bash
# The main job, end to end: brings up the local stack (NATS JetStream + ClickHouse from
# Debian's packages), builds the binaries, runs the aggregator, drives synthetic agents for a
# few seconds, rates the usage, invoices it, and prints usage per customer/agent/meter and
# the invoices (also written to out/invoices/*.json).
#
# Settings (environment): DEMO_SECONDS (5), DEMO_RATE events/s (400), DEMO_CUSTOMERS (3),
# DEMO_AGENTS (2), DEMO_DUPLICATE_SHARE (0.05); TALLY_CONFIG (config/tally.toml) and any
# TALLY_<SECTION>__<KEY> override (see README).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "demo: $*" >&2; }

scripts/stack.sh up >&2
log "building the binaries"
cargo build --quiet --bins

export TALLY_CLICKHOUSE__URL="${TALLY_CLICKHOUSE__URL:-http://127.0.0.1:${TALLY_CH_HTTP_PORT:-8123}}"
export TALLY_NATS__URL="${TALLY_NATS__URL:-nats://127.0.0.1:${TALLY_NATS_PORT:-4222}}"
db="${TALLY_CLICKHOUSE__DATABASE:-tally}"
bin=target/debug
mkdir -p .stack/logs out/invoices

"$bin/tally-migrate" >&2

log "starting the aggregator (log: .stack/logs/demo-aggregator.log)"
"$bin/tally-aggregator" >.stack/logs/demo-aggregator.log 2>&1 &
agg=$!
stop_aggregator() {
    if kill -0 "$agg" 2>/dev/null; then
        kill -TERM "$agg" && wait "$agg" || true
    fi
}
trap stop_aggregator EXIT

log "synthetic agents publishing for ${DEMO_SECONDS:-5}s"
"$bin/tally-agents" \
    --seconds "${DEMO_SECONDS:-5}" --rate "${DEMO_RATE:-400}" \
    --customers "${DEMO_CUSTOMERS:-3}" --agents "${DEMO_AGENTS:-2}" \
    --duplicate-share "${DEMO_DUPLICATE_SHARE:-0.05}" \
    --run-id "demo$(date +%s)" --wait-for-consumer aggregator

# Decimal text without trailing zeros (ClickHouse 18.16 prints all 9 places).
dec() { echo "replaceRegexpOne(toString($1), '\\\\.?0+\$', '')"; }

ch() {
    curl -fsS --data-binary "$1" "$TALLY_CLICKHOUSE__URL/?database=$db"
}

echo
echo "== Committed usage this month, from the public view v_usage (all demo runs) =="
ch "SELECT customer, agent, meter, $(dec 'sum(quantity)') AS quantity, sum(event_count) AS events
    FROM v_usage WHERE window_start >= toStartOfMonth(now())
    GROUP BY customer, agent, meter ORDER BY customer, agent, meter FORMAT PrettyCompactMonoBlock"

echo
echo "== Tokens by model and kind =="
ch "SELECT customer, group_values[indexOf(group_names, 'model')] AS model,
           group_values[indexOf(group_names, 'kind')] AS kind, $(dec 'sum(quantity)') AS tokens
    FROM v_usage WHERE meter = 'llm_tokens' AND window_start >= toStartOfMonth(now())
    GROUP BY customer, model, kind ORDER BY customer, model, kind FORMAT PrettyCompactMonoBlock"

log "rating"
"$bin/tally-rater" once >/dev/null
log "invoicing"
"$bin/tally-invoicer" once --out out/invoices --format text >out/invoices/latest.txt

echo
echo "== Invoices (drafts until the period ends; JSON documents in out/invoices/) =="
cat out/invoices/latest.txt
