"""Client of the rater's usage query, ``GET /v1/meters/{slug}/query`` (docs/PRICING.md,
"Usage query API"): one customer's usage of one meter per window (``MINUTE``, ``HOUR``,
``DAY``, ``MONTH`` in an IANA time zone) and per group, read from the rolled-up usage. Values
are exact: ``Decimal`` parsed from the rater's decimal strings, never a float. The rater's API
takes an API token (any role that reads: ``reader`` and up). Standard library only.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["UsageQueryClient", "UsageQueryError", "UsageQueryResult", "UsageRow", "usage_query_string"]

Instant = Union[_dt.datetime, str]
WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")


class UsageQueryError(RuntimeError):
    """A query the rater refused: HTTP ``status``, its stable ``code`` (``invalid_from``,
    ``unknown_parameter``, ``not_found``, ``window_size_too_small``, ...) and ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class UsageRow:
    """One window and group that holds usage."""

    #: RFC 3339 with the zone's offset, as the rater wrote it
    window_start: str
    window_end: str
    customer: str
    #: the group values asked for in ``group_by``
    group_by: Dict[str, str]
    #: exact, folded by the meter's aggregation
    value: Decimal


@dataclass(frozen=True)
class UsageQueryResult:
    meter: str
    #: ``SUM``, ``COUNT``, ``UNIQUE_COUNT``, ``MIN``, ``MAX``, ``LATEST``
    aggregation: str
    customer: str
    #: the range as the rater read it, with the zone's offset
    from_: str
    to: str
    window_size: Optional[str]
    window_time_zone: str
    group_by: List[str] = field(default_factory=list)
    #: by window, then group values
    data: List[UsageRow] = field(default_factory=list)


def _instant(value: Instant, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} must be timezone-aware (a naive datetime names no instant)")
        return value.isoformat(timespec="seconds")
    raise TypeError(f"{what} must be a datetime or an RFC 3339 string, not {value!r}")


def usage_query_string(
    *,
    customer: str,
    from_: Instant,
    to: Optional[Instant] = None,
    window_size: Optional[str] = None,
    window_time_zone: Optional[str] = None,
    group_by: Sequence[str] = (),
    filter_group: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
) -> str:
    """The query string (repeated names for ``group_by`` and multi-valued filters; ``+``
    escaped as ``%2B``, as the rater reads it)."""
    if not isinstance(customer, str) or not customer:
        raise ValueError("customer is required")
    if window_size is not None and window_size.upper() not in WINDOW_SIZES:
        raise ValueError(f"window_size {window_size!r} is not one of {', '.join(WINDOW_SIZES)}")
    pairs: List[Tuple[str, str]] = [("customer", customer), ("from", _instant(from_, "from_"))]
    if to is not None:
        pairs.append(("to", _instant(to, "to")))
    if window_size is not None:
        pairs.append(("window_size", window_size.upper()))
    if window_time_zone is not None:
        pairs.append(("window_time_zone", window_time_zone))
    if isinstance(group_by, str):
        group_by = [group_by]
    pairs.extend(("group_by", g) for g in group_by)
    for name, values in (filter_group or {}).items():
        for v in [values] if isinstance(values, str) else values:
            pairs.append((f"filter_group_{name}", v))
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote, safe="")


def _decimal(text: Any) -> Decimal:
    if not isinstance(text, str):
        raise UsageQueryError(200, "invalid_answer", f"value {text!r} is not a decimal string")
    try:
        d = Decimal(text)
    except InvalidOperation as e:
        raise UsageQueryError(200, "invalid_answer", f"value {text!r} is not a decimal") from e
    if not d.is_finite():
        raise UsageQueryError(200, "invalid_answer", f"value {text!r} is not a decimal")
    return d


def _result(body: Any) -> UsageQueryResult:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise UsageQueryError(200, "invalid_answer", f"not a usage query answer: {body!r}"[:500])
    rows = [
        UsageRow(
            window_start=r["window_start"],
            window_end=r["window_end"],
            customer=r["customer"],
            group_by=dict(r.get("group_by") or {}),
            value=_decimal(r["value"]),
        )
        for r in body["data"]
    ]
    return UsageQueryResult(
        meter=body["meter"],
        aggregation=body["aggregation"],
        customer=body["customer"],
        from_=body["from"],
        to=body["to"],
        window_size=body.get("window_size"),
        window_time_zone=body["window_time_zone"],
        group_by=list(body.get("group_by") or []),
        data=rows,
    )


class UsageQueryClient:
    """Queries a rater's API (``url``: ``http://`` and its ``rater.api_addr``) with an API
    token."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"rater URL {url!r} must be http://host[:port] or https://...")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._auth = f"Bearer {token}"
        self.timeout = timeout

    def query(
        self,
        meter: str,
        *,
        customer: str,
        from_: Instant,
        to: Optional[Instant] = None,
        window_size: Optional[str] = None,
        window_time_zone: Optional[str] = None,
        group_by: Sequence[str] = (),
        filter_group: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
    ) -> UsageQueryResult:
        """The usage of ``meter`` (its slug) for ``customer`` from ``from_`` (the ``from``
        parameter) to ``to`` (default now); raises :class:`UsageQueryError` when
        the rater refuses the query."""
        qs = usage_query_string(
            customer=customer,
            from_=from_,
            to=to,
            window_size=window_size,
            window_time_zone=window_time_zone,
            group_by=group_by,
            filter_group=filter_group,
        )
        path = f"{self._base}/v1/meters/{urllib.parse.quote(meter, safe='')}/query?{qs}"
        conn_type = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_type(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers={"Authorization": self._auth, "Accept": "application/json"})
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        finally:
            conn.close()
        try:
            body = json.loads(data, parse_float=Decimal)
        except ValueError:
            body = None
        if status != 200:
            err = body if isinstance(body, dict) else {}
            if isinstance(err.get("error"), dict):
                err = {"code": err["error"].get("code"), "detail": err["error"].get("message")}
            raise UsageQueryError(
                status,
                err.get("code") or f"http_{status}",
                err.get("detail") or data.decode(errors="replace")[:500],
            )
        return _result(body)
