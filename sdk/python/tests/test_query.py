"""The usage query client against a real ``tally-rater`` over real ClickHouse: events go through
the real gateway into JetStream, the real aggregator commits them as window partials, and
``UsageQueryClient`` reads them back per MINUTE, per HOUR in Asia/Kolkata (hours begin at :30
UTC; the ``+`` of the offsets escaped), for the whole range by agent with filters, and a
COUNT meter; every value is the exact ``Decimal`` of what was sent."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from harness import Stack
from test_readme import query_example
from tally_sdk import (
    HttpClient,
    UsageQueryClient,
    UsageQueryError,
    llm_tokens_event,
    tool_call_event,
    usage_query_string,
)

UTC = dt.timezone.utc
KOLKATA = dt.timezone(dt.timedelta(hours=5, minutes=30))
MINUTE = dt.timedelta(minutes=1)
CUSTOMER = "acme-query"
# two whole minutes a few minutes ago: inside the aggregator's allowed lateness
BASE = dt.datetime.now(UTC).replace(second=0, microsecond=0) - 5 * MINUTE


def iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def rater():
    stack = Stack("sdkquery")
    try:
        stack.start(["rater", "gateway", "aggregator"])
        client = UsageQueryClient(stack.rater_url, stack.reader_token)
        who = {"customer": CUSTOMER, "agent": "bot-a"}
        s = dt.timedelta(seconds=1)
        events = [
            llm_tokens_event(**who, id="t1", time=BASE + s, model="m1", kind="input", tokens=Decimal("0.1")),
            llm_tokens_event(**who, id="t2", time=BASE + 2 * s, model="m1", kind="input", tokens=Decimal("0.2")),
            llm_tokens_event(**who, id="t3", time=BASE + MINUTE + s, model="m2", kind="output", tokens=Decimal("1.25")),
            llm_tokens_event(customer=CUSTOMER, agent="bot-b", id="t4", time=BASE + MINUTE + 2 * s,
                             model="m1", kind="output", tokens=40),
        ] + [tool_call_event(**who, id=f"c{i}", time=BASE + 3 * s, tool="search") for i in range(3)]
        with HttpClient(stack.gateway_url, stack.create_key(CUSTOMER)) as http:
            assert http.send(events).ok
        # another customer's usage of the same minutes is never in acme's answers
        with HttpClient(stack.gateway_url, stack.create_key("other")) as http:
            assert http.send([llm_tokens_event(customer="other", agent="bot-a", id="t5", time=BASE + s,
                                               model="m1", kind="input", tokens=7)]).ok
        for _ in range(300):  # until the aggregator committed all of it
            r = client.query("llm_tokens", customer=CUSTOMER, from_=BASE, to=BASE + 2 * MINUTE)
            if r.data and r.data[0].value == Decimal("41.55"):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the aggregator did not commit the events within 30 s")
        yield stack, client
    finally:
        stack.cleanup()


def test_per_minute_by_model_each_window_has_its_exact_sum(rater):
    _, client = rater
    r = client.query("llm_tokens", customer=CUSTOMER, from_=BASE, to=BASE + 2 * MINUTE,
                     window_size="MINUTE", group_by=["model"])
    assert (r.meter, r.aggregation, r.window_size, r.window_time_zone, r.group_by) == (
        "llm_tokens", "SUM", "MINUTE", "UTC", ["model"])
    assert [(x.window_start, x.window_end, x.customer, x.group_by, x.value) for x in r.data] == [
        (iso(BASE), iso(BASE + MINUTE), CUSTOMER, {"model": "m1"}, Decimal("0.3")),
        (iso(BASE + MINUTE), iso(BASE + 2 * MINUTE), CUSTOMER, {"model": "m1"}, Decimal("40")),
        (iso(BASE + MINUTE), iso(BASE + 2 * MINUTE), CUSTOMER, {"model": "m2"}, Decimal("1.25")),
    ]
    # exact: 0.1 + 0.2 is 0.3, as written by the rater ("0.3"), not a float's 0.30000000000000004
    assert str(r.data[0].value) == "0.3" and isinstance(r.data[0].value, Decimal)


def test_the_whole_range_by_agent_with_filters_and_a_count_meter(rater):
    _, client = rater
    span = {"customer": CUSTOMER, "from_": iso(BASE), "to": iso(BASE + 2 * MINUTE)}
    by_agent = client.query("llm_tokens", **span, group_by=["agent"], filter_group={"kind": "output"})
    assert by_agent.window_size is None
    assert [(x.group_by, x.value) for x in by_agent.data] == [
        ({"agent": "bot-a"}, Decimal("1.25")),
        ({"agent": "bot-b"}, Decimal("40")),
    ]
    any_of = client.query("llm_tokens", **span, filter_group={"model": ["m2", "m3"], "agent": "bot-a"})
    assert [x.value for x in any_of.data] == [Decimal("1.25")]
    calls = client.query("tool_calls", **span, group_by=["tool"])
    assert calls.aggregation == "COUNT"
    assert [(x.group_by, x.value) for x in calls.data] == [({"tool": "search"}, Decimal(3))]


def test_hour_windows_in_kolkata_begin_at_half_past_utc(rater):
    _, client = rater
    hour = dt.timedelta(hours=1)

    def hour_of(t: dt.datetime) -> dt.datetime:
        return t.astimezone(KOLKATA).replace(minute=0, second=0, microsecond=0)

    start = hour_of(BASE)
    assert start.astimezone(UTC).minute == 30
    query = dict(customer=CUSTOMER, from_=start, to=start + 2 * hour, window_size="HOUR",
                 window_time_zone="Asia/Kolkata")
    assert "%2B05%3A30" in usage_query_string(**query)  # the offset's "+" is escaped
    r = client.query("llm_tokens", **query)
    assert r.from_ == start.isoformat()
    if hour_of(BASE) == hour_of(BASE + MINUTE):
        expected = [(start, start + hour, Decimal("41.55"))]
    else:  # a Kolkata hour begins between the two minutes
        expected = [(start, start + hour, Decimal("0.3")), (start + hour, start + 2 * hour, Decimal("41.25"))]
    assert [(x.window_start, x.window_end, x.value) for x in r.data] == [
        (a.isoformat(), b.isoformat(), v) for a, b, v in expected
    ]


def test_refused_queries_raise_the_raters_status_and_code(rater):
    stack, client = rater
    cases = [
        ("no_such_meter", {"from_": iso(BASE)}, 404, "not_found"),
        ("llm_tokens", {"from_": "yesterday"}, 400, "invalid_from"),
        ("llm_tokens", {"from_": iso(BASE + dt.timedelta(seconds=1))}, 400, "invalid_from"),
        ("llm_tokens", {"from_": iso(BASE), "group_by": ["colour"]}, 400, "invalid_group_by"),
        ("llm_tokens", {"from_": iso(BASE), "window_time_zone": "Mars/Olympus"}, 400, "invalid_window_time_zone"),
    ]
    for meter, params, status, code in cases:
        with pytest.raises(UsageQueryError) as e:
            client.query(meter, customer=CUSTOMER, **params)
        assert (e.value.status, e.value.code) == (status, code), e.value
    with pytest.raises(UsageQueryError) as e:
        UsageQueryClient(stack.rater_url, "tly_nope_nope").query("llm_tokens", customer=CUSTOMER, from_=BASE)
    assert e.value.status == 401
    with pytest.raises(ValueError):
        client.query("llm_tokens", customer=CUSTOMER, from_=dt.datetime(2026, 1, 1))  # naive: no instant
    with pytest.raises(ValueError):
        client.query("llm_tokens", customer=CUSTOMER, from_=BASE, window_size="WEEK")


def test_the_readme_example_prints_the_output_tokens_per_hour_and_model(rater):
    stack, _ = rater
    env = {**os.environ, "TALLY_RATER_URL": stack.rater_url, "TALLY_TOKEN": stack.reader_token,
           "TALLY_CUSTOMER": CUSTOMER}
    run = subprocess.run([sys.executable, "-c", query_example()], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    start = iso((BASE + MINUTE).replace(minute=0))  # both output events are in the second minute
    assert run.stdout.splitlines() == [f"{start} m1 40", f"{start} m2 1.25"]
