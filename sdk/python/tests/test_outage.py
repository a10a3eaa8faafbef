"""Retries through real outages: a gateway that is not up yet (connection refused), and a
gateway whose stream is gone (every event `failed`, HTTP 503) until it comes back. The events
end up stored once each, under the ids they were first sent with."""

from __future__ import annotations

import asyncio
import threading
import time

import nats
import pytest

from harness import NATS_URL, Gateway
from tally_sdk import EventIds, HttpClient, llm_tokens_event

T = "2026-11-26T21:00:00.123Z"


@pytest.fixture
def own_gateway():
    gw = Gateway("sdkpy_outage")
    try:
        yield gw
    finally:
        gw.cleanup()


def events(customer, run, n):
    ids = EventIds(run)
    return [
        llm_tokens_event(customer=customer, agent="bot", id=ids.next(), model="gpt-4o",
                         kind="output", tokens=10 + i, time=T)
        for i in range(n)
    ]


def later(seconds, fn):
    t = threading.Timer(seconds, fn)
    t.start()
    return t


def test_retries_until_the_gateway_is_up_then_until_its_stream_is_back(own_gateway):
    gw = own_gateway
    key = gw.create_key_cli("acme")  # the key store, before any gateway runs
    client = HttpClient(gw.url, key, max_attempts=30, backoff_initial=0.05, backoff_max=0.5)

    # 1. connection refused until the gateway starts
    batch = events("acme", "down", 5)
    timer = later(0.4, lambda: gw.start(wait=False))
    started = time.monotonic()
    r = client.send(batch)
    timer.join()
    assert r.ok and r.accepted == 5, r.not_stored()
    assert r.requests > 1 and time.monotonic() - started >= 0.4
    assert [m.event["id"] for m in gw.messages("acme")] == [e["id"] for e in batch]

    # 2. the stream is gone: the gateway answers 503, every event `failed`; the client resends
    #    the same ids until the stream is back
    async def delete():
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(gw.stream)
        await nc.close()

    async def recreate():
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().add_stream(name=gw.stream, subjects=[f"{gw.prefix}.>"])
        await nc.close()

    asyncio.run(delete())
    probe = HttpClient(gw.url, key, max_attempts=1).send(events("acme", "probe", 1))
    assert [(v.status, v.code) for v in probe.verdicts] == [("failed", "unavailable")]

    batch = events("acme", "gone", 4)
    timer = later(0.5, lambda: asyncio.run(recreate()))
    r = client.send(batch)
    timer.join()
    assert r.ok and r.accepted == 4 and r.requests > 1, r
    stored = gw.messages("acme")
    assert [m.event["id"] for m in stored] == [e["id"] for e in batch]
    assert [m.msg_id for m in stored] == [f"acme:bot:{e['id']}" for e in batch]

    # 3. and a resend of everything is duplicate, stored once
    assert client.send(batch).duplicates == 4
    assert len(gw.messages("acme")) == 4
    client.close()
