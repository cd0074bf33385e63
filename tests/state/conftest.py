"""Fixtures for the state contract suite, parametrised over backends.

Every contract test takes `make_store` (and, when it needs to look underneath, `target` and
`dump_rows`), so the same tests run against each backend in `BACKENDS`: SQLite on a real file in
tmp_path, and Redis always too: the session's `redis_url` (tests/conftest.py), which is
$CHATSTATE_TEST_REDIS_URL when set (its logical database must be reserved for tests: it is
flushed before each test), else a private redis-server started for the session. SQLite-only checks (file modes, WAL,
PRAGMAs, corrupt files, schema version) live in test_state_sqlite_*.py and use `sqlite_target`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from state_support import FakeClock, fresh_target, rows_in

from chatstate.state import KeyedStore, open_keyed_store

BACKENDS = ["sqlite", "redis"]  # redis: $CHATSTATE_TEST_REDIS_URL, else tests/conftest.py starts one


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_home(tmp_path: Path) -> Path:
    """A fresh state dir; the database lands in <state_home>/plugin-state/state.sqlite."""
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def sqlite_target(state_home: Path) -> dict[str, Any]:
    return {"path": str(state_home)}


@pytest.fixture
def db_path(state_home: Path) -> Path:
    return state_home / "plugin-state" / "state.sqlite"


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, state_home: Path) -> dict[str, Any]:
    """Keyword arguments (`path=` or `url=`) that point open_keyed_store at a fresh backend.

    Plain data, so it can be handed to child processes.
    """
    return fresh_target(request, state_home)


StoreFactory = Callable[..., KeyedStore]


@pytest.fixture
def make_store(target: dict[str, Any], clock: FakeClock) -> Iterator[StoreFactory]:
    """Factory: make_store(plugin_id, namespace, *, clock=<the test's FakeClock>, **options):
    `state.open_keyed_store` on the test's target (a path or a Redis URL), its other options
    (max_entries, default_ttl_ms, overflow, settings, ...) as given.

    Every store it opens is closed at teardown, so the process-wide reopen table stays clean.
    """
    opened: list[KeyedStore] = []

    def make(plugin_id: str, namespace: str, *, clock: Callable[[], int] | None = clock, **options: Any) -> KeyedStore:
        store = open_keyed_store(plugin_id, namespace, clock=clock, **options, **target)
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()


def _dump_sqlite(path: Path) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT * FROM entries ORDER BY plugin_id, namespace, key").fetchall()
        counts = conn.execute("SELECT * FROM namespace_rows ORDER BY plugin_id, namespace").fetchall()
        return [("entries", *r) for r in rows] + [("namespace_rows", *c) for c in counts]
    finally:
        conn.close()


def _dump_redis(url: str) -> list[tuple[Any, ...]]:
    import redis

    if url.startswith("redis+cluster://"):
        ports = [int(h.rsplit(":", 1)[1]) for h in url.split("://", 1)[1].split("?")[0].split(",")]
        return sorted(row for port in ports for row in _dump_redis(f"redis://127.0.0.1:{port}/0"))
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter())
        # one round trip for every key: a property test dumps a keyspace that grows with each example
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.dump(k)
            pipe.pttl(k)
        got = pipe.execute()
        return sorted((k, got[2 * i], got[2 * i + 1] > 0) for i, k in enumerate(keys))
    finally:
        client.close()


@pytest.fixture
def dump_rows(target: dict[str, Any], db_path: Path) -> Callable[[], list[tuple[Any, ...]]]:
    """Return every stored row of the backend (all plugins), for "nothing changed" checks."""
    if "url" in target:
        return lambda: _dump_redis(target["url"])
    return lambda: _dump_sqlite(db_path)


@pytest.fixture
def query(db_path: Path) -> Callable[..., list[tuple[Any, ...]]]:
    """query(sql, *params): read the database file from a separate, read-only connection."""
    return lambda sql, *params: rows_in(db_path, sql, *params)
