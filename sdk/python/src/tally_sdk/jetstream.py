"""Publish usage events straight to NATS JetStream (needs the ``nats`` extra: ``nats-py``).

Each event goes to ``<prefix>.<customer>.<agent>`` (``usage.acme.support-bot-7``) with the
header ``Nats-Msg-Id: <customer>:<agent>:<id>``: the event's whole identity, so JetStream's
deduplication never lets one customer's or agent's event suppress another's that uses the
same id. Unacknowledged publishes (timeouts, no stream, a lost connection) are retried with
the same bytes and message id after a capped exponential backoff; a retry of a message that
was in fact stored is acknowledged as a duplicate.

Log in as the customer's NATS user (docs/SECURITY.md): it may publish only on its own
subjects and receive replies (acks, answers) only on ``_INBOX.<user>.>``. :func:`connect`
(and so :meth:`NatsPublisher.connect`) sets nats-py's ``inbox_prefix`` to ``_INBOX.<user>``
whenever a user is given (``user=`` or in the server URL), unless ``inbox_prefix=`` says
otherwise.
"""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js import JetStreamContext
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "tally_sdk.jetstream needs nats-py: pip install 'tally-sdk[nats]'"
    ) from e

from .events import InvalidEvent, check_event_id, check_token, encode_event, nats_msg_id
from .verdicts import ACCEPTED, DUPLICATE, FAILED, REJECTED, SendResult, Verdict

__all__ = ["NatsPublisher", "connect", "inbox_prefix", "with_user_inbox"]


def inbox_prefix(user: str) -> str:
    """The reply-subject prefix NATS user ``user`` may receive on: ``_INBOX.<user>`` (the
    permissions ``tally-gateway nats-config`` writes allow ``_INBOX.<user>.>`` only)."""
    return f"_INBOX.{user}"


def _url_user(servers: Union[str, Sequence[str]]) -> Optional[str]:
    first = servers if isinstance(servers, str) else (servers[0] if servers else "")
    user = urllib.parse.urlsplit(first if "://" in first else f"nats://{first}").username
    return urllib.parse.unquote(user) if user else None


def with_user_inbox(servers: Union[str, Sequence[str]], options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` of ``nats.connect`` with ``inbox_prefix`` set to ``_INBOX.<user>`` when a
    user is given (``user=``, or the first server URL's ``nats://user:pass@...``) and no
    ``inbox_prefix`` is; otherwise unchanged."""
    if "inbox_prefix" in options:
        return options
    user = options.get("user") or _url_user(servers)
    if not user:
        return options
    return {**options, "inbox_prefix": inbox_prefix(user)}


async def connect(servers: Union[str, Sequence[str]] = "nats://127.0.0.1:4222", **options: Any) -> Any:
    """``nats.connect`` with the user's own inbox prefix by default (:func:`with_user_inbox`):
    without it a restricted user's requests get no replies (its publishes time out waiting
    for acks). Every other option passes through."""
    return await nats.connect(servers, **with_user_inbox(servers, options))


class NatsPublisher:
    """Publishes CloudEvents to JetStream with the ``Nats-Msg-Id`` contract.

    Build it from a JetStream context you own, or with :meth:`connect` (which owns the
    connection and closes it in :meth:`close`)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        subject_prefix: str = "usage",
        stream: Optional[str] = None,
        timeout: float = 5.0,
        max_attempts: int = 6,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        in_flight_max: int = 256,
    ) -> None:
        if max_attempts < 1 or in_flight_max < 1:
            raise ValueError("max_attempts and in_flight_max must be positive")
        self.js = js
        self.subject_prefix = subject_prefix
        self.stream = stream
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.in_flight_max = in_flight_max
        self._nc: Optional[Any] = None

    @classmethod
    async def connect(
        cls,
        servers: str = "nats://127.0.0.1:4222",
        *,
        subject_prefix: str = "usage",
        stream: Optional[str] = None,
        timeout: float = 5.0,
        max_attempts: int = 6,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        in_flight_max: int = 256,
        **connect_options: Any,
    ) -> "NatsPublisher":
        """Connects to ``servers`` (``user=``, ``password=``, ``user_credentials=``,
        ``inbox_prefix=`` and other ``nats.connect`` options pass through; the inbox prefix is
        ``_INBOX.<user>`` unless given) and returns a publisher owning the connection."""
        nc = await connect(servers, **connect_options)
        publisher = cls(
            nc.jetstream(),
            subject_prefix=subject_prefix,
            stream=stream,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            in_flight_max=in_flight_max,
        )
        publisher._nc = nc
        return publisher

    async def close(self) -> None:
        """Drains and closes the connection when :meth:`connect` opened it."""
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.drain()

    async def __aenter__(self) -> "NatsPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, event: Mapping[str, Any]) -> Verdict:
        """Publishes one event; its verdict (index 0)."""
        result = SendResult(verdicts=[])
        verdict = await self._publish(0, event, result)
        return verdict

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> SendResult:
        """Publishes ``events`` with at most ``in_flight_max`` awaiting their acks; one verdict
        per event, in order."""
        result = SendResult(verdicts=[])
        gate = asyncio.Semaphore(self.in_flight_max)

        async def one(i: int, event: Mapping[str, Any]) -> Verdict:
            async with gate:
                return await self._publish(i, event, result)

        result.verdicts = list(await asyncio.gather(*(one(i, e) for i, e in enumerate(events))))
        return result

    async def _publish(self, index: int, event: Mapping[str, Any], result: SendResult) -> Verdict:
        raw_id = event.get("id")
        event_id = raw_id if isinstance(raw_id, str) else None
        try:
            customer = check_token(event.get("subject"), "subject")
            agent = check_token(event.get("source"), "source")
            check_event_id(raw_id)
        except InvalidEvent as e:
            return Verdict(index, event_id, REJECTED, "malformed", e.field, str(e))
        assert event_id is not None
        subject = f"{self.subject_prefix}.{customer}.{agent}"
        msg_id = nats_msg_id(customer, agent, event_id)
        body = encode_event(event)
        code, detail = "unavailable", "not sent"
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                result.retries += 1
                capped = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 2))
                await asyncio.sleep(capped * random.uniform(0.5, 1.0))
            result.requests += 1
            result.body_bytes += len(body)
            result.wire_bytes += len(body)
            try:
                ack = await self.js.publish(
                    subject,
                    body,
                    timeout=self.timeout,
                    stream=self.stream,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except nats.errors.MaxPayloadError as e:
                return Verdict(index, event_id, REJECTED, "too_large", None, str(e))
            except nats.js.errors.NoStreamResponseError as e:
                code, detail = "unavailable", f"no stream answered on {subject}: {e}"
                continue
            except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
                code, detail = "unavailable", f"{type(e).__name__}: {e}"
                continue
            return Verdict(index, event_id, DUPLICATE if ack.duplicate else ACCEPTED)
        return Verdict(index, event_id, FAILED, code, None, detail)
