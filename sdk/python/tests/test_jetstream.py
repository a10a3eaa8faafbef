"""The NATS publisher against the real NATS server, on the session gateway's stream: what an
agent publishes straight to JetStream lands beside what the gateway publishes, under the same
subject and Nats-Msg-Id contract."""

from __future__ import annotations

import asyncio

import nats

from harness import NATS_URL, delete_streams, stored_messages
from tally_sdk import EventIds, HttpClient, anthropic_token_events, llm_tokens_event
from tally_sdk.jetstream import NatsPublisher

T = "2026-11-26T21:00:00.123Z"


def test_published_events_carry_the_identity_and_resends_are_duplicates(gateway, customer):
    message = {"id": "msg_01ABC", "model": "claude-sonnet-4-5",
               "usage": {"input_tokens": 21, "output_tokens": 305,
                         "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 5000}}
    events = anthropic_token_events(message, customer=customer, agent="py-nats", time=T)

    async def go():
        async with await NatsPublisher.connect(
            NATS_URL, subject_prefix=gateway.prefix, stream=gateway.stream
        ) as pub:
            first = await pub.publish_many(events)
            again = await pub.publish_many(events)
            single = await pub.publish(events[0])
            return first, again, single

    first, again, single = asyncio.run(go())
    assert [v.status for v in first.verdicts] == ["accepted"] * 4, first
    assert [v.status for v in again.verdicts] == ["duplicate"] * 4, again
    assert single.status == "duplicate" and single.stored
    stored = gateway.messages(customer)
    assert [m.subject for m in stored] == [f"{gateway.prefix}.{customer}.py-nats"] * 4
    assert [m.msg_id for m in stored] == [f"{customer}:py-nats:msg_01ABC-{k}"
                                          for k in ("input", "output", "cached", "cache_write")]
    assert [m.event for m in stored] == events


def test_same_id_for_two_customers_and_two_agents_is_stored_four_times(gateway, customer):
    other = customer[:60] + "-two"
    events = [
        llm_tokens_event(customer=c, agent=a, id="same-id", model="m", kind="input", tokens=1, time=T)
        for c in (customer, other) for a in ("a1", "a2")
    ]

    async def go():
        nc = await nats.connect(NATS_URL)
        try:
            pub = NatsPublisher(nc.jetstream(), subject_prefix=gateway.prefix)
            return await pub.publish_many(events)
        finally:
            await nc.close()

    r = asyncio.run(go())
    assert r.accepted == 4, r
    stored = gateway.messages(customer) + gateway.messages(other)
    assert sorted(m.msg_id for m in stored) == sorted(
        f"{c}:{a}:same-id" for c in (customer, other) for a in ("a1", "a2")
    )


def test_http_and_nats_share_one_dedup_identity(gateway, customer):
    """An event sent over HTTP and again over NATS is one message: both name it alike."""
    key = gateway.create_key(customer)
    events = [llm_tokens_event(customer=customer, agent="both", id=i, model="m", kind="output",
                               tokens=3, time=T) for i in (EventIds("mix").at(0), EventIds("mix").at(1))]
    with HttpClient(gateway.url, key) as client:
        assert client.send(events[:1]).accepted == 1

    async def go():
        async with await NatsPublisher.connect(NATS_URL, subject_prefix=gateway.prefix) as pub:
            return await pub.publish_many(events)

    r = asyncio.run(go())
    assert [v.status for v in r.verdicts] == ["duplicate", "accepted"]
    with HttpClient(gateway.url, key) as client:
        assert client.send(events).duplicates == 2
    assert [m.event["id"] for m in gateway.messages(customer)] == ["mix-0", "mix-1"]


def test_invalid_identity_is_rejected_locally_and_nothing_is_sent(gateway, customer):
    good = llm_tokens_event(customer=customer, agent="bot", id="ok-1", model="m", kind="input",
                            tokens=1, time=T)
    bad_agent = dict(good, id="bad-1", source="no.dots")
    bad_id = dict(good, id="has space")

    async def go():
        async with await NatsPublisher.connect(NATS_URL, subject_prefix=gateway.prefix) as pub:
            return await pub.publish_many([bad_agent, good, bad_id])

    r = asyncio.run(go())
    assert [(v.status, v.code, v.field) for v in r.verdicts] == [
        ("rejected", "malformed", "source"), ("accepted", None, None), ("rejected", "malformed", "id"),
    ]
    assert r.requests == 1
    assert [m.event["id"] for m in gateway.messages(customer)] == ["ok-1"]


def test_publishes_are_retried_with_the_same_id_until_the_stream_exists():
    stream, prefix = "T_sdkpy_late_stream", "t_sdkpy_late_stream"
    asyncio.run(delete_streams([stream]))
    event = llm_tokens_event(customer="acme", agent="bot", id="late-1", model="m", kind="input",
                             tokens=5, time=T)

    async def go():
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        pub = NatsPublisher(js, subject_prefix=prefix, timeout=1.0, max_attempts=20,
                            backoff_initial=0.05, backoff_max=0.2)
        publishing = asyncio.ensure_future(pub.publish_many([event]))
        await asyncio.sleep(0.3)
        await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
        r = await publishing
        await nc.close()
        return r

    try:
        r = asyncio.run(go())
        assert r.verdicts[0].status == "accepted" and r.requests > 1, r
        stored = asyncio.run(stored_messages(stream, prefix))
        assert [(m.subject, m.msg_id) for m in stored] == [(f"{prefix}.acme.bot", "acme:bot:late-1")]
    finally:
        asyncio.run(delete_streams([stream]))
