"""The README's Python examples, run as written against the session's gateway and NATS (the
usage query's, which needs a rater, in test_query.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from harness import NATS_URL

README = Path(__file__).resolve().parents[1] / "README.md"


def examples():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def query_example() -> str:
    (block,) = [b for b in examples() if "UsageQueryClient" in b]
    return block


def test_every_readme_example_runs_and_its_events_are_stored(gateway):
    blocks = [b for b in examples() if "UsageQueryClient" not in b]
    assert len(blocks) == 3
    key = gateway.create_key("acme")
    env = {
        **os.environ,
        "TALLY_GATEWAY_URL": gateway.url,
        "TALLY_API_KEY": key,
        "TALLY_NATS_URL": NATS_URL,
        "TALLY_SUBJECT_PREFIX": gateway.prefix,
    }
    outputs = []
    for code in blocks:
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"{code}\n{run.stdout}\n{run.stderr}"
        outputs.append(run.stdout)
    # the printed kinds and counts are the ones the README shows
    shown = re.search(r"^# (\[\('input'.*)$", blocks[1], re.M).group(1)
    assert outputs[1].strip() == shown
    stored = gateway.messages("acme")
    assert [m.event["id"] for m in stored] == [
        "run-2026-11-26-0007-0", "run-2026-11-26-0007-1", "run-2026-11-26-0007-2",
        "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-input", "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-output",
        "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-cached",
        "msg_013Zva2CMHLNnXjNJJKqJ2EF-input", "msg_013Zva2CMHLNnXjNJJKqJ2EF-output",
        "msg_013Zva2CMHLNnXjNJJKqJ2EF-cached", "msg_013Zva2CMHLNnXjNJJKqJ2EF-cache_write",
        "run-2026-11-26-0008-0", "run-2026-11-26-0008-1",
    ]
    assert all(m.msg_id == f"acme:support-bot-7:{m.event['id']}" for m in stored)
