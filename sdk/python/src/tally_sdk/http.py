"""Client of the Tally HTTP ingest gateway (``POST /v1/events``, docs/INGEST.md), standard
library only.

- Batching: events go in requests of at most ``batch_max_events`` events and
  ``batch_max_bytes`` bytes of JSON (the gateway's ``batch_max_events`` and ``body_max_bytes``
  defaults); a request the gateway finds too large is split in halves and sent again.
- gzip: request bodies are compressed (``Content-Encoding: gzip``) unless ``gzip=False``.
- Retries: events answered ``failed``, requests answered 5xx or 408, 429 (after
  ``Retry-After``) and connection errors are sent again with the *same* ids and bytes, after a
  capped exponential backoff, at most ``max_attempts`` times in all. A retry of an event that
  was in fact stored comes back ``duplicate``: it counts once.
- Verdicts: :meth:`HttpClient.send` returns one :class:`~tally_sdk.verdicts.Verdict` per event
  in the caller's order (accepted, duplicate, rejected with code/field/detail, or failed once
  the attempts are spent). A request refused as a whole for a reason a retry cannot fix
  (bad key, wrong content type) raises :class:`~tally_sdk.verdicts.GatewayError`.

One keep-alive connection per client; a lock makes a client safe to share between threads.
"""

from __future__ import annotations

import asyncio
import gzip as _gzip
import http.client
import json
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .events import encode_event
from .verdicts import FAILED, REJECTED, GatewayError, SendResult, Verdict

__all__ = ["AsyncHttpClient", "HttpClient"]

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
USER_AGENT = "tally-sdk-python/0.1.0"


@dataclass
class _Item:
    index: int
    id: Optional[str]
    body: bytes


class _Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        try:
            self.json: Any = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            self.json = None
        self.text = raw[:500].decode("utf-8", "replace")

    def error(self) -> Tuple[str, str, Optional[str]]:
        """(code, message, field) of an error body, or made up from the status."""
        err = self.json.get("error") if isinstance(self.json, dict) else None
        if isinstance(err, dict):
            return (
                str(err.get("code") or f"http_{self.status}"),
                str(err.get("message") or ""),
                err.get("field") if isinstance(err.get("field"), str) else None,
            )
        return f"http_{self.status}", self.text, None


class HttpClient:
    """Sends usage events to a Tally gateway.

    ``url`` is the gateway's base URL (``http://127.0.0.1:8088``), ``api_key`` a
    ``tk_<id>_<secret>`` key; the events' ``subject`` must be the key's customer."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        gzip: bool = True,
        batch_max_events: int = 1000,
        batch_max_bytes: int = 1_000_000,
        max_attempts: int = 6,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        retry_after_max: float = 60.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway URL {url!r} must be http://host[:port] or https://...")
        if batch_max_events < 1 or batch_max_bytes < 2 or max_attempts < 1:
            raise ValueError("batch_max_events, batch_max_bytes and max_attempts must be positive")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/v1/events"
        self._auth = f"Bearer {api_key}"
        self.gzip = gzip
        self.batch_max_events = batch_max_events
        self.batch_max_bytes = batch_max_bytes
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.timeout = timeout
        self._sleep = sleep
        self._conn: Optional[http.client.HTTPConnection] = None
        self._lock = threading.RLock()
        self._buffer: List[Mapping[str, Any]] = []
        self._buffered = SendResult(verdicts=[])

    # -- public -----------------------------------------------------------------------------

    def send(self, events: Iterable[Mapping[str, Any]]) -> SendResult:
        """Sends ``events`` (CloudEvent dicts) in as many requests as the limits need and
        returns one verdict per event, in order. Each event is encoded once: every retry
        sends the same bytes and the same id."""
        items = []
        for i, event in enumerate(events):
            event_id = event.get("id") if isinstance(event, Mapping) else None
            items.append(_Item(i, event_id if isinstance(event_id, str) else None, encode_event(event)))
        slots: List[Optional[Verdict]] = [None] * len(items)
        result = SendResult(verdicts=[])
        with self._lock:
            for chunk in self._chunks(items):
                self._send_chunk(chunk, slots, result)
        result.verdicts = [v for v in slots if v is not None]
        assert len(result.verdicts) == len(items)
        return result

    def add(self, event: Mapping[str, Any]) -> None:
        """Buffers ``event``; a full batch (``batch_max_events``) is sent at once. The verdicts
        are returned by the next :meth:`flush`, in the order of the ``add`` calls."""
        with self._lock:
            self._buffer.append(event)
            if len(self._buffer) >= self.batch_max_events:
                batch, self._buffer = self._buffer, []
                self._buffered.extend(self.send(batch))

    def flush(self) -> SendResult:
        """Sends what :meth:`add` buffered; the verdicts of every event added since the last
        flush."""
        with self._lock:
            batch, self._buffer = self._buffer, []
            if batch:
                self._buffered.extend(self.send(batch))
            result, self._buffered = self._buffered, SendResult(verdicts=[])
            return result

    def close(self) -> SendResult:
        """Flushes, then closes the connection."""
        result = self.flush()
        with self._lock:
            self._disconnect()
        return result

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batching and retries ---------------------------------------------------------------

    def _chunks(self, items: List[_Item]) -> Iterable[List[_Item]]:
        chunk: List[_Item] = []
        size = 2  # "[" and "]"
        for item in items:
            grown = size + len(item.body) + (1 if chunk else 0)
            if chunk and (len(chunk) >= self.batch_max_events or grown > self.batch_max_bytes):
                yield chunk
                chunk, size = [], 2
                grown = size + len(item.body)
            chunk.append(item)
            size = grown
        if chunk:
            yield chunk

    def _backoff(self, attempt: int) -> float:
        capped = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        return capped * random.uniform(0.5, 1.0)

    def _send_chunk(
        self, chunk: List[_Item], slots: List[Optional[Verdict]], result: SendResult
    ) -> None:
        pending = chunk
        last_code, last_detail = "unavailable", "not sent"
        attempt = 0
        delay = 0.0
        while pending and attempt < self.max_attempts:
            if attempt > 0:
                result.retries += 1
                self._sleep(delay)
            attempt += 1
            body = b"[" + b",".join(item.body for item in pending) + b"]"
            wire = _gzip.compress(body, compresslevel=6) if self.gzip else body
            result.requests += 1
            result.body_bytes += len(body)
            result.wire_bytes += len(wire)
            try:
                answer = self._post(wire)
            except (OSError, http.client.HTTPException) as e:
                last_code, last_detail = "connection_error", f"{type(e).__name__}: {e}"
                delay = self._backoff(attempt)
                continue
            results = answer.json.get("results") if isinstance(answer.json, dict) else None
            if isinstance(results, list) and answer.status in (200, 400, 503):
                still: List[_Item] = []
                answered = set()
                for r in results:
                    idx = r.get("index") if isinstance(r, dict) else None
                    if not isinstance(idx, int) or not 0 <= idx < len(pending) or idx in answered:
                        continue
                    answered.add(idx)
                    item = pending[idx]
                    status = r.get("status")
                    if status == FAILED or status not in ("accepted", "duplicate", REJECTED):
                        still.append(item)
                        last_code = str(r.get("code") or "unavailable")
                        last_detail = str(r.get("detail") or "not stored")
                        continue
                    slots[item.index] = Verdict(
                        index=item.index,
                        id=r.get("id") if isinstance(r.get("id"), str) else item.id,
                        status=status,
                        code=r.get("code"),
                        field=r.get("field"),
                        detail=r.get("detail"),
                    )
                # an event the answer left out was not confirmed: send it again
                still.extend(item for i, item in enumerate(pending) if i not in answered)
                still.sort(key=lambda item: item.index)
                pending = still
                delay = self._backoff(attempt)
                continue
            code, message, field = answer.error()
            if answer.status == 429:
                last_code, last_detail = code, message
                delay = self._retry_after(answer, attempt)
                continue
            if answer.status == 413 and code in ("body_too_large", "batch_too_large"):
                self._split(pending, slots, result, code, message)
                return
            if answer.status == 408 or answer.status >= 500:
                last_code, last_detail = code, message
                delay = self._backoff(attempt)
                continue
            raise GatewayError(answer.status, code, message, field)
        for item in pending:
            slots[item.index] = Verdict(item.index, item.id, FAILED, last_code, None, last_detail)

    def _split(
        self,
        pending: List[_Item],
        slots: List[Optional[Verdict]],
        result: SendResult,
        code: str,
        message: str,
    ) -> None:
        """The gateway's limits are below this client's: halve the request. A single event
        whose body alone is too large is rejected (``too_large``)."""
        if len(pending) == 1:
            item = pending[0]
            slots[item.index] = Verdict(item.index, item.id, REJECTED, "too_large", None, message)
            return
        half = len(pending) // 2
        self._send_chunk(pending[:half], slots, result)
        self._send_chunk(pending[half:], slots, result)

    def _retry_after(self, answer: _Answer, attempt: int) -> float:
        raw = answer.headers.get("Retry-After")
        try:
            seconds = float(raw) if raw is not None else None
        except ValueError:
            seconds = None
        if seconds is None or seconds < 0:
            return self._backoff(attempt)
        return min(self.retry_after_max, seconds)

    # -- one request ------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, wire: bytes) -> _Answer:
        headers: Dict[str, str] = {
            "Authorization": self._auth,
            "Content-Type": BATCH_CONTENT_TYPE,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        # a kept-alive connection the gateway closed while idle fails at once: reconnect once
        # without spending an attempt (the request never reached the gateway, or it did and
        # the retry is a duplicate)
        for fresh in ((False, True) if self._conn is not None else (True,)):
            conn = self._connect()
            try:
                conn.request("POST", self._path, body=wire, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._disconnect()
                if fresh:
                    raise
                continue
            except BaseException:
                self._disconnect()
                raise
            if response.will_close:
                self._disconnect()
            return _Answer(response.status, response.headers, raw)
        raise AssertionError("unreachable")


class AsyncHttpClient:
    """:class:`HttpClient` for asyncio code: each call runs the blocking client in a worker
    thread (``asyncio.to_thread``), so the event loop never waits on the network."""

    def __init__(self, url: str, api_key: str, **options: Any) -> None:
        self.sync = HttpClient(url, api_key, **options)

    async def send(self, events: Iterable[Mapping[str, Any]]) -> SendResult:
        return await asyncio.to_thread(self.sync.send, list(events))

    async def add(self, event: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self.sync.add, event)

    async def flush(self) -> SendResult:
        return await asyncio.to_thread(self.sync.flush)

    async def close(self) -> SendResult:
        return await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncHttpClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
