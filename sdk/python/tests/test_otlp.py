"""Spans made by the OpenTelemetry SDK for Python (``opentelemetry-sdk``) and sent by its
OTLP/HTTP exporter (``opentelemetry-exporter-otlp-proto-http``, protobuf, gzip) to the real
gateway's ``POST /v1/traces`` (docs/INGEST.md): what is stored in JetStream, that an export
sent again is stored once, and that a span of another customer is refused.

Usage comes from the GenAI semantic conventions' attributes, as an instrumented agent sets
them; the customer from the resource attribute ``tally.customer``, the agent from
``service.name``. No agent code knows about Tally.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Dict, List, Sequence, Tuple

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness import Gateway, StoredMessage


def make_spans(customer: str, agent: str = "support-bot") -> List[ReadableSpan]:
    """One chat span with usage (OpenAI-style: 1200 prompt tokens of which 1000 cached, 340
    completion tokens) inside an agent step without usage, both finished."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": agent, "tally.customer": customer})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test-agent")
    with tracer.start_as_current_span("invoke_agent support"):
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.usage.input_tokens": 1200,
                    "gen_ai.usage.output_tokens": 340,
                    "gen_ai.usage.cache_read.input_tokens": 1000,
                }
            )
    provider.shutdown()
    return list(memory.get_finished_spans())


def exporter(gateway: Gateway, key: str) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=gateway.url + "/v1/traces",
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.Gzip,
        timeout=10,
    )


def rfc3339_nanos(unix_nanos: int) -> str:
    seconds, nanos = divmod(unix_nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def usage(messages: Sequence[StoredMessage]) -> Dict[str, Tuple[int, str]]:
    return {m.event["data"]["kind"]: (m.event["data"]["tokens"], m.event["data"]["model"])
            for m in messages}


def test_sdk_spans_become_token_events_and_a_retried_export_is_stored_once(
    gateway: Gateway, customer: str
) -> None:
    key = gateway.create_key(customer)
    spans = make_spans(customer)
    chat = next(s for s in spans if s.name == "chat gpt-4o")
    sender = exporter(gateway, key)
    assert sender.export(spans) == SpanExportResult.SUCCESS

    stored = gateway.messages(customer)
    assert usage(stored) == {
        "input": (200, "gpt-4o-2024-08-06"),
        "output": (340, "gpt-4o-2024-08-06"),
        "cached": (1000, "gpt-4o-2024-08-06"),
    }, "the span without usage makes no event; cached tokens are not input"
    ctx = chat.get_span_context()
    base = f"otlp-{ctx.trace_id:032x}-{ctx.span_id:016x}"
    for m in stored:
        kind = m.event["data"]["kind"]
        assert m.event["id"] == f"{base}-{kind}"
        assert m.msg_id == f"{customer}:support-bot:{base}-{kind}"
        assert m.subject == f"{gateway.prefix}.{customer}.support-bot"
        assert (m.event["type"], m.event["subject"], m.event["source"]) == (
            "llm.tokens", customer, "support-bot")
        assert m.event["time"] == rfc3339_nanos(chat.end_time)

    # the exporter sends the same spans again (a retry after a lost answer): stored once
    assert sender.export(spans) == SpanExportResult.SUCCESS
    assert len(gateway.messages(customer)) == 3
    sender.shutdown()


def test_a_span_of_another_customer_is_refused_with_a_partial_success(
    gateway: Gateway, customer: str
) -> None:
    key = gateway.create_key(customer)
    other = customer[:60] + "-oth"
    spans = make_spans(other)
    # what the exporter sends, posted by hand to read the answer it does not show
    body = encode_spans(spans).SerializePartialToString()
    req = urllib.request.Request(
        gateway.url + "/v1/traces",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/x-protobuf"
        answer = ExportTraceServiceResponse.FromString(r.read())
    assert answer.HasField("partial_success")
    assert answer.partial_success.rejected_spans == 1
    assert "subject_mismatch" in answer.partial_success.error_message
    assert f'is "{other}" but the API key is for customer "{customer}"' in (
        answer.partial_success.error_message)
    # the SDK's exporter gets the same answer and nothing is stored for either customer
    assert exporter(gateway, key).export(spans) == SpanExportResult.SUCCESS
    assert gateway.messages(other) == []
    assert gateway.messages(customer) == []
