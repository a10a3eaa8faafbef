"""Ask before spending straight over NATS (needs the ``nats`` extra: ``nats-py``): the spend
deciders (``tally-spend``, docs/SPEND.md) answer ``<root>.authorize.<customer>.<agent>``
(authorize, release) and ``<root>.balance.<customer>`` by request/reply.

The same requests and answers as :class:`tally_sdk.SpendClient` over the gateway: exact
decimal quantities, a request id asked again once after a lost answer (the decider answers
with the same hold), and the failure policy when no decider answers (a timeout, no
responders); the offline allowance of ``FailOpenWithin`` counts per customer and meter. A
customer's NATS user (``agent-<customer>``) may ask for its own customer only. nats-py reports
a subject or reply subscription the server refuses (permissions) to the connection's
``error_cb`` only: the request then gets no answer and the failure policy decides (connect
with :func:`tally_sdk.jetstream.connect`, which uses the user's own inbox prefix, and pass an
``error_cb`` to see such refusals).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Dict, Mapping, Optional, Sequence, Union

try:
    import nats
    import nats.errors
except ImportError as e:  # pragma: no cover
    raise ImportError("tally_sdk.nats_spend needs nats-py: pip install 'tally-sdk[nats]'") from e

from .events import check_event_id, check_token
from .jetstream import connect
from .spend import (
    Authorization,
    FailClosed,
    FailOpenWithin,
    Number,
    OfflineLedger,
    SpendError,
    authorization,
    authorize_body,
)

__all__ = ["NatsSpendClient"]


class NatsSpendClient:
    """Asks the spend deciders under ``subject_root`` (``spend.subject_root``, default
    ``tally``) on a nats-py connection you own, or one :meth:`connect` opens (and
    :meth:`close` drains)."""

    def __init__(
        self,
        nc: Any,
        *,
        subject_root: str = "tally",
        timeout: float = 2.0,
        policy: Union[FailClosed, FailOpenWithin] = FailClosed(),
    ) -> None:
        self.nc = nc
        self.subject_root = subject_root
        self.timeout = timeout
        self.policy = policy
        self._offline = OfflineLedger(policy)
        self._owned = False

    @classmethod
    async def connect(
        cls,
        servers: Union[str, Sequence[str]] = "nats://127.0.0.1:4222",
        *,
        subject_root: str = "tally",
        timeout: float = 2.0,
        policy: Union[FailClosed, FailOpenWithin] = FailClosed(),
        **connect_options: Any,
    ) -> "NatsSpendClient":
        """Connects (``user=``, ``password=``, ``inbox_prefix=`` and other ``nats.connect``
        options pass through; the inbox prefix is ``_INBOX.<user>`` unless given)."""
        client = cls(await connect(servers, **connect_options), subject_root=subject_root, timeout=timeout, policy=policy)
        client._owned = True
        return client

    async def close(self) -> None:
        """Drains and closes the connection when :meth:`connect` opened it."""
        if self._owned:
            self._owned = False
            await self.nc.drain()

    async def __aenter__(self) -> "NatsSpendClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def authorize(
        self,
        customer: str,
        agent: str,
        meter: str,
        max_quantity: Number,
        *,
        group: Optional[Mapping[str, str]] = None,
        deadline_ms: Optional[int] = None,
        request_id: Optional[str] = None,
    ) -> Authorization:
        """May ``agent`` of ``customer`` use up to ``max_quantity`` of ``meter``?"""
        subject = self._authorize_subject(customer, agent)
        body = authorize_body(meter, max_quantity, group=group, deadline_ms=deadline_ms, request_id=request_id)
        raw = json.dumps(body).encode()
        for _ in range(2):
            answer = await self._ask(subject, raw)
            if answer is not None:
                return authorization(answer)
        return self._offline.decide((customer, meter), Decimal(body["max_quantity"]))

    async def release(self, customer: str, agent: str, hold_id: str) -> bool:
        """Gives what is left of hold ``hold_id`` back: call it once the work is done below
        its ``max_quantity`` (after its usage events are stored) or was cancelled, otherwise
        the rest stays reserved until the hold expires. False when the decider did not hold it
        (used up, released, expired, another agent's) or did not answer. Raises
        :class:`InvalidEvent` for a bad customer, agent or hold id."""
        raw = json.dumps({"release": check_event_id(hold_id)}).encode()
        answer = await self._ask(self._authorize_subject(customer, agent), raw)
        return bool(answer and answer.get("allow"))

    async def balance(self, customer: str) -> Optional[Dict[str, Any]]:
        """The customer's spend of the period, holds and budgets (amounts are decimal
        strings); None when no decider answered."""
        return await self._ask(f"{self.subject_root}.balance.{check_token(customer, 'customer')}", b"")

    def _authorize_subject(self, customer: str, agent: str) -> str:
        return f"{self.subject_root}.authorize.{check_token(customer, 'customer')}.{check_token(agent, 'agent')}"

    async def _ask(self, subject: str, body: bytes) -> Optional[Dict[str, Any]]:
        try:
            msg = await self.nc.request(subject, body, timeout=self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
        except nats.errors.Error as e:  # a closed or draining connection, ...
            raise SpendError(0, "nats_error", str(e)) from e
        try:
            answer = json.loads(msg.data)
        except ValueError as e:
            raise SpendError(200, "invalid_answer", f"the decider's answer on {subject} is not JSON") from e
        if not isinstance(answer, dict):
            raise SpendError(200, "invalid_answer", f"the decider's answer on {subject} is not an object")
        return answer
