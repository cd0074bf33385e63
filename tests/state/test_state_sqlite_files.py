"""SQLite-only file rules: modes re-applied on every write path; a bad file is never touched."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from chatstate.state import StateStoreError, check_database, open_keyed_store, probe, sweep_expired
from chatstate.state.__main__ import main as cli_main


@pytest.fixture
def target(sqlite_target):
    """This module is SQLite-only: pin the backend-parametrised fixtures to the file."""
    return sqlite_target


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def side_files(db_path: Path) -> list[Path]:
    return [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]


def loosen(db_path: Path) -> None:
    """What an outside `chmod 755 dir; chmod 644 files` does."""
    os.chmod(db_path.parent, 0o755)
    for p in side_files(db_path):
        if p.exists():
            os.chmod(p, 0o644)


def assert_private(db_path: Path) -> None:
    assert oct(mode(db_path.parent)) == oct(0o700)
    for p in side_files(db_path):
        assert p.exists(), p  # the check below must not pass vacuously
        assert oct(mode(p)) == oct(0o600), p


# -- permissions ---------------------------------------------------------------------------
def test_a_new_database_is_private(make_store, db_path):
    make_store("p", "ns", max_entries=10).register("k", 1)
    assert_private(db_path)


WRITE_PATHS: dict[str, Callable[..., object]] = {
    "register": lambda s, t: s.register("new", 1),
    "register-update": lambda s, t: s.register("k", 2),
    "register_if_absent": lambda s, t: s.register_if_absent("claim", 1),
    "register_if_absent-lost": lambda s, t: s.register_if_absent("k", 1),
    "consume": lambda s, t: s.consume("k"),
    "consume-missing": lambda s, t: s.consume("missing"),
    "delete": lambda s, t: s.delete("k"),
    "delete-missing": lambda s, t: s.delete("missing"),
    "clear": lambda s, t: s.clear(),
    "sweep": lambda s, t: sweep_expired(**t),
    "open-while-open": lambda s, t: open_keyed_store("p", "other", max_entries=1, **t).close(),
}


@pytest.mark.parametrize("write", WRITE_PATHS.values(), ids=WRITE_PATHS.keys())
def test_every_write_path_reapplies_modes_after_an_outside_chmod(make_store, target, db_path, write):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", 1)
    loosen(db_path)
    write(store, target)
    assert_private(db_path)


def test_open_reapplies_modes_after_an_outside_chmod(target, db_path):
    open_keyed_store("p", "ns", max_entries=10, **target).close()
    loosen(db_path)
    assert oct(mode(db_path)) == oct(0o644)
    store = open_keyed_store("p", "ns", max_entries=10, **target)
    try:
        assert_private(db_path)
    finally:
        store.close()


def test_close_leaves_the_files_private(target, db_path):
    store = open_keyed_store("p", "ns", max_entries=10, **target)
    store.register("k", 1)
    loosen(db_path)
    store.close()
    assert oct(mode(db_path.parent)) == oct(0o700)
    assert all(oct(mode(p)) == oct(0o600) for p in side_files(db_path) if p.exists())


# -- bad files at the state path -----------------------------------------------------------
def healthy_database(target: dict, db_path: Path, rows: int = 300) -> bytes:
    store = open_keyed_store("p", "ns", max_entries=10_000, **target)
    for i in range(rows):
        store.register(f"k{i}", {"pad": "x" * 300})
    store.close()  # checkpoints: the whole database is in the main file now
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    return db_path.read_bytes()


def bad_files(target: dict, db_path: Path) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    good = healthy_database(target, db_path)
    assert len(good) > 16 * 4096
    return {
        "text": (b"this is not a database\n" * 200, ("OPEN_FAILED",)),
        "short-text": (b"hello", ("OPEN_FAILED",)),
        "json": (b'{"slack.events": {}}', ("OPEN_FAILED",)),
        "truncated-half": (good[: len(good) // 2 // 4096 * 4096], ("CORRUPT",)),
        "truncated-header": (good[:100], ("CORRUPT", "OPEN_FAILED")),
        "header-then-garbage": (good[:4096] + os.urandom(len(good) - 4096), ("CORRUPT",)),
    }


BAD_KINDS = ["text", "short-text", "json", "truncated-half", "truncated-header", "header-then-garbage"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_file_is_refused_with_its_path_and_left_byte_identical(target, db_path, kind):
    content, codes = bad_files(target, db_path)[kind]
    db_path.write_bytes(content)
    os.chmod(db_path, 0o640)
    before = (db_path.read_bytes(), mode(db_path))
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, **target)
    assert err.value.code in codes and err.value.operation == "open"
    assert err.value.path == str(db_path) and str(db_path) in str(err.value)
    with pytest.raises(StateStoreError) as err:
        check_database(target["path"])
    assert err.value.code in codes and err.value.path == str(db_path)
    with pytest.raises(StateStoreError):
        sweep_expired(**target)
    result = probe(target["path"])
    assert result["ok"] is False
    assert [s["name"] for s in result["steps"]] == ["state-dir", "open"]
    assert result["steps"][-1]["code"] in codes and str(db_path) in result["steps"][-1]["message"]
    assert cli_main(["probe", "--state-dir", target["path"]]) == 1
    assert cli_main(["inspect", "--state-dir", target["path"]]) == 1
    assert (db_path.read_bytes(), mode(db_path)) == before


def test_a_directory_at_the_state_path_is_open_failed(state_home, db_path):
    db_path.mkdir(parents=True)
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, path=state_home)
    assert (err.value.code, err.value.path) == ("OPEN_FAILED", str(db_path))
    assert db_path.is_dir()


def test_a_directory_at_the_database_path_is_refused_never_taken_for_a_state_dir(state_home, db_path):
    """The gateway and the CLI name the file itself (`database_path(state_dir)`): a directory there is refused
    (rule 18), not taken as one more state dir with a second database nested inside it."""
    db_path.mkdir(parents=True)
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, path=db_path)
    assert (err.value.code, err.value.path) == ("OPEN_FAILED", str(db_path))
    assert "directory" in str(err.value)
    result = probe(db_path)
    assert (result["ok"], result["database_path"], result["steps"][-1]["code"]) == (False, str(db_path), "OPEN_FAILED")
    assert cli_main(["probe", "--state-dir", str(state_home)]) == 1
    assert cli_main(["inspect", "--state-dir", str(state_home)]) == 1
    assert list(db_path.iterdir()) == []  # nothing nested inside


def test_an_empty_file_at_the_state_path_becomes_a_database(target, db_path):
    db_path.parent.mkdir(mode=0o700)
    db_path.touch()
    store = open_keyed_store("p", "ns", max_entries=1, **target)
    try:
        store.register("k", 1)
        assert store.lookup("k") == 1
    finally:
        store.close()


def test_a_healthy_database_passes_integrity_after_reopen(target, db_path):
    healthy_database(target, db_path, rows=10)
    store = open_keyed_store("p", "ns", max_entries=10_000, **target)
    try:
        assert len(store.entries()) == 10
    finally:
        store.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_an_unchanged_file_is_checked_once_per_process_and_a_changed_one_again(target, db_path, monkeypatch):
    """The gateway checks the file before it binds and the backend again as it opens; at 1M rows
    each check reads the whole file, so the second is skipped while nothing changed."""
    from chatstate.state import _files

    healthy_database(target, db_path, rows=20)
    reads: list[str] = []
    real = _files._check_file
    monkeypatch.setattr(_files, "_check_file", lambda path, where: (reads.append(where), real(path, where)))
    check_database(target["path"])
    store = open_keyed_store("p", "ns", max_entries=100, **target)
    assert reads == [str(db_path)]  # the open did not read the file again
    store.register("one-more", 1)  # the WAL changed: the next check reads again
    check_database(target["path"])
    assert reads == [str(db_path)] * 2
    store.close()
    good = db_path.read_bytes()
    check_database(target["path"])
    assert len(reads) == 3
    db_path.write_bytes(good[:4096] + os.urandom(len(good) - 4096))  # same size, same inode
    with pytest.raises(StateStoreError) as err:
        check_database(target["path"])
    assert err.value.code == "CORRUPT" and len(reads) == 4
