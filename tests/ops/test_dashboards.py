"""The dashboards and alert rules are well formed, before any server runs.

- every dashboard JSON in dashboards/ has a unique uid and title, unique panel ids, panels
  inside the 24-column grid, and every target names a provisioned data source (Prometheus or
  the grafana-clickhouse-datasource plugin) with a non-empty query;
- the Grafana provisioning files point at the folder the dashboards are in and declare the data
  source uids the dashboards use;
- `promtool check rules` accepts every rule file and `promtool check config` a Prometheus
  configuration that loads them (the Debian `prometheus` package, installed by
  scripts/stack.sh with TALLY_TEST_TOOLS=1);
- every alert has a severity, a summary, a runbook link, and a runbook section of that name in
  docs/OPERATIONS.md; every ClickHouse panel reads only public `v_*` views.

Run: python3 -m unittest discover -s tests/ops -v
"""

import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

import dashboards as d
from workspace import ROOT

PROVISIONING = ROOT / "dashboards" / "provisioning"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "barchart", "piechart", "bargauge", "text"}


def promtool():
    path = shutil.which("promtool")
    if path is None:
        raise unittest.SkipTest("promtool is not installed (scripts/stack.sh installs it with TALLY_TEST_TOOLS=1)")
    return path


class DashboardJson(unittest.TestCase):
    def test_there_are_a_pipeline_and_a_usage_billing_dashboard(self):
        uids = {d.load(p)["uid"] for p in d.dashboard_files()}
        self.assertLessEqual({"tally-pipeline", "tally-usage-billing"}, uids)

    def test_uids_and_titles_are_unique(self):
        dashboards = [d.load(p) for p in d.dashboard_files()]
        for key in ("uid", "title"):
            values = [x[key] for x in dashboards]
            self.assertEqual(len(values), len(set(values)), key)

    def test_panels_have_unique_ids_a_known_type_and_fit_the_grid(self):
        for path in d.dashboard_files():
            dashboard = d.load(path)
            ids = [p["id"] for p in d.panels(dashboard)]
            self.assertEqual(len(ids), len(set(ids)), f"{path.name}: duplicate panel ids")
            for panel in d.panels(dashboard):
                with self.subTest(dashboard=path.name, panel=panel.get("title")):
                    self.assertIn(panel["type"], PANEL_TYPES)
                    self.assertTrue(panel.get("title"))
                    pos = panel["gridPos"]
                    self.assertTrue(0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0)
                    if panel["type"] != "row":
                        self.assertTrue(panel.get("targets"), "a data panel needs a query")
                        self.assertTrue(panel.get("description"), "say what the panel shows")

    def test_every_target_names_a_provisioned_data_source_and_has_a_query(self):
        provisioned = {ds["uid"]: ds["type"] for ds in
                       yaml.safe_load((PROVISIONING / "datasources" / "tally.yml").read_text())["datasources"]}
        for path in d.dashboard_files():
            for panel in d.panels(d.load(path)):
                for target in panel.get("targets", []):
                    with self.subTest(dashboard=path.name, panel=panel["title"], ref=target.get("refId")):
                        ds = target.get("datasource") or panel["datasource"]
                        self.assertEqual(provisioned.get(ds["uid"]), ds["type"])
                        query = target.get("expr") if ds["uid"] == d.PROMETHEUS_UID else target.get("rawSql")
                        self.assertTrue(query and query.strip())

    def test_the_dashboard_provider_loads_this_folder(self):
        provider = yaml.safe_load((PROVISIONING / "dashboards" / "tally.yml").read_text())["providers"][0]
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        mounts = compose["services"]["grafana"]["volumes"]
        self.assertIn(f"./dashboards:{provider['options']['path']}:ro", mounts)
        self.assertIn("./dashboards/provisioning:/etc/grafana/provisioning:ro", mounts)

    def test_clickhouse_panels_read_only_public_views(self):
        """Panels read the public views, or the usage partials bounded by the panel's range on
        their sorting key (on ClickHouse 18.16 a filter never reaches inside a view, so a view
        over usage would read all history: README, public SQL views)."""
        tables = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_.]*)", re.I)
        bounded = "toStartOfHour(window_start) >= toStartOfHour($__fromTime)"
        for name, title, sql in d.targets(d.CLICKHOUSE_UID):
            with self.subTest(dashboard=name, panel=title):
                for table in tables.findall(sql):
                    if table in ("usage_partials", "usage_aborts"):
                        self.assertIn(bounded, sql, "usage_partials read without its range")
                        self.assertIn("batch_id NOT IN (SELECT batch_id FROM usage_aborts)", sql)
                    else:
                        self.assertRegex(table, r"^v_[a-z_]+$")

    def test_panels_cover_what_the_issue_asks_for(self):
        titles = {t for p in d.dashboard_files() for t in (x.get("title") for x in d.panels(d.load(p)))}
        for wanted in ["Ingest rate", "Consumer lag", "Batch sizes", "Flush latency",
                       "End-to-end latency (event to committed)", "Dedup hits", "Rejections by reason",
                       "Dead-letter depth", "ClickHouse insert errors", "Rating latency", "Invoicing latency",
                       "Usage by customer", "Usage by agent", "Usage by meter", "Top agents by cost",
                       "Revenue per period", "Invoices by status"]:
            self.assertIn(wanted, titles)


class AlertRules(unittest.TestCase):
    def test_promtool_accepts_every_rule_file(self):
        files = d.rule_files()
        self.assertTrue(files)
        out = subprocess.run([promtool(), "check", "rules", *map(str, files)], capture_output=True, text=True)
        self.assertEqual(0, out.returncode, out.stdout + out.stderr)

    def test_promtool_accepts_a_configuration_loading_the_rules(self):
        config = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            config["rule_files"] = [str(d.RULES_DIR / "*.yml")]
            path = Path(tmp) / "prometheus.yml"
            path.write_text(yaml.safe_dump(config))
            out = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True, text=True)
            self.assertEqual(0, out.returncode, out.stdout + out.stderr)
            self.assertIn("rules found", out.stdout)

    def test_promtool_refuses_a_broken_rule(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            f.write("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(x[5m]) > \n")
            f.flush()
            out = subprocess.run([promtool(), "check", "rules", f.name], capture_output=True, text=True)
            self.assertNotEqual(0, out.returncode)

    def test_recorded_names_follow_the_level_metric_operations_convention(self):
        records = [r for _, r, _ in d.recording_rules()]
        self.assertTrue(records)
        for record in records:
            self.assertRegex(record, r"^tally:[a-z0-9_]+:[a-z0-9_]+$")

    def test_the_issue_s_alerts_exist(self):
        names = {name for _, name, _, _ in d.alert_rules()}
        for wanted in ["TallyConsumerLagHigh", "TallyDeadLetterGrowth", "TallyInvoiceRunLate", "TallyInvoiceRunFailed",
                       "TallyReconciliationDifference", "TallyGatewayErrorRate", "TallyClickHouseInsertErrors"]:
            self.assertIn(wanted, names)

    def test_every_alert_has_labels_a_summary_and_a_runbook_section(self):
        runbooks = OPERATIONS.read_text()
        headings = {h.strip() for h in re.findall(r"^#### (\w+)\s*$", runbooks, re.M)}
        for path, name, _, rule in d.alert_rules():
            with self.subTest(alert=name):
                self.assertIn(rule["labels"]["severity"], {"page", "ticket"})
                self.assertTrue(rule["annotations"]["summary"])
                self.assertEqual(f"docs/OPERATIONS.md#{name.lower()}", rule["annotations"]["runbook"])
                self.assertIn(name, headings, f"docs/OPERATIONS.md needs a '#### {name}' runbook")
                section = runbooks.split(f"#### {name}\n", 1)[1].split("\n#### ", 1)[0]
                self.assertGreater(len(section.split()), 40, f"the runbook of {name} is too short")


if __name__ == "__main__":
    unittest.main()
