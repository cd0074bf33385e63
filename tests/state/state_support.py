"""Helpers shared by the state tests (importable by name: tests/state is on sys.path)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

T0_MS = 1_700_000_000_000  # fake clocks start here: far from 0, exactly representable


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
