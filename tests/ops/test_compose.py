"""docker-compose.yml is a valid Compose file and matches the repository.

No Docker engine exists on the machines that run the tests, so the file is checked statically:
against the Compose Specification's JSON schema (vendored in tests/ops/schema/, see SOURCE.md),
then every Tally service's command against the workspace's binaries and their commands and
flags, its ports against its metrics and listen addresses, Prometheus' scrape targets against
the services, and every path the file (or the Dockerfile) names against the repository.

Run: python3 -m unittest discover -s tests/ops -v
"""

import hashlib
import json
import re
import tomllib
import unittest

import yaml

import workspace
from workspace import ROOT

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "ops" / "schema" / "compose-spec.json"
SOURCE = ROOT / "tests" / "ops" / "schema" / "SOURCE.md"
PROMETHEUS = ROOT / "dashboards" / "prometheus.yml"
# Third-party services: image only, no Tally binary.
INFRA = {"nats", "clickhouse", "prometheus", "grafana"}
# What each service needs up, at least.
REQUIRED = {"nats", "clickhouse", "prometheus", "grafana", "migrate", "aggregator", "gateway",
            "rater", "invoicer", "payments", "agents"}


def compose():
    return yaml.safe_load(COMPOSE.read_text())


def env_profile(value):
    """`/app/config/profiles/${TALLY_PROFILE:-dev}.toml` -> the repository paths it can name."""
    m = re.fullmatch(r"/app/config/profiles/\$\{TALLY_PROFILE:-(\w+)\}\.toml", value)
    return m.group(1) if m else None


def host_port(spec):
    """"127.0.0.1:9101:9101" -> (9101 published, 9101 in the container)."""
    parts = str(spec).split(":")
    return int(parts[-2]), int(parts[-1])



# The binaries declare their command lines with clap's derive: a flag `--x-y` is a field
# `x_y` (or `long = "x-y"`), a subcommand `x-y` a variant `XY` (or `name = "x-y"`).
def has_flag(source, flag):
    field = flag.replace("-", "_")
    return bool(re.search(rf'\b{re.escape(field)}:\s', source)
                or re.search(rf'long\s*=\s*"{re.escape(flag)}"', source))


def has_command(source, command):
    variant = "".join(part.capitalize() for part in command.split("-"))
    return bool(re.search(rf'^\s*{re.escape(variant)}\b\s*[,{{(]?\s*$', source, re.M)
                or re.search(rf'name\s*=\s*"{re.escape(command)}"', source))

class ComposeFile(unittest.TestCase):
    def test_the_vendored_schema_is_the_one_named_in_its_source_note(self):
        digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
        self.assertIn(digest, SOURCE.read_text(), "schema changed without updating SOURCE.md")

    def test_the_file_validates_against_the_compose_specification_schema(self):
        import jsonschema

        schema = json.loads(SCHEMA.read_text())
        validator_cls = jsonschema.Draft201909Validator  # the schema's $schema, spelled with http:
        validator_cls.check_schema(schema)
        errors = sorted(validator_cls(schema).iter_errors(compose()), key=lambda e: list(e.path))
        self.assertEqual([], [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors])

    def test_the_schema_check_catches_a_broken_file(self):
        import jsonschema

        schema = json.loads(SCHEMA.read_text())
        broken = compose()
        broken["services"]["aggregator"]["depends_on"]["nats"]["condition"] = "service_ready"
        broken["services"]["rater"]["restart_policy"] = "always"
        errors = list(jsonschema.Draft201909Validator(schema).iter_errors(broken))
        self.assertGreaterEqual(len(errors), 2)

    def test_every_service_of_the_project_is_there(self):
        self.assertEqual(set(), REQUIRED - set(compose()["services"]))

    def test_every_tally_command_is_a_workspace_binary_in_the_image(self):
        bins = workspace.binaries()
        in_image = set(workspace.dockerfile_binaries())
        for name, svc in compose()["services"].items():
            if name in INFRA:
                continue
            with self.subTest(service=name):
                self.assertEqual(".", svc.get("build"), "Tally services are built from the workspace")
                binary, *args = svc["command"]
                self.assertIn(binary, bins, f"{binary} is not a [[bin]] or src/bin file")
                self.assertIn(binary, in_image, f"the Dockerfile does not copy {binary}")
                source = bins[binary].read_text()
                for arg in args:
                    if arg.startswith("--"):
                        self.assertTrue(has_flag(source, arg[2:]), f"{binary} has no flag {arg}")
                    elif not re.fullmatch(r"[0-9.]+", arg):
                        self.assertTrue(has_command(source, arg), f"{binary} has no command {arg}")

    def test_the_command_line_check_reads_clap_declarations(self):
        source = workspace.binaries()["tally-agents"].read_text()
        self.assertTrue(has_flag(source, "duplicate-share"))
        self.assertFalse(has_flag(source, "no-such-flag"))
        rater = workspace.binaries()["tally-rater"].read_text()
        self.assertTrue(has_command(rater, "serve"))
        self.assertTrue(has_command(rater, "once"))
        self.assertFalse(has_command(rater, "launch"))

    def test_every_binary_in_the_image_exists(self):
        bins = workspace.binaries()
        for b in workspace.dockerfile_binaries():
            self.assertIn(b, bins)

    def test_environment_overrides_name_known_sections_and_settings(self):
        sections, fields = workspace.config_sections(), workspace.config_fields()
        for name, svc in compose()["services"].items():
            for var in (svc.get("environment") or {}):
                m = re.fullmatch(r"TALLY_([A-Z_]+?)__([A-Z_]+)", var)
                if not m:
                    continue
                with self.subTest(service=name, var=var):
                    self.assertIn(m.group(1).lower(), sections)
                    self.assertIn(m.group(2).lower(), fields)

    def test_the_configuration_file_is_a_profile_in_the_repository(self):
        for name, svc in compose()["services"].items():
            if name in INFRA:
                continue
            with self.subTest(service=name):
                profile = env_profile(svc["environment"]["TALLY_CONFIG"])
                self.assertIsNotNone(profile, "TALLY_CONFIG must name config/profiles/<profile>.toml")
                path = ROOT / "config" / "profiles" / f"{profile}.toml"
                self.assertTrue(path.is_file(), path)
                tomllib.loads(path.read_text())
        self.assertIn("COPY config/ /app/config/", (ROOT / "Dockerfile").read_text())

    def test_published_ports_match_the_service_addresses_and_healthchecks(self):
        for name, svc in compose()["services"].items():
            if name in INFRA:
                continue
            env = svc.get("environment") or {}
            addrs = {k: v for k, v in env.items() if k.endswith(("__METRICS_ADDR", "__LISTEN_ADDR", "__API_ADDR"))}
            published = {host_port(p)[1] for p in svc.get("ports", [])}
            with self.subTest(service=name):
                for var, addr in addrs.items():
                    host, port = addr.rsplit(":", 1)
                    self.assertEqual("0.0.0.0", host, f"{var} must listen beyond the container")
                    self.assertIn(int(port), published, f"{var} port is not published")
                for port in published:
                    self.assertIn(port, {int(a.rsplit(':', 1)[1]) for a in addrs.values()})
                check = (svc.get("healthcheck") or {}).get("test")
                if check:
                    url = check[-1]
                    self.assertRegex(url, r"/readyz$")
                    port = int(re.search(r":(\d+)/", url).group(1))
                    metrics = [a for k, a in addrs.items() if k.endswith("__METRICS_ADDR")]
                    self.assertEqual([f"0.0.0.0:{port}"], metrics)

    def test_every_long_running_service_has_a_health_check(self):
        for name in REQUIRED - INFRA - {"migrate", "agents"}:
            self.assertIn("healthcheck", compose()["services"][name], name)

    def test_prometheus_scrapes_every_service_on_its_metrics_port(self):
        services = compose()["services"]
        scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
        targets = {t for job in scrape for sc in job["static_configs"] for t in sc["targets"]}
        for name, svc in services.items():
            metrics = [v for k, v in (svc.get("environment") or {}).items() if k.endswith("__METRICS_ADDR")]
            for addr in metrics:
                self.assertIn(f"{name}:{addr.rsplit(':', 1)[1]}", targets, name)
        for target in targets - {"localhost:9090"}:
            self.assertIn(target.split(":")[0], services, f"scrape target {target} is no service")

    def test_mounted_paths_exist_in_the_repository(self):
        for name, svc in compose()["services"].items():
            for volume in svc.get("volumes", []):
                src = volume.split(":")[0]
                if src.startswith("./"):
                    with self.subTest(service=name, volume=volume):
                        self.assertTrue((ROOT / src).exists(), src)
        grafana = compose()["services"]["grafana"]
        self.assertIn("grafana-clickhouse-datasource", grafana["environment"]["GF_INSTALL_PLUGINS"])


if __name__ == "__main__":
    unittest.main()
