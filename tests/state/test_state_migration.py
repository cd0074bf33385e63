"""Schema v1 -> v2: a v1 file written by the v1 code (fixtures/state/v1.sqlite, see its
generator next to it) is migrated in place on the first open, after a backup; a v1 Redis
prefix likewise. A newer schema is refused naming both versions."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from state_support import rows_in

from chatstate.state import SCHEMA_VERSION, StateStoreError, check_database, open_keyed_store

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "state" / "v1.sqlite"
T0 = 1_700_000_000_000
NOW = T0 + 1_000  # when the test reads: btn:2 (expires T0+64) has expired, everything else is live

# Every row of the fixture: (plugin, namespace) -> [(key, value, created_at, expires_at)] in
# (created_at, key) order, as the v1 code wrote them.
V1_ROWS: dict[tuple[str, str], list[tuple[str, Any, int, int | None]]] = {
    ("slack", "slack.thread-participation"): [
        (
            f"T1:A1:C{i}:1700000000.00{i}",
            {"agent_id": f"a{i}", "replied_at": T0 + i},
            T0 + 7 * (i + 1),
            T0 + 7 * (i + 1) + 86_400_000,
        )
        for i in range(5)
    ],
    ("slack", "slack.events"): [
        ("T1:Ev1", {"received_at": T0}, T0 + 42, T0 + 42 + 3_600_000),
        ("T1:Ev2", {"received_at": T0 + 1}, T0 + 49, T0 + 49 + 3_600_000),
    ],
    ("discord", "discord.components"): [
        (
            "btn:1",
            {"version": 1, "entry": {"label": "Approve ✓", "n": [1, 2.5, None, True]}},
            T0 + 56,
            T0 + 56 + 1_800_000,
        ),
        ("btn:2", {"version": 1, "entry": {}}, T0 + 63, T0 + 64),
    ],
    ("echo", "echo.kv"): [
        ("unicode-ключ", ["é", "😀"], T0 + 77, None),
        ("no-ttl", "rewritten, so newest", T0 + 84, None),
    ],
    ("matrix", "matrix.approval-reactions"): [
        ('["acct","!room:hs","$event"]', {"version": 1, "target": "x"}, T0 + 91, T0 + 91 + 600_000)
    ],
}
SHAPES = {  # what each namespace was opened with by the generator (the reopen check needs none)
    ("slack", "slack.thread-participation"): 5_000,
    ("slack", "slack.events"): 50_000,
    ("discord", "discord.components"): 500,
    ("echo", "echo.kv"): 100,
    ("matrix", "matrix.approval-reactions"): 1_000,
}


@pytest.fixture
def v1_file(state_home: Path) -> Path:
    db = state_home / "plugin-state" / "state.sqlite"
    db.parent.mkdir(mode=0o700)
    shutil.copyfile(FIXTURE, db)
    os.chmod(db, 0o600)
    assert rows_in(db, "PRAGMA user_version") == [(1,)]
    return db


def dump(db: Path) -> list[Any]:
    """What a file holds: schema version, table shape and every row."""
    return [
        rows_in(db, "PRAGMA user_version"),
        rows_in(db, "PRAGMA table_info(entries)"),
        rows_in(db, "SELECT * FROM entries ORDER BY plugin_id, namespace, key"),
        rows_in(db, "SELECT * FROM namespace_rows ORDER BY plugin_id, namespace"),
    ]


def check_every_row(target: dict[str, Any]) -> list[int]:
    versions = []
    for (plugin, ns), rows in V1_ROWS.items():
        with open_keyed_store(plugin, ns, max_entries=SHAPES[(plugin, ns)], clock=lambda: NOW, **target) as store:
            live = [r for r in rows if r[3] is None or r[3] > NOW]
            got = store.entries()
            assert [(e.key, e.value, e.created_at, e.expires_at) for e in got] == live, (plugin, ns)
            assert store.count() == len(live)
            for key, value, created, expires in rows:
                entry = store.lookup_entry(key)
                if expires is not None and expires <= NOW:
                    assert entry is None
                else:
                    assert (entry.value, entry.created_at, entry.expires_at) == (value, created, expires)
            versions += [e.version for e in got]
            # the migrated rows take v2 operations
            first = got[0]
            assert store.compare_and_set(first.key, "cas", version=first.version) is True
            assert store.lookup(first.key) == "cas"
    return versions


def test_a_v1_file_is_migrated_in_place_after_a_backup(v1_file: Path, sqlite_target):
    original = dump(v1_file)
    check_database(v1_file)  # a v1 file is not refused
    with open_keyed_store("echo", "echo.kv", max_entries=100, clock=lambda: NOW, **sqlite_target) as store:
        assert store.lookup("no-ttl") == "rewritten, so newest"
    backup = Path(f"{v1_file}.v1.bak")
    assert dump(backup) == original  # the file as it was: v1, every row
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert rows_in(v1_file, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(2,)]
    assert rows_in(v1_file, "SELECT count(*) FROM entries WHERE version = 0") == [(0,)]
    assert rows_in(v1_file, "SELECT count(*) FROM entries") == [(12,)]  # the expired row too
    versions = check_every_row(sqlite_target)
    assert len(versions) == len(set(versions)) == 11 and all(v > 0 for v in versions)
    mtime = backup.stat().st_mtime_ns
    with open_keyed_store("echo", "echo.kv", max_entries=100, **sqlite_target):
        pass  # a v2 file is not migrated (or backed up) again
    assert backup.stat().st_mtime_ns == mtime


def test_a_failed_migration_leaves_the_v1_file_as_it_was(v1_file: Path, sqlite_target, monkeypatch):
    from chatstate.state import _files

    original = dump(v1_file)
    monkeypatch.setitem(_files.MIGRATIONS, 1, (*_files.MIGRATIONS[1], "SELECT * FROM nowhere"))
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("echo", "echo.kv", max_entries=100, **sqlite_target)
    assert err.value.code == "OPEN_FAILED"
    assert dump(v1_file) == original
    conn = sqlite3.connect(v1_file)
    try:
        assert [r[1] for r in conn.execute("PRAGMA table_info(entries)")][-1] == "expires_at"  # rolled back
    finally:
        conn.close()
    monkeypatch.undo()
    check_every_row(sqlite_target)  # and the next open migrates it
    assert dump(Path(f"{v1_file}.v1.bak")) == original


def test_a_newer_schema_is_refused_naming_both_versions(v1_file: Path, sqlite_target):
    conn = sqlite3.connect(v1_file)
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    before = v1_file.read_bytes()
    for call in (
        lambda: check_database(v1_file),
        lambda: open_keyed_store("echo", "echo.kv", max_entries=100, **sqlite_target),
    ):
        with pytest.raises(StateStoreError) as err:
            call()
        assert err.value.code == "SCHEMA_UNSUPPORTED"
        assert "schema version 3" in str(err.value) and "up to 2" in str(err.value)
    assert v1_file.read_bytes() == before


# -- Redis: the same rows in the v1 key layout -------------------------------------------------
def write_v1_layout(client: Any, prefix: str) -> None:
    """The v1 Redis backend's layout (the scripts in state/_redis_lua.py at 6aa243c, now state/_redis.py): hashes without `n`."""
    from urllib.parse import quote

    for (plugin, ns), rows in V1_ROWS.items():
        base = f"{prefix}:p:{quote(plugin, safe='')}:n:{ns}"
        for key, value, created, expires in rows:
            import json

            client.hset(
                f"{base}:r:{key}",
                mapping={
                    "v": json.dumps(value, ensure_ascii=False, separators=(",", ":")),
                    "c": created,
                    "e": "" if expires is None else expires,
                },
            )
            client.zadd(f"{base}:order", {key: created})
            if expires is not None:
                client.zadd(f"{base}:exp", {key: expires})
        client.sadd(f"{prefix}:p:{quote(plugin, safe='')}:namespaces", ns)
        client.sadd(f"{prefix}:plugins", quote(plugin, safe=""))
    client.set(f"{prefix}:schema", 1)


@contextlib.contextmanager
def emptied_prefix(redis_url: str, prefix: str) -> Iterator[tuple[str, Any]]:
    """(a store URL under `prefix`, a client of the same server); nothing under `prefix` before
    or after."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for k in client.scan_iter(match=f"{prefix}:*"):
            client.delete(k)
        yield f"{redis_url}{'&' if '?' in redis_url else '?'}prefix={prefix}", client
    finally:
        for k in client.scan_iter(match=f"{prefix}:*"):
            client.delete(k)
        client.close()


def test_a_v1_redis_prefix_is_migrated_in_place(redis_url):
    with emptied_prefix(redis_url, "v1mig") as (url, client):
        write_v1_layout(client, "v1mig")
        versions = check_every_row({"url": url})
        assert len(versions) == len(set(versions)) == 11 and all(v > 0 for v in versions)
        assert client.get("v1mig:schema") == "3"
        assert not [k for k in client.scan_iter(match="v1mig:p:*") if "{" not in k]  # all under tags
        client.set("v1mig:schema", 4)
        with pytest.raises(StateStoreError) as err:
            open_keyed_store("echo", "echo.kv", max_entries=100, url=url)
        assert err.value.code == "SCHEMA_UNSUPPORTED"
        assert "schema version 4" in str(err.value) and "up to 3" in str(err.value)


def test_a_v2_redis_prefix_moves_under_plugin_hash_tags_keeping_versions(redis_url):
    with emptied_prefix(redis_url, "v2mig") as (url, client):
        write_v1_layout(client, "v2mig")
        for row in [k for k in client.scan_iter(match="v2mig:p:*:r:*")]:
            client.hset(row, "n", 1000 + len(row))  # the v2 layout: the same keys, rows versioned
        client.set("v2mig:schema", 2)
        before = {k: client.hget(k, "n") for k in client.scan_iter(match="v2mig:p:*:r:*")}
        open_keyed_store("echo", "echo.kv", max_entries=100, url=url).close()  # the open migrates
        assert client.get("v2mig:schema") == "3"
        after = {k: client.hget(k, "n") for k in client.scan_iter(match="v2mig:p:*:r:*")}
        assert len(after) == len(before) and all("{" in k for k in after)
        assert sorted(after.values()) == sorted(before.values())  # versions survive the move
        check_every_row({"url": url})
