"""The cheap permission check behind every write path (`Modes` in state/_files.py: an fstat on a
descriptor it holds, an fchmod only when a mode is wrong): an outside chmod is undone by the
next write however often it happens, for files created after the check started, for a file
replaced under it, and in a forked child too."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

from chatstate.state import _files, open_keyed_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loosen(db: Path) -> None:
    os.chmod(db.parent, 0o755)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if p.exists():
            os.chmod(p, 0o644)


def assert_private(db: Path) -> None:
    assert mode(db.parent) == 0o700
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if p.exists():
            assert mode(p) == 0o600, p


def test_every_outside_chmod_is_undone_by_the_next_write(tmp_path: Path) -> None:
    db = tmp_path / "plugin-state" / "state.sqlite"
    store = open_keyed_store("p", "ns", max_entries=100, path=db)
    for i in range(50):
        loosen(db)
        store.register(f"k{i}", i)
        assert_private(db)
    store.close()


def test_guard_fixes_every_wrong_mode_on_every_call(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    guard = _files.Modes(((tmp_path, 0o700), (target, 0o600)))
    for _ in range(3):
        os.chmod(target, 0o644)
        os.chmod(tmp_path, 0o755)
        guard.ensure()
        assert mode(target) == 0o600 and mode(tmp_path) == 0o700
    replaced = tmp_path / "f.new"
    replaced.write_text("y")
    os.chmod(replaced, 0o644)
    os.replace(replaced, target)  # a new inode at the path: the guard's descriptor is stale
    guard.ensure()
    assert mode(target) == 0o600
    guard.close()


def test_guard_notices_a_file_created_after_it_started(tmp_path: Path) -> None:
    late = tmp_path / "late-wal"
    guard = _files.Modes(((late, 0o600),))
    guard.ensure()
    late.write_text("x")
    os.chmod(late, 0o644)
    guard.ensure()
    assert mode(late) == 0o600
    guard.close()


def _child_write(db: str, conn: multiprocessing.connection.Connection) -> None:
    store = open_keyed_store("p", "ns", max_entries=100, path=db)
    loosen(Path(db))
    store.register("from-child", 1)
    conn.send(True)


def test_a_forked_child_keeps_the_files_private(tmp_path: Path) -> None:
    db = tmp_path / "plugin-state" / "state.sqlite"
    store = open_keyed_store("p", "ns", max_entries=100, path=db)
    store.register("k", 1)  # the parent's guard and connections exist before the fork
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_child_write, args=(str(db), theirs))
    child.start()
    assert ours.recv() is True
    child.join(30)
    assert child.exitcode == 0
    assert_private(db)
    loosen(db)
    store.register("k2", 2)  # and the parent's guard still works after its child's fork
    assert_private(db)
    assert store.lookup("from-child") == 1
    store.close()


def _child_with_inherited(store: Any, db: str, conn: multiprocessing.connection.Connection) -> None:
    import asyncio

    from chatstate.state import StateStoreError, open_async_keyed_store

    outcome: list[str] = []
    try:
        store.lookup("k")
        outcome.append("inherited store answered")
    except StateStoreError as exc:
        outcome.append(f"{exc.code}")
    with open_keyed_store("p", "ns", max_entries=100, path=db) as fresh:  # the child's own
        outcome.append(str(fresh.lookup("k")))

    async def use_async() -> str:
        async with await open_async_keyed_store("p", "other", max_entries=10, path=db) as astore:
            await astore.register("from-child-async", 2)
            return str(await astore.lookup("from-child-async"))

    outcome.append(asyncio.run(use_async()))
    conn.send(outcome)


def test_a_forked_child_starts_afresh_and_the_parent_is_untouched(tmp_path: Path) -> None:
    """The one fork rule (a pid check, state/_database.py): stores inherited by a forked child are closed in
    it; the child opens its own, sync and async; the parent's store keeps working."""
    db = tmp_path / "plugin-state" / "state.sqlite"
    store = open_keyed_store("p", "ns", max_entries=100, path=db)
    store.register("k", 1)
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_child_with_inherited, args=(store, str(db), theirs))
    child.start()
    assert ours.recv() == ["UNAVAILABLE", "1", "2"]
    child.join(30)
    assert child.exitcode == 0
    store.register("k2", 2)
    assert store.lookup("k2") == 2
    store.close()
