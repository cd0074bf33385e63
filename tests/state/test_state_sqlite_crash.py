"""SQLite crash safety: SIGKILL a writer mid-loop, 20 times; nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import state_workers
from state import open_keyed_store

CHILD_TIMEOUT_S = 300  # a hung child fails the test instead of hanging the suite

CRASH_ROUNDS = 20


def test_sigkill_mid_write_loses_no_acknowledged_write(state_home: Path, db_path: Path):
    rng = random.Random(20)
    acked: list[tuple[str, str]] = []
    for round_no in range(CRASH_ROUNDS):
        with subprocess.Popen(
            [sys.executable, state_workers.__file__, "crash", str(state_home), str(round_no)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        ) as child:
            assert child.stdout is not None
            kill_after = rng.randrange(5, 150)
            lines = []
            for line in child.stdout:
                lines.append(line)
                if len(lines) >= kill_after:
                    break
            child.send_signal(signal.SIGKILL)
            lines.extend(child.stdout)  # acknowledgements already in the pipe count too
            assert child.wait(timeout=CHILD_TIMEOUT_S) == -signal.SIGKILL
        assert len(lines) >= kill_after, "the writer died before it was killed"
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
