"""Fixtures for the multi-gateway tests: a private Redis keyspace per test."""

from __future__ import annotations

import uuid

import pytest
from redis_support import with_prefix


@pytest.fixture
def shared_url(redis_url: str) -> str:
    """The session's Redis with a prefix of this test's own: gateways share it, tests do not."""
    return with_prefix(redis_url, f"multi{uuid.uuid4().hex[:10]}")
