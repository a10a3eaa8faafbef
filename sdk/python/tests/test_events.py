"""Events, ids and the usage helpers, without servers."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from types import SimpleNamespace

import pytest

from tally_sdk import (
    EventIds,
    InvalidEvent,
    anthropic_token_counts,
    anthropic_token_events,
    encode_event,
    format_time,
    llm_tokens_event,
    nats_msg_id,
    openai_token_counts,
    openai_token_events,
    run_event_id,
    stable_event_id,
    usage_event,
    usage_subject,
)

# The same vectors are checked by the TypeScript package's tests (test/events.test.ts).
STABLE_ID_VECTORS = [
    (("chatcmpl-1", "output"), "96e2405a-944d-5c05-9621-8ace1eb5d57d"),
    (("run-7",), "d47b7f3d-4f21-5ba1-a71d-d0df454143e1"),
    (("ütf", "a\"b", "\n"), "40457e8b-9798-5b21-b562-890d8539e0f2"),
]


def test_msg_id_is_the_whole_identity():
    assert nats_msg_id("acme", "bot-1", "order-42") == "acme:bot-1:order-42"
    assert nats_msg_id("c1", "a", "x") != nats_msg_id("c2", "a", "x")
    assert nats_msg_id("a", "b", "c:d") == "a:b:c:d"  # ids may hold ':', customers cannot
    with pytest.raises(InvalidEvent) as e:
        nats_msg_id("a:b", "c", "d")
    assert e.value.field == "subject"
    with pytest.raises(InvalidEvent) as e:
        nats_msg_id("a", "b" * 65, "d")
    assert e.value.field == "source"
    with pytest.raises(InvalidEvent) as e:
        nats_msg_id("a", "b", "has space")
    assert e.value.field == "id"
    assert usage_subject("usage", "acme", "bot-1") == "usage.acme.bot-1"


def test_event_ids_are_deterministic():
    ids = EventIds("run-7")
    assert [ids.next(), ids.next(), ids.next()] == ["run-7-0", "run-7-1", "run-7-2"]
    assert EventIds("run-7").at(2) == "run-7-2" == run_event_id("run-7", 2)
    assert EventIds("run-7", start=5).next() == "run-7-5"
    with pytest.raises(ValueError):
        run_event_id("run-7", -1)
    with pytest.raises(InvalidEvent):
        EventIds("x" * 127)  # "<run>-0" would be 129 characters
    assert len(run_event_id("x" * 126, 0)) == 128


def test_stable_ids_match_the_shared_vectors():
    computed = {parts: stable_event_id(*parts) for parts, _ in STABLE_ID_VECTORS}
    assert stable_event_id("chatcmpl-1", "output") == stable_event_id("chatcmpl-1", "output")
    assert stable_event_id("a", "bc") != stable_event_id("ab", "c")
    for parts, expected in STABLE_ID_VECTORS:
        assert computed[parts] == expected, (parts, computed[parts])


def test_time_is_rfc3339_utc_with_milliseconds():
    t = dt.datetime(2026, 11, 26, 22, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert format_time(t) == "2026-11-26T21:00:00.123Z"
    with pytest.raises(ValueError):
        format_time(dt.datetime(2026, 11, 26))
    assert format_time().endswith("Z")


def test_quantities_are_integers_or_decimal_strings_never_floats():
    e = llm_tokens_event(
        customer="acme", agent="bot", id="e-1", model="gpt-4o", kind="output", tokens=340,
        time="2026-11-26T21:00:00.123Z",
    )
    wire = encode_event(e)
    assert b'"tokens":340,' in wire
    assert json.loads(wire)["data"] == {"tokens": 340, "model": "gpt-4o", "kind": "output"}
    d = usage_event(
        customer="acme", agent="bot", id="e-2", type="agent.seconds",
        data={"seconds": Decimal("1.250000000")}, time="2026-11-26T21:00:00Z",
    )
    assert d["data"]["seconds"] == "1.250000000"
    with pytest.raises(TypeError):
        usage_event(customer="acme", agent="bot", id="e", type="t", data={"x": 1.5})
    with pytest.raises(TypeError):
        usage_event(customer="acme", agent="bot", id="e", type="t", data={"n": [{"x": 2.0}]})
    with pytest.raises(TypeError):
        llm_tokens_event(customer="a", agent="b", id="e", model="m", kind="input", tokens=3.0)
    with pytest.raises(ValueError):
        llm_tokens_event(customer="a", agent="b", id="e", model="m", kind="input", tokens=-1)
    with pytest.raises(InvalidEvent) as err:
        usage_event(customer="a", agent="b", id="e", type="has space", data={})
    assert err.value.field == "type"


OPENAI_CHAT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "model": "gpt-4o-2024-08-06",
    "usage": {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
    },
}

OPENAI_RESPONSES = {
    "id": "resp_67ccd2bed1ec8190b14f964abc054267",
    "object": "response",
    "model": "gpt-4.1",
    "usage": {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 380,
    },
}

ANTHROPIC = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "model": "claude-sonnet-4-5",
    "usage": {
        "input_tokens": 21,
        "output_tokens": 305,
        "cache_creation_input_tokens": 1200,
        "cache_read_input_tokens": 5000,
    },
}


def test_openai_chat_usage_counts_each_token_once():
    assert openai_token_counts(OPENAI_CHAT) == {"input": 86, "output": 300, "cached": 1920}
    events = openai_token_events(OPENAI_CHAT, customer="acme", agent="bot", time="2026-11-26T21:00:00Z")
    assert [(e["id"], e["type"], e["data"]) for e in events] == [
        ("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-input", "llm.tokens",
         {"tokens": 86, "model": "gpt-4o-2024-08-06", "kind": "input"}),
        ("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-output", "llm.tokens",
         {"tokens": 300, "model": "gpt-4o-2024-08-06", "kind": "output"}),
        ("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-cached", "llm.tokens",
         {"tokens": 1920, "model": "gpt-4o-2024-08-06", "kind": "cached"}),
    ]
    # the same response again gives the same ids: a retry is counted once
    assert openai_token_events(OPENAI_CHAT, customer="acme", agent="bot", time="2026-11-26T21:00:00Z") == events
    total = sum(e["data"]["tokens"] for e in events)
    assert total == OPENAI_CHAT["usage"]["total_tokens"]


def test_openai_responses_usage_and_sdk_objects():
    events = openai_token_events(OPENAI_RESPONSES, customer="acme", agent="bot")
    assert [(e["data"]["kind"], e["data"]["tokens"]) for e in events] == [("input", 328), ("output", 52)]
    # the openai package's objects: attributes instead of keys, details may be None
    usage = SimpleNamespace(prompt_tokens=10, completion_tokens=5, prompt_tokens_details=None)
    obj = SimpleNamespace(id="chatcmpl-x", model="gpt-4o-mini", usage=usage)
    assert openai_token_counts(obj) == {"input": 10, "output": 5, "cached": 0}
    events = openai_token_events(obj, customer="acme", agent="bot")
    assert [e["id"] for e in events] == ["chatcmpl-x-input", "chatcmpl-x-output"]
    # a bare usage block needs the model and the id base
    with pytest.raises(ValueError):
        openai_token_events(OPENAI_CHAT["usage"], customer="acme", agent="bot")
    events = openai_token_events(
        OPENAI_CHAT["usage"], customer="acme", agent="bot", model="gpt-4o", id_base="run-1-step-3"
    )
    assert events[0]["id"] == "run-1-step-3-input" and events[0]["data"]["model"] == "gpt-4o"


def test_openai_usage_refuses_bad_numbers():
    with pytest.raises(TypeError):
        openai_token_counts({"prompt_tokens": 1.0, "completion_tokens": 2})
    with pytest.raises(ValueError):
        openai_token_counts({"prompt_tokens": 5, "completion_tokens": 2,
                             "prompt_tokens_details": {"cached_tokens": 6}})
    with pytest.raises(ValueError):
        openai_token_counts({"total_tokens": 3})


def test_anthropic_usage_keeps_cache_reads_and_writes_apart():
    assert anthropic_token_counts(ANTHROPIC) == {
        "input": 21, "output": 305, "cached": 5000, "cache_write": 1200,
    }
    events = anthropic_token_events(ANTHROPIC, customer="acme", agent="bot")
    assert [(e["id"], e["data"]["kind"], e["data"]["tokens"]) for e in events] == [
        ("msg_013Zva2CMHLNnXjNJJKqJ2EF-input", "input", 21),
        ("msg_013Zva2CMHLNnXjNJJKqJ2EF-output", "output", 305),
        ("msg_013Zva2CMHLNnXjNJJKqJ2EF-cached", "cached", 5000),
        ("msg_013Zva2CMHLNnXjNJJKqJ2EF-cache_write", "cache_write", 1200),
    ]
    assert all(e["data"]["model"] == "claude-sonnet-4-5" for e in events)
    # cache fields absent or null: no such events
    plain = {"id": "msg_1", "model": "claude-haiku-4-5",
             "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": None}}
    assert [e["data"]["kind"] for e in anthropic_token_events(plain, customer="a", agent="b")] == [
        "input", "output",
    ]
    with pytest.raises(TypeError):
        anthropic_token_counts({"input_tokens": True, "output_tokens": 1})
