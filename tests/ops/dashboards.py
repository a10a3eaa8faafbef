"""Reads the dashboards and alert rules in dashboards/: the Prometheus expressions and the
ClickHouse queries they hold, and the Grafana ClickHouse plugin's macros expanded the way the
plugin expands them (so the same SQL runs without Grafana). Shared by the tests in this
directory; it never talks to a server."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES_DIR = DASHBOARDS / "alerts"
PROMETHEUS_UID = "prometheus"
CLICKHOUSE_UID = "clickhouse"


def dashboard_files():
    return sorted(DASHBOARDS.glob("*.json"))


def load(path):
    return json.loads(Path(path).read_text())


def panels(dashboard):
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(kind):
    """(dashboard file, panel title, query) for every target of data source uid `kind`."""
    key = "expr" if kind == PROMETHEUS_UID else "rawSql"
    for path in dashboard_files():
        for panel in panels(load(path)):
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                if uid == kind:
                    yield path.name, panel["title"], target[key]


def rule_files():
    return sorted(RULES_DIR.glob("*.yml"))


def alert_rules():
    """(file, alert name, expr, rule) for every alerting rule."""
    import yaml

    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    yield path.name, rule["alert"], rule["expr"], rule


def recording_rules():
    """(file, recorded name, expr) for every recording rule."""
    import yaml

    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    yield path.name, rule["record"], rule["expr"]


METRIC = re.compile(r"\b(tally_[a-z0-9_]+|up)\b")


def metric_names(expr):
    """The metric names an expression selects (`_bucket` etc. kept as written)."""
    return sorted(set(METRIC.findall(expr)))


def expand_macros(sql, from_secs, to_secs, interval_secs=3600):
    """The grafana-clickhouse-datasource macros this project uses, expanded like the plugin:
    `$__timeFilter(c)`, `$__fromTime`, `$__toTime`, `$__interval_s`. Any other `$` left is an
    error, so a panel cannot use a macro this expansion (and so the test) does not know."""
    sql = re.sub(
        r"\$__timeFilter\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\)",
        lambda m: f"{m.group(1)} >= toDateTime({from_secs}) AND {m.group(1)} <= toDateTime({to_secs})",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({from_secs})")
    sql = sql.replace("$__toTime", f"toDateTime({to_secs})")
    sql = sql.replace("$__interval_s", str(interval_secs))
    if "$" in sql:
        raise ValueError(f"unexpanded macro or variable in: {sql}")
    return sql
