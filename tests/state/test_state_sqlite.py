"""SQLite-only rules: file location, PRAGMAs, schema version, transactions, batched sweep, lock waits off the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from chatstate.state import (
    SCHEMA_VERSION,
    StateStoreError,
    StoreSettings,
    database_path,
    open_async_keyed_store,
    open_keyed_store,
    state_dir,
    sweep_expired,
)


@pytest.fixture
def target(sqlite_target):
    """This module is SQLite-only: pin the backend-parametrised fixtures to the file."""
    return sqlite_target


@pytest.fixture
def store_connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every read-write connection the store opens, caught at sqlite3.connect."""
    made: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def spy(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        if "mode=ro" not in str(args[0] if args else kwargs.get("database")):  # not the read-only check
            made.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", spy)
    return made


@pytest.fixture
def store(make_store):
    return make_store("p", "ns", max_entries=10_000)


def test_database_lives_under_the_state_dir(monkeypatch, tmp_path, state_home, db_path):
    monkeypatch.setenv("CHATSTATE_HOME", str(tmp_path / "from-env"))
    assert state_dir() == tmp_path / "from-env"
    assert database_path() == tmp_path / "from-env" / "plugin-state" / "state.sqlite"
    assert database_path(state_home) == db_path
    store = open_keyed_store("p", "ns", max_entries=1)
    try:
        store.register("k", 1)
        assert Path(store.location) == tmp_path / "from-env" / "plugin-state" / "state.sqlite"
        assert Path(store.location).is_file()
    finally:
        store.close()
    monkeypatch.delenv("CHATSTATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert database_path() == tmp_path / "user" / ".chatstate" / "plugin-state" / "state.sqlite"


def test_pragmas_on_every_store_connection(store_connections, make_store):
    store = make_store("p", "ns", max_entries=10, settings=StoreSettings(busy_timeout_s=5))
    store.register("k", 1)
    assert store_connections
    for conn in store_connections:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5_000


def test_default_busy_timeout_is_at_least_5_s_and_lower_is_refused():
    assert StoreSettings().busy_timeout_s >= 5
    with pytest.raises(StateStoreError) as err:
        StoreSettings(busy_timeout_s=4.9)
    assert err.value.code == "INVALID_INPUT"


def test_wal_schema_version_and_indexes_on_disk(store, query, db_path):
    store.register("k", 1)
    assert db_path.read_bytes()[18:20] == b"\x02\x02"  # file format: WAL
    assert query("PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(2,)]
    assert [r[1] for r in query("PRAGMA table_info(entries)")][-1] == "version"  # schema v2
    assert [r[5] for r in query("PRAGMA table_info(entries)") if r[5]] == [1, 2, 3]
    assert [r[1] for r in query("PRAGMA table_info(entries)") if r[5]] == ["plugin_id", "namespace", "key"]
    indexed = {
        name: [c[2] for c in query(f"PRAGMA index_info({name})")]
        for (name,) in query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries' AND sql IS NOT NULL"
        )
    }
    assert ["expires_at"] in indexed.values()
    assert ["plugin_id", "namespace", "created_at", "key"] in indexed.values()


def test_every_write_runs_in_one_begin_immediate_transaction(store_connections, store, target):
    statements: list[str] = []
    store.register("seed", 1)
    for conn in store_connections:
        conn.set_trace_callback(statements.append)
    writes = [
        lambda: store.register("k", 1),
        lambda: store.register_if_absent("c", 1),
        lambda: store.consume("k"),
        lambda: store.delete("c"),
        store.clear,
        lambda: sweep_expired(**target),
    ]
    for write in writes:
        statements.clear()
        write()
        begins = [s for s in statements if s.strip().upper().startswith("BEGIN")]
        assert begins and all(s.strip().upper() == "BEGIN IMMEDIATE" for s in begins)
        assert sum(s.strip().upper() == "COMMIT" for s in statements) == len(begins)


@pytest.mark.parametrize("batch", [0, 1_025, True])
def test_sweep_batch_is_bounded_at_1024(batch):
    with pytest.raises(StateStoreError) as err:
        StoreSettings(sweep_batch_rows=batch)
    assert err.value.code == "INVALID_INPUT"


def test_sweep_deletes_expired_rows_in_transactions_of_at_most_1024(
    store_connections, make_store, target, query, clock
):
    store = make_store("p", "ns", max_entries=10_000)
    other = make_store("q", "ns", max_entries=10_000)
    for i in range(2_500):
        (store if i % 2 else other).register(f"k{i}", i, ttl_ms=10)
    store.register("live", 1)
    clock.advance(10)
    expired_when_each_transaction_began: list[int] = []

    def trace(statement: str) -> None:
        if statement.strip().upper() == "BEGIN IMMEDIATE":
            expired_when_each_transaction_began.append(query("SELECT count(*) FROM entries WHERE key != 'live'")[0][0])

    for conn in store_connections:
        conn.set_trace_callback(trace)
    assert sweep_expired(**target, now_ms=clock()) == 2_500
    counts = expired_when_each_transaction_began + [0]
    assert counts[0] == 2_500
    assert all(0 <= a - b <= 1_024 for a, b in zip(counts, counts[1:]))
    assert len(expired_when_each_transaction_began) in (3, 4)
    assert [e.key for e in store.entries()] == ["live"]
    assert query("SELECT sum(row_count) FROM namespace_rows") == [(1,)]


def test_sweep_keeps_live_rows_and_returns_zero_when_nothing_expired(make_store, target, clock):
    store = make_store("p", "ns", max_entries=10)
    store.register("forever", 1)
    store.register("later", 1, ttl_ms=100)
    assert sweep_expired(**target, now_ms=clock()) == 0
    assert sweep_expired(**target, now_ms=clock() + 100) == 1
    assert [e.key for e in store.entries()] == ["forever"]


def test_higher_user_version_is_schema_unsupported_and_file_untouched(sqlite_target, db_path):
    open_keyed_store("p", "ns", max_entries=1, **sqlite_target).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, **sqlite_target)
    assert (err.value.code, err.value.operation, err.value.path) == ("SCHEMA_UNSUPPORTED", "open", str(db_path))
    assert f"{SCHEMA_VERSION + 1}" in str(err.value)
    assert db_path.read_bytes() == before


def test_unreadable_stored_json_is_corrupt_without_showing_it(store, query, db_path):
    store.register("bad", {"fine": True})
    store.register("good", 1)
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE entries SET value = '{\"SECRET-MARKER' WHERE key = 'bad'")
    conn.commit()
    conn.close()
    for op, call in [
        ("lookup", lambda: store.lookup("bad")),
        ("entries", store.entries),
        ("consume", lambda: store.consume("bad")),
    ]:
        with pytest.raises(StateStoreError) as err:
            call()
        assert (err.value.code, err.value.operation, err.value.path) == ("CORRUPT", op, str(db_path))
        assert "SECRET" not in str(err.value)
    assert store.lookup("good") == 1
    # A consume rolled back, so the row is kept for the operator to inspect.
    assert query("SELECT value FROM entries WHERE key = 'bad'") == [('{"SECRET-MARKER',)]


def test_last_close_checkpoints_the_wal(make_store, sqlite_target, db_path):
    a = open_keyed_store("p", "a", max_entries=100, **sqlite_target)
    b = open_keyed_store("p", "b", max_entries=100, **sqlite_target)
    for i in range(50):
        a.register(f"k{i}", "x" * 200)
    a.close()
    wal = Path(f"{db_path}-wal")
    assert wal.exists() and wal.stat().st_size > 0  # b still holds the database open
    b.close()
    assert not wal.exists() or wal.stat().st_size == 0
    conn = sqlite3.connect(f"{db_path.as_uri()}?immutable=1", uri=True)  # reads the main file only
    try:
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (50,)
    finally:
        conn.close()


def test_a_second_settings_object_for_an_open_database_is_refused(sqlite_target):
    a = open_keyed_store("p", "a", max_entries=1, **sqlite_target)
    try:
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "b", max_entries=1, settings=StoreSettings(busy_timeout_s=6), **sqlite_target)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
    finally:
        a.close()


def test_a_write_lock_held_past_busy_timeout_is_write_failed_saying_whose(sqlite_target, db_path):
    """ "database is locked" alone leaves the operator guessing: say the wait ran out on another process's lock."""
    store = open_keyed_store("p", "ns", max_entries=10, settings=StoreSettings(busy_timeout_s=5), **sqlite_target)
    store.register("k", 1)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another holder of the write lock, for longer than busy_timeout_s
    try:
        with pytest.raises(StateStoreError) as err:
            store.register("k", 2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert (err.value.code, err.value.operation) == ("WRITE_FAILED", "register")
    assert "busy_timeout_s" in str(err.value) and "another process held the write lock" in str(err.value)
    assert store.lookup("k") == 1
    store.close()


async def test_the_loop_runs_while_a_write_waits_for_the_sqlite_lock(sqlite_target, db_path, monkeypatch):
    loop = asyncio.get_running_loop()
    waiting = asyncio.Event()
    real_connect = sqlite3.connect

    def traced_connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(
            lambda sql: loop.call_soon_threadsafe(waiting.set) if sql.strip().upper() == "BEGIN IMMEDIATE" else None
        )
        return conn

    store = await open_async_keyed_store("p", "ns", max_entries=10, **sqlite_target)
    await store.close()  # the next open makes fresh, traced connections
    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    store = await open_async_keyed_store("p", "ns", max_entries=10, **sqlite_target)
    waiting.clear()
    blocker = real_connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock from outside
    try:
        write = asyncio.create_task(store.register("k", 1))
        # Reachable only if the write waits for the lock on another thread, not on the loop.
        await asyncio.wait_for(waiting.wait(), timeout=60)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not write.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await write
    assert await store.lookup("k") == 1
    await store.close()


def test_one_file_spelled_two_ways_is_one_database_for_the_reopen_check(state_home, db_path):
    (state_home / "elsewhere").mkdir()
    a = open_keyed_store("p", "ns", max_entries=5, path=state_home)
    try:
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("p", "ns", max_entries=9, path=state_home / "elsewhere" / "..")
        assert err.value.code == "INVALID_INPUT"
        b = open_keyed_store("p", "other", max_entries=9, path=state_home / "." / "plugin-state" / "state.sqlite")
        try:
            assert b.location == a.location == str(db_path)
        finally:
            b.close()
    finally:
        a.close()


def test_a_write_below_or_at_the_cap_is_one_statement(store_connections, make_store, clock):
    """The row count is read by the write itself: one statement between BEGIN and COMMIT, whether
    the namespace has room or is full (each write then takes the oldest row's place)."""
    store = make_store("p", "capped", max_entries=3)
    statements: list[str] = []
    for i in range(6):
        for conn in store_connections:
            conn.set_trace_callback(statements.append)
        store.register(f"k{i}", i)
        clock.advance(1)
        # a statement's triggers are traced under its own text: count distinct texts
        inside = {s for s in statements if s.split()[0].upper() not in ("BEGIN", "COMMIT")}
        assert len(inside) == 1 or i == 3, inside  # the first write at the cap tries the upsert first
        statements.clear()
    assert [e.key for e in store.entries()] == ["k3", "k4", "k5"]


def test_the_cap_holds_when_another_process_changed_the_namespace_between_writes(make_store, db_path, clock):
    """Which statement a write tries first is a guess from this process's last write; the row count
    is read in the write's own transaction, so rows another process added or removed count."""
    store = make_store("p", "shared", max_entries=3)
    for i in range(4):  # full: the fourth write took the oldest row's place
        store.register(f"k{i}", i)
        clock.advance(1)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("DELETE FROM entries WHERE namespace = 'shared' AND key IN ('k1', 'k2')")
        store.register("room", 1)  # room for it: nothing is evicted
        assert [e.key for e in store.entries()] == ["k3", "room"]
        store.register("more", 1)
        insert = "INSERT INTO entries VALUES ('p', 'shared', ?, '1', ?, NULL, 1)"
        other.executemany(insert, [("x1", clock() + 1), ("x2", clock() + 2)])  # 5 rows: over the cap
        clock.advance(10)
        store.register("last", 1)
        assert [e.key for e in store.entries()] == ["x1", "x2", "last"]
    finally:
        other.close()
