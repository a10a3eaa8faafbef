"""Asking before spending through a real tally-gateway: its ``POST /v1/authorize`` and
``GET /v1/balance`` pass each request over NATS to the spend decider of the customer. Here a
stand-in decider answers on the gateway's spend subjects (the real one, tally-spend, is tested
against the gateway in e2e/tests/spend.rs); without it the gateway answers 503 and the client's
failure policy decides. The agent loop example runs as written and stops when denied."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List

import nats
import pytest

from harness import NATS_URL, Gateway
from tally_sdk import FailClosed, FailOpenWithin, InvalidEvent, SpendClient, SpendError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agent_loop.py"
ROOT = f"sp{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def gw():
    g = Gateway("sdkspend", ingest={"spend_subject_root": ROOT, "spend_timeout_ms": 300})
    try:
        g.start()
        yield g
    finally:
        g.cleanup()


class StandInDecider:
    """Answers ``<root>.authorize.<customer>.*`` and ``<root>.balance.<customer>`` like the
    decider: the first ``allow`` requests are allowed with a hold, the rest denied."""

    def __init__(self, customer: str, allow: int) -> None:
        self.customer, self.allow = customer, allow
        self.requests: List[Dict[str, Any]] = []
        self.holds: List[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: "asyncio.Future[None]"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "StandInDecider":
        self._thread.start()
        assert self._ready.wait(10), "the stand-in decider did not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        nc = await nats.connect(NATS_URL)
        self._stop = self._loop.create_future()

        async def authorize(msg):
            body = json.loads(msg.data)
            self.requests.append({"subject": msg.subject, "body": body})
            if "release" in body:
                answer = {"allow": body["release"] in self.holds}
            elif len(self.holds) < self.allow:
                self.holds.append(body["request_id"])
                answer = {"allow": True, "hold_id": body["request_id"], "remaining": "1.50", "currency": "USD"}
            else:
                answer = {"allow": False, "reason": "budget_exceeded", "detail": "budget monthly", "remaining": "0"}
            await msg.respond(json.dumps(answer).encode())

        async def balance(msg):
            await msg.respond(json.dumps({"customer": self.customer, "spend": "8.50", "holds": len(self.holds)}).encode())

        await nc.subscribe(f"{ROOT}.authorize.{self.customer}.*", cb=authorize)
        await nc.subscribe(f"{ROOT}.balance.{self.customer}", cb=balance)
        await nc.flush()
        self._ready.set()
        await self._stop
        await nc.close()


def test_allowed_then_denied_with_the_request_the_decider_expects(gw, customer):
    client = SpendClient(gw.url, gw.create_key(customer))
    with StandInDecider(customer, allow=2) as decider:
        first = client.authorize("bot-1", "llm_tokens", 4000, group={"model": "gpt-4o"}, deadline_ms=30000)
        second = client.authorize("bot-1", "llm_tokens", Decimal("0.5"))
        third = client.authorize("bot-1", "llm_tokens", 4000)
        assert first.allow and second.allow and not third.allow
        assert first.hold_id == decider.holds[0] and first.remaining == Decimal("1.50")
        assert third.reason == "budget_exceeded" and not third.offline
        req = decider.requests[0]
        # the agent moves from the body to the subject; quantities are exact strings
        assert req["subject"] == f"{ROOT}.authorize.{customer}.bot-1"
        assert req["body"] == {
            "meter": "llm_tokens",
            "max_quantity": "4000",
            "group": {"model": "gpt-4o"},
            "deadline_ms": 30000,
            "request_id": first.hold_id,
        }
        assert decider.requests[1]["body"]["max_quantity"] == "0.5"
        assert client.release("bot-1", first.hold_id) is True
        assert client.release("bot-1", "never-held") is False
        assert client.balance() == {"customer": customer, "spend": "8.50", "holds": 2}


def test_without_a_decider_the_failure_policy_decides(gw, customer):
    key = gw.create_key(customer)
    closed = SpendClient(gw.url, key)
    a = closed.authorize("bot-1", "tool_calls", 4)
    assert (a.allow, a.reason, a.offline) == (False, "unavailable", True)
    assert closed.balance() is None
    open_ = SpendClient(gw.url, key, policy=FailOpenWithin(Decimal(10)))
    answers = [open_.authorize("bot-1", "tool_calls", 4) for _ in range(3)]
    assert [x.allow for x in answers] == [True, True, False]
    assert answers[1].remaining == Decimal(2) and all(x.offline and x.hold_id is None for x in answers)
    # the rest of the allowance still fits, another meter has its own
    assert open_.authorize("bot-1", "tool_calls", 2).allow
    assert not open_.authorize("bot-1", "tool_calls", 1).allow
    assert open_.authorize("bot-1", "llm_tokens", 10).allow


def test_refusals_of_the_request_raise(gw, customer):
    with pytest.raises(SpendError) as e:
        SpendClient(gw.url, "tk_nope_nope").authorize("bot-1", "tool_calls", 1)
    assert e.value.status == 401
    scoped = SpendClient(gw.url, gw.create_key(customer, agents=["bot-1"]))
    with pytest.raises(SpendError) as e:
        scoped.authorize("bot-2", "tool_calls", 1)
    assert (e.value.status, e.value.code) == (400, "invalid_field")
    with pytest.raises(ValueError):
        scoped.authorize("bot-1", "tool_calls", 0)
    with pytest.raises(TypeError):
        scoped.authorize("bot-1", "tool_calls", 1.5)
    # a release names a valid hold id and agent before anything is sent
    with pytest.raises(InvalidEvent):
        scoped.release("bot-1", "bad id with spaces")
    with pytest.raises(InvalidEvent):
        scoped.release("bot 1", "h-1")
    with pytest.raises(SpendError) as e:
        SpendClient(gw.url, "tk_nope_nope").release("bot-1", "h-1")
    assert e.value.status == 401


def test_the_agent_loop_example_stops_when_denied_and_its_usage_names_the_holds(gw, customer):
    key = gw.create_key(customer)
    env = {**os.environ, "TALLY_GATEWAY_URL": gw.url, "TALLY_API_KEY": key,
           "TALLY_CUSTOMER": customer, "TALLY_AGENT": "bot-1", "TALLY_STEPS": "10"}
    with StandInDecider(customer, allow=3) as decider:
        run = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 4, run.stdout
    assert all("allowed" in l for l in lines[:3]) and "stopped: budget_exceeded" in lines[3]
    stored = gw.messages(customer)
    assert sorted(m.event["holdid"] for m in stored) == sorted(decider.holds)
    assert all(m.event["type"] == "llm.tokens" for m in stored)
    # a call that used less than its 4000 tokens released its hold, after its usage was stored
    used = {m.event["holdid"]: int(m.event["data"]["tokens"]) for m in stored}
    releases = [r["body"]["release"] for r in decider.requests if "release" in r["body"]]
    assert sorted(releases) == sorted(h for h, n in used.items() if n < 4000), (used, releases)
    assert all("released the rest" in l for l in lines[:3] if "used 4000" not in l), run.stdout
    assert all(r["subject"] == f"{ROOT}.authorize.{customer}.bot-1" for r in decider.requests)
