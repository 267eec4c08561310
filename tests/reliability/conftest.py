"""Fixtures for tests that run the real processes (tests/harness.py) and inject faults (tests/faults.py)."""
from __future__ import annotations

import pytest

from tests.harness import PrivateRedis, Stack


@pytest.fixture
async def stack():
    """A fresh schema + key prefix; start what the test needs (`await stack.start_all()`)."""
    async with Stack() as s:
        yield s


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
