"""A real ``tally-gateway`` for the tests, over the test run's own JetStream streams, subject
prefix and ClickHouse database (created by ``tally-migrate``), like the Rust tests'
``TestEnv``: suites run in parallel with each other and with ``cargo test``.

Binaries come from ``TALLY_BIN_DIR`` (default ``target/debug`` of the repository), servers
from ``TALLY_TEST_NATS_URL`` and ``TALLY_TEST_CLICKHOUSE_URL`` (defaults: the local stack).
"""

from __future__ import annotations

import asyncio
import json
import os
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
        migrate = subprocess.run(
            [str(binary("tally-migrate")), "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"tally-migrate failed: {migrate.stdout}{migrate.stderr}")
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
        out = subprocess.run(
            [str(binary("tally-access")), "tokens-create", "--actor", actor, "--role", role,
             "--config", str(self.config)],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"tokens-create failed: {out.stdout}{out.stderr}")
        return json.loads(out.stdout)["token"]

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


async def stored_messages(
    stream: str, prefix: str, customer: Optional[str] = None
) -> List[StoredMessage]:
    nc = await nats.connect(NATS_URL)
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
