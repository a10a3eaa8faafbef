"""The migrations and the public views on a replicated ClickHouse (issue 18).

`tally-migrate` (the Rust runner itself, so the cluster rewrite of `platform/src/migrate/
cluster.rs` is what runs) applies every migration ON CLUSTER into a fresh database on the
cluster of `scripts/cluster.sh` (TALLY_TEST_CLUSTER_CLICKHOUSE_URLS, comma-separated replica
URLs; skipped, saying why, without it). Then the same fixture as test_chdb_compat.py is
inserted through the first replica with `insert_quorum` = every replica, and every view is
read on every replica with `select_sequential_consistency = 1`. Checks:

- every table is a Replicated*MergeTree on every replica, with the same columns and types as
  the single server's table (TALLY_TEST_CLICKHOUSE_URL, migrated by the Python mirror of the
  runner in a fresh database);
- every view returns identical text on every replica and on the single server, and the
  hand-computed rows of test_chdb_compat.EXPECTED;
- a second `tally-migrate` run applies nothing.

Run: eval "$(scripts/cluster.sh env)" && python3 -m unittest tests/sql/test_cluster_sql.py -v
"""

import os
import random
import subprocess
import unittest
import urllib.error
import urllib.parse
import urllib.request

from test_chdb_compat import (
    EXPECTED,
    FIXTURE,
    FOLD_SQL,
    ROOT,
    SERVER_URL,
    HttpEngine,
    bind,
    describe,
    insert_statements,
    load,
    parse_tsv_with_names,
    read_view,
    server_answers,
    view_names,
)

CLUSTER_URLS = [u for u in os.environ.get("TALLY_TEST_CLUSTER_CLICKHOUSE_URLS", "").split(",") if u]
CLUSTER = os.environ.get("TALLY_CLICKHOUSE__CLUSTER", "tally")


class Replica(HttpEngine):
    """One replica of the cluster, reading and writing with the cluster's settings."""

    def __init__(self, url, database, quorum):
        # the database is created by tally-migrate ON CLUSTER, not here
        self.url = url
        self.database = database
        self.name = f"replica {url}"
        self.quorum = quorum

    def _post(self, sql, database):
        settings = {"insert_quorum": str(self.quorum), "select_sequential_consistency": "1"}
        if database:
            settings["database"] = database
        return self._post_with(sql, settings)

    def _post_with(self, sql, params):
        req = urllib.request.Request(f"{self.url}/?{urllib.parse.urlencode(params)}", data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{self.url}: HTTP {e.code}: {e.read().decode().strip()}\n--- statement ---\n{sql}") from None

    def close(self):
        self._post_with(f"DROP DATABASE IF EXISTS {self.database} ON CLUSTER {CLUSTER}", {})


def tally_migrate(database):
    """Runs the Rust runner against the cluster's first replica; returns its output."""
    env = dict(os.environ)
    env.update({
        "TALLY_CLICKHOUSE__URL": CLUSTER_URLS[0],
        "TALLY_CLICKHOUSE__DATABASE": database,
        "TALLY_CLICKHOUSE__CLUSTER": CLUSTER,
        "TALLY_CLICKHOUSE__INSERT_QUORUM": str(len(CLUSTER_URLS)),
        "RUST_LOG": "warn",
    })
    binary = os.path.join(os.environ.get("TALLY_BIN_DIR", str(ROOT / "target" / "debug")), "tally-migrate")
    command = [binary] if os.path.exists(binary) else ["cargo", "run", "--quiet", "-p", "tally-platform", "--bin", "tally-migrate"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"tally-migrate failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@unittest.skipUnless(CLUSTER_URLS, "no cluster: run scripts/cluster.sh up and eval \"$(scripts/cluster.sh env)\"")
class OnTheCluster(unittest.TestCase):
    replicas = []
    single = None

    @classmethod
    def setUpClass(cls):
        db = f"cluster_sql_{os.getpid()}_{random.randrange(16**8):08x}"
        cls.first_run = tally_migrate(db)
        cls.second_run = tally_migrate(db)
        cls.replicas = [Replica(url, db, len(CLUSTER_URLS)) for url in CLUSTER_URLS]
        writer = cls.replicas[0]
        for stmt in insert_statements():
            writer.run(stmt)
        batches = sorted({row["batch_id"] for part in FIXTURE["usage_meter_readings"] for row in part})
        for batch in batches:
            writer.run(bind(FOLD_SQL.read_text(), f"'{batch}'"))
        if server_answers(SERVER_URL):
            cls.single = HttpEngine(SERVER_URL, db)
            load(cls.single)

    @classmethod
    def tearDownClass(cls):
        if cls.replicas:
            cls.replicas[0].close()
        if cls.single:
            cls.single.close()

    def test_a_second_run_applies_nothing(self):
        self.assertIn("applied migrations", self.first_run)
        self.assertIn("up to date", self.second_run)

    def test_every_table_is_replicated_on_every_replica(self):
        for replica in self.replicas:
            rows = replica.query(
                f"SELECT name, engine FROM system.tables WHERE database = '{replica.database}' AND engine != 'View'")
            tables = [line.split("\t") for line in rows.splitlines() if line]
            self.assertGreater(len(tables), 20, replica.name)
            for name, engine in tables:
                self.assertTrue(engine.startswith("Replicated"), f"{replica.name}: {name} is {engine}")

    def test_tables_and_views_have_the_single_servers_columns(self):
        if not self.single:
            self.skipTest(f"no single server at {SERVER_URL}")
        names = self.single.query(f"SELECT name FROM system.tables WHERE database = '{self.single.database}'").split()
        for replica in self.replicas:
            for name in names:
                with self.subTest(replica=replica.name, table=name):
                    self.assertEqual(describe(replica, name), describe(self.single, name))

    def test_every_view_reads_the_same_on_every_replica_and_the_single_server(self):
        for view in view_names():
            texts = {r.name: read_view(r, view) for r in self.replicas}
            if self.single:
                texts["single server"] = read_view(self.single, view)
            first = next(iter(texts.values()))
            with self.subTest(view=view):
                self.assertGreater(len(parse_tsv_with_names(first)), 0, f"{view}: no rows")
                for name, text in texts.items():
                    self.assertEqual(text, first, f"{view} on {name}")
                if view in EXPECTED:
                    spec = EXPECTED[view]
                    rows = parse_tsv_with_names(first)
                    self.assertEqual([[row[c] for c in spec["columns"]] for row in rows], spec["rows"], view)


if __name__ == "__main__":
    unittest.main()
