"""Every configuration profile in config/profiles/ starts every service, which then stops
cleanly on SIGTERM.

For each profile (production is also exercised by test_prometheus.py, so dev and staging here,
plus any new profile): tally-migrate, then tally-aggregator, tally-gateway, tally-rater,
tally-invoicer and tally-payments start with that file and only the test's isolation overrides
(servers, database, stream names, ports; tests/ops/services.py), answer 200 on /readyz, and exit
0 after SIGTERM. A profile with a setting some service refuses, or a section no service knows,
fails here naming the service and its error. Skipped, saying why, without NATS or ClickHouse.

Run: python3 -m unittest discover -s tests/ops -v
"""

import signal
import tomllib
import unittest

import services
import workspace

COVERED_ELSEWHERE = {"production"}  # test_prometheus.py runs every service with it


class Profiles(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not services.nats_answers():
            raise unittest.SkipTest(f"no NATS server at {services.NATS_URL}")
        if not services.reachable(f"{services.CLICKHOUSE_URL}/ping"):
            raise unittest.SkipTest(f"no ClickHouse server at {services.CLICKHOUSE_URL}")
        services.build()

    def test_there_are_dev_staging_and_production_profiles(self):
        names = {p.stem for p in workspace.profiles()}
        self.assertLessEqual({"dev", "staging", "production"}, names)

    def test_profiles_name_only_known_sections(self):
        known = workspace.config_sections()
        for path in workspace.profiles():
            with self.subTest(profile=path.stem):
                self.assertLessEqual(set(tomllib.loads(path.read_text())), known)

    def test_staging_never_duns_real_customers(self):
        staging = tomllib.loads((workspace.ROOT / "config" / "profiles" / "staging.toml").read_text())
        self.assertIs(False, staging["features"]["dunning"])

    def test_every_service_starts_with_each_profile_and_stops_cleanly(self):
        for path in workspace.profiles():
            if path.stem in COVERED_ELSEWHERE:
                continue
            with self.subTest(profile=path.stem):
                stack = services.Stack(f"profile_{path.stem}", profile=path.stem)
                try:
                    stack.migrate()
                    stack.start()
                    stack.wait_ready()
                    for service in stack.SERVICES:
                        self.assertEqual(200, services.http(stack.metrics_url(service, "/readyz"))[0], service)
                    procs = dict(stack.procs)
                    for proc in procs.values():
                        proc.send_signal(signal.SIGTERM)
                    for service, proc in procs.items():
                        self.assertEqual(0, proc.wait(timeout=30), f"{service} after SIGTERM:\n{stack.log(service)}")
                finally:
                    stack.cleanup()


if __name__ == "__main__":
    unittest.main()
