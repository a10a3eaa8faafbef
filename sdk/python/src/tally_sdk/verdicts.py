"""What happened to each event sent: the gateway's per-event answers, also used by the NATS
publisher so both ways of sending report alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

__all__ = ["ACCEPTED", "DUPLICATE", "REJECTED", "FAILED", "GatewayError", "SendResult", "Verdict"]

#: Stored.
ACCEPTED = "accepted"
#: Already stored under the same identity (inside JetStream's duplicate window): counts once.
DUPLICATE = "duplicate"
#: Invalid: ``code`` is the reason (``malformed``, ``too_large``, ``subject_mismatch``) and
#: ``field`` the attribute. Resending it unchanged is rejected again.
REJECTED = "rejected"
#: Not stored after every retry (``code`` ``unavailable``, ``connection_error``,
#: ``rate_limited`` or ``http_<status>``). Resend it later with the same id: that is safe.
FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one event. ``index`` is its position in what the caller passed."""

    index: int
    id: Optional[str]
    status: str
    code: Optional[str] = None
    field: Optional[str] = None
    detail: Optional[str] = None

    @property
    def stored(self) -> bool:
        """Accepted now or before: the event is in the stream and counts once."""
        return self.status in (ACCEPTED, DUPLICATE)


@dataclass
class SendResult:
    """Verdicts in the caller's order, with what it took to get them."""

    verdicts: List[Verdict]
    #: HTTP requests (or JetStream publishes) made, retries included.
    requests: int = 0
    #: Bytes of JSON sent, retries included, before compression.
    body_bytes: int = 0
    #: Bytes of request bodies on the wire (after gzip when on).
    wire_bytes: int = 0
    retries: int = field(default=0)

    def _count(self, status: str) -> int:
        return sum(1 for v in self.verdicts if v.status == status)

    @property
    def accepted(self) -> int:
        return self._count(ACCEPTED)

    @property
    def duplicates(self) -> int:
        return self._count(DUPLICATE)

    @property
    def rejected(self) -> int:
        return self._count(REJECTED)

    @property
    def failed(self) -> int:
        return self._count(FAILED)

    @property
    def ok(self) -> bool:
        """Every event is stored (accepted or duplicate)."""
        return all(v.stored for v in self.verdicts)

    def not_stored(self) -> List[Verdict]:
        """The rejected and failed verdicts."""
        return [v for v in self.verdicts if not v.stored]

    def extend(self, other: "SendResult") -> None:
        """Appends ``other``'s verdicts (re-indexed after this one's) and adds its counters."""
        base = len(self.verdicts)
        for v in other.verdicts:
            self.verdicts.append(
                Verdict(base + v.index, v.id, v.status, v.code, v.field, v.detail)
            )
        self.requests += other.requests
        self.body_bytes += other.body_bytes
        self.wire_bytes += other.wire_bytes
        self.retries += other.retries


class GatewayError(Exception):
    """The gateway refused a request as a whole, with a stable ``code`` (docs/INGEST.md): for
    example 401 ``invalid_key`` or ``revoked_key``, 415 ``unsupported_media_type``. Retrying
    the same request cannot help."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
