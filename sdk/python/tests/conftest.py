"""Fixtures: one real gateway for the session (own streams and database), and a customer id of
its own for each test, so tests never see each other's messages."""

from __future__ import annotations

import itertools
import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import Gateway  # noqa: E402

_customers = itertools.count()


@pytest.fixture(scope="session")
def gateway() -> Iterator[Gateway]:
    gw = Gateway("sdkpy")
    try:
        gw.start()
        yield gw
    finally:
        gw.cleanup()


@pytest.fixture
def customer(request: pytest.FixtureRequest) -> str:
    """A customer id no other test uses (``[A-Za-z0-9_-]{1,64}``)."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:48]
    return f"c{next(_customers)}-{name}".strip("-")[:64]
