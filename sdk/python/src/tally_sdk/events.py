"""CloudEvents usage events, their identity and deterministic ids.

An event is a plain ``dict`` in CloudEvents 1.0 structured form (the Tally event contract)::

    {"specversion": "1.0", "id": "run-7-0", "source": "support-bot-7", "subject": "acme",
     "type": "llm.tokens", "time": "2026-11-26T21:00:00.123Z",
     "data": {"tokens": 1234, "model": "gpt-4o", "kind": "output"}}

``subject`` is the customer and ``source`` the agent (``[A-Za-z0-9_-]{1,64}``), ``id`` is 1 to
128 printable ASCII characters. An event's identity is (customer, agent, id): it is billed at
most once however often it is sent, so a retry must resend the *same* id. Build ids with
:class:`EventIds` (run id plus counter) or :func:`stable_event_id` (from your own keys), not
with a fresh random value per attempt.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from decimal import Decimal
from typing import Any, Dict, Mapping, Optional, Union

from typing import TypedDict

__all__ = [
    "CloudEvent",
    "EventIds",
    "Quantity",
    "EVENT_ID_NAMESPACE",
    "InvalidEvent",
    "check_event_id",
    "check_token",
    "encode_event",
    "format_time",
    "nats_msg_id",
    "new_event_id",
    "run_event_id",
    "stable_event_id",
    "tool_call_event",
    "usage_event",
    "usage_subject",
    "llm_tokens_event",
    "event_identity",
]

#: Namespace of :func:`stable_event_id` (a UUID v5 of the URL namespace and ``tally:event-id``).
#: The TypeScript package uses the same one, so both give the same id for the same parts.
EVENT_ID_NAMESPACE = uuid.UUID("f105c21a-08e0-5751-8548-82d7eca2ad03")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_ID_MAX = 128
_TYPE_MAX = 128

#: A quantity: an ``int`` or a ``Decimal`` (sent as a decimal string). Never a ``float``.
Quantity = Union[int, Decimal]


class InvalidEvent(ValueError):
    """An attribute breaks the event contract; ``field`` names it (``subject``, ``source``,
    ``id``, ``type``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class CloudEvent(TypedDict, total=False):
    """A usage event as sent on the wire (CloudEvents 1.0, structured JSON)."""

    specversion: str
    id: str
    source: str
    subject: str
    type: str
    time: str
    datacontenttype: str
    data: Dict[str, Any]


def check_token(value: object, field: str) -> str:
    """``value`` if it is a customer or agent id (``[A-Za-z0-9_-]{1,64}``), else ValueError
    naming ``field`` (``subject`` for the customer, ``source`` for the agent)."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidEvent(
            field, f"attribute `{field}` is {value!r}, expected 1 to 64 characters of [A-Za-z0-9_-]"
        )
    return value


def _printable(value: str, max_len: int) -> bool:
    return 0 < len(value) <= max_len and all("\x21" <= c <= "\x7e" for c in value)


def check_event_id(value: object) -> str:
    """``value`` if it is a valid event id (1 to 128 printable ASCII characters, no space)."""
    if not isinstance(value, str) or not _printable(value, _ID_MAX):
        raise InvalidEvent(
            "id", f"attribute `id` is {value!r}, expected 1 to 128 printable ASCII characters"
        )
    return value


def nats_msg_id(customer: str, agent: str, event_id: str) -> str:
    """The ``Nats-Msg-Id`` header of an event: ``<customer>:<agent>:<id>``, the whole identity.

    JetStream deduplicates message ids across the whole stream, so the bare id would let one
    customer's (or agent's) event suppress another's that happens to use the same id. Customer
    and agent ids never contain ``:``, so the header names exactly one identity."""
    return f"{check_token(customer, 'subject')}:{check_token(agent, 'source')}:{check_event_id(event_id)}"


def usage_subject(prefix: str, customer: str, agent: str) -> str:
    """The NATS subject of an event: ``<prefix>.<customer>.<agent>``."""
    return f"{prefix}.{check_token(customer, 'subject')}.{check_token(agent, 'source')}"


def run_event_id(run_id: str, n: int) -> str:
    """``<run_id>-<n>``: the n-th event of a run (deterministic, so a retry resends it)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"event counter {n!r} must be a non-negative integer")
    return check_event_id(f"{run_id}-{n}")


class EventIds:
    """Deterministic ids for one run: ``<run_id>-0``, ``<run_id>-1``, ...

    Keep the run id (for example the agent's task or conversation id) and the counter with the
    work they describe; the same run id and counter give the same event id on a retry or after
    a restart, which Tally counts once."""

    def __init__(self, run_id: str, start: int = 0) -> None:
        run_event_id(run_id, start)  # validates the run id's characters and length
        self.run_id = run_id
        self.next_n = start

    def at(self, n: int) -> str:
        """The id of the n-th event, without advancing."""
        return run_event_id(self.run_id, n)

    def next(self) -> str:
        """The next id, advancing the counter."""
        value = run_event_id(self.run_id, self.next_n)
        self.next_n += 1
        return value

    __next__ = next

    def __iter__(self) -> "EventIds":
        return self


def stable_event_id(*parts: str) -> str:
    """A UUID v5 (36 characters) of ``parts``: the same parts give the same id, in Python and
    in the TypeScript package. Use the keys that name one unit of usage, for example
    ``stable_event_id("chatcmpl-123", "output")``."""
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError("stable_event_id needs one or more strings")
    name = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def new_event_id() -> str:
    """A random UUID v4. Store it with the work it describes *before* the first send and reuse
    it on retries: a new id per attempt would be counted again."""
    return str(uuid.uuid4())


def format_time(when: Union[_dt.datetime, str, None] = None) -> str:
    """RFC 3339 in UTC with milliseconds (``2026-11-26T21:00:00.123Z``); ``None`` is now.
    Naive datetimes are refused (their zone is unknown)."""
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(when, str):
        return when
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("event time must be timezone-aware (use datetime.timezone.utc)")
    utc = when.astimezone(_dt.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _check_data(value: Any, path: str) -> Any:
    """A copy of ``data`` for the wire: Decimals become decimal strings; floats are refused
    (quantities are exact: a float is not), as are NaN-like and non-JSON values."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        raise TypeError(
            f"{path} is the float {value!r}: send quantities as int or Decimal (or a decimal string)"
        )
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{path} is {value}, not a finite decimal")
        return format(value, "f")
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has the non-string key {k!r}")
            out[k] = _check_data(v, f"{path}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_check_data(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{path} is a {type(value).__name__}, which JSON cannot carry")


def usage_event(
    *,
    customer: str,
    agent: str,
    type: str,
    id: str,
    data: Mapping[str, Any],
    time: Union[_dt.datetime, str, None] = None,
    hold_id: Optional[str] = None,
) -> CloudEvent:
    """A usage event for ``customer`` (``subject``) and ``agent`` (``source``).

    Validates the identity and ``type`` and copies ``data``: ints stay JSON integers,
    ``Decimal`` becomes a decimal string, a ``float`` anywhere raises TypeError. ``hold_id``
    (the extension attribute ``holdid``) is the spend hold this usage settles: the
    ``hold_id`` of the authorization that allowed the work (:mod:`tally_sdk.spend`)."""
    if not isinstance(type, str) or not _printable(type, _TYPE_MAX):
        raise InvalidEvent(
            "type", f"attribute `type` is {type!r}, expected 1 to 128 printable ASCII characters"
        )
    return {
        "specversion": "1.0",
        "id": check_event_id(id),
        "source": check_token(agent, "source"),
        "subject": check_token(customer, "subject"),
        "type": type,
        "time": format_time(time),
        "data": _check_data(data, "data"),
        **({"holdid": check_event_id(hold_id)} if hold_id is not None else {}),
    }


def _quantity(value: object, what: str) -> Quantity:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TypeError(f"{what} must be an int or a Decimal, not {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def llm_tokens_event(
    *,
    customer: str,
    agent: str,
    id: str,
    model: str,
    kind: str,
    tokens: Quantity,
    time: Union[_dt.datetime, str, None] = None,
    hold_id: Optional[str] = None,
) -> CloudEvent:
    """An ``llm.tokens`` event (``data``: ``tokens``, ``model``, ``kind``): what the
    ``llm_tokens`` meter of ``config/tally.toml`` sums by model and kind."""
    return usage_event(
        customer=customer,
        agent=agent,
        type="llm.tokens",
        id=id,
        time=time,
        data={"tokens": _quantity(tokens, "tokens"), "model": model, "kind": kind},
        hold_id=hold_id,
    )


def tool_call_event(
    *,
    customer: str,
    agent: str,
    id: str,
    tool: str,
    time: Union[_dt.datetime, str, None] = None,
    hold_id: Optional[str] = None,
) -> CloudEvent:
    """A ``tool.call`` event (``data``: ``tool``): what the ``tool_calls`` meter counts."""
    return usage_event(
        customer=customer,
        agent=agent,
        type="tool.call",
        id=id,
        time=time,
        data={"tool": tool},
        hold_id=hold_id,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The event's compact JSON (UTF-8). Decimals become strings; NaN and infinities are
    refused. The bytes are encoded once and resent unchanged on every retry."""
    return json.dumps(
        event, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
    ).encode("utf-8")


def event_identity(event: Mapping[str, Any]) -> "tuple[Optional[str], Optional[str], Optional[str]]":
    """(customer, agent, id) as the event states them, or None where missing or not text."""

    def text(key: str) -> Optional[str]:
        v = event.get(key)
        return v if isinstance(v, str) else None

    return text("subject"), text("source"), text("id")
