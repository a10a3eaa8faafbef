"""The SQL RBAC that `tally-access sql` renders parses on a current ClickHouse (chdb).

chdb runs without a writeable access storage, so the statements cannot be executed here;
`EXPLAIN AST` checks that every CREATE ROLE, CREATE USER and GRANT is valid syntax for the
current engine. (The roles' table grants are the migration 0009_service_roles.sql, parsed the
same way by test_chdb_compat.py.) (On ClickHouse
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
        self.assertIn("GRANT tally_rater_role TO tally_rater", statements)
        self.assertFalse(any(" ON tally." in s and "tally_migrate" not in s for s in statements),
                         "services get their table rights from their role, not from grants of their own")
        for statement in statements:
            with self.subTest(statement=statement[:60]):
                chdb.query("EXPLAIN AST " + statement, "CSV")


if __name__ == "__main__":
    unittest.main()
