"""Ask before spending: the gateway's ``POST /v1/authorize`` and ``GET /v1/balance``
(docs/SPEND.md), with the customer's API key.

An agent asks before each model or tool call, declaring the most it may use; an allowed
answer carries a ``hold_id`` to put on the usage events of that call (``hold_id=`` of the
event helpers), so the committed usage settles the hold. A denial says why (``reason``:
``budget_exceeded``, ...). When no decider answers (HTTP 503, a timeout, a refused
connection), the failure policy decides: ``FailClosed()`` denies with ``unavailable``;
``FailOpenWithin(allowance)`` allows, without a hold, while the declared quantities of a meter
summed over the client's life stay within ``allowance``, and never beyond.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Dict, Mapping, Optional, Union

from .events import check_event_id, check_token

Number = Union[int, Decimal]


@dataclass(frozen=True)
class FailClosed:
    """Deny when no decider answers (the default)."""


@dataclass(frozen=True)
class FailOpenWithin:
    """Allow, without a hold, up to ``allowance`` of declared quantity per meter for the
    client's life when no decider answers; deny beyond it."""

    allowance: Decimal


@dataclass(frozen=True)
class Authorization:
    allow: bool
    hold_id: Optional[str] = None
    remaining: Optional[Decimal] = None
    currency: Optional[str] = None
    reason: Optional[str] = None
    detail: Optional[str] = None
    #: decided by the failure policy: no decider answered
    offline: bool = False


class SpendError(RuntimeError):
    """A request refused as a whole (bad key, an agent the key may not act for, a malformed
    request): ``status`` and the gateway's ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


def _decimal(value: Number, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TypeError(f"{what} must be an int or a Decimal, not {value!r}")
    d = Decimal(value)
    if not d.is_finite() or d <= 0:
        raise ValueError(f"{what} must be a positive number, got {value}")
    return d


class SpendClient:
    """Asks the spend deciders through a Tally gateway (``url``, e.g.
    ``http://127.0.0.1:8088``) with a customer's API key."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 2.0,
        policy: Union[FailClosed, FailOpenWithin] = FailClosed(),
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway URL {url!r} must be http://host[:port] or https://...")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._auth = f"Bearer {api_key}"
        self.timeout = timeout
        self.policy = policy
        self._offline = OfflineLedger(policy)

    def authorize(
        self,
        agent: str,
        meter: str,
        max_quantity: Number,
        *,
        group: Optional[Mapping[str, str]] = None,
        deadline_ms: Optional[int] = None,
        request_id: Optional[str] = None,
    ) -> Authorization:
        """May ``agent`` use up to ``max_quantity`` of ``meter``? A lost answer is asked again
        once with the same ``request_id`` (the decider answers with the same hold)."""
        body: Dict[str, Any] = {
            "agent": check_token(agent, "agent"),
            **authorize_body(meter, max_quantity, group=group, deadline_ms=deadline_ms, request_id=request_id),
        }
        for _ in range(2):
            answer = self._call("POST", "/v1/authorize", body)
            if answer is not None:
                return authorization(answer)
        return self._offline.decide(meter, Decimal(body["max_quantity"]))

    def release(self, agent: str, hold_id: str) -> bool:
        """Gives what is left of a hold back: call it once the work is done below its
        ``max_quantity`` (after its usage events, which name the hold, are stored) or was
        cancelled; a hold is settled by its usage only down to what was used, and the rest
        stays reserved until it expires otherwise. False when it was not held any more (used
        up, released, expired) or no decider answered. Raises :class:`InvalidEvent` for a bad
        agent or hold id and :class:`SpendError` when the gateway refuses the request."""
        body = {"agent": check_token(agent, "agent"), "release": check_event_id(hold_id)}
        answer = self._call("POST", "/v1/authorize", body)
        return bool(answer and answer.get("allow"))

    def balance(self) -> Optional[Dict[str, Any]]:
        """The customer's spend of the period, holds and budgets; None when no decider
        answered."""
        return self._call("GET", "/v1/balance", None)

    # -- internals ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        conn_type = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_type(self._host, self._port, timeout=self.timeout)
        raw = json.dumps(body).encode() if body is not None else b""
        headers = {"Authorization": self._auth, "Content-Type": "application/json"}
        try:
            conn.request(method, self._base + path, body=raw, headers=headers)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()
        if status == 200:
            return json.loads(data)
        if status in (502, 503, 504):
            return None
        try:
            err = json.loads(data).get("error", {})
        except ValueError:
            err = {}
        raise SpendError(status, err.get("code", "error"), err.get("message", data.decode(errors="replace")))


class OfflineLedger:
    """The failure policy's decisions over a client's life: the declared quantities allowed
    offline per key (a meter, or a customer and meter)."""

    def __init__(self, policy: Union[FailClosed, FailOpenWithin]) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._used: Dict[Any, Decimal] = {}

    def decide(self, key: Any, quantity: Decimal) -> Authorization:
        if not isinstance(self.policy, FailOpenWithin):
            return Authorization(
                allow=False,
                reason="unavailable",
                detail="no spend decider answered (fail closed)",
                offline=True,
            )
        with self._lock:
            total = self._used.get(key, Decimal(0)) + quantity
            if total > self.policy.allowance:
                return Authorization(
                    allow=False,
                    reason="unavailable",
                    detail="no spend decider answered and the offline allowance is used up",
                    offline=True,
                )
            self._used[key] = total
        return Authorization(
            allow=True,
            remaining=self.policy.allowance - total,
            detail="no spend decider answered: allowed within the offline allowance",
            offline=True,
        )


def authorize_body(
    meter: str,
    max_quantity: Number,
    *,
    group: Optional[Mapping[str, str]] = None,
    deadline_ms: Optional[int] = None,
    request_id: Optional[str] = None,
) -> Dict[str, Any]:
    """The JSON body of an authorize request as the decider reads it (without the agent: a
    subject token on NATS, a body field over HTTP). The quantity is an exact string."""
    body: Dict[str, Any] = {
        "meter": check_token(meter, "meter"),
        "max_quantity": str(_decimal(max_quantity, "max_quantity")),
        "request_id": check_event_id(request_id or uuid.uuid4().hex),
    }
    if group:
        body["group"] = dict(group)
    if deadline_ms is not None:
        body["deadline_ms"] = int(deadline_ms)
    return body


def authorization(answer: Mapping[str, Any]) -> Authorization:
    """A decider's answer (its JSON) as an :class:`Authorization`."""
    remaining = answer.get("remaining")
    return Authorization(
        allow=bool(answer.get("allow")),
        hold_id=answer.get("hold_id"),
        remaining=Decimal(remaining) if remaining is not None else None,
        currency=answer.get("currency"),
        reason=answer.get("reason"),
        detail=answer.get("detail"),
    )
