"""The SQLite backend: one file per state dir, one connection per thread, every write in one
BEGIN IMMEDIATE transaction through `_transact`.

Why this shape: WAL lets readers run beside the single writer; BEGIN IMMEDIATE takes the write
lock up front so two processes never deadlock upgrading a read lock; a per-namespace row count
kept by triggers makes the max-entries check O(1) instead of a count over the namespace.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._backend import Limits, Row
from ._errors import StateStoreError
from ._perms import PermissionGuard
from ._settings import SCHEMA_VERSION, StoreSettings

SQLITE_HEADER = b"SQLite format 3\x00"
WAL_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's default, restored after a sweep
WAL_RETRY_S = 0.005  # pause between attempts to switch a brand-new database to WAL
DIR_MODE = 0o700
FILE_MODE = 0o600

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
    plugin_id  TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,   -- compact JSON
    created_at INTEGER NOT NULL,   -- ms since epoch; reset by every register
    expires_at INTEGER,            -- ms since epoch; NULL = never
    PRIMARY KEY (plugin_id, namespace, key)
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL",
    # No (plugin_id, namespace, expires_at) index: every register moves a row in each index,
    # and a third one cost ~27% of a write's CPU (benchmarks/store_bench.py). The rare
    # drop-expired-in-namespace step uses entries_by_expiry instead (see SQL_DROP_EXPIRED_NS).
    "CREATE INDEX IF NOT EXISTS entries_by_order ON entries (plugin_id, namespace, created_at, key)",
    """CREATE TABLE IF NOT EXISTS namespace_rows (
    plugin_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    row_count INTEGER NOT NULL,    -- all rows, live and not yet swept
    PRIMARY KEY (plugin_id, namespace)
) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS entries_count_insert AFTER INSERT ON entries BEGIN
    INSERT INTO namespace_rows VALUES (new.plugin_id, new.namespace, 1)
    ON CONFLICT (plugin_id, namespace) DO UPDATE SET row_count = row_count + 1;
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_count_delete AFTER DELETE ON entries BEGIN
    UPDATE namespace_rows SET row_count = row_count - 1
    WHERE plugin_id = old.plugin_id AND namespace = old.namespace;
END""",
)

LIVE = "(expires_at IS NULL OR expires_at > :now)"
# The statements every call runs bind a tuple to numbered parameters: binding a tuple is about
# 10% of a lookup cheaper than binding a dict (benchmarks/store_bench.py). Their order:
#   ?1 plugin_id  ?2 namespace  ?3 key  ?4 now_ms  ?5 value (JSON text)  ?6 expires_at
SQL_UPSERT = """
INSERT INTO entries (plugin_id, namespace, key, value, created_at, expires_at)
VALUES (?1, ?2, ?3, ?5, ?4, ?6)
ON CONFLICT (plugin_id, namespace, key) DO UPDATE SET
    value = excluded.value, created_at = excluded.created_at, expires_at = excluded.expires_at
"""
# A claim overwrites only a row that has expired: the conflict clause is the atomic check.
SQL_CLAIM = SQL_UPSERT + " WHERE entries.expires_at IS NOT NULL AND entries.expires_at <= ?4"
SQL_READ = """SELECT value, created_at, expires_at FROM entries
WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3 AND (expires_at IS NULL OR expires_at > ?4)"""
SQL_TAKE = """DELETE FROM entries WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3
RETURNING value, created_at, expires_at"""
# Both caps in one statement (?1 plugin_id, ?2 namespace): rows in the namespace, in the plugin.
SQL_CAPS = """SELECT
    (SELECT row_count FROM namespace_rows WHERE plugin_id = ?1 AND namespace = ?2),
    (SELECT coalesce(sum(row_count), 0) FROM namespace_rows WHERE plugin_id = ?1)"""
SQL_SCAN = f"""SELECT key, value, created_at, expires_at FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND {LIVE} ORDER BY created_at, key"""
SQL_COUNT_LIVE = f"SELECT count(*) FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND {LIVE}"
SQL_CLEAR = "DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns"
SQL_NS_ROWS = "SELECT row_count FROM namespace_rows WHERE plugin_id = :plugin AND namespace = :ns"
SQL_PLUGIN_ROWS = "SELECT coalesce(sum(row_count), 0) FROM namespace_rows WHERE plugin_id = :plugin"
# Only runs when a namespace is over max_entries. INDEXED BY: walking the (few, swept every
# 60 s) expired rows beats the planner's choice of scanning the whole namespace by primary key.
SQL_DROP_EXPIRED_NS = """DELETE FROM entries INDEXED BY entries_by_expiry
WHERE plugin_id = :plugin AND namespace = :ns AND expires_at <= :now"""
SQL_DROP_EXPIRED_PLUGIN = "DELETE FROM entries WHERE plugin_id = :plugin AND expires_at <= :now"
# Oldest live rows first by (created_at, key), never the row just written.
SQL_EVICT = f"""DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND key IN (
    SELECT key FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND key != :key
    AND {LIVE} ORDER BY created_at, key LIMIT :excess)"""
SQL_SWEEP = """DELETE FROM entries WHERE (plugin_id, namespace, key) IN (
    SELECT plugin_id, namespace, key FROM entries WHERE expires_at <= :now LIMIT :batch)"""


def _is_corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


class SQLiteBackend:
    """One database file as seen by this process; share it between stores via `acquire`."""

    one_writer = True  # the async twin sends this database's writes to one thread (state/_aio.py)

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path = path
        self.location = str(path)
        self.settings = settings
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        # One writer at a time inside this process. Threads that queue here are woken the moment
        # the writer commits; without it they collide on BEGIN IMMEDIATE and SQLite's busy
        # handler sleeps 1, 2, 5, ... ms between retries, however soon the lock frees (issue 4:
        # echo route throughput). Other processes still meet the file lock and busy_timeout.
        self._writer = threading.Lock()
        self._closed = False
        self._perms: PermissionGuard | None = None  # set once the file is known good
        self._users = 0
        self._wal = Path(f"{path}-wal")
        self._shm = Path(f"{path}-shm")
        self._own_dir = False
        _backends.add(self)
        self._open()

    # -- opening ------------------------------------------------------------------------
    def _fail(self, code: str, op: str, message: str) -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

    def _open(self) -> None:
        parent = self.path.parent
        try:
            if not parent.exists():
                try:
                    parent.mkdir(mode=DIR_MODE, parents=True)
                    self._own_dir = True
                except FileExistsError:  # another process (a second gateway) made it first
                    pass
            self._own_dir = self._own_dir or parent.name == "plugin-state"
            if self.path.is_dir():
                raise self._fail("OPEN_FAILED", "open", "the state path is a directory")
            if self.path.exists() and self.path.stat().st_size > 0:
                check_existing(self.path)  # never writes: a bad file stays exactly as it was
            else:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, FILE_MODE)
                os.close(fd)
        except OSError as exc:
            raise self._fail("OPEN_FAILED", "open", f"cannot prepare the state path ({exc.strerror})") from None
        conn = self._slot("open").conn
        with self._translate("open"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise self._fail(
                        "SCHEMA_UNSUPPORTED",
                        "open",
                        f"schema version {version} is newer than {SCHEMA_VERSION}, the newest this code knows",
                    )
                if version < SCHEMA_VERSION:
                    for statement in SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        files = ((self.path, FILE_MODE), (self._wal, FILE_MODE), (self._shm, FILE_MODE))
        targets = (((self.path.parent, DIR_MODE),) + files) if self._own_dir else files
        self._perms = PermissionGuard(self.path.parent, targets)
        self.fix_permissions("open")

    def _slot(self, op: str) -> _Slot:
        """This thread's connection (opened on first use) and the lock close() waits on."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None:
            return slot
        with self._translate(op, open_error=True):
            conn = sqlite3.connect(
                self.path,
                timeout=self.settings.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # only closed from another thread, by close()
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
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
        if _is_corruption(exc):
            code = "CORRUPT"
        elif open_error or op == "open":
            code = "OPEN_FAILED"
        elif op in ("lookup", "entries"):
            code = "READ_FAILED"
        else:
            code = "WRITE_FAILED"
        return self._fail(code, op, f"SQLite said: {exc}")

    @contextmanager
    def _translate(self, op: str, *, open_error: bool = False) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._driver_error(op, exc, open_error=open_error) from None

    def _query(self, op: str, statement: str, params: tuple[object, ...] | dict[str, object]) -> list[Any]:
        """Run one read statement on this thread's connection; close() waits for it.

        No contextmanager on purpose: a lookup is ~5 us and each generator layer costs ~1 us.
        """
        slot = self._slot(op)
        with slot.lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            try:
                return slot.conn.execute(statement, params).fetchall()
            except sqlite3.Error as exc:
                raise self._driver_error(op, exc) from None

    def _transact(self, op: str) -> _Transaction:
        """Run a write: BEGIN IMMEDIATE, ROLLBACK on any exception, COMMIT otherwise; then
        re-apply permissions. The thread's slot lock is held throughout, so close() waits."""
        return _Transaction(self, op)

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
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                return None
            finally:
                slot.batch = None
                if conn.in_transaction:  # an exception that is not a driver error
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
        if batch.spoiled:
            return None
        try:
            self.fix_permissions("register")
        except StateStoreError as exc:  # written, but each write alone would have raised this
            return [(None, exc)] * len(outcomes)
        return outcomes

    def fix_permissions(self, op: str) -> None:
        """Re-apply 0700/0600 on every write path: an outside chmod must not stick.

        `PermissionGuard` makes this a ~0.3 us check when nothing changed (state/_perms.py).
        """
        if self._perms is None:
            return
        try:
            self._perms.ensure()
        except OSError as exc:
            raise self._fail("WRITE_FAILED", op, f"cannot set permissions ({exc.strerror})") from None

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
        if_absent: bool,
    ) -> bool:
        op = "register_if_absent" if if_absent else "register"
        with self._transact(op) as conn:
            params = (plugin_id, namespace, key, now_ms, value, expires_at)
            if conn.execute(SQL_CLAIM if if_absent else SQL_UPSERT, params).rowcount == 0:
                return False
            rows, total = conn.execute(SQL_CAPS, params[:2]).fetchone()
            if rows > limits.max_entries or total > self.settings.plugin_max_live_rows:
                self._enforce_caps(conn, op, {"plugin": plugin_id, "ns": namespace, "key": key,
                                              "now": now_ms}, limits)
        return True

    def _enforce_caps(self, conn: sqlite3.Connection, op: str, args: dict[str, object], limits: Limits) -> None:
        """The slow path of a write that left a cap exceeded: drop expired rows, evict, or refuse."""
        rows = conn.execute(SQL_NS_ROWS, args).fetchone()[0]
        if rows > limits.max_entries:
            conn.execute(SQL_DROP_EXPIRED_NS, args)  # expired rows never count, so drop them first
            excess = conn.execute(SQL_NS_ROWS, args).fetchone()[0] - limits.max_entries
            if excess > 0:
                if limits.overflow == "reject-new":
                    raise self._fail(
                        "LIMIT_EXCEEDED", op,
                        f"namespace is full: max_entries is {limits.max_entries} live rows",
                    )
                conn.execute(SQL_EVICT, {**args, "excess": excess})
        ceiling = self.settings.plugin_max_live_rows
        total = conn.execute(SQL_PLUGIN_ROWS, args).fetchone()[0]
        if total <= ceiling:
            return
        conn.execute(SQL_DROP_EXPIRED_PLUGIN, args)
        excess = conn.execute(SQL_PLUGIN_ROWS, args).fetchone()[0] - ceiling
        if excess <= 0:
            return
        if limits.overflow != "reject-new":
            # Make room inside the namespace being written before giving up (no lock-up).
            excess -= conn.execute(SQL_EVICT, {**args, "excess": excess}).rowcount
        if excess > 0:
            raise self._fail(
                "LIMIT_EXCEEDED", op,
                f"plugin would hold {ceiling + excess} live rows across namespaces; "
                f"the per-plugin limit is {ceiling}",
            )

    def read(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None:
        rows = self._query("lookup", SQL_READ, (plugin_id, namespace, key, now_ms))
        return Row(key, *rows[0]) if rows else None

    def _delete_row(self, op: str, plugin_id: str, namespace: str, key: str, now_ms: int) -> Row | None:
        """Delete the row under `key` in one statement; return it if it was live."""
        with self._transact(op) as conn:
            row = conn.execute(SQL_TAKE, (plugin_id, namespace, key)).fetchone()
        if row is None or (row[2] is not None and row[2] <= now_ms):
            return None  # an expired row is gone either way; it was never visible
        return Row(key, *row)

    def take(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None:
        return self._delete_row("consume", plugin_id, namespace, key, now_ms)

    def remove(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> bool:
        return self._delete_row("delete", plugin_id, namespace, key, now_ms) is not None

    def remove_all(self, plugin_id: str, namespace: str, *, now_ms: int) -> int:
        args = {"plugin": plugin_id, "ns": namespace, "now": now_ms}
        with self._transact("clear") as conn:
            live = conn.execute(SQL_COUNT_LIVE, args).fetchone()[0]
            conn.execute(SQL_CLEAR, args)
        return int(live)

    def scan(self, plugin_id: str, namespace: str, *, now_ms: int) -> list[Row]:
        args = {"plugin": plugin_id, "ns": namespace, "now": now_ms}
        return [Row(*r) for r in self._query("entries", SQL_SCAN, args)]

    def sweep(self, *, now_ms: int) -> int:
        """Delete expired rows in batches, each its own short transaction.

        A batch dirties hundreds of pages, so SQLite's automatic checkpoint (at 1,000 WAL pages)
        would run inside almost every other COMMIT, fsyncs included, while our call still holds
        the thread's connection. Instead auto-checkpointing is off for this connection during
        the sweep and each batch is followed by a PASSIVE checkpoint, which other writers do not
        wait for: the write lock is held for the DELETE and the COMMIT only.
        """
        batch = self.settings.sweep_batch_rows
        removed = 0
        self._query("sweep", "PRAGMA wal_autocheckpoint = 0", ())
        try:
            while True:
                with self._transact("sweep") as conn:
                    n = conn.execute(SQL_SWEEP, {"now": now_ms, "batch": batch}).rowcount
                removed += n
                self._query("sweep", "PRAGMA wal_checkpoint(PASSIVE)", ())
                if n < batch:
                    return removed
        finally:
            self._query("sweep", f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}", ())

    def checkpoint(self, op: str = "close") -> None:
        slot = self._slot(op)
        with slot.lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            with self._translate(op):
                slot.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self.fix_permissions(op)

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
                with self._translate("close"):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                self.fix_permissions("close")
        finally:
            for slot in slots:
                slot.conn.close()
                slot.lock.release()
            if self._perms is not None:
                self._perms.close()
            self._local = threading.local()
        return True


    def _forget_parent(self) -> None:
        """In a forked child: the parent's connections must never be used (or closed) here.

        Run by an at-fork hook rather than a getpid() check per call: getpid is a real system
        call, about 1 us, a sixth of a lookup.
        """
        self._local, self._slots, self._lock = threading.local(), [], threading.Lock()
        self._writer = threading.Lock()
        if self._perms is not None:
            self._perms.after_fork()


_backends: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_backends):
        backend._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Transaction:
    """`SQLiteBackend._transact` as a plain context manager: every write runs through it, and a
    generator-based one costs ~0.7 us more per write (2% of a register)."""

    __slots__ = ("backend", "op", "slot", "batch")

    def __init__(self, backend: SQLiteBackend, op: str) -> None:
        self.backend, self.op = backend, op
        self.slot = backend._slot(op)
        self.batch = self.slot.batch  # inside `run_batch`: join its transaction

    def __enter__(self) -> sqlite3.Connection:
        backend, slot = self.backend, self.slot
        if self.batch is not None:
            return slot.conn
        slot.lock.acquire()
        backend._writer.acquire()
        try:
            if backend._closed:
                raise backend._fail("UNAVAILABLE", self.op, "the store is closed")
            slot.conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._unlock()
            if isinstance(exc, sqlite3.Error):
                raise backend._driver_error(self.op, exc) from None
            raise
        return slot.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        backend, conn = self.backend, self.slot.conn
        if self.batch is not None:  # run_batch commits, or rolls back and reruns one by one
            if exc_type is not None:
                self.batch.spoiled = True
                if isinstance(exc, sqlite3.Error):
                    raise backend._driver_error(self.op, exc) from None
            return
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    if conn.in_transaction:  # a failed COMMIT leaves the transaction open
                        conn.execute("ROLLBACK")
                    raise
                backend.fix_permissions(self.op)
                return
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            raise backend._driver_error(self.op, error) from None
        finally:
            self._unlock()
        if isinstance(exc, sqlite3.Error):
            raise backend._driver_error(self.op, exc) from None

    def _unlock(self) -> None:
        self.backend._writer.release()
        self.slot.lock.release()


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


def check_existing(path: Path) -> None:
    """Refuse a file that is not a readable SQLite database of a known schema, read-only.

    Raises OPEN_FAILED (not SQLite), CORRUPT (damaged) or SCHEMA_UNSUPPORTED; the file, and its
    permissions, are left exactly as they were.
    """
    where = str(path)
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StateStoreError("OPEN_FAILED", "open", f"cannot read the state file ({exc.strerror})", path=where) from None
    if header != SQLITE_HEADER:
        raise StateStoreError("OPEN_FAILED", "open", "the file at the state path is not a SQLite database", path=where)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StateStoreError("OPEN_FAILED", "open", f"SQLite said: {exc}", path=where) from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as exc:
        code = "CORRUPT" if _is_corruption(exc) or "disk i/o" in str(exc).lower() else "OPEN_FAILED"
        raise StateStoreError(code, "open", f"SQLite said: {exc}", path=where) from None
    finally:
        conn.close()
    if result != "ok":
        raise StateStoreError("CORRUPT", "open", f"integrity check failed: {result}", path=where)
    if version > SCHEMA_VERSION:
        raise StateStoreError(
            "SCHEMA_UNSUPPORTED", "open",
            f"schema version {version} is newer than {SCHEMA_VERSION}, the newest this code knows",
            path=where,
        )


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
