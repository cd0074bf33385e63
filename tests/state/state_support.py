"""Helpers shared by the state tests (importable by name: tests/state is on sys.path)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HA_BACKENDS = ["sqlite", "redis", "valkey", "redis-cluster"]  # what the contract tests run on
T0_MS = 1_700_000_000_000  # fake clocks start here: far from 0, exactly representable
CHILD_TIMEOUT_S = 300  # a hung child fails the test instead of hanging the suite
WORKERS = Path(__file__).with_name("state_workers.py")
# The keyed store's operations that are methods, on the sync store and its async twin alike
# (DESIGN.md section 2, then v2's); StateStoreError's operations are these and a few more.
STORE_METHODS = {
    "register",
    "register_if_absent",
    "lookup",
    "consume",
    "delete",
    "clear",
    "entries",
    "close",
    "compare_and_set",
    "delete_if",
    "update",
    "lookup_many",
    "count",
}


class FakeClock:
    """A hand-driven ms clock: TTL tests advance time instead of sleeping."""

    def __init__(self, now_ms: int = T0_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        self.now_ms += ms
        return self.now_ms


def rows_in(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a read-only query against the database file from a separate connection."""
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def fresh_target(request: pytest.FixtureRequest, state_home: Path) -> dict[str, Any]:
    """The backend `request.param` names, emptied: "sqlite", "redis", "valkey" (a valkey-server)
    or "redis-cluster" (three masters). Test modules that run on the last two too override
    `target` with `HA_BACKENDS`: a module-level fixture of that name wins over conftest's."""
    if request.param == "sqlite":
        return {"path": str(state_home)}
    import redis

    if request.param == "redis-cluster":
        group = request.getfixturevalue("cluster")
        group.flush()
        return {"url": group.url()}
    url = request.getfixturevalue("valkey_url" if request.param == "valkey" else "redis_url")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return {"url": url}


def raw_redis(url: str) -> Any:
    """A plain redis-py client for a test URL, to look underneath the store (a RedisCluster for
    a `redis+cluster://` URL: its scan_iter walks every node)."""
    import redis

    if url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        host, port = url.split("://", 1)[1].split(",")[0].rsplit(":", 1)
        return RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(url)


def killed_writer(args: list[str], *, kill_after: int) -> list[str]:
    """Run `state_workers.py *args` (a writer printing a line per acknowledged write), SIGKILL it
    once it has printed `kill_after` lines, and return every line it printed: those still in the
    pipe were acknowledged too."""
    with subprocess.Popen(
        [sys.executable, str(WORKERS), *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as child:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            if len(lines) >= kill_after:
                break
        child.send_signal(signal.SIGKILL)
        lines.extend(child.stdout)
        assert child.wait(timeout=CHILD_TIMEOUT_S) == -signal.SIGKILL
    assert len(lines) >= kill_after, "the writer died before it was killed"
    return lines
