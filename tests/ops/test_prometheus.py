"""Every Prometheus expression of a dashboard panel or an alert rule is valid and returns series
scraped from the real services.

Starts the real binaries (tally-migrate, then tally-aggregator, tally-gateway, tally-rater,
tally-invoicer and tally-payments) with the production profile (config/profiles/production.toml)
on free ports, their own ClickHouse database and JetStream streams; drives usage through them
(synthetic agents over NATS, good and bad events over the gateway's HTTP API, and a forged
webhook to tally-payments); starts
Prometheus (Debian's `prometheus` package) scraping every service each second with the alert
rules of dashboards/alerts/ loaded; then, through Prometheus' HTTP API:

- every dashboard panel expression must evaluate and return at least one series, and every
  metric it names must have series or be declared in a crate's metrics.rs;
- every alert expression must evaluate, every metric it names must have series, and Prometheus
  must report the rule's health as `ok`;
- every service answers `/healthz` and `/readyz` with 200 on its metrics address.

Every counter an alert reads is declared at zero by its service, so it has series on a healthy
stack too. Skipped, saying why, when prometheus, NATS or
ClickHouse is missing.

Run: python3 -m unittest discover -s tests/ops -v
"""

import json
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import yaml

import dashboards as d
import services
from workspace import ROOT

SCRAPE_SECS = 1
SETTLE_TIMEOUT_SECS = 90


def prometheus_binary():
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


class Prometheus:
    def __init__(self, stack, workdir):
        self.port = services.free_port()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECS}s", "evaluation_interval": f"{SCRAPE_SECS}s"},
            "rule_files": [str(p) for p in d.rule_files()],
            "scrape_configs": [
                {"job_name": f"tally-{service}", "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"service": service}}]}
                for service, port in stack.ports.items()
            ],
        }
        path = Path(workdir) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(Path(workdir) / "prometheus.log", "w")
        self.proc = subprocess.Popen([
            prometheus_binary(), f"--config.file={path}", f"--storage.tsdb.path={Path(workdir) / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}")
            if services.reachable(f"{self.url}/-/ready"):
                return
            time.sleep(0.2)
        raise RuntimeError("prometheus not ready in time")

    def api(self, path, **params):
        status, body = services.http(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10)
        return status, json.loads(body)

    def query(self, expr):
        """(status, [series]) of an instant query."""
        status, body = self.api("query", query=expr)
        return body.get("status"), body.get("data", {}).get("result", []), body.get("error")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def event(customer, agent, n, tokens="12"):
    return {"specversion": "1.0", "id": f"ops-{n}-{time.time_ns()}", "source": agent, "subject": customer,
            "type": "llm.tokens", "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": {"tokens": tokens, "model": "gpt-4o", "kind": "output"}}


class PrometheusAgainstTheServices(unittest.TestCase):
    stack = prom = None

    @classmethod
    def setUpClass(cls):
        if prometheus_binary() is None:
            raise unittest.SkipTest("prometheus is not installed (scripts/stack.sh installs it with TALLY_TEST_TOOLS=1)")
        if not services.nats_answers():
            raise unittest.SkipTest(f"no NATS server at {services.NATS_URL}")
        if not services.reachable(f"{services.CLICKHOUSE_URL}/ping"):
            raise unittest.SkipTest(f"no ClickHouse server at {services.CLICKHOUSE_URL}")
        services.build()
        cls.workdir = tempfile.mkdtemp(prefix="tally-prom-")
        cls.stack = services.Stack("prom", profile="production")
        try:
            cls.stack.migrate()
            cls.stack.start()
            cls.stack.wait_ready()
            cls.drive_usage()
            cls.prom = Prometheus(cls.stack, cls.workdir)
            cls.prom.wait_ready()
            cls.settle()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.prom:
            cls.prom.stop()
        if cls.stack:
            cls.stack.cleanup()
        shutil.rmtree(getattr(cls, "workdir", ""), ignore_errors=True)

    @classmethod
    def drive_usage(cls):
        """Agents over NATS for a while (so the aggregator flushes after its 5 s lag sampling
        period), and good, duplicate and bad events over the gateway."""
        cls.agents = cls.stack.agents(seconds=10, rate=200)
        key = cls.stack.gateway_key("ops-acme")
        url = f"http://127.0.0.1:{cls.stack.gateway_port}/v1/events"
        headers = {"authorization": f"Bearer {key}", "content-type": "application/cloudevents-batch+json"}
        deadline = time.monotonic() + 30
        good = [event("ops-acme", "bot-1", i) for i in range(5)]
        while True:  # the gateway loads new keys every key_refresh_secs (1 s here)
            status, body = services.http(url, data=json.dumps(good).encode(), headers=headers)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        cls.gateway_answer = (status, body)
        bad = [good[0], {**event("ops-acme", "bot-1", 99), "time": "yesterday"}]
        cls.gateway_bad = services.http(url, data=json.dumps(bad).encode(), headers=headers)
        # the invoicer also reconciles after every pass; this is the operator's on-demand report
        invoicer_api = f"http://{cls.stack.env['TALLY_INVOICER__API_ADDR']}"
        reader = {"Authorization": f"Bearer {cls.stack.api_token('reader')}"}
        cls.reconciliation = services.http(f"{invoicer_api}/v1/reconciliation", headers=reader, timeout=30)
        payments = f"http://127.0.0.1:{cls.stack.payments_port}"
        cls.payments_health = services.http(f"{payments}/healthz")
        cls.payments_forged = services.http(f"{payments}/webhooks/stripe", data=b'{"id":"evt_forged"}',
                                            headers={"stripe-signature": "t=1,v1=00"})

    @classmethod
    def settle(cls):
        """Waits until every panel expression has series (or the timeout: the tests then show
        which have none), and until the agents are done."""
        exprs = [e for _, _, e in d.targets(d.PROMETHEUS_UID)]
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECS
        while time.monotonic() < deadline:
            missing = [e for e in exprs if not cls.prom.query(e)[1]]
            if not missing and cls.agents.poll() is not None:
                break
            time.sleep(1)
        # two more evaluations so every rule has been evaluated on the final data
        time.sleep(2 * SCRAPE_SECS + 1)

    def test_the_gateway_accepted_and_refused_events(self):
        status, body = self.gateway_answer
        self.assertEqual(200, status, body)
        self.assertEqual(5, json.loads(body)["accepted"])
        status, body = self.gateway_bad
        answer = json.loads(body)
        self.assertEqual(1, answer["duplicates"], body)
        self.assertEqual(1, answer["rejected"], body)

    def test_the_invoicer_reconciled_without_difference(self):
        self.assertEqual(200, self.reconciliation[0], self.reconciliation)
        _, result, _ = self.prom.query("max(tally_invoicer_reconciliation_difference_minor)")
        self.assertEqual(0.0, float(result[0]["value"][1]))

    def test_payments_answered_and_refused_a_forged_webhook(self):
        self.assertEqual(200, self.payments_health[0], self.payments_health)
        self.assertEqual(400, self.payments_forged[0], self.payments_forged)
        _, result, _ = self.prom.query('sum(tally_payments_webhooks_refused_total{reason="signature"})')
        self.assertEqual(1.0, float(result[0]["value"][1]))

    def test_every_metric_a_panel_names_is_exported_or_declared(self):
        """A panel may read a counter its owner declares on first use only (`or vector(0)`);
        its name must then still be declared in a metrics.rs, so a typo cannot hide."""
        declared = "".join(p.read_text() for p in ROOT.glob("*/src/**/metrics.rs"))
        for name, title, expr in d.targets(d.PROMETHEUS_UID):
            for metric in d.metric_names(expr):
                if metric == "up" or self.prom.query(metric)[1]:
                    continue
                with self.subTest(dashboard=name, panel=title, metric=metric):
                    base = metric.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                    self.assertIn(f'"{base}"', declared, f"{metric}: no series and declared nowhere")

    def test_every_service_is_scraped(self):
        status, result, _ = self.prom.query('up{job=~"tally-.*"} == 1')
        self.assertEqual("success", status)
        self.assertEqual({f"tally-{s}" for s in self.stack.SERVICES}, {r["metric"]["job"] for r in result})

    def test_every_service_answers_healthz_and_readyz(self):
        for service in self.stack.SERVICES:
            with self.subTest(service=service):
                self.assertEqual((200, "ok\n"), services.http(self.stack.metrics_url(service, "/healthz")))
                self.assertEqual((200, "ready\n"), services.http(self.stack.metrics_url(service, "/readyz")))
                self.assertEqual(404, services.http(self.stack.metrics_url(service, "/nothing"))[0])

    def test_every_dashboard_expression_is_valid_and_returns_series(self):
        exprs = list(d.targets(d.PROMETHEUS_UID))
        self.assertGreater(len(exprs), 20)
        for name, title, expr in exprs:
            with self.subTest(dashboard=name, panel=title, expr=expr):
                status, result, error = self.prom.query(expr)
                self.assertEqual("success", status, error)
                self.assertTrue(result, "no series")

    def test_every_alert_expression_is_valid_and_its_metrics_have_series(self):
        for _, alert, expr, _ in d.alert_rules():
            with self.subTest(alert=alert, expr=expr):
                status, _, error = self.prom.query(expr)
                self.assertEqual("success", status, error)
                for metric in d.metric_names(expr):
                    self.assertTrue(self.prom.query(metric)[1], f"{metric} has no series")

    def test_prometheus_evaluates_every_rule_without_error(self):
        _, body = self.prom.api("rules")
        rules = {r["name"]: r for g in body["data"]["groups"] for r in g["rules"]}
        expected = {a for _, a, _, _ in d.alert_rules()} | {r for _, r, _ in d.recording_rules()}
        self.assertEqual(expected, set(rules))
        for name, rule in rules.items():
            with self.subTest(alert=name):
                self.assertEqual("ok", rule["health"], rule.get("lastError"))

    def test_the_slo_indicators_are_met_on_a_healthy_stack(self):
        for _, record, _ in d.recording_rules():
            with self.subTest(record=record):
                _, result, _ = self.prom.query(record)
                self.assertTrue(result, f"{record}: no series")
                self.assertGreaterEqual(float(result[0]["value"][1]), 0.99)

    def test_a_healthy_stack_fires_no_alert(self):
        _, body = self.prom.api("alerts")
        firing = [a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] in ("pending", "firing")]
        self.assertEqual([], firing)

    def test_latency_percentiles_are_measured(self):
        """The histograms behind the latency panels hold real observations: finite, positive
        quantiles below the 60 s top bucket (printed, for the record)."""
        figures = {}
        for label, metric in [("flush p99", "tally_aggregator_flush_seconds"),
                              ("event to committed p99", "tally_aggregator_event_to_commit_seconds"),
                              ("insert p99", "tally_aggregator_insert_seconds"),
                              ("gateway request p99", "tally_gateway_request_seconds"),
                              ("rating pass p99", "tally_rater_pass_seconds"),
                              ("invoicing pass p99", "tally_invoicer_pass_seconds")]:
            # over the whole run: the buckets' totals, not a rate over a window
            _, result, _ = self.prom.query(f"histogram_quantile(0.99, sum by (le) ({metric}_bucket))")
            with self.subTest(metric=metric):
                self.assertTrue(result, f"{metric}: no series")
                value = float(result[0]["value"][1])
                self.assertTrue(0 < value <= 60, f"{metric}: p99 {value}")
                figures[label] = value
        print("\n  measured: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in figures.items()))

    def test_the_aggregator_committed_the_agents_usage(self):
        status, result, _ = self.prom.query("sum(tally_aggregator_committed_events_total)")
        self.assertGreater(float(result[0]["value"][1]), 100)
        status, result, _ = self.prom.query('sum(tally_aggregator_events_total{outcome="accepted"})')
        self.assertGreater(float(result[0]["value"][1]), 100)


if __name__ == "__main__":
    unittest.main()
