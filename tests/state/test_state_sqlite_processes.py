"""SQLite and processes: first open by many at once; SIGKILL mid-write loses nothing acknowledged."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
from pathlib import Path

import state_workers
from state_support import CHILD_TIMEOUT_S, killed_writer

from chatstate.state import database_path, open_keyed_store

FIRST_OPEN_ROUNDS = 5  # the race is narrow: a few rounds of 8 make it show up reliably


def test_eight_processes_creating_the_database_at_once_all_succeed(tmp_path: Path):
    """Two gateways starting together: the state dir, the file and WAL mode are made by one,
    met by the others; nobody may fail (it used to: mkdir EEXIST, 'database is locked')."""
    ctx = multiprocessing.get_context("spawn")
    for round_no in range(FIRST_OPEN_ROUNDS):
        db = database_path(tmp_path / f"round-{round_no}")  # neither the dir nor the file exists yet
        barrier, results = ctx.Barrier(8), ctx.Queue()
        workers = [ctx.Process(target=state_workers.first_open, args=(i, str(db), barrier, results)) for i in range(8)]
        for w in workers:
            w.start()
        reports = [results.get(timeout=CHILD_TIMEOUT_S) for _ in workers]
        for w in workers:
            w.join(CHILD_TIMEOUT_S)
        assert [error for _, error, _ in reports if error] == []
        assert sum(won for _, _, won in reports) == 1
        store = open_keyed_store("first", "open", max_entries=100, path=db)
        try:
            assert {e.key for e in store.entries()} == {f"w{i}" for i in range(8)} | {"claim"}
        finally:
            store.close()


CRASH_ROUNDS = 20


def test_sigkill_mid_write_loses_no_acknowledged_write(state_home: Path, db_path: Path):
    rng = random.Random(20)
    acked: list[tuple[str, ...]] = []
    for round_no in range(CRASH_ROUNDS):
        lines = killed_writer(["crash", str(state_home), str(round_no)], kill_after=rng.randrange(5, 150))
        acked.extend(tuple(line.split()) for line in lines)

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    writes = open_keyed_store("crash", "writes", max_entries=1_000_000, path=state_home)
    claims = open_keyed_store("crash", "claims", max_entries=1_000_000, path=state_home)
    try:
        stored = {("write", e.key) for e in writes.entries()} | {("claim", e.key) for e in claims.entries()}
        missing = set(acked) - stored
        assert not missing
        assert len(acked) >= CRASH_ROUNDS * 5
    finally:
        writes.close()
        claims.close()
