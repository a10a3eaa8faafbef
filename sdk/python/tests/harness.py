"""A real ``tally-gateway`` for the tests, over the test run's own JetStream streams, subject
prefix and ClickHouse database (created by ``tally-migrate``), like the Rust tests'
``TestEnv``: suites run in parallel with each other and with ``cargo test``.

:class:`Stack` runs the whole set of services a test module needs (rater, spend decider,
gateway, aggregator) the same way, and :class:`NatsServer` a nats-server of the test's own
with the authorization ``tally-gateway nats-config`` generates.

Binaries come from ``TALLY_BIN_DIR`` (default ``target/debug`` of the repository), servers
from ``TALLY_TEST_NATS_URL`` and ``TALLY_TEST_CLICKHOUSE_URL`` (defaults: the local stack).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import nats
import nats.errors
import nats.js.errors

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("TALLY_BIN_DIR") or REPO / "target" / "debug")
NATS_URL = os.environ.get("TALLY_TEST_NATS_URL", "nats://127.0.0.1:4222")
CLICKHOUSE_URL = os.environ.get("TALLY_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123")


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: build it (cargo build -p tally-ingest -p tally-platform --bins) "
            f"or point TALLY_BIN_DIR at the directory that has it"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clickhouse(sql: str) -> str:
    req = urllib.request.Request(CLICKHOUSE_URL + "/", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def migrate(config: Path) -> None:
    """Applies the migrations to ``config``'s database (``tally-migrate``)."""
    out = subprocess.run(
        [str(binary("tally-migrate")), "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"tally-migrate failed: {out.stdout}{out.stderr}")


def api_token(config: Path, actor: str, role: str) -> str:
    """An API token of ``role`` made by ``tally-access tokens-create``: the bearer token."""
    out = subprocess.run(
        [str(binary("tally-access")), "tokens-create", "--actor", actor, "--role", role,
         "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"tokens-create failed: {out.stdout}{out.stderr}")
    return json.loads(out.stdout)["token"]


@dataclass
class StoredMessage:
    seq: int
    subject: str
    msg_id: Optional[str]
    event: Dict[str, Any]


class Gateway:
    """One gateway process and its private corner of NATS and ClickHouse."""

    def __init__(self, tag: str, ingest: Optional[Dict[str, Any]] = None) -> None:
        unique = f"{tag}_{os.getpid()}_{time.time_ns() & 0xFFFFFFFFFF:x}"
        self.stream = f"T_{unique}"
        self.prefix = f"t_{unique}"
        self.dlq_stream = f"T_{unique}_DLQ"
        self.database = f"test_{unique}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"tally-sdk-{tag}-"))
        self.config = self.dir / "tally.toml"
        settings = {"metrics_addr": "127.0.0.1:0", **(ingest or {})}
        ingest_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        self.config.write_text(
            f"""[nats]
url = "{NATS_URL}"
stream = "{self.stream}"
subject_prefix = "{self.prefix}"
dlq_stream = "{self.dlq_stream}"
dlq_subject_prefix = "t_{unique}_dlq"
max_bytes = 268435456
dlq_max_bytes = 67108864

[clickhouse]
url = "{CLICKHOUSE_URL}"
database = "{self.database}"

[telemetry]
log = "warn"

[ingest]
{ingest_lines}
"""
        )
        self.port = free_port()
        self.admin_port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log = self.dir / "gateway.log"
        migrate(self.config)
        self.admin_token = self.api_token("sdk-tests", "key_admin")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin API, on its own listener (``ingest.admin_addr``)."""
        return f"http://127.0.0.1:{self.admin_port}"

    def api_token(self, actor: str, role: str) -> str:
        """An API token of ``role`` made by ``tally-access tokens-create``: the bearer token."""
        return api_token(self.config, actor, role)

    def start(self, wait: bool = True) -> None:
        """Starts the gateway on ``self.port`` (a fresh port if that one turns out taken)."""
        for _ in range(5):
            env = {
                **os.environ,
                "TALLY_INGEST__LISTEN_ADDR": f"127.0.0.1:{self.port}",
                "TALLY_INGEST__ADMIN_ADDR": f"127.0.0.1:{self.admin_port}",
            }
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(binary("tally-gateway")), "serve", "--config", str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            if not wait:
                return
            if self.wait_ready():
                return
            text = self.log.read_text(errors="replace")
            if "in use" not in text.lower():
                raise RuntimeError(f"tally-gateway did not start:\n{text}")
            self.port, self.admin_port = free_port(), free_port()
        raise RuntimeError("tally-gateway found no free port")

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once ``/healthz`` answers; False when the process exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"tally-gateway not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def create_key(self, customer: str, agents: Sequence[str] = ()) -> str:
        """A key for ``customer`` through the admin API (docs/INGEST.md), the bearer token."""
        body = json.dumps({"customer": customer, "agents": list(agents), "label": "sdk test"})
        req = urllib.request.Request(
            self.admin_url + "/v1/admin/keys",
            data=body.encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.admin_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            view = json.load(r)
        assert view["customer"] == customer and view["revoked"] is False, view
        return view["key"]

    def create_key_cli(self, customer: str) -> str:
        """A key for ``customer`` written to the key store by ``tally-gateway keys-create``
        (no running gateway needed; a running one loads it at start or on first use)."""
        out = subprocess.run(
            [str(binary("tally-gateway")), "keys-create", "--customer", customer,
             "--label", "sdk test", "--config", str(self.config)],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"keys-create failed: {out.stdout}{out.stderr}")
        return json.loads(out.stdout)["key"]

    def revoke_key(self, key: str) -> None:
        key_id = key.split("_")[1]
        req = urllib.request.Request(
            f"{self.admin_url}/v1/admin/keys/{key_id}/revoke",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["revoked"] is True

    def messages(self, customer: Optional[str] = None) -> List[StoredMessage]:
        """What the usage stream holds (for one customer's subjects, or all), in order."""
        return asyncio.run(stored_messages(self.stream, self.prefix, customer))

    def cleanup(self) -> None:
        self.stop()
        asyncio.run(delete_streams([self.stream, self.dlq_stream]))
        clickhouse(f"DROP DATABASE IF EXISTS {self.database}")
        shutil.rmtree(self.dir, ignore_errors=True)


async def stored_messages(
    stream: str, prefix: str, customer: Optional[str] = None, url: str = NATS_URL, **auth: Any
) -> List[StoredMessage]:
    """What ``stream`` holds on ``prefix`` (one customer's subjects, or all), in order, read
    from ``url`` (default: the test stack's NATS) with ``auth`` (``user=``, ``password=``)."""
    nc = await nats.connect(url, **auth)
    try:
        js = nc.jetstream()
        out: List[StoredMessage] = []
        seq = 1
        subject = f"{prefix}.{customer}.*" if customer else f"{prefix}.>"
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return out
            headers = msg.headers or {}
            out.append(
                StoredMessage(
                    seq=msg.seq,
                    subject=msg.subject,
                    msg_id=headers.get("Nats-Msg-Id"),
                    event=json.loads(msg.data),
                )
            )
            seq = msg.seq + 1
    finally:
        await nc.close()


async def delete_streams(names: Sequence[str]) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for name in names:
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
    finally:
        await nc.close()


# -- the whole stack: rater, spend decider, gateway, aggregator -------------------------------

# the stacks' configuration, shared with the TypeScript suite
_STACK_TOML = REPO / "sdk" / "testdata" / "stack.toml"

_BINARIES = {
    "rater": ["tally-rater", "serve"],
    "spend": ["tally-spend"],
    "gateway": ["tally-gateway", "serve"],
    "aggregator": ["tally-aggregator"],
}


async def delete_streams_tagged(url: str, tag: str, **auth: Any) -> None:
    """Deletes every stream (and KV bucket) whose name holds ``tag``."""
    nc = await nats.connect(url, **auth)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if tag in info.config.name:
                try:
                    await js.delete_stream(info.config.name)
                except nats.js.errors.NotFoundError:
                    pass
    finally:
        await nc.close()


class Stack:
    """The real services for the spend, usage query and inbox tests, over the test module's
    own streams, subject prefixes, spend subject root and ClickHouse database:
    ``tally-rater`` (stores the config's meters and plan, serves the usage query),
    ``tally-spend``, ``tally-gateway`` and ``tally-aggregator``. After :meth:`use_nats` each
    service logs in as its own NATS user (``tally-<service>``), as in production."""

    def __init__(self, tag: str) -> None:
        self.tag = f"{tag}_{os.getpid()}_{time.time_ns() & 0xFFFFFFFFFF:x}"
        self.stream = f"T_{self.tag}"
        self.prefix = f"t_{self.tag}"
        self.spend_root = f"t_{self.tag}_spend"
        self.database = f"test_{self.tag}"
        self.nats_url = NATS_URL
        self.nats_users: Optional[Dict[str, str]] = None
        self.ports = {name: free_port() for name in ("rater", "gateway", "admin", "spend")}
        self.dir = Path(tempfile.mkdtemp(prefix=f"tally-sdk-{tag}-"))
        self.config = self.dir / "tally.toml"
        values = {
            "NATS_URL": self.nats_url, "STREAM": self.stream, "PREFIX": self.prefix,
            "CLICKHOUSE_URL": CLICKHOUSE_URL, "DATABASE": self.database, "SPEND_ROOT": self.spend_root,
            "RATER_PORT": self.ports["rater"], "GATEWAY_PORT": self.ports["gateway"],
            "ADMIN_PORT": self.ports["admin"], "SPEND_PORT": self.ports["spend"],
        }
        text = _STACK_TOML.read_text()
        for name, value in values.items():
            text = text.replace(f"@{name}@", str(value))
        self.config.write_text(text)
        self.procs: Dict[str, subprocess.Popen] = {}
        migrate(self.config)
        # made before the services start, which load tokens then (and every second after)
        self.admin_token = self.api_token("sdk-tests", "admin")
        self.reader_token = self.api_token("sdk-reader", "reader")

    @property
    def rater_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['rater']}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def api_token(self, actor: str, role: str) -> str:
        return api_token(self.config, actor, role)

    def use_nats(self, url: str, users: Dict[str, str]) -> None:
        """Points the services at ``url`` (a :class:`NatsServer` of the test's own), each
        logging in as its own user; call before :meth:`start`."""
        text = self.config.read_text().replace(f'url = "{self.nats_url}"', f'url = "{url}"')
        self.config.write_text(text)
        self.nats_url, self.nats_users = url, users

    def _admin_auth(self) -> Dict[str, str]:
        if self.nats_users is None:
            return {}
        return {"user": "tally-admin", "password": self.nats_users["tally-admin"]}

    def _log(self, service: str) -> Path:
        return self.dir / f"{service}.log"

    def _spawn(self, service: str) -> None:
        name, *command = _BINARIES[service]
        env = dict(os.environ)
        user = f"tally-{service}"
        if self.nats_users is not None and user in self.nats_users:
            env["TALLY_NATS__USER"] = user
            env["TALLY_NATS__PASSWORD"] = self.nats_users[user]
        with open(self._log(service), "ab") as log:
            self.procs[service] = subprocess.Popen(
                [str(binary(name)), *command, "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    def _wait(self, service: str, ready, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[service].poll() is not None:
                raise RuntimeError(f"{service} exited:\n{self._log(service).read_text(errors='replace')}")
            try:
                if ready():
                    return
            except (OSError, nats.errors.Error, asyncio.TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{service} not ready after {timeout}s:\n{self._log(service).read_text(errors='replace')}")

    def _get(self, url: str, token: str) -> int:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def start(self, services: Sequence[str]) -> None:
        """Starts ``services``, the rater first (it stores the catalog the decider reads),
        and waits until each answers."""
        if "rater" in services:
            self._spawn("rater")
            self._wait("rater", lambda: self._get(f"{self.rater_url}/v1/plans", self.admin_token) == 200)
        for s in services:
            if s != "rater":
                self._spawn(s)
        if "gateway" in services:
            self._wait("gateway", lambda: self._get(f"{self.gateway_url}/healthz", "") == 200)
        if "spend" in services:
            async def probe() -> bool:
                nc = await nats.connect(self.nats_url, **self._admin_auth())
                try:
                    await nc.request(f"{self.spend_root}.balance.ready-probe", b"", timeout=1)
                    return True
                finally:
                    await nc.close()

            self._wait("spend", lambda: asyncio.run(probe()))

    def create_key(self, customer: str, agents: Sequence[str] = ()) -> str:
        body = json.dumps({"customer": customer, "agents": list(agents), "label": "sdk test"}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['admin']}/v1/admin/keys", data=body, method="POST",
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["key"]

    def put_budget(self, customer: str, budget_id: str, budget: Dict[str, Any]) -> None:
        """A budget through tally-spend's API (``PUT /v1/customers/{id}/budgets/{budget}``)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['spend']}/v1/customers/{customer}/budgets/{budget_id}",
            data=json.dumps(budget).encode(), method="PUT",
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def cleanup(self) -> None:
        self.stop()
        try:
            asyncio.run(delete_streams_tagged(self.nats_url, self.tag, **self._admin_auth()))
        except (OSError, nats.errors.Error):
            pass
        clickhouse(f"DROP DATABASE IF EXISTS {self.database}")
        shutil.rmtree(self.dir, ignore_errors=True)


def _nats_server_binary() -> str:
    for path in [os.environ.get("TALLY_TEST_NATS_SERVER"), shutil.which("nats-server"),
                 "/usr/sbin/nats-server", "/usr/bin/nats-server"]:
        if path and Path(path).is_file():
            return path
    raise RuntimeError("nats-server is missing: run scripts/stack.sh up (it installs it)")


class NatsServer:
    """A nats-server of the test's own with JetStream and the authorization ``tally-gateway
    nats-config`` generates for ``customers`` from ``config`` (its stream, prefixes and spend
    root): the production permissions, replies only on ``_INBOX.<user>.>``."""

    def __init__(self, config: Path, customers: Sequence[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tally-sdk-nats-"))
        out = subprocess.run(
            [str(binary("tally-gateway")), "nats-config", "--customers", ",".join(customers),
             "--out-dir", str(self.dir), "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"nats-config failed: {out.stdout}{out.stderr}")
        self.users: Dict[str, str] = {}
        for line in (self.dir / "nats-credentials.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                self.users[parts[0]] = parts[1]
        port = free_port()
        self.url = f"nats://127.0.0.1:{port}"
        (self.dir / "nats.conf").write_text(
            f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            'include "nats-auth.conf"\n'
        )
        self.proc = subprocess.Popen([_nats_server_binary(), "-c", str(self.dir / "nats.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not start on port {port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
