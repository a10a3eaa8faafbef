"""Every ClickHouse query of a dashboard panel runs on the real schema and returns rows.

The schema is built exactly as tests/sql builds it (every migration by the runner's rules, then
its fixture of usage, charges, invoices and transitions), on both engines: the stack's server
(ClickHouse 18.16, TALLY_TEST_CLICKHOUSE_URL) and chdb (a current ClickHouse in process). The
Grafana ClickHouse plugin's macros are expanded like the plugin does (tests/ops/dashboards.py)
over a time range covering the fixture. Each query must run on both engines, return at least one
row, and return the same number of rows on both.

Run: python3 -m unittest discover -s tests/ops -v
"""

import random
import sys
import unittest

import dashboards as d
from workspace import ROOT

sys.path.insert(0, str(ROOT / "tests" / "sql"))
import test_chdb_compat as compat  # noqa: E402  (the schema and fixture loader)

# 2025-01-01 .. 2028-01-01: covers every fixture row (usage in 2026-11, transitions 2025-12).
FROM_SECS, TO_SECS = 1735689600, 1830297600


def queries():
    return [(name, title, d.expand_macros(sql, FROM_SECS, TO_SECS)) for name, title, sql in d.targets(d.CLICKHOUSE_UID)]


def row_count(text):
    return len([line for line in text.splitlines() if line.strip()])


class DashboardQueries(unittest.TestCase):
    engines = {}

    @classmethod
    def setUpClass(cls):
        suffix = f"{random.randrange(16**8):08x}"
        try:
            import chdb  # noqa: F401
        except ImportError:
            cls.chdb_missing = "chdb-core is not installed (scripts/test.sh installs it)"
        else:
            cls.chdb_missing = None
            engine = compat.ChdbEngine(f"tally_ops_{suffix}")
            compat.load(engine)
            cls.engines["chdb"] = engine
        if compat.server_answers(compat.SERVER_URL):
            engine = compat.HttpEngine(compat.SERVER_URL, f"tally_ops_{suffix}")
            try:
                compat.load(engine)
            except Exception:
                engine.close()
                raise
            cls.engines["server"] = engine

    @classmethod
    def tearDownClass(cls):
        for engine in cls.engines.values():
            engine.close()
        cls.engines = {}

    def engine(self, name):
        if name not in self.engines:
            self.skipTest(self.chdb_missing if name == "chdb" else f"no ClickHouse server at {compat.SERVER_URL}")
        return self.engines[name]

    def run_all(self, engine):
        counts = {}
        for name, title, sql in queries():
            with self.subTest(engine=engine.name, dashboard=name, panel=title):
                out = engine.query(sql, "TabSeparated")
                counts[title] = row_count(out)
                self.assertGreater(counts[title], 0, f"{title} returned no rows on the fixture")
        return counts

    def test_there_are_clickhouse_panels(self):
        self.assertGreaterEqual(len(queries()), 8)

    def test_every_panel_query_returns_rows_on_the_server(self):
        self.run_all(self.engine("server"))

    def test_every_panel_query_returns_rows_on_chdb(self):
        self.run_all(self.engine("chdb"))

    def test_both_engines_return_as_many_rows(self):
        self.assertEqual(self.run_all(self.engine("server")), self.run_all(self.engine("chdb")))

    def test_top_agents_by_cost_allocates_the_whole_charge(self):
        """The fixture's acme charges (34 + 60 minor units) go to its two agents by their share
        of the charged usage: the tool calls (60) and 17.25 of the 20.25 tokens to
        support-bot-7, 3 tokens to support-bot-8; nothing is lost."""
        sql = next(q for _, t, q in queries() if t == "Top agents by cost")
        for name in ("server", "chdb"):
            if name not in self.engines:
                continue
            rows = [line.split("\t") for line in self.engines[name].query(sql).splitlines() if line]
            with self.subTest(engine=name):
                self.assertEqual(["support-bot-7", "acme", "USD"], rows[0][:3])
                self.assertEqual(["support-bot-8", "acme", "USD"], rows[1][:3])
                self.assertAlmostEqual(60 + 34 * 17.25 / 20.25, float(rows[0][3]), places=3)
                self.assertAlmostEqual(94, sum(float(r[3]) for r in rows), places=3)

    def test_unknown_macros_are_refused(self):
        with self.assertRaises(ValueError):
            d.expand_macros("SELECT 1 WHERE $__dateFilter(d)", FROM_SECS, TO_SECS)


if __name__ == "__main__":
    unittest.main()
