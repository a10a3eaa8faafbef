"""Asking before spending against the real decider: ``tally-spend`` decides (budgets put through
its API, the plan stored by ``tally-rater``: 0.02 USD per tool call), ``tally-gateway`` passes
``POST /v1/authorize`` and ``GET /v1/balance`` to it, ``tally-aggregator`` commits the usage
that settles holds. Over HTTP with ``SpendClient`` and over NATS with ``NatsSpendClient``.
(test_spend.py pins the exact request the gateway forwards, with a stand-in decider.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from decimal import Decimal
from typing import Any, Callable, Dict, Optional

import pytest

from harness import Stack
from tally_sdk import FailOpenWithin, HttpClient, InvalidEvent, SpendClient, tool_call_event
from tally_sdk.nats_spend import NatsSpendClient

_n = itertools.count()


def customer(name: str) -> str:
    return f"c{next(_n)}-{name}"


@pytest.fixture(scope="module")
def stack():
    s = Stack("sdkdecider")
    try:
        s.start(["rater", "spend", "gateway", "aggregator"])
        yield s
    finally:
        s.cleanup()


def until(what: str, read: Callable[[], Optional[Dict[str, Any]]], done: Callable[[Dict[str, Any]], bool]) -> Dict[str, Any]:
    last = None
    for _ in range(150):
        last = read()
        if last is not None and done(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached in 15 s; last {last}")


def test_over_http_a_budget_denies_a_release_gives_room_back_usage_settles(stack):
    c = customer("http")
    stack.put_budget(c, "monthly", {"kind": "amount", "limit": "0.10", "hard": True})  # five calls
    key = stack.create_key(c)
    client = SpendClient(stack.gateway_url, key)
    until("the budget is loaded", client.balance, lambda b: len(b["budgets"]) == 1)
    first = client.authorize("bot-1", "tool_calls", 3, deadline_ms=30000)
    assert first.allow and first.hold_id and not first.offline, first
    assert first.remaining == Decimal("0.04")
    second = client.authorize("bot-1", "tool_calls", 3)
    assert (second.allow, second.reason, second.detail) == (False, "budget_exceeded", "budget monthly")
    assert client.release("bot-1", first.hold_id) is True
    assert client.release("bot-1", first.hold_id) is False
    third = client.authorize("bot-1", "tool_calls", Decimal(2))
    assert third.allow, third
    # the work used one call of the two held: the committed usage settles the hold partially,
    # the other call stays reserved until the agent releases it
    with HttpClient(stack.gateway_url, key) as http:
        assert http.send([tool_call_event(customer=c, agent="bot-1", id="call-1", tool="search",
                                          hold_id=third.hold_id)]).ok
    settled = until("the usage settles the hold partially", client.balance,
                    lambda b: Decimal(b["spend"]) == Decimal("0.02"))
    assert (settled["holds"], Decimal(settled["held_amount"])) == (1, Decimal("0.02")), settled
    assert not client.authorize("bot-1", "tool_calls", 4).allow  # 0.02 spent + 0.02 held + 0.08
    assert client.release("bot-1", third.hold_id) is True
    released = client.balance()
    assert (released["holds"], Decimal(released["held_amount"])) == (0, 0), released
    fits = client.authorize("bot-1", "tool_calls", 4)  # what the release gave back fits now
    assert fits.allow and fits.remaining == Decimal("0.00"), fits


def test_over_http_a_call_below_its_maximum_releases_the_rest_after_its_usage_is_stored(stack):
    c = customer("loop")
    stack.put_budget(c, "monthly", {"kind": "amount", "limit": "0.10", "hard": True})  # five calls
    key = stack.create_key(c)
    client = SpendClient(stack.gateway_url, key)
    until("the budget is loaded", client.balance, lambda b: len(b["budgets"]) == 1)
    with HttpClient(stack.gateway_url, key) as http:
        for step, used in enumerate([1, 3]):  # each step may make up to three calls
            ok = client.authorize("bot-1", "tool_calls", 3)
            assert ok.allow, (step, ok)
            events = [tool_call_event(customer=c, agent="bot-1", id=f"s{step}-{i}", tool="search",
                                      hold_id=ok.hold_id) for i in range(used)]
            assert http.send(events).ok
            if used < 3:
                assert client.release("bot-1", ok.hold_id) is True
            # the next step is asked only once this one's usage counts
            until(f"step {step}'s usage is committed", client.balance,
                  lambda b, n=sum([1, 3][: step + 1]): Decimal(b["spend"]) == Decimal("0.02") * n)
    done = until("every hold ended", client.balance, lambda b: b["holds"] == 0)
    assert (Decimal(done["spend"]), Decimal(done["held_amount"])) == (Decimal("0.08"), 0), done
    assert client.authorize("bot-1", "tool_calls", 1).allow  # the fifth call still fits
    assert not client.authorize("bot-1", "tool_calls", 1).allow


def test_over_nats_the_decider_answers_exactly(stack):
    c = customer("nats")
    stack.put_budget(c, "tokens", {"kind": "quantity", "meter": "llm_tokens", "limit": "1000.5", "hard": True})

    async def run() -> None:
        async with await NatsSpendClient.connect(stack.nats_url, subject_root=stack.spend_root) as client:
            for _ in range(150):
                b = await client.balance(c)
                if b and b["budgets"]:
                    break
                await asyncio.sleep(0.1)
            a = await client.authorize(c, "bot-1", "llm_tokens", Decimal("1000.25"), group={"model": "gpt-4o"})
            assert a.allow and a.remaining == Decimal("0.25"), a
            assert (await client.authorize(c, "bot-1", "llm_tokens", Decimal("0.5"))).reason == "budget_exceeded"
            unknown = await client.authorize(c, "bot-1", "no_such_meter", 1)
            assert (unknown.allow, unknown.reason) == (False, "unknown_meter")
            assert await client.release(c, "bot-2", a.hold_id) is False  # only its agent gives it back
            assert await client.release(c, "bot-1", a.hold_id) is True
            assert await client.release(c, "bot-1", a.hold_id) is False  # given back once
            with pytest.raises(InvalidEvent):
                await client.release(c, "bot-1", "bad id with spaces")
            with pytest.raises(InvalidEvent):
                await client.release("bad customer", "bot-1", a.hold_id)
            same = [await client.authorize(c, "bot-1", "llm_tokens", 1, request_id="work-7") for _ in range(2)]
            assert [x.hold_id for x in same] == ["work-7", "work-7"]
            balance = await client.balance(c)
            assert (balance["customer"], balance["holds"]) == (c, 1)
        # nobody answers under another root: "no responders", and the policy decides
        async with await NatsSpendClient.connect(stack.nats_url, subject_root=f"{stack.spend_root}_none",
                                                 policy=FailOpenWithin(Decimal(10))) as offline:
            answers = [await offline.authorize("acme", "bot-1", "tool_calls", 4) for _ in range(3)]
            assert [x.allow for x in answers] == [True, True, False]
            assert all(x.offline and x.hold_id is None for x in answers)
            assert (await offline.authorize("globex", "bot-1", "tool_calls", 10)).allow  # per customer
            assert await offline.balance("acme") is None

    asyncio.run(run())
