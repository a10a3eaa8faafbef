"""Runs Tally's real binaries for the tests in this directory: builds them with cargo (the
default target dir), gives each test its own ClickHouse database, JetStream streams and free
ports, starts the services with a configuration profile plus `TALLY_<SECTION>__<KEY>`
overrides, waits until `/readyz` answers, and stops them with SIGTERM (then SIGKILL) at the end.

It never touches the shared `tally` database or the default streams."""

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from workspace import ROOT

NATS_URL = os.environ.get("TALLY_TEST_NATS_URL", "nats://127.0.0.1:4222")
CLICKHOUSE_URL = os.environ.get("TALLY_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123").rstrip("/")
PACKAGES = ["tally-platform", "tally-aggregator", "tally-ingest", "tally-rater", "tally-invoicer", "tally-payments"]
TARGET = ROOT / "target" / "debug"


def build():
    """Builds every binary (a no-op when up to date); raises with cargo's output on failure.
    TALLY_OPS_NO_BUILD=1 uses the binaries already in target/debug (while iterating)."""
    if os.environ.get("TALLY_OPS_NO_BUILD") == "1":
        return
    cmd = ["cargo", "build", "--quiet", "--bins"]
    for p in PACKAGES:
        cmd += ["-p", p]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cargo build failed:\n{out.stderr[-4000:]}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, headers=None, timeout=5):
    """(status, body text); never raises for an HTTP status."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def reachable(url):
    try:
        return http(url, timeout=2)[0] == 200
    except OSError:
        return False


def nats_answers():
    host, port = NATS_URL.split("//", 1)[1].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class Stack:
    """One isolated set of Tally services on the shared NATS and ClickHouse servers."""

    SERVICES = {
        # name: (binary, args, metrics setting)
        "aggregator": ("tally-aggregator", [], "AGGREGATOR"),
        "gateway": ("tally-gateway", ["serve"], "INGEST"),
        "rater": ("tally-rater", ["serve"], "RATER"),
        "invoicer": ("tally-invoicer", ["serve"], "INVOICER"),
        "payments": ("tally-payments", ["serve"], "PAYMENTS"),
    }

    def __init__(self, name, profile="dev"):
        tag = f"{name}_{random.randrange(16**6):06x}"
        self.database = f"tally_{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"tally-{name}-"))
        self.profile = ROOT / "config" / "profiles" / f"{profile}.toml"
        self.ports = {s: free_port() for s in self.SERVICES}
        self.gateway_port = free_port()
        self.payments_port = free_port()
        upper = tag.upper()
        self.env = dict(os.environ)
        self.env.update({
            "TALLY_CONFIG": str(self.profile),
            "RUST_LOG": "warn",
            "TALLY_NATS__URL": NATS_URL,
            "TALLY_NATS__STREAM": f"USAGE_{upper}",
            "TALLY_NATS__SUBJECT_PREFIX": f"usage_{tag}",
            "TALLY_NATS__DLQ_STREAM": f"DLQ_{upper}",
            "TALLY_NATS__DLQ_SUBJECT_PREFIX": f"dlq_{tag}",
            "TALLY_CLICKHOUSE__URL": CLICKHOUSE_URL,
            "TALLY_CLICKHOUSE__DATABASE": self.database,
            "TALLY_CLICKHOUSE__USER": "default",
            "TALLY_AGGREGATOR__CONSUMER": f"agg_{tag}",
            "TALLY_AGGREGATOR__BATCH_MAX_WAIT_MS": "100",
            "TALLY_RATER__INTERVAL_SECS": "1",
            "TALLY_INVOICER__SCHEDULE": "* * * * * *",  # cron with seconds: every second
            "TALLY_INVOICER__API_ADDR": f"127.0.0.1:{free_port()}",
            "TALLY_INVOICER__NUMBERS_BUCKET": f"NUMBERS_{upper}",
            "TALLY_INGEST__LISTEN_ADDR": f"127.0.0.1:{self.gateway_port}",
            "TALLY_INGEST__KEY_REFRESH_SECS": "1",
            "TALLY_PAYMENTS__LISTEN_ADDR": f"127.0.0.1:{self.payments_port}",
            # fresh secrets of production strength: staging and production refuse weak or
            # published ones (docs/SECURITY.md)
            "TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
            "TALLY_PORTAL__SIGNING_SECRET": secrets.token_hex(32),
            "TALLY_DUNNING__SIGNING_SECRET": secrets.token_hex(32),
        })
        for service, (_, _, section) in self.SERVICES.items():
            self.env[f"TALLY_{section}__METRICS_ADDR"] = f"127.0.0.1:{self.ports[service]}"
        self.procs = {}

    def binary(self, name):
        return str(TARGET / name)

    def run(self, binary, *args, timeout=120):
        out = subprocess.run([self.binary(binary), *args], env=self.env, cwd=ROOT, capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
        return out.stdout

    def migrate(self):
        self.run("tally-migrate")

    def api_token(self, role, actor="ops-tests"):
        """A bearer token of `role` for the HTTP APIs (docs/SECURITY.md), shown once."""
        out = self.run("tally-access", "tokens-create", "--actor", actor, "--role", role)
        return json.loads(out)["token"]

    def start(self, services=None):
        for service in services or self.SERVICES:
            binary, args, _ = self.SERVICES[service]
            with open(self.dir / f"{service}.log", "w") as log:
                self.procs[service] = subprocess.Popen([self.binary(binary), *args], env=self.env, cwd=ROOT,
                                                       stdout=log, stderr=subprocess.STDOUT)

    def metrics_url(self, service, path="/metrics"):
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def log(self, service):
        """The start of the service's log (where a start-up error is), then its end."""
        path = self.dir / f"{service}.log"
        text = path.read_text() if path.exists() else ""
        return text if len(text) < 4000 else f"{text[:2000]}\n...\n{text[-2000:]}"

    def wait_ready(self, timeout=90):
        """Waits until every started service answers 200 on /readyz; raises naming the ones
        that exited or did not get ready, with the end of their logs."""
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting and time.monotonic() < deadline:
            for service in sorted(waiting):
                if self.procs[service].poll() is not None:
                    raise RuntimeError(f"{service} exited {self.procs[service].returncode}:\n{self.log(service)}")
                if reachable(self.metrics_url(service, "/readyz")):
                    waiting.discard(service)
            time.sleep(0.2)
        if waiting:
            raise RuntimeError("not ready in time: " + ", ".join(f"{s}:\n{self.log(s)}" for s in sorted(waiting)))

    def gateway_key(self, customer):
        """A new API key for `customer` (tally-gateway keys-create)."""
        out = self.run("tally-gateway", "keys-create", "--customer", customer)
        for token in json.dumps(json.loads(out)).replace('"', " ").split():
            if token.startswith("tk_"):
                return token
        raise RuntimeError(f"no key in keys-create output: {out}")

    def agents(self, seconds, rate):
        """Synthetic agents publishing to this stack's stream for `seconds`."""
        with open(self.dir / "agents.log", "w") as log:
            return subprocess.Popen([self.binary("tally-agents"), "--customers", "2", "--agents", "2",
                                     "--seconds", str(seconds), "--rate", str(rate)], env=self.env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=log)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}

    def cleanup(self):
        """Stops the services, drops the database and deletes the streams and the consumer."""
        self.stop()
        try:
            http(f"{CLICKHOUSE_URL}/", data=f"DROP DATABASE IF EXISTS {self.database}".encode())
        except OSError:
            pass
        self.delete_streams()

    def delete_streams(self):
        """Deletes this stack's streams and the invoicer's KV bucket over the NATS protocol
        (JetStream API requests)."""
        host, port = NATS_URL.split("//", 1)[1].rsplit(":", 1)
        stream = self.env["TALLY_NATS__STREAM"]
        # the aggregator's live feed (it reserves 1 GiB of the server's storage) and lease
        # bucket too, or every run leaves them behind
        streams = [stream, self.env["TALLY_NATS__DLQ_STREAM"], f"{stream}_FEED",
                   f"KV_{stream}_AGGREGATORS",
                   f"KV_{self.env['TALLY_INVOICER__NUMBERS_BUCKET']}"]
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.recv(4096)
                s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
                for stream in streams:
                    s.sendall(f"PUB $JS.API.STREAM.DELETE.{stream} 0\r\n\r\n".encode())
                s.sendall(b"PING\r\n")
                s.recv(4096)
        except OSError:
            pass
