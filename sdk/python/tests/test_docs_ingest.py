"""docs/INGEST.md's nats-py snippet, run as written against the real NATS server: the
snippet marked ``<!-- run: sdk/python/tests/test_docs_ingest.py -->`` publishes an event with
``Nats-Msg-Id: <customer>:<agent>:<id>``, and publishing it again is a duplicate.

Only the two settings the snippet asks the reader to fill in are replaced: the server's URL
and the subject prefix (this run's own, so the test never touches the real ``usage``
stream). The local server has no authorization, so any password is accepted.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Dict

from harness import NATS_URL, REPO, Gateway

MARKER = "<!-- run: sdk/python/tests/test_docs_ingest.py -->"


def documented_snippet() -> str:
    doc = (REPO / "docs" / "INGEST.md").read_text()
    assert doc.count(MARKER) == 1, "exactly one snippet of docs/INGEST.md is run here"
    after = doc[doc.index(MARKER) + len(MARKER):]
    match = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    assert match, "the marker stands right before a python fence"
    return match.group(1)


def test_the_documented_nats_publisher_sends_the_whole_identity_as_msg_id(
    gateway: Gateway, customer: str
) -> None:
    code = documented_snippet()
    assert 'headers={"Nats-Msg-Id": f"{customer}:{agent}:{event[\'id\']}"}' in code
    namespace: Dict[str, Any] = {}
    exec(compile(code, str(Path("docs/INGEST.md")), "exec"), namespace)
    namespace["NATS_URL"] = NATS_URL
    namespace["SUBJECT_PREFIX"] = gateway.prefix
    event = {
        "specversion": "1.0", "id": "run-7-1", "source": "support-bot-7", "subject": customer,
        "type": "llm.tokens", "time": "2026-11-26T21:00:00.123Z",
        "data": {"tokens": 340, "model": "gpt-4o", "kind": "output"},
    }
    assert asyncio.run(namespace["publish"](event, "any-password")) is True
    assert asyncio.run(namespace["publish"](event, "any-password")) is False, "a duplicate"
    stored = gateway.messages(customer)
    assert [(m.subject, m.msg_id, m.event) for m in stored] == [
        (f"{gateway.prefix}.{customer}.support-bot-7", f"{customer}:support-bot-7:run-7-1",
         event)
    ]
