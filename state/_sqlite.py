"""The SQLite backend: one file per state dir, one connection per thread, every write in one
BEGIN IMMEDIATE transaction through `_transact`.

Why this shape: WAL lets readers run beside the single writer; BEGIN IMMEDIATE takes the write
lock up front so two processes never deadlock upgrading a read lock; one in-process writer lock
wakes queued writers the moment the current one commits (issue 4); `run_batch` lets the async
twin's writer thread commit several writes at once (group commit). The schema and statements
are in state/_sqlite_schema.py, the filesystem rules in state/_files.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import _files as files
from . import _sqlite_schema as sql
from ._backend import Decode, Limits, Mode, Row
from ._errors import StateStoreError
from ._perms import PermissionGuard
from ._settings import SCHEMA_VERSION, StoreSettings

WAL_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's default, restored after a sweep
WAL_RETRY_S = 0.005  # pause between attempts to switch a brand-new database to WAL
DIR_MODE, FILE_MODE = files.DIR_MODE, files.FILE_MODE
READ_OPS = frozenset({"lookup", "lookup_many", "entries", "count"})
WRITE_OPS = {Mode.UPSERT: "register", Mode.CLAIM: "register_if_absent", Mode.MATCH: "compare_and_set"}
NO_CURSOR = (-(2**63), "")  # sorts before every (created_at, key)
T = TypeVar("T")
log = logging.getLogger("chatstate.state")


class SQLiteBackend:
    """One database file as seen by this process; share it between stores via `acquire`."""

    one_writer = True  # the async twin sends this database's writes to one thread (state/_aio.py)

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path = path
        self.location = str(path)
        self.settings = settings
        self._uri = f"{path.as_uri()}?nofollow=1"  # SQLite refuses to open a symlink itself too
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        # One writer at a time inside this process. Threads that queue here are woken the moment
        # the writer commits; without it they collide on BEGIN IMMEDIATE and SQLite's busy
        # handler sleeps 1, 2, 5, ... ms between retries, however soon the lock frees (issue 4).
        self._writer = threading.Lock()
        self._closed = False
        self._perms: PermissionGuard | None = None  # set once the file is known good
        self._fault: str | None = None  # the last post-commit permission failure, until one succeeds
        self._users = 0
        self._own_dir = False
        _backends.add(self)
        self._open()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- opening ------------------------------------------------------------------------
    def _fail(self, code: str, op: str, message: str) -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

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

    def _slot(self, op: str) -> _Slot:
        """This thread's connection (opened on first use) and the lock close() waits on."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None:
            return slot
        try:
            conn = sqlite3.connect(
                self._uri,
                uri=True,
                timeout=self.settings.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # only closed from another thread, by close()
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise self._driver_error(op, exc, open_error=True) from None
        slot = _Slot(conn)
        with self._lock:
            if self._closed:
                conn.close()
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            self._slots.append(slot)
        self._local.slot = slot
        return slot

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, waiting up to busy_timeout_s like every other statement.

        SQLite does not call the busy handler for this mode change, so processes creating the
        database together got "database is locked" at once; retry until the deadline instead.
        """
        deadline = time.monotonic() + self.settings.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(WAL_RETRY_S)

    # -- shared machinery ---------------------------------------------------------------
    def _driver_error(self, op: str, exc: sqlite3.Error, *, open_error: bool = False) -> StateStoreError:
        """Turn a driver error into StateStoreError where it happens (diskcache's habit)."""
        if sql.is_corruption(exc):
            code = "CORRUPT"
        elif open_error or op == "open":
            code = "OPEN_FAILED"
        elif op in READ_OPS:
            code = "READ_FAILED"
        else:
            code = "WRITE_FAILED"
        return self._fail(code, op, f"SQLite said: {exc}")

    def _query(self, op: str, statement: str, params: tuple[object, ...] | dict[str, object]) -> list[Any]:
        """Run one read statement on this thread's connection; close() waits for it."""
        slot = self._slot(op)
        with slot.lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            try:
                return slot.conn.execute(statement, params).fetchall()
            except sqlite3.Error as exc:
                raise self._driver_error(op, exc) from None

    def _transact(self, op: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(conn)` as one write: BEGIN IMMEDIATE, ROLLBACK if it raises, else COMMIT,
        then re-apply permissions (best effort: see `_after_commit`). Inside `run_batch` it
        joins the batch's open transaction instead. The thread's slot lock is held throughout,
        so close() waits."""
        slot = self._slot(op)
        batch = slot.batch
        if batch is not None:  # run_batch commits, or rolls back and reruns one by one
            try:
                return work(slot.conn)
            except BaseException as exc:
                batch.spoiled = True
                if isinstance(exc, sqlite3.Error):
                    raise self._driver_error(op, exc) from None
                raise
        with slot.lock, self._writer:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            conn = slot.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # also after a failed COMMIT
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._driver_error(op, exc) from None
        self._after_commit(op)
        return result

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]] | None:
        """Run several writes of this thread in one transaction (group commit; state/_aio.py's
        writer thread uses it for the writes that queued up while it was busy).

        Each call's `_transact` joins the open transaction instead of its own BEGIN/COMMIT, so a
        write costs about half (issue 4). Returns every call's (result, error) after the COMMIT,
        or None, with nothing written, when a call failed inside the transaction or BEGIN or
        COMMIT failed: the caller then runs the calls one by one, so each gets exactly what it
        would have had alone. A call refused before it touched the database (validation) does
        not spoil the batch.
        """
        slot = self._slot("register")
        with slot.lock, self._writer:
            if self._closed:
                return None
            conn = slot.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return None
            slot.batch = batch = _Batch()
            outcomes: list[tuple[Any, Exception | None]] = []
            try:
                for call in calls:
                    try:
                        outcomes.append((call(), None))
                    except Exception as exc:  # handed to that call's caller, not swallowed
                        outcomes.append((None, exc))
                slot.batch = None
                conn.execute("ROLLBACK" if batch.spoiled else "COMMIT")
            except sqlite3.Error:
                return None
            finally:
                slot.batch = None
                if conn.in_transaction:  # a failed COMMIT, or an exception that is not a driver error
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
        if batch.spoiled:
            return None
        self._after_commit("register")
        return outcomes

    def _after_commit(self, op: str) -> None:
        """Re-apply 0700/0600 after every write: an outside chmod must not stick.

        Best effort on purpose (issue 17, defect 1): the write is committed, so a chmod that
        fails here must not turn it into an error (a claim would be orphaned, a consumed value
        lost, a retry would duplicate). The failure is logged once and shown by `fault()`,
        which probe() and /healthz report, until a later re-application succeeds.
        `PermissionGuard` makes this a ~0.3 us check when nothing changed (state/_perms.py).
        """
        perms = self._perms
        if perms is None:
            return
        try:
            perms.ensure()
        except OSError as exc:
            message = f"{op}: cannot re-apply permissions after commit ({exc.strerror}); the write is kept"
            if self._fault is None:
                log.warning("state_permissions_failed", extra={"op": op, "path": self.location, "error": message})
            self._fault = message
            return
        if self._fault is not None:
            self._fault = None
            log.info("state_permissions_restored", extra={"op": op, "path": self.location})

    def fault(self) -> str | None:
        return self._fault

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
            if conn.execute(sql.SQL_CLAIM if mode is Mode.CLAIM else sql.SQL_UPSERT, params).rowcount == 0:
                return False
            if conn.execute(sql.SQL_NS_ROWS_FAST, params[:2]).fetchone()[0] > limits.max_entries:
                self._enforce_cap(conn, op, {"plugin": plugin_id, "ns": namespace, "key": key, "now": now_ms},
                                  limits)
            return True

        return self._transact(op, work)

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
        return [Row(*r) for r in self._query("lookup_many", sql.SQL_READ_MANY[size],
                                             (plugin_id, namespace, now_ms, *padded))]

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
        self, plugin_id: str, namespace: str, *, now_ms: int, limit: int | None = None,
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

    # -- users and closing ----------------------------------------------------------------
    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> bool:
        """Drop one user; the last one drains in-flight calls, checkpoints and closes. True = closed."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return False
            self._closed = True  # new calls now fail with UNAVAILABLE ...
            slots, self._slots = self._slots, []
        for slot in slots:  # ... and calls already running finish first (each holds its slot)
            slot.lock.acquire()
        try:
            mine: _Slot | None = getattr(self._local, "slot", None)
            conn = mine.conn if mine in slots else (slots[0].conn if slots else None)
            if conn is not None:
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as exc:
                    raise self._driver_error("close", exc) from None
                self._after_commit("close")
        finally:
            for slot in slots:
                slot.conn.close()
                slot.lock.release()
            if self._perms is not None:
                self._perms.close()
            self._local = threading.local()
        return True

    def _forget_parent(self) -> None:
        """In a forked child: the parent's connections must never be used (or closed) here."""
        self._local, self._slots, self._lock = threading.local(), [], threading.Lock()
        self._writer = threading.Lock()
        if self._perms is not None:
            self._perms.after_fork()


_backends: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_backends):
        backend._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Slot:
    """One thread's connection, and the lock its calls hold so close() can wait for them."""

    __slots__ = ("conn", "lock", "batch")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.batch: _Batch | None = None  # set while `run_batch` holds a transaction open


class _Batch:
    """A `run_batch` transaction: spoiled once any write inside it failed."""

    __slots__ = ("spoiled",)

    def __init__(self) -> None:
        self.spoiled = False


check_existing = sql.check_existing


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
