"""The migrations and the public views run, with the same results, on both ClickHouse engines.

DESIGN.md section 3: the SQL must run on ClickHouse 18.16 (Debian's package, what CI and the
local stack use) and on current releases (the docker-compose image). This test applies every
`migrations/*.sql` file, split into statements exactly like the Rust runner
(`platform/src/migrate.rs`), to

- chdb (the `chdb-core` package: a current ClickHouse in process), and
- the ClickHouse server at TALLY_TEST_CLICKHOUSE_URL (default http://127.0.0.1:8123, the
  18.16 server that scripts/stack.sh starts), in a fresh database dropped at the end;

then inserts a small fixed data set into the usage and billing tables and reads every view
declared in the migrations (`CREATE VIEW IF NOT EXISTS <name>`, so new views are covered
without editing this file) in TabSeparatedWithNames with an ORDER BY on every column. Both
engines must return identical text, and the known views must return the hand-computed values
below. The server half is skipped, saying why, only when no server answers.

Engine-conditional migrations follow the runner's rule: a file whose first line is
`-- requires: sql_rbac` is applied only where SQL RBAC exists (ClickHouse 20.5 and later, from
`SELECT version()`), and `{database}` is replaced by the database name. So on 18.16 it is
skipped. On chdb (26.9) the version qualifies, but chdb may have no writeable access storage
(its only user directory is a read-only users.xml): then the test says so and checks instead
that every statement of such a migration parses (`EXPLAIN AST`).

Run: python3 -m unittest discover -s tests/sql -v
"""

import os
from decimal import Decimal
import random
import re
import shutil
import tempfile
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = ROOT / "migrations"
SERVER_URL = os.environ.get("TALLY_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123").rstrip("/")

# --- migrations, as the Rust runner reads them ----------------------------------------------


def migration_files():
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def statements(sql):
    """Mirror of `migrate::statements`: strip `--` comments per line; a statement ends at a
    line ending with `;`."""
    out, cur = [], []
    for line in sql.splitlines():
        code = line.split("--", 1)[0].rstrip()
        if not code.strip():
            continue
        cur.append(code)
        if code.endswith(";"):
            stmt = "\n".join(cur).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            cur = []
    rest = "\n".join(cur).strip()
    if rest:
        out.append(rest)
    return out


def all_statements():
    return [(path.name, stmt) for path in migration_files() for stmt in statements(path.read_text())]


REQUIRES_HEADER = "-- requires:"
KNOWN_REQUIREMENTS = {"sql_rbac": (20, 5)}  # capability: the first (major, minor) that has it


def requirement(sql):
    """Mirror of `migrate::requirement`: the capability named on the first line, or None."""
    lines = sql.splitlines()
    first = lines[0].strip() if lines else ""
    if not first.startswith(REQUIRES_HEADER):
        return None
    name = first[len(REQUIRES_HEADER):].strip()
    if name not in KNOWN_REQUIREMENTS:
        raise AssertionError(f"unknown requirement {name!r} (known: {sorted(KNOWN_REQUIREMENTS)})")
    return name


def server_version(text):
    """(major, minor) from `SELECT version()`."""
    major, minor = text.strip().split(".")[:2]
    return int(major), int(minor)


def substitute(stmt, database):
    """Mirror of `migrate::substitute`."""
    return stmt.replace("{database}", database)


CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*)\)\s*ENGINE\b", re.S | re.I)
ALTER_ADD = re.compile(r"^\s*ALTER\s+TABLE\s+(\w+)\s+(ADD\s+COLUMN\b.*)$", re.S | re.I)
ADD_COLUMN = re.compile(r"^ADD\s+COLUMN\s+(\w+)\s+(.+)$", re.S | re.I)
CREATE_VIEW = re.compile(r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
DROP_VIEW = re.compile(r"^\s*DROP\s+(?:VIEW|TABLE)\s+(?:IF\s+EXISTS\s+)?(\w+)", re.I)


def split_top_level(text):
    """Splits a column list on commas outside parentheses (`Decimal(38, 9)` stays whole)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def table_columns():
    """{table: [(column, type)]} from every CREATE TABLE in the migrations."""
    tables = {}
    for _, stmt in all_statements():
        m = CREATE_TABLE.match(stmt)
        if not m:
            continue
        cols = []
        for part in split_top_level(m.group(2)):
            name, _, ctype = part.partition(" ")
            cols.append((name.strip("`"), ctype.strip()))
        tables[m.group(1)] = cols
    return tables


def added_columns():
    """{table: [(column, type)]} from every `ALTER TABLE ... ADD COLUMN` in the migrations
    (types without their DEFAULT expressions)."""
    added = {}
    for _, stmt in all_statements():
        m = ALTER_ADD.match(stmt)
        if not m:
            continue
        for clause in split_top_level(m.group(2)):
            c = ADD_COLUMN.match(clause.strip())
            if c:
                ctype = re.split(r"\s+DEFAULT\s+", c.group(2).strip(), flags=re.I)[0].strip()
                added.setdefault(m.group(1), []).append((c.group(1), ctype))
    return added


def view_names():
    """Views the migrations leave in place, in the order they are created."""
    views = []
    for _, stmt in all_statements():
        m = CREATE_VIEW.match(stmt)
        if m and m.group(1) not in views:
            views.append(m.group(1))
        d = DROP_VIEW.match(stmt)
        if d and d.group(1) in views:
            views.remove(d.group(1))
    return views


# --- the fixed data set ------------------------------------------------------------------------

W1 = "2026-11-01 10:00:00"  # an hourly window: two committed batches and an aborted one
W2 = "2026-11-01 11:00:00"  # only rows of the aborted batch: must not appear at all
W3 = "2026-11-01 09:00:00"  # an hourly window of a third batch
M1 = "2026-11-01 10:00:00"  # a one-minute window of another customer
TOKENS = dict(group_names=["model", "kind"], group_values=["gpt-4o", "output"], group_key="model=gpt-4o,kind=output")


def reading(batch, event_id, window_start, meter, aggregation, value, customer="acme", window_secs=3600,
            time_ms=0, unique_value="", **extra):
    row = dict(
        customer=customer, agent="support-bot-7", event_id=event_id, meter=meter, aggregation=aggregation,
        window_start=window_start, window_secs=window_secs, time_ms=time_ms, group_names=[], group_values=[],
        group_key="", value=value, unique_value=unique_value, batch_id=batch, inserted_at="2026-11-01 12:00:00",
    )
    row.update(extra)
    return row


# Each inner list is one INSERT (one data part), so FINAL and the views must merge across parts.
FIXTURE = {
    "usage_batches": [
        [dict(batch_id="b1", consumer="aggregator", first_seq=1, last_seq=7, events=7, rollups=5, committed_at="2026-11-01 10:30:00")],
        [dict(batch_id="b2", consumer="aggregator", first_seq=8, last_seq=14, events=7, rollups=5, committed_at="2026-11-01 10:59:00")],
        [dict(batch_id="b0", consumer="aggregator", first_seq=0, last_seq=0, events=2, rollups=2, committed_at="2026-11-01 10:00:00")],
    ],
    # b3 was unfinished when its partition was taken over (or its insert failed): it counts
    # nowhere, although its rows are in every table
    "usage_aborts": [[dict(batch_id="b3", part=0, reason="takeover", aborted_at="2026-11-01 12:00:00")]],
    # Each batch's partials are folded from its readings after the insert (fold_readings.sql).
    "usage_meter_readings": [
        [
            reading("b1", "e1", W1, "tokens", "SUM", "1.5", **TOKENS),
            reading("b1", "e2", W1, "tokens", "SUM", "3", **TOKENS),
            reading("b1", "e3", W1, "tokens", "SUM", "6", **TOKENS),
            *[reading("b1", f"c{i}", W1, "tool_calls", "COUNT", "1") for i in range(1, 5)],
            reading("b1", "l1", W1, "latency_ms", "MIN", "12.5"),
            reading("b1", "l2", W1, "latency_ms", "MIN", "40"),
            reading("b1", "x1", W1, "context_tokens", "MAX", "128000"),
            reading("b1", "u1", W1, "users", "UNIQUE_COUNT", "1", unique_value="alice"),
            reading("b1", "u2", W1, "users", "UNIQUE_COUNT", "1", unique_value="bob"),
            reading("b1", "s1", W1, "seats", "LATEST", "5", time_ms=1000),
            reading("b1", "s2", W1, "seats", "LATEST", "9", time_ms=3000),
        ],
        [
            reading("b2", "e4", W1, "tokens", "SUM", "0.25", **TOKENS),
            reading("b2", "e5", W1, "tokens", "SUM", "4", **TOKENS),
            # the same event id from another agent of the customer: another event
            reading("b2", "e2", W1, "tokens", "SUM", "3", agent="support-bot-8", **TOKENS),
            *[reading("b2", f"c{i}", W1, "tool_calls", "COUNT", "1") for i in range(5, 8)],
            reading("b2", "l3", W1, "latency_ms", "MIN", "7.125"),
            reading("b2", "l4", W1, "latency_ms", "MIN", "90"),
            reading("b2", "x2", W1, "context_tokens", "MAX", "64000"),
            reading("b2", "u3", W1, "users", "UNIQUE_COUNT", "1", unique_value="alice"),
            reading("b2", "s3", W1, "seats", "LATEST", "7", time_ms=2000),
            reading("b2", "g1", M1, "tokens", "SUM", "0.000000001", customer="globex", window_secs=60),
        ],
        [
            reading("b0", "h1", W3, "tokens", "SUM", "1", **TOKENS),
            reading("b0", "h2", W3, "tokens", "SUM", "1.5", **TOKENS),
            reading("b0", "h3", W3, "tool_calls", "COUNT", "1"),
        ],
        [
            # b3: aborted. It counts nowhere.
            reading("b3", "e9", W1, "tokens", "SUM", "1000", **TOKENS),
            reading("b3", "w1", W2, "tokens", "SUM", "50", **TOKENS),
            reading("b3", "s4", W1, "seats", "LATEST", "99", time_ms=9000),
        ],
    ],
    "charges": [
        [
            dict(charge_id="ch-tokens", customer="acme", period_start="2026-11-01 00:00:00", period_end="2026-12-01 00:00:00",
                 meter="tokens", plan_id="ai-standard", plan_version=1, price_model="per_unit", currency="USD",
                 quantity="14.75", unit_price="0.02", amount_minor=30, windows=1, version=1, **TOKENS),
            dict(charge_id="ch-calls", customer="acme", period_start="2026-11-01 00:00:00", period_end="2026-12-01 00:00:00",
                 meter="tool_calls", plan_id="ai-standard", plan_version=1, price_model="graduated", currency="USD",
                 quantity="7", tiers='[{"up_to":"5","unit_price":"0.10"},{"unit_price":"0.05"}]', amount_minor=60,
                 windows=1, version=1),
        ],
        [
            # A recomputation after late usage: same id, higher version. Only this one is visible.
            dict(charge_id="ch-tokens", customer="acme", period_start="2026-11-01 00:00:00", period_end="2026-12-01 00:00:00",
                 meter="tokens", plan_id="ai-standard", plan_version=2, price_model="per_unit", currency="USD",
                 quantity="16.75", unit_price="0.02", amount_minor=34, windows=2, version=2, **TOKENS),
        ],
    ],
    "invoices": [
        [dict(invoice_id="INV-000001", customer="acme", period_start="2026-11-01 00:00:00", period_end="2026-12-01 00:00:00",
              status="draft", currency="USD", subtotal_minor=90, total_minor=90, line_count=2, plan_id="ai-standard",
              plan_version=1, issued_at="2026-12-01 00:05:00", version=1)],
        [dict(invoice_id="INV-000001", customer="acme", period_start="2026-11-01 00:00:00", period_end="2026-12-01 00:00:00",
              status="issued", currency="USD", subtotal_minor=94, total_minor=94, line_count=2, plan_id="ai-standard",
              plan_version=2, issued_at="2026-12-01 00:10:00", version=2)],
    ],
    "invoice_lines": [
        [
            dict(invoice_id="INV-000001", line_no=1, charge_id="ch-tokens", meter="tokens", description="Tokens", quantity="14.75",
                 amount_minor=30, currency="USD", version=1),
            dict(invoice_id="INV-000001", line_no=2, charge_id="ch-calls", meter="tool_calls", description="Tool calls",
                 quantity="7", amount_minor=60, currency="USD", version=1),
        ],
        [dict(invoice_id="INV-000001", line_no=1, charge_id="ch-tokens", meter="tokens", description="Tokens", quantity="16.75",
              amount_minor=34, currency="USD", version=2)],
    ],
    "credit_notes": [
        [dict(credit_note_id="cn_1", invoice_id="INV-000001", customer="acme", currency="USD", amount_minor=20,
              tax_minor=2, reason="late usage correction", lines="[]", actor="invoicer", issued_at_ms=1764720000000,
              issued_at="2025-12-03 00:00:00")],
        [dict(credit_note_id="cn_1", invoice_id="INV-000001", customer="acme", currency="USD", amount_minor=20,
              tax_minor=2, reason="retried", lines="[]", actor="invoicer", issued_at_ms=1764720005000,
              issued_at="2025-12-03 00:00:05")],
    ],
    # the same finalization appended twice (a retried append): the earliest record wins
    "invoice_transitions": [
        [
            dict(transition_id="INV-000001:finalized", invoice_id="INV-000001", seq=1, from_status="draft",
                 to_status="finalized", actor="invoicer:a", reason="grace period passed", at_ms=1764547200000,
                 at="2025-12-01 00:00:00"),
        ],
        [
            dict(transition_id="INV-000001:finalized", invoice_id="INV-000001", seq=1, from_status="draft",
                 to_status="finalized", actor="invoicer:b", reason="grace period passed", at_ms=1764547201000,
                 at="2025-12-01 00:00:01"),
            dict(transition_id="INV-000001:paid", invoice_id="INV-000001", seq=2, from_status="finalized",
                 to_status="paid", actor="payments:webhook", reason="evt_1", at_ms=1764633600000,
                 at="2025-12-02 00:00:00"),
        ],
    ],
    # tally-payments (migration 0016): a failed attempt, then the payment; the payment and one
    # ledger line appended twice (a retried append): the earliest record wins
    "payments": [
        [dict(payment_id="stripe:pi_1:failed:evt_0", invoice_id="INV-000001", customer="acme", gateway="stripe",
              gateway_ref="pi_1", kind="attempt", status="failed", amount_minor=94, currency="USD",
              failure_reason="card_declined", event_id="evt_0", actor="payments:stripe", at_ms=1764630000000,
              at="2025-12-01 23:00:00"),
         dict(payment_id="stripe:pi_1", invoice_id="INV-000001", customer="acme", gateway="stripe", gateway_ref="pi_1",
              kind="payment", status="succeeded", amount_minor=94, currency="USD", event_id="evt_1",
              actor="payments:stripe", at_ms=1764633600000, at="2025-12-02 00:00:00")],
        [dict(payment_id="stripe:pi_1", invoice_id="INV-000001", customer="acme", gateway="stripe", gateway_ref="pi_1",
              kind="payment", status="succeeded", amount_minor=94, currency="USD", event_id="evt_1",
              actor="payments:retry", at_ms=1764633605000, at="2025-12-02 00:00:05")],
    ],
    "ledger_entries": [
        [dict(entry_id="fin:INV-000001#1", journal_id="fin:INV-000001", line_no=1, kind="invoice_finalized",
              account="receivable", currency="USD", debit_minor=94, credit_minor=0, invoice_id="INV-000001",
              customer="acme", actor="payments:sync", at_ms=1764547200000, at="2025-12-01 00:00:00"),
         dict(entry_id="fin:INV-000001#2", journal_id="fin:INV-000001", line_no=2, kind="invoice_finalized",
              account="revenue", currency="USD", debit_minor=0, credit_minor=94, invoice_id="INV-000001",
              customer="acme", actor="payments:sync", at_ms=1764547200000, at="2025-12-01 00:00:00"),
         dict(entry_id="pay:stripe:pi_1#1", journal_id="pay:stripe:pi_1", line_no=1, kind="payment", account="cash",
              currency="USD", debit_minor=94, credit_minor=0, invoice_id="INV-000001", customer="acme",
              actor="payments:stripe", at_ms=1764633600000, at="2025-12-02 00:00:00"),
         dict(entry_id="pay:stripe:pi_1#2", journal_id="pay:stripe:pi_1", line_no=2, kind="payment",
              account="receivable", currency="USD", debit_minor=0, credit_minor=94, invoice_id="INV-000001",
              customer="acme", actor="payments:stripe", at_ms=1764633600000, at="2025-12-02 00:00:00")],
        [dict(entry_id="pay:stripe:pi_1#1", journal_id="pay:stripe:pi_1", line_no=1, kind="payment", account="cash",
              currency="USD", debit_minor=94, credit_minor=0, invoice_id="INV-000001", customer="acme",
              actor="payments:retry", at_ms=1764633605000, at="2025-12-02 00:00:05")],
    ],
    # a promotional grant recorded twice (a retried append: the earliest record wins) and a
    # movement consuming part of it
    "wallet_grants": [
        [dict(grant_id="g-1", customer="acme", currency="USD", amount_minor=500, kind="promotional", priority=50,
              expires_at_ms=1767225600000, reason="launch", actor="api:ops", created_at_ms=1764547200000,
              created_at="2025-12-01 00:00:00")],
        [dict(grant_id="g-1", customer="acme", currency="USD", amount_minor=500, kind="promotional", priority=50,
              expires_at_ms=1767225600000, reason="launch", actor="api:retry", created_at_ms=1764547205000,
              created_at="2025-12-01 00:00:05")],
    ],
    "wallet_movements": [
        [dict(movement_id="m-1", customer="acme", grant_id="g-1", currency="USD", kind="consumed", amount_minor=-94,
              invoice_id="", actor="payments:wallet", at_ms=1764633600000, at="2025-12-02 00:00:00")],
    ],
}

# Hand-computed: what each known view must show (selected columns; the rest are compared
# between engines). Decimals are Decimal(38, 9) printed with all nine places.
EXPECTED = {
    "v_usage": {
        "columns": ["customer", "meter", "aggregation", "window_start", "window_end", "group_key", "quantity", "event_count"],
        "rows": [
            # W3 (09:00) first: b0's partials (1 + 1.5, and one call)
            ["acme", "tokens", "SUM", W3, W1, "model=gpt-4o,kind=output", "2.500000000", "2"],
            ["acme", "tool_calls", "COUNT", W3, W1, "", "1.000000000", "1"],
            # Ordered by every column, window_end (second) first decides: globex's 60 s window.
            ["globex", "tokens", "SUM", M1, "2026-11-01 10:01:00", "", "0.000000001", "1"],
            # b1 + b2 (agent support-bot-7); b3 is aborted.
            ["acme", "context_tokens", "MAX", W1, "2026-11-01 11:00:00", "", "128000.000000000", "2"],  # max(128000, 64000)
            ["acme", "latency_ms", "MIN", W1, "2026-11-01 11:00:00", "", "7.125000000", "4"],  # min(12.5, 40, 7.125, 90)
            ["acme", "seats", "LATEST", W1, "2026-11-01 11:00:00", "", "9.000000000", "3"],  # the value at time 3000
            ["acme", "tokens", "SUM", W1, "2026-11-01 11:00:00", "model=gpt-4o,kind=output", "14.750000000", "5"],  # 1.5+3+6+0.25+4
            ["acme", "tool_calls", "COUNT", W1, "2026-11-01 11:00:00", "", "7.000000000", "7"],  # 4 + 3 events
            ["acme", "users", "UNIQUE_COUNT", W1, "2026-11-01 11:00:00", "", "2.000000000", "3"],  # alice, bob, alice
            # agent support-bot-8 (ordered after support-bot-7): its own e2
            ["acme", "tokens", "SUM", W1, "2026-11-01 11:00:00", "model=gpt-4o,kind=output", "3.000000000", "1"]
        ],
    },
    "v_charges": {
        # amount_before_discounts_minor and amount_with_tax_minor (migration 0006) default to
        # amount_minor for rows written without them; tax_minor to 0
        "columns": ["charge_id", "version", "plan_version", "quantity", "amount_minor", "windows", "tiers",
                    "amount_before_discounts_minor", "tax_minor", "amount_with_tax_minor",
                    "price_currency", "fx_rate"],
        "rows": [
            ["ch-calls", "1", "1", "7.000000000", "60", "1", '[{"up_to":"5","unit_price":"0.10"},{"unit_price":"0.05"}]',
             "60", "0", "60", "USD", ""],
            ["ch-tokens", "2", "2", "16.750000000", "34", "2", "", "34", "0", "34", "USD", ""],  # version 1 is superseded
        ],
    },
    "v_invoices": {
        # status from the lifecycle once recorded (paid, invoice_transitions below); the new
        # columns of migration 0013 default (amount_due_minor to total_minor)
        "columns": ["invoice_id", "status", "subtotal_minor", "total_minor", "version", "number", "tax_minor",
                    "amount_due_minor"],
        "rows": [["INV-000001", "paid", "94", "94", "2", "", "0", "94"]],
    },
    "v_credit_notes": {
        # a retried write of the same credit note collapses: the earliest record wins
        "columns": ["credit_note_id", "invoice_id", "customer", "currency", "amount_minor", "tax_minor", "reason",
                    "issued_at_ms"],
        "rows": [["cn_1", "INV-000001", "acme", "USD", "20", "2", "late usage correction", "1764720000000"]],
    },
    "v_invoice_transitions": {
        "columns": ["transition_id", "to_status", "actor", "at_ms"],
        "rows": [
            ["INV-000001:finalized", "finalized", "invoicer:a", "1764547200000"],
            ["INV-000001:paid", "paid", "payments:webhook", "1764633600000"],
        ],
    },
    "v_invoice_lines": {
        "columns": ["invoice_id", "line_no", "charge_id", "quantity", "amount_minor", "version"],
        "rows": [
            ["INV-000001", "1", "ch-tokens", "16.750000000", "34", "2"],
            ["INV-000001", "2", "ch-calls", "7.000000000", "60", "1"],
        ],
    },
    "v_payments": {
        "columns": ["payment_id", "kind", "status", "amount_minor", "failure_reason", "actor", "at_ms"],
        "rows": [
            ["stripe:pi_1", "payment", "succeeded", "94", "", "payments:stripe", "1764633600000"],
            ["stripe:pi_1:failed:evt_0", "attempt", "failed", "94", "card_declined", "payments:stripe", "1764630000000"],
        ],
    },
    "v_ledger_entries": {
        "columns": ["entry_id", "kind", "account", "debit_minor", "credit_minor", "actor", "at_ms"],
        "rows": [
            ["fin:INV-000001#1", "invoice_finalized", "receivable", "94", "0", "payments:sync", "1764547200000"],
            ["fin:INV-000001#2", "invoice_finalized", "revenue", "0", "94", "payments:sync", "1764547200000"],
            ["pay:stripe:pi_1#1", "payment", "cash", "94", "0", "payments:stripe", "1764633600000"],
            ["pay:stripe:pi_1#2", "payment", "receivable", "0", "94", "payments:stripe", "1764633600000"],
        ],
    },
}


def sql_literal(value, ctype):
    """A VALUES literal for `value` in a column of type `ctype`."""
    if ctype.startswith("Array("):
        inner = ctype[len("Array("):-1]
        return "[" + ", ".join(sql_literal(v, inner) for v in value) + "]"
    if ctype.startswith(("String", "DateTime", "Date", "Decimal")):
        # Decimals go in as strings: parsed exactly, never through a float.
        s = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{s}'"
    if re.match(r"^U?Int\d+$", ctype):
        return str(int(value))
    raise AssertionError(f"no literal rule for column type {ctype}")


def default_for(ctype):
    if ctype.startswith("Array("):
        return []
    if ctype.startswith("DateTime"):
        return "2026-11-01 00:00:00"
    if ctype.startswith("Decimal"):
        return "0"
    if re.match(r"^U?Int\d+$", ctype):
        return 0
    return ""


def insert_statements():
    """INSERTs of FIXTURE, with every column the table was created with (defaults for the rest)
    plus the columns later migrations added that the part's rows name (the others keep their
    DEFAULT expressions)."""
    tables = table_columns()
    added = added_columns()
    out = []
    for table, parts in FIXTURE.items():
        if table not in tables:
            raise AssertionError(f"fixture table {table} is not created by any migration")
        for rows in parts:
            named = {n for row in rows for n in row}
            cols = tables[table] + [(n, t) for n, t in added.get(table, []) if n in named]
            known = {name for name, _ in cols}
            values = []
            for row in rows:
                unknown = set(row) - known
                if unknown:
                    raise AssertionError(f"fixture columns {sorted(unknown)} are not in table {table}")
                values.append("(" + ", ".join(sql_literal(row.get(n, default_for(t)), t) for n, t in cols) + ")")
            names = ", ".join(n for n, _ in cols)
            out.append(f"INSERT INTO {table} ({names}) VALUES " + ", ".join(values))
    return out


# --- engines ------------------------------------------------------------------------------------


class EngineError(Exception):
    pass


class ChdbEngine:
    """ClickHouse in process (chdb-core). A session keeps `USE` and `SET` between queries."""

    name = "chdb"

    def __init__(self, database):
        import chdb.session

        self.dir = tempfile.mkdtemp(prefix="tally-chdb-")
        self.session = chdb.session.Session(self.dir)
        self.database = database
        self.run(f"CREATE DATABASE IF NOT EXISTS {database}")
        self.run(f"USE {database}")
        current = self.query("SELECT currentDatabase()").strip()
        if current != database:
            raise EngineError(f"chdb session did not keep `USE {database}` (current database {current!r})")
        # Print decimals with all their places, like 18.16 does (current releases trim zeros),
        # and read/print DateTime in UTC like the stack's server.
        self.run("SET output_format_decimal_trailing_zeros = 1")
        self.run("SET session_timezone = 'UTC'")

    def run(self, sql):
        return self.query(sql, "TabSeparated")

    def query(self, sql, fmt="TabSeparated"):
        try:
            return str(self.session.query(sql, fmt))
        except Exception as e:  # chdb raises its own ChdbError
            raise EngineError(f"chdb: {e}\n--- statement ---\n{sql}") from None

    def version(self):
        return self.query("SELECT version()").strip()

    def lacks(self, req):
        """Why this engine cannot run a migration requiring `req` although its version
        qualifies, or None. chdb embeds ClickHouse without a writeable access storage."""
        if req != "sql_rbac":
            return None
        probe = f"tally_probe_{random.randrange(16**8):08x}"
        try:
            self.run(f"CREATE ROLE IF NOT EXISTS {probe}")
        except EngineError as e:
            return f"chdb {self.version()} cannot create roles: {str(e).splitlines()[0]}"
        self.run(f"DROP ROLE IF EXISTS {probe}")
        return None

    def close(self):
        self.session.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class HttpEngine:
    """A ClickHouse server over HTTP, in its own database."""

    name = "server"

    def __init__(self, url, database):
        self.url = url
        self.database = database
        self._post(f"CREATE DATABASE {database}", database=None)

    def _post(self, sql, database):
        params = {"database": database} if database else {}
        req = urllib.request.Request(f"{self.url}/?{urllib.parse.urlencode(params)}", data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            raise EngineError(f"server {self.url}: HTTP {e.code}: {e.read().decode().strip()}\n--- statement ---\n{sql}") from None

    def run(self, sql):
        return self._post(sql, self.database)

    def query(self, sql, fmt="TabSeparated"):
        return self._post(f"{sql}\nFORMAT {fmt}", self.database)

    def version(self):
        return self.query("SELECT version()").strip()

    def lacks(self, req):
        return None  # a server at the qualifying version has it

    def close(self):
        self._post(f"DROP DATABASE IF EXISTS {self.database}", database=None)


def server_answers(url):
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=3) as r:
            return r.read().decode().strip() == "Ok."
    except OSError:
        return False


def load(engine):
    """Applies every migration by the runner's rules, then the fixture. Sets
    `engine.outcomes`: {file: "applied" | "skipped: ..." | "parsed only: ..."}."""
    engine.outcomes = {}
    version = server_version(engine.version())
    for path in migration_files():
        sql = path.read_text()
        req = requirement(sql)
        stmts = [substitute(s, engine.database) for s in statements(sql)]
        if req and version < KNOWN_REQUIREMENTS[req]:
            engine.outcomes[path.name] = f"skipped: requires {req}, the server is {version[0]}.{version[1]}"
            continue
        missing = engine.lacks(req) if req else None
        if missing:
            for stmt in stmts:
                engine.query(f"EXPLAIN AST {stmt}")
            engine.outcomes[path.name] = f"parsed only: {missing}"
            continue
        for stmt in stmts:
            try:
                engine.run(stmt)
            except EngineError as e:
                raise EngineError(f"{path.name}: {e}") from None
        engine.outcomes[path.name] = "applied"
    for stmt in insert_statements():
        engine.run(stmt)
    # every fixture batch gets its partials, as the aggregator writes them with its rows
    batches = sorted({row["batch_id"] for part in FIXTURE["usage_meter_readings"] for row in part})
    for batch in batches:
        engine.run(bind(FOLD_SQL.read_text(), f"'{batch}'"))


FOLD_SQL = ROOT / "tests" / "sql" / "fold_readings.sql"


def bind(sql, *values):
    """`sql` without its comment lines, each `?` replaced by the next of `values` (SQL text)."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    parts = text.split("?")
    if len(parts) != len(values) + 1:
        raise AssertionError(f"{len(parts) - 1} parameters, {len(values)} values")
    out = parts[0]
    for value, rest in zip(values, parts[1:]):
        out += str(value) + rest
    return out


def read_view(engine, view):
    """The view's rows as TabSeparatedWithNames text, ordered by every column."""
    described = engine.query(f"DESCRIBE TABLE {view}")
    columns = [line.split("\t")[0] for line in described.splitlines() if line.strip()]
    if not columns:
        raise EngineError(f"{engine.name}: DESCRIBE TABLE {view} returned no columns")
    order = ", ".join(columns)
    return engine.query(f"SELECT * FROM {view} ORDER BY {order}", "TabSeparatedWithNames")


def parse_tsv_with_names(text):
    lines = text.rstrip("\n").split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def describe(engine, view):
    """(name, type) of each view column."""
    text = engine.query(f"DESCRIBE TABLE {view}")
    return [tuple(line.split("\t")[:2]) for line in text.splitlines() if line.strip()]


# --- tests --------------------------------------------------------------------------------------


class MigrationParsing(unittest.TestCase):
    def test_statements_split_like_the_rust_runner(self):
        # The same case as platform/src/migrate.rs `statements_split_on_line_final_semicolons`.
        got = statements("-- header\nCREATE TABLE a (x String) -- c\nENGINE = Memory;\n\nSELECT ';';\nSELECT 1")
        self.assertEqual(got, ["CREATE TABLE a (x String)\nENGINE = Memory", "SELECT ';'", "SELECT 1"])

    def test_the_public_views_are_discovered(self):
        views = view_names()
        for view in EXPECTED:
            self.assertIn(view, views)

    def test_the_requires_header_is_read_like_the_rust_runner(self):
        # The same cases as platform/src/migrate.rs `only_a_first_line_header_makes_a_migration_conditional`.
        self.assertEqual(requirement("-- requires: sql_rbac\nCREATE ROLE r;"), "sql_rbac")
        self.assertIsNone(requirement("-- a comment\n-- requires: sql_rbac\n"))
        self.assertIsNone(requirement("CREATE TABLE t (x UInt8) ENGINE = Memory;"))
        with self.assertRaises(AssertionError):
            requirement("-- requires: time_travel\n")
        self.assertEqual(server_version("18.16.1"), (18, 16))
        self.assertEqual(server_version("26.9.2.1"), (26, 9))
        conditional = [p.name for p in migration_files() if requirement(p.read_text())]
        self.assertIn("0009_service_roles.sql", conditional)

    def test_the_fixture_fits_the_schema(self):
        self.assertEqual(len(insert_statements()), sum(len(parts) for parts in FIXTURE.values()))


class Compat(unittest.TestCase):
    """Loads both engines once; each test reads from them."""

    engines = {}
    server_skip = None

    @classmethod
    def setUpClass(cls):
        cls.engines = {}
        try:
            import chdb.session  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("chdb is not installed: pip install chdb-core") from None
        db = f"compat_{os.getpid()}_{random.randrange(16**8):08x}"
        chdb_engine = ChdbEngine(db)
        cls.engines["chdb"] = chdb_engine
        load(chdb_engine)
        if server_answers(SERVER_URL):
            server = HttpEngine(SERVER_URL, db)
            cls.engines["server"] = server
            load(server)
        else:
            cls.server_skip = f"no ClickHouse server answers at {SERVER_URL}/ping (run scripts/stack.sh up)"

    @classmethod
    def tearDownClass(cls):
        for engine in cls.engines.values():
            engine.close()
        cls.engines = {}

    def engine(self, name):
        if name == "server" and "server" not in self.engines:
            self.skipTest(self.server_skip)
        return self.engines[name]

    def check_expected(self, engine, view):
        rows = parse_tsv_with_names(read_view(engine, view))
        spec = EXPECTED[view]
        got = [[row[c] for c in spec["columns"]] for row in rows]
        self.assertEqual(got, spec["rows"], f"{engine.name} ({engine.version()}): {view}")

    def test_chdb_views_return_the_expected_values(self):
        chdb_engine = self.engine("chdb")
        for view in EXPECTED:
            with self.subTest(view=view):
                self.check_expected(chdb_engine, view)

    def test_server_views_return_the_expected_values(self):
        server = self.engine("server")
        for view in EXPECTED:
            with self.subTest(view=view):
                self.check_expected(server, view)

    def test_every_view_returns_identical_text_on_both_engines(self):
        chdb_engine, server = self.engine("chdb"), self.engine("server")
        views = view_names()
        self.assertTrue(views, "no CREATE VIEW found in migrations/")
        for view in views:
            with self.subTest(view=view):
                a, b = read_view(chdb_engine, view), read_view(server, view)
                self.assertEqual(
                    a, b, f"{view} differs: chdb {chdb_engine.version()} vs server {server.version()}")
                self.assertGreater(len(parse_tsv_with_names(a)), 0, f"{view} returned no rows for the fixture")

    def test_every_view_has_the_same_columns_and_types_on_both_engines(self):
        chdb_engine, server = self.engine("chdb"), self.engine("server")
        for view in view_names():
            with self.subTest(view=view):
                self.assertEqual(describe(chdb_engine, view), describe(server, view))

    def test_conditional_migrations_follow_the_header_rule(self):
        for name in ("chdb", "server"):
            with self.subTest(engine=name):
                engine = self.engine(name)
                version = server_version(engine.version())
                for path in migration_files():
                    req = requirement(path.read_text())
                    outcome = engine.outcomes[path.name]
                    if not req:
                        self.assertEqual(outcome, "applied", path.name)
                    elif version < KNOWN_REQUIREMENTS[req]:
                        self.assertTrue(outcome.startswith("skipped: requires sql_rbac"), outcome)
                    else:
                        self.assertTrue(outcome == "applied" or outcome.startswith("parsed only: "), outcome)
                        if outcome != "applied":
                            # Said explicitly: the grants were parsed, not executed, on this engine.
                            print(f"\n{engine.name}: {path.name} {outcome}")

    def test_uncommitted_batches_count_nowhere(self):
        for name in ("chdb", "server"):
            with self.subTest(engine=name):
                engine = self.engine(name)
                text = engine.query(f"SELECT count() FROM v_usage WHERE window_start = '{W2}'")
                self.assertEqual(text.strip(), "0")
                total = engine.query("SELECT sum(event_count) FROM v_usage")
                self.assertEqual(total.strip(), str(2 + 1 + 1 + 2 + 4 + 3 + 1 + 5 + 7 + 3))
                readings = engine.query("SELECT count() FROM v_usage_readings")
                self.assertEqual(readings.strip(), "29", "each counted (customer, agent, event_id, meter) once")



SEAL_SQL = ROOT / "aggregator" / "sql" / "seal_day.sql"
DAY = 1793491200  # 2026-11-01 00:00:00 UTC


def seal_statement(seal_id, part, day):
    """The aggregator's day seal with its parameters bound: seal id, partition, the day's
    start twice and the next day's start twice."""
    return bind(SEAL_SQL.read_text(), f"'{seal_id}'", part, day, day, day + 86400, day + 86400)


class Sealing(unittest.TestCase):
    """The aggregator's day seal (aggregator/sql/seal_day.sql) on both engines, over the
    fixture: the sealed day holds, per (customer, agent, meter, group), exactly what v_usage
    shows for its windows (aborted batches left out, distinct values merged, LATEST by time),
    and a day without usage seals nothing."""

    def check(self, engine):
        try:
            load(engine)
            engine.run(seal_statement("seal-1", 0, DAY))
            written = int(engine.query("SELECT count() FROM usage_days WHERE seal_id = 'seal-1'").strip())
            # acme: tokens x2 agents, tool_calls, latency, context, users, seats; globex: tokens
            self.assertEqual(written, 8, "day rows")
            day_rows = engine.query(
                "SELECT customer, agent, meter, toString(value_sum), events, toString(value_min), toString(value_max), "
                "toString(latest_value), arraySort(unique_values) FROM usage_days ORDER BY customer, agent, meter")
            view_rows = engine.query(
                "SELECT customer, agent, meter, toString(sum(value_sum)), sum(events), toString(min(value_min)), "
                "toString(max(value_max)), toString(argMax(latest_value, (latest_time_ms, latest_event_id))), "
                "arraySort(groupUniqArrayArray(unique_values)) FROM usage_partials "
                "WHERE batch_id NOT IN (SELECT batch_id FROM usage_aborts) "
                "GROUP BY customer, agent, meter ORDER BY customer, agent, meter")
            self.assertEqual(day_rows, view_rows, "the day holds its counted partials, folded")
            tokens = engine.query(
                "SELECT toString(sum(value_sum)) FROM usage_days WHERE meter = 'tokens' AND customer = 'acme'")
            self.assertEqual(Decimal(tokens.strip()), Decimal("20.25"), "2.5 + 14.75 + 3: the aborted 1050 left out")
            users = engine.query("SELECT length(unique_values) FROM usage_days WHERE meter = 'users'")
            self.assertEqual(users.strip(), "2", "alice and bob, once each")
            engine.run(seal_statement("seal-2", 0, DAY + 86400))
            again = engine.query("SELECT count() FROM usage_days WHERE seal_id = 'seal-2'")
            self.assertEqual(again.strip(), "0", "a day without usage seals nothing")
            other = engine.run(seal_statement("seal-3", 1, DAY))
            self.assertEqual(engine.query("SELECT count() FROM usage_days WHERE seal_id = 'seal-3'").strip(), "0",
                             "another partition's seal takes none of partition 0's rows")
            del other
        finally:
            engine.close()

    def test_sealing_on_chdb(self):
        try:
            import chdb.session  # noqa: F401
        except ImportError:
            self.skipTest("chdb is not installed: pip install chdb-core")
        self.check(ChdbEngine(f"seal_{os.getpid()}_{random.randrange(16**8):08x}"))

    def test_sealing_on_the_server(self):
        if not server_answers(SERVER_URL):
            self.skipTest(f"no ClickHouse server answers at {SERVER_URL}/ping (run scripts/stack.sh up)")
        self.check(HttpEngine(SERVER_URL, f"seal_{os.getpid()}_{random.randrange(16**8):08x}"))


if __name__ == "__main__":
    unittest.main()
