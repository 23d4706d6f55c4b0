"""Fixtures of jobproto's tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from jobproto.testing import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One real ``redis-server`` for the session (tests keep apart by namespace)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    return redis_session.url


@pytest.fixture
def redis_namespace() -> str:
    """A namespace of this test's own in the shared server."""
    return f"test-{uuid.uuid4().hex[:12]}"
