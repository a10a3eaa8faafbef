"""Tally SDK for Python: send AI-agent usage to Tally.

- :class:`HttpClient` / :class:`AsyncHttpClient`: the HTTP ingest gateway (batching, gzip,
  retries with the same ids, per-event verdicts). Standard library only.
- :class:`tally_sdk.jetstream.NatsPublisher`: straight to NATS JetStream (``pip install
  'tally-sdk[nats]'``), with ``Nats-Msg-Id: <customer>:<agent>:<id>``.
- :func:`openai_token_events`, :func:`anthropic_token_events`: ``llm.tokens`` events from a
  model response's usage block.
- :class:`SpendClient`: ask before spending (authorize, release, balance) through the gateway,
  with an explicit failure policy.
- :class:`UsageQueryClient`: the rater's usage query (``GET /v1/meters/{slug}/query``), exact
  ``Decimal`` values.
- :class:`EventIds`, :func:`stable_event_id`: deterministic event ids, so retries are counted
  once.
"""

from .events import (
    EVENT_ID_NAMESPACE,
    CloudEvent,
    EventIds,
    InvalidEvent,
    Quantity,
    check_event_id,
    check_token,
    encode_event,
    format_time,
    llm_tokens_event,
    nats_msg_id,
    new_event_id,
    run_event_id,
    stable_event_id,
    tool_call_event,
    usage_event,
    usage_subject,
)
from .http import AsyncHttpClient, HttpClient
from .usage import (
    CACHE_WRITE,
    CACHED,
    INPUT,
    OUTPUT,
    TOKEN_KINDS,
    anthropic_token_counts,
    anthropic_token_events,
    openai_token_counts,
    openai_token_events,
    token_events,
)
from .spend import Authorization, FailClosed, FailOpenWithin, SpendClient, SpendError
from .query import UsageQueryClient, UsageQueryError, UsageQueryResult, UsageRow, usage_query_string
from .verdicts import ACCEPTED, DUPLICATE, FAILED, REJECTED, GatewayError, SendResult, Verdict

__version__ = "0.1.0"

__all__ = [
    "ACCEPTED",
    "AsyncHttpClient",
    "Authorization",
    "FailClosed",
    "FailOpenWithin",
    "SpendClient",
    "SpendError",
    "CACHED",
    "CACHE_WRITE",
    "CloudEvent",
    "DUPLICATE",
    "EVENT_ID_NAMESPACE",
    "EventIds",
    "FAILED",
    "GatewayError",
    "HttpClient",
    "INPUT",
    "InvalidEvent",
    "OUTPUT",
    "Quantity",
    "REJECTED",
    "SendResult",
    "TOKEN_KINDS",
    "Verdict",
    "anthropic_token_counts",
    "anthropic_token_events",
    "check_event_id",
    "check_token",
    "encode_event",
    "format_time",
    "llm_tokens_event",
    "nats_msg_id",
    "new_event_id",
    "openai_token_counts",
    "openai_token_events",
    "run_event_id",
    "stable_event_id",
    "token_events",
    "tool_call_event",
    "usage_event",
    "usage_subject",
    "UsageQueryClient",
    "UsageQueryError",
    "UsageQueryResult",
    "UsageRow",
    "usage_query_string",
]
