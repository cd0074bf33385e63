"""The SQLite backend: one file per state dir, one connection per thread, every write in one
BEGIN IMMEDIATE transaction through `_transact`.

Why this shape: WAL lets readers run beside the single writer; BEGIN IMMEDIATE takes the write
lock up front so two processes never deadlock upgrading a read lock; a per-namespace row count
kept by triggers makes the max-entries check O(1) instead of a count over the namespace.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._backend import Limits, Row
from ._errors import StateStoreError
from ._settings import SCHEMA_VERSION, StoreSettings

SQLITE_HEADER = b"SQLite format 3\x00"
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
    "CREATE INDEX IF NOT EXISTS entries_by_namespace_expiry ON entries (plugin_id, namespace, expires_at)",
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
SQL_UPSERT = """
INSERT INTO entries (plugin_id, namespace, key, value, created_at, expires_at)
VALUES (:plugin, :ns, :key, :value, :now, :expires)
ON CONFLICT (plugin_id, namespace, key) DO UPDATE SET
    value = excluded.value, created_at = excluded.created_at, expires_at = excluded.expires_at
"""
# A claim overwrites only a row that has expired: the conflict clause is the atomic check.
SQL_CLAIM = SQL_UPSERT + " WHERE entries.expires_at IS NOT NULL AND entries.expires_at <= :now"
SQL_READ = f"""SELECT key, value, created_at, expires_at FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND key = :key AND {LIVE}"""
SQL_TAKE = """DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND key = :key
RETURNING key, value, created_at, expires_at"""
SQL_SCAN = f"""SELECT key, value, created_at, expires_at FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND {LIVE} ORDER BY created_at, key"""
SQL_COUNT_LIVE = f"SELECT count(*) FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND {LIVE}"
SQL_CLEAR = "DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns"
SQL_NS_ROWS = "SELECT row_count FROM namespace_rows WHERE plugin_id = :plugin AND namespace = :ns"
SQL_PLUGIN_ROWS = "SELECT coalesce(sum(row_count), 0) FROM namespace_rows WHERE plugin_id = :plugin"
SQL_DROP_EXPIRED_NS = """DELETE FROM entries
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

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path = path
        self.location = str(path)
        self.settings = settings
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._closed = False
        self._users = 0
        self._wal = Path(f"{path}-wal")
        self._shm = Path(f"{path}-shm")
        self._own_dir = False
        self._pid = os.getpid()
        self._open()

    # -- opening ------------------------------------------------------------------------
    def _fail(self, code: str, op: str, message: str) -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

    def _open(self) -> None:
        parent = self.path.parent
        try:
            if not parent.exists():
                parent.mkdir(mode=DIR_MODE, parents=True)
                self._own_dir = True
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
        conn = self._conn("open")
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
        self.fix_permissions("open")

    def _conn(self, op: str) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # Forked: the parent's connections must never be used (or closed) here.
            self._pid, self._local, self._conns = os.getpid(), threading.local(), []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._translate(op, open_error=True):
            conn = sqlite3.connect(
                self.path,
                timeout=self.settings.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # only closed from another thread, by close()
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    # -- shared machinery ---------------------------------------------------------------
    @contextmanager
    def _translate(self, op: str, *, open_error: bool = False) -> Iterator[None]:
        """Turn driver errors into StateStoreError where they happen (diskcache's habit)."""
        try:
            yield
        except StateStoreError:
            raise
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                code = "CORRUPT"
            elif open_error or op == "open":
                code = "OPEN_FAILED"
            elif op in ("lookup", "entries"):
                code = "READ_FAILED"
            else:
                code = "WRITE_FAILED"
            raise self._fail(code, op, f"SQLite said: {exc}") from None

    @contextmanager
    def _using(self, op: str) -> Iterator[sqlite3.Connection]:
        """Count an operation in flight so close() can wait for it instead of pulling the rug."""
        with self._lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            self._active += 1
        try:
            yield self._conn(op)
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._idle.notify_all()

    @contextmanager
    def _transact(self, op: str) -> Iterator[sqlite3.Connection]:
        """Run a write: BEGIN IMMEDIATE, ROLLBACK on any exception, COMMIT otherwise."""
        with self._using(op) as conn, self._translate(op):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self.fix_permissions(op)

    def fix_permissions(self, op: str) -> None:
        """Re-apply 0700/0600 on every write path: an outside chmod must not stick."""
        try:
            if self._own_dir:
                os.chmod(self.path.parent, DIR_MODE)
            for p in (self.path, self._wal, self._shm):
                try:
                    os.chmod(p, FILE_MODE)
                except FileNotFoundError:
                    pass
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
        args = {"plugin": plugin_id, "ns": namespace, "key": key, "value": value,
                "now": now_ms, "expires": expires_at}
        with self._transact(op) as conn:
            if conn.execute(SQL_CLAIM if if_absent else SQL_UPSERT, args).rowcount == 0:
                return False
            self._enforce_caps(conn, op, args, limits)
        return True

    def _enforce_caps(self, conn: sqlite3.Connection, op: str, args: dict[str, object], limits: Limits) -> None:
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
        args = {"plugin": plugin_id, "ns": namespace, "key": key, "now": now_ms}
        with self._using("lookup") as conn, self._translate("lookup"):
            row = conn.execute(SQL_READ, args).fetchone()
        return Row(*row) if row else None

    def take(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None:
        args = {"plugin": plugin_id, "ns": namespace, "key": key, "now": now_ms}
        with self._transact("consume") as conn:
            row = conn.execute(SQL_TAKE, args).fetchone()
        if row is None or (row[3] is not None and row[3] <= now_ms):
            return None  # an expired row is gone either way; it was never visible
        return Row(*row)

    def remove(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> bool:
        args = {"plugin": plugin_id, "ns": namespace, "key": key, "now": now_ms}
        with self._transact("delete") as conn:
            row = conn.execute(SQL_TAKE, args).fetchone()
        return row is not None and (row[3] is None or row[3] > now_ms)

    def remove_all(self, plugin_id: str, namespace: str, *, now_ms: int) -> int:
        args = {"plugin": plugin_id, "ns": namespace, "now": now_ms}
        with self._transact("clear") as conn:
            live = conn.execute(SQL_COUNT_LIVE, args).fetchone()[0]
            conn.execute(SQL_CLEAR, args)
        return int(live)

    def scan(self, plugin_id: str, namespace: str, *, now_ms: int) -> list[Row]:
        args = {"plugin": plugin_id, "ns": namespace, "now": now_ms}
        with self._using("entries") as conn, self._translate("entries"):
            return [Row(*r) for r in conn.execute(SQL_SCAN, args)]

    def sweep(self, *, now_ms: int) -> int:
        """Delete expired rows in batches, each its own short transaction."""
        batch = self.settings.sweep_batch_rows
        removed = 0
        while True:
            with self._transact("sweep") as conn:
                n = conn.execute(SQL_SWEEP, {"now": now_ms, "batch": batch}).rowcount
            removed += n
            if n < batch:
                return removed

    def checkpoint(self, op: str = "close") -> None:
        with self._using(op) as conn, self._translate(op):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self.fix_permissions(op)

    def schema_version(self) -> int:
        with self._using("probe") as conn, self._translate("probe"):
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

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
        with self._lock:
            self._closed = True  # new calls now fail with UNAVAILABLE ...
            while self._active:  # ... and calls already running finish first
                self._idle.wait()
            conns, self._conns = self._conns, []
        try:
            conn = getattr(self._local, "conn", None) or (conns[0] if conns else None)
            if conn is not None:
                with self._translate("close"):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                self.fix_permissions("close")
        finally:
            for c in conns:
                c.close()
            self._local = threading.local()
        return True


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
