"""The HTTP client against a real tally-gateway, read back from the real JetStream stream."""

from __future__ import annotations

import asyncio
import json

import pytest

from tally_sdk import (
    AsyncHttpClient,
    EventIds,
    GatewayError,
    HttpClient,
    encode_event,
    llm_tokens_event,
    openai_token_events,
    tool_call_event,
    usage_event,
)

T = "2026-11-26T21:00:00.123Z"


def run_events(customer, agent, run_id, n=3):
    ids = EventIds(run_id)
    out = []
    for i in range(n):
        if i % 3 == 2:
            out.append(tool_call_event(customer=customer, agent=agent, id=ids.next(), tool="search", time=T))
        else:
            out.append(
                llm_tokens_event(
                    customer=customer, agent=agent, id=ids.next(), model="gpt-4o",
                    kind="input" if i % 3 == 0 else "output", tokens=100 + i, time=T,
                )
            )
    return out


def test_a_batch_is_stored_under_the_identity_and_a_resend_is_duplicate(gateway, customer):
    key = gateway.create_key(customer)
    events = run_events(customer, "bot-1", "run-1")
    events += openai_token_events(
        {"id": "chatcmpl-9", "model": "gpt-4o-mini",
         "usage": {"prompt_tokens": 50, "completion_tokens": 7,
                   "prompt_tokens_details": {"cached_tokens": 20}}},
        customer=customer, agent="bot-1", time=T,
    )
    with HttpClient(gateway.url, key) as client:
        first = client.send(events)
        assert first.ok and first.accepted == 6 and first.requests == 1, first
        assert [v.id for v in first.verdicts] == [e["id"] for e in events]
        assert [v.index for v in first.verdicts] == list(range(6))

        stored = gateway.messages(customer)
        assert [m.subject for m in stored] == [f"{gateway.prefix}.{customer}.bot-1"] * 6
        assert [m.msg_id for m in stored] == [f"{customer}:bot-1:{e['id']}" for e in events]
        assert [m.event for m in stored] == [json.loads(encode_event(e)) for e in events]
        assert stored[3].event["data"] == {"tokens": 30, "model": "gpt-4o-mini", "kind": "input"}

        again = client.send(events)
        assert again.ok and again.duplicates == 6 and again.accepted == 0, again
        assert len(gateway.messages(customer)) == 6


def test_gzip_and_plain_bodies_are_both_read(gateway, customer):
    key = gateway.create_key(customer)
    events = run_events(customer, "bot-1", "gz", n=60)
    with HttpClient(gateway.url, key, gzip=True) as zipped:
        r = zipped.send(events[:30])
    assert r.accepted == 30, r.not_stored()
    assert r.wire_bytes < r.body_bytes / 3  # the body went compressed
    with HttpClient(gateway.url, key, gzip=False) as plain:
        p = plain.send(events[30:])
    assert p.accepted == 30 and p.wire_bytes == p.body_bytes
    stored = gateway.messages(customer)
    assert [m.event["id"] for m in stored] == [e["id"] for e in events]


def test_rejected_events_carry_code_and_field_and_the_rest_is_stored(gateway, customer):
    key = gateway.create_key(customer, agents=["bot-1"])
    good = run_events(customer, "bot-1", "rej", n=2)
    bad_time = dict(good[0], id="rej-bad-time", time="yesterday")
    other_customer = dict(good[0], id="rej-other", subject="someone-else")
    other_agent = dict(good[0], id="rej-agent", source="bot-2")
    events = [good[0], bad_time, other_customer, good[1], other_agent]
    with HttpClient(gateway.url, key) as client:
        r = client.send(events)
    assert [v.status for v in r.verdicts] == ["accepted", "rejected", "rejected", "accepted", "rejected"]
    assert (r.verdicts[1].code, r.verdicts[1].field) == ("malformed", "time")
    assert "yesterday" in (r.verdicts[1].detail or "")
    assert (r.verdicts[2].code, r.verdicts[2].field) == ("subject_mismatch", "subject")
    assert (r.verdicts[4].code, r.verdicts[4].field) == ("subject_mismatch", "source")
    assert r.requests == 1  # a rejection is final: not retried
    assert [m.event["id"] for m in gateway.messages(customer)] == [good[0]["id"], good[1]["id"]]


def test_two_customers_with_the_same_id_are_both_stored(gateway, customer):
    other = customer[:60] + "-two"
    key_a, key_b = gateway.create_key(customer), gateway.create_key(other)
    ev_a = llm_tokens_event(customer=customer, agent="bot", id="shared-1", model="m", kind="input", tokens=1, time=T)
    ev_b = llm_tokens_event(customer=other, agent="bot", id="shared-1", model="m", kind="input", tokens=2, time=T)
    with HttpClient(gateway.url, key_a) as a, HttpClient(gateway.url, key_b) as b:
        assert a.send([ev_a]).verdicts[0].status == "accepted"
        assert b.send([ev_b]).verdicts[0].status == "accepted"
        assert b.send([ev_b]).verdicts[0].status == "duplicate"
    (sa,), (sb,) = gateway.messages(customer), gateway.messages(other)
    assert sa.msg_id == f"{customer}:bot:shared-1" and sa.event["data"]["tokens"] == 1
    assert sb.msg_id == f"{other}:bot:shared-1" and sb.event["data"]["tokens"] == 2


def test_large_sends_are_split_into_batches_in_order(gateway, customer):
    key = gateway.create_key(customer)
    events = run_events(customer, "bot-1", "big", n=250)
    with HttpClient(gateway.url, key, batch_max_events=100) as client:
        r = client.send(events)
    assert r.accepted == 250 and r.requests == 3
    assert [v.id for v in r.verdicts] == [e["id"] for e in events]
    # a byte limit splits too
    more = run_events(customer, "bot-1", "bytes", n=20)
    one = len(encode_event(more[0]))
    with HttpClient(gateway.url, key, batch_max_bytes=one * 5 + 10) as client:
        r = client.send(more)
    assert r.accepted == 20 and r.requests >= 4
    assert len(gateway.messages(customer)) == 270


def test_a_gateway_with_smaller_limits_gets_halved_requests(gateway):
    """The client's batch limit above the gateway's: 413 batch_too_large, the client halves."""
    from harness import Gateway

    small = Gateway("sdkpy_small", {"batch_max_events": 8, "burst_per_key": 10000})
    try:
        small.start()
        key = small.create_key("acme")
        events = run_events("acme", "bot", "halve", n=20)
        with HttpClient(small.url, key, batch_max_events=1000) as client:
            r = client.send(events)
        assert r.accepted == 20 and r.requests > 1, r
        assert [m.event["id"] for m in small.messages("acme")] == [e["id"] for e in events]
    finally:
        small.cleanup()


def test_buffered_add_and_flush(gateway, customer):
    key = gateway.create_key(customer)
    events = run_events(customer, "bot-1", "buf", n=7)
    client = HttpClient(gateway.url, key, batch_max_events=3)
    for e in events:
        client.add(e)
    assert len(gateway.messages(customer)) == 6  # two full batches went at once
    r = client.close()
    assert [v.index for v in r.verdicts] == list(range(7))
    assert [v.id for v in r.verdicts] == [e["id"] for e in events]
    assert r.accepted == 7 and len(gateway.messages(customer)) == 7


def test_the_async_client_sends_the_same_way(gateway, customer):
    key = gateway.create_key(customer)
    events = run_events(customer, "bot-1", "async", n=4)

    async def go():
        async with AsyncHttpClient(gateway.url, key) as client:
            return await client.send(events)

    assert asyncio.run(go()).accepted == 4


def test_a_refused_key_raises_with_the_gateways_code(gateway, customer):
    events = run_events(customer, "bot-1", "auth", n=1)
    with HttpClient(gateway.url, "tk_0000000000000000_" + "0" * 64) as client:
        with pytest.raises(GatewayError) as e:
            client.send(events)
    assert (e.value.status, e.value.code) == (401, "invalid_key")
    key = gateway.create_key(customer)
    gateway.revoke_key(key)
    with HttpClient(gateway.url, key) as client:
        with pytest.raises(GatewayError) as e:
            client.send(events)
    assert (e.value.status, e.value.code) == (401, "revoked_key")
    assert gateway.messages(customer) == []


def test_an_unreachable_gateway_gives_failed_verdicts_not_an_exception():
    from harness import free_port

    events = run_events("acme", "bot", "down", n=2)
    with HttpClient(f"http://127.0.0.1:{free_port()}", "tk_x", max_attempts=3, backoff_initial=0.01) as client:
        r = client.send(events)
    assert [(v.status, v.code) for v in r.verdicts] == [("failed", "connection_error")] * 2
    assert r.requests == 3 and r.retries == 2
