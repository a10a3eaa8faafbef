"""The SQL RBAC that `tally-access sql` renders parses on a current ClickHouse (chdb).

chdb runs without users, so the statements cannot be executed here; `EXPLAIN AST` checks
that every CREATE USER and GRANT is valid syntax for the current engine. (On ClickHouse
18.16 the users.xml rendering is enforced by platform/tests/access_clickhouse.rs.) Needs
`target/debug/tally-access`, which `cargo test --workspace` builds; skipped without it.

Run: python3 -m unittest discover -s tests/sql -v
"""

import subprocess
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "debug" / "tally-access"


class AccessSql(unittest.TestCase):
    @unittest.skipUnless(BINARY.exists(), "build tally-access first (cargo build -p tally-platform)")
    def test_every_rendered_statement_parses_on_current_clickhouse(self):
        import chdb

        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [str(BINARY), "sql", "--config", str(ROOT / "config" / "tally.toml"), "--out-dir", out],
                check=True,
                capture_output=True,
            )
            text = (Path(out) / "clickhouse-access.sql").read_text()
        statements = [s.strip() for s in text.split(";") if s.strip()]
        self.assertGreaterEqual(len(statements), 12)
        self.assertTrue(any(s.startswith("GRANT INSERT ON tally.charges TO tally_rater") for s in statements))
        for statement in statements:
            with self.subTest(statement=statement[:60]):
                chdb.query("EXPLAIN AST " + statement, "CSV")


if __name__ == "__main__":
    unittest.main()
