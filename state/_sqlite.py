"""The SQLite backend: one file per state dir, one connection per thread, every write in one
BEGIN IMMEDIATE transaction through `_transact`.

Why this shape: WAL lets readers run beside the single writer; BEGIN IMMEDIATE takes the write
lock up front so two processes never deadlock upgrading a read lock; one in-process writer lock
wakes queued writers the moment the current one commits (issue 4); `run_batch` lets the async
twin's writer thread commit several writes at once (group commit). The schema and statements
are in state/_sqlite_schema.py, the filesystem rules in state/_files.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _files as files
from . import _sqlite_schema as sql
from ._backend import Decode, Limits, Mode, Row, Staged
from ._perms import PermissionGuard
from ._settings import SCHEMA_VERSION, StoreSettings
from ._sqlite_conn import Connections

WAL_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's default, restored after a sweep
DIR_MODE, FILE_MODE = files.DIR_MODE, files.FILE_MODE
WRITE_OPS = {Mode.UPSERT: "register", Mode.CLAIM: "register_if_absent", Mode.MATCH: "compare_and_set"}
NO_CURSOR = (-(2**63), "")  # sorts before every (created_at, key)


class SQLiteBackend(Connections):
    """The keyed store's statements on one database file (connections: state/_sqlite_conn.py)."""

    kind = "sqlite"
    one_writer = True  # the async twin sends this database's writes to one thread (state/_aio.py)

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        super().__init__(path, settings)
        self._open()

    def _open(self) -> None:
        try:
            if self.path.is_dir() and not self.path.is_symlink():
                raise self._fail("OPEN_FAILED", "open", "the state path is a directory")
            self._own_dir, has_content = files.prepare(self.path)
            if has_content:
                sql.check_existing(self.path)  # never writes: a bad file stays exactly as it was
        except OSError as exc:
            raise self._fail("OPEN_FAILED", "open", f"cannot prepare the state path ({exc.strerror})") from None
        conn = self._slot("open").conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise sql.newer_schema(version, "open", self.location)
                if version < SCHEMA_VERSION:
                    sql.migrate(conn, self.path, version)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._driver_error("open", exc) from None
        except OSError as exc:  # the backup before a migration could not be written
            raise self._fail("OPEN_FAILED", "open", f"cannot write the pre-migration backup ({exc.strerror})") from None
        modes = tuple((Path(f"{self.path}{s}"), FILE_MODE) for s in ("", *files.SIDE_FILES))
        targets = (((self.path.parent, DIR_MODE),) + modes) if self._own_dir else modes
        self._perms = PermissionGuard(self.path.parent, targets)
        self._apply_modes_or_fail()

    def reopened(self) -> None:
        """Another store joins: check the paths again (raises OPEN_FAILED) and re-apply modes
        (best effort, like after a write: a failure is a fault for probe, not a failed open)."""
        try:
            files.prepare(self.path, create=False)
        except OSError as exc:
            raise self._fail("OPEN_FAILED", "open", f"cannot check the state path ({exc.strerror})") from None
        self._after_commit("open")

    def _apply_modes_or_fail(self) -> None:
        assert self._perms is not None
        try:
            self._perms.ensure()
        except OSError as exc:
            raise self._fail("OPEN_FAILED", "open", f"cannot set permissions ({exc.strerror})") from None

    # -- operations ---------------------------------------------------------------------
    def write(
        self,
        plugin_id: str,
        namespace: str,
        key: str,
        value: str,
        *,
        now_ms: int,
        expires_at: int | None,
        limits: Limits,
        mode: Mode,
        version: int,
        expect: int | None = None,
    ) -> bool:
        op = WRITE_OPS[mode]
        params = (plugin_id, namespace, key, now_ms, value, expires_at, version)

        def work(conn: sqlite3.Connection) -> bool:
            if mode is Mode.MATCH:  # replaces a live row in place: the row count cannot grow
                return conn.execute(sql.SQL_MATCH, (*params, expect)).rowcount > 0
            return self._put(conn, op, sql.SQL_CLAIM if mode is Mode.CLAIM else sql.SQL_UPSERT, params, limits)

        return self._transact(op, work)

    def _put(self, conn: sqlite3.Connection, op: str, statement: str, params: tuple[Any, ...], limits: Limits) -> bool:
        """Insert or replace one row (`statement` decides which), then keep the namespace's cap."""
        if conn.execute(statement, params).rowcount == 0:
            return False
        if conn.execute(sql.SQL_NS_ROWS_FAST, params[:2]).fetchone()[0] > limits.max_entries:
            plugin_id, namespace, key, now_ms = params[:4]
            self._enforce_cap(conn, op, {"plugin": plugin_id, "ns": namespace, "key": key, "now": now_ms}, limits)
        return True

    def commit(self, writes: Sequence[Staged]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for w in writes:
                if w.value is None:
                    conn.execute(sql.SQL_DELETE, (w.plugin_id, w.namespace, w.key))
                else:
                    params = (w.plugin_id, w.namespace, w.key, w.now_ms, w.value, w.expires_at, w.version)
                    self._put(conn, "commit", sql.SQL_UPSERT, params, w.limits)

        self._transact("commit", work)

    def _enforce_cap(self, conn: sqlite3.Connection, op: str, args: dict[str, object], limits: Limits) -> None:
        """The slow path of a write that left the namespace over max_entries: drop expired rows,
        then evict the oldest live ones, or refuse (reject-new)."""
        conn.execute(sql.SQL_DROP_EXPIRED_NS, args)  # expired rows never count, so drop them first
        excess = conn.execute(sql.SQL_NS_ROWS, args).fetchone()[0] - limits.max_entries
        if excess <= 0:
            return
        if limits.overflow == "reject-new":
            raise self._fail("LIMIT_EXCEEDED", op, f"namespace is full: max_entries is {limits.max_entries} live rows")
        conn.execute(sql.SQL_EVICT, {**args, "excess": excess})

    def read(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None:
        rows = self._query("lookup", sql.SQL_READ, (plugin_id, namespace, key, now_ms))
        return Row(key, *rows[0]) if rows else None

    def read_many(self, plugin_id: str, namespace: str, keys: Sequence[str], *, now_ms: int) -> list[Row]:
        size = next(n for n in sql.READ_MANY_SIZES if n >= len(keys))
        padded = [*keys, *[keys[0]] * (size - len(keys))]
        return [
            Row(*r)
            for r in self._query("lookup_many", sql.SQL_READ_MANY[size], (plugin_id, namespace, now_ms, *padded))
        ]

    def take(self, plugin_id: str, namespace: str, key: str, *, now_ms: int, decode: Decode) -> Any:
        def work(conn: sqlite3.Connection) -> Any:
            row = conn.execute(sql.SQL_TAKE, (plugin_id, namespace, key)).fetchone()
            if row is None or (row[2] is not None and row[2] <= now_ms):
                return None  # an expired row is gone either way; it was never visible
            return decode(Row(key, *row))  # unreadable JSON raises: the DELETE is rolled back

        return self._transact("consume", work)

    def remove(self, plugin_id: str, namespace: str, key: str, *, now_ms: int, expect: int | None = None) -> bool:
        if expect is not None:
            params = (plugin_id, namespace, key, now_ms, expect)
            return self._transact("delete_if", lambda conn: conn.execute(sql.SQL_REMOVE_MATCH, params).rowcount > 0)

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(sql.SQL_TAKE, (plugin_id, namespace, key)).fetchone()
            return row is not None and (row[2] is None or row[2] > now_ms)

        return self._transact("delete", work)

    def remove_all(self, plugin_id: str, namespace: str, *, now_ms: int) -> int:
        args = {"plugin": plugin_id, "ns": namespace, "now": now_ms}

        def work(conn: sqlite3.Connection) -> int:
            live = conn.execute(sql.SQL_COUNT_LIVE, args).fetchone()[0]
            conn.execute(sql.SQL_CLEAR, args)
            return int(live)

        return self._transact("clear", work)

    def scan(
        self,
        plugin_id: str,
        namespace: str,
        *,
        now_ms: int,
        limit: int | None = None,
        after: tuple[int, str] | None = None,
    ) -> list[Row]:
        args: dict[str, object] = {"plugin": plugin_id, "ns": namespace, "now": now_ms}
        if limit is None and after is None:
            return [Row(*r) for r in self._query("entries", sql.SQL_SCAN, args)]
        after_c, after_k = after or NO_CURSOR
        args.update(after_c=after_c, after_k=after_k, limit=-1 if limit is None else limit)
        return [Row(*r) for r in self._query("entries", sql.SQL_SCAN_PAGE, args)]

    def count(self, plugin_id: str, namespace: str, *, now_ms: int) -> int:
        args = {"plugin": plugin_id, "ns": namespace, "now": now_ms}
        return int(self._query("count", sql.SQL_COUNT_LIVE, args)[0][0])

    def sweep(self, *, now_ms: int) -> int:
        """Delete expired rows in batches, each its own short transaction.

        A batch dirties hundreds of pages, so SQLite's automatic checkpoint (at 1,000 WAL pages)
        would run inside almost every other COMMIT, fsyncs included, while our call still holds
        the thread's connection. Instead auto-checkpointing is off for this connection during
        the sweep and each batch is followed by a PASSIVE checkpoint, which other writers do not
        wait for: the write lock is held for the DELETE and the COMMIT only.
        """
        args = {"now": now_ms, "batch": self.settings.sweep_batch_rows}
        removed = 0
        self._query("sweep", "PRAGMA wal_autocheckpoint = 0", ())
        try:
            while True:
                n = self._transact("sweep", lambda conn: int(conn.execute(sql.SQL_SWEEP, args).rowcount))
                removed += n
                self._query("sweep", "PRAGMA wal_checkpoint(PASSIVE)", ())
                if n < self.settings.sweep_batch_rows:
                    return removed
        finally:
            self._query("sweep", f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}", ())

    def checkpoint(self, op: str = "close") -> None:
        slot = self._slot(op)
        with slot.lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            try:
                slot.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise self._driver_error(op, exc) from None
        self._after_commit(op)

    def schema_version(self) -> int:
        return int(self._query("probe", "PRAGMA user_version", ())[0][0])
