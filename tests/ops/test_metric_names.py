"""Every metric follows the naming conventions of docs/OBSERVABILITY.md, read from the source.

Each crate declares its metrics in a `metrics.rs` (and only there); a name is
`tally_<stage>_<what>_<unit>` with the stage one of the services, counters end in `_total`,
gauges and histograms never do, histograms measure seconds, bytes or a count of things
(messages, events), and no label carries an id. Dashboards and alerts may only read names that
some `metrics.rs` declares (or `up`), so a renamed metric breaks this test, not a dashboard in
production.

Run: python3 -m unittest discover -s tests/ops -v
"""

import re
import unittest

import dashboards as d
from workspace import ROOT

STAGES = {"aggregator", "gateway", "rater", "invoicer", "payments", "spend"}
MACRO = re.compile(r'(counter|gauge|histogram)!\(\s*"([a-z0-9_]+)"((?:\s*,\s*"[a-z_]+"\s*=>[^,)]+)*)')
HISTOGRAM_UNITS = ("_seconds", "_bytes", "_messages", "_events")
UNBOUNDED = {"customer", "agent", "event_id", "invoice_id", "key", "key_id", "id", "subject"}


def declarations():
    """(file, kind, name, label names) for every metric macro in the workspace's sources."""
    out = []
    for path in sorted(ROOT.glob("*/src/**/*.rs")):
        if "target" in path.parts:
            continue
        text = path.read_text()
        for kind, name, labels in MACRO.findall(text):
            out.append((path.relative_to(ROOT).as_posix(), kind, name, re.findall(r'"([a-z_]+)"\s*=>', labels)))
    return out


class MetricNames(unittest.TestCase):
    def test_metrics_are_declared_only_in_metrics_rs(self):
        outside = [(f, n) for f, _, n, _ in declarations()
                   if not f.endswith("/metrics.rs") and not n.startswith("tally_test_")]
        self.assertEqual([], outside)

    def test_names_carry_the_stage_and_the_unit(self):
        for path, kind, name, _ in declarations():
            if name.startswith("tally_test_"):
                continue
            with self.subTest(metric=name, file=path):
                self.assertRegex(name, r"^tally_[a-z]+_[a-z0-9_]+$")
                self.assertIn(name.split("_")[1], STAGES)
                if kind == "counter":
                    self.assertTrue(name.endswith("_total"), "a counter ends in _total")
                else:
                    self.assertFalse(name.endswith("_total"), f"a {kind} never ends in _total")
                if kind == "histogram":
                    self.assertTrue(name.endswith(HISTOGRAM_UNITS), f"a histogram ends in one of {HISTOGRAM_UNITS}")
                self.assertNotRegex(name, r"_(ms|millis|secs|minutes)(_|$)", "durations are in seconds")

    def test_one_name_has_one_kind(self):
        kinds = {}
        for _, kind, name, _ in declarations():
            kinds.setdefault(name, set()).add(kind)
        self.assertEqual({}, {n: k for n, k in kinds.items() if len(k) > 1})

    def test_labels_are_bounded(self):
        for path, _, name, labels in declarations():
            with self.subTest(metric=name, file=path):
                self.assertEqual(set(), set(labels) & UNBOUNDED)

    def test_dashboards_and_alerts_read_only_declared_names(self):
        declared = {n for _, _, n, _ in declarations()}
        exprs = [(f"{n}: {t}", e) for n, t, e in d.targets(d.PROMETHEUS_UID)]
        exprs += [(f"{f}: {a}", e) for f, a, e, _ in d.alert_rules()]
        for where, expr in exprs:
            for metric in d.metric_names(expr):
                base = re.sub(r"_(bucket|count|sum)$", "", metric)
                with self.subTest(where=where, metric=metric):
                    self.assertTrue(metric == "up" or metric in declared or base in declared,
                                    f"{metric} is declared in no metrics.rs")


if __name__ == "__main__":
    unittest.main()
