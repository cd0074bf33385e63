"""The SQLite backend: one file, one connection per thread, every write one BEGIN IMMEDIATE
transaction through `_transact`, and the filesystem rules.

WAL lets readers run beside the one writer; BEGIN IMMEDIATE takes the write lock up front, so two
processes never deadlock upgrading a read lock; trigger-kept row counts make the max_entries check
O(1). Files are never reached through a symlink nor adopted from another uid; what the store
creates is private whatever the umask, and modes are re-applied after every write.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._spec import SCHEMA_VERSION, Decode, Mode, NamespaceSpec, Row, StateStoreError, StoreSettings, Write

DIR_MODE, FILE_MODE = 0o700, 0o600
SIDE_FILES = ("-wal", "-shm")
SQLITE_HEADER = b"SQLite format 3\x00"
WAL_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's default, restored after a sweep
WAL_RETRY_S = 0.005  # pause between attempts to switch a brand-new database to WAL
READ_OPS = frozenset({"lookup", "lookup_many", "entries", "count"})
NO_CURSOR = (-(2**63), "")  # sorts before every (created_at, key)
T = TypeVar("T")
log = logging.getLogger("chatstate.state")

# -- schema ---------------------------------------------------------------------------------
SCHEMA_V1 = (
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
    # No (plugin_id, namespace, expires_at) index: every register moves a row in each index, and
    # a third one cost ~27% of a write's CPU (benchmarks/store_bench.py).
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
# v2: a row version, new (random 63-bit) on every write; 0 only before a v1 file is migrated.
ADD_VERSION = "ALTER TABLE entries ADD COLUMN version INTEGER NOT NULL DEFAULT 0"
# random() >> 1 is in [-2^62, 2^62): abs() + 1 is never 0 and never overflows.
SCHEMA = (*SCHEMA_V1, ADD_VERSION)  # a new file: v1's tables plus the version column
MIGRATIONS = {1: (ADD_VERSION, "UPDATE entries SET version = abs(random() >> 1) + 1")}  # N -> N + 1

# -- statements -----------------------------------------------------------------------------
# The hot statements bind a tuple to numbered parameters (about 10% of a lookup cheaper than a
# dict): ?1 plugin_id ?2 namespace ?3 key ?4 now_ms ?5 value ?6 expires_at ?7 the new version
# ?8 the version a compare_and_set expects. The rest bind :plugin :ns :now by name.
LIVE = "(expires_at IS NULL OR expires_at > ?4)"
NS = "plugin_id = ?1 AND namespace = ?2"
ROW = f"FROM entries WHERE {NS} AND key = ?3"
SET = "value = ?5, created_at = ?4, expires_at = ?6, version = ?7"
COLUMNS = "value, created_at, expires_at, version"
SQL_UPSERT = f"""INSERT INTO entries (plugin_id, namespace, key, value, created_at, expires_at, version)
VALUES (?1, ?2, ?3, ?5, ?4, ?6, ?7) ON CONFLICT (plugin_id, namespace, key) DO UPDATE SET {SET}"""
# A claim overwrites only an expired row: the conflict clause is the atomic check.
SQL_CLAIM = f"{SQL_UPSERT} WHERE entries.expires_at IS NOT NULL AND entries.expires_at <= ?4"
SQL_MATCH = f"UPDATE entries SET {SET} WHERE {NS} AND key = ?3 AND version = ?8 AND {LIVE}"
SQL_READ = f"SELECT {COLUMNS} {ROW} AND {LIVE}"
# lookup_many binds its keys one per parameter (a JSON array through json_each would lose keys
# holding NUL), padded with repeats of a key to one of a few sizes, so the statement cache holds
# a handful of statements, not one per batch size.
READ_MANY_SIZES = (1, 4, 16, 64, 256, 1_000)
SQL_READ_MANY = {
    n: f"SELECT key, {COLUMNS} FROM entries WHERE {NS} AND (expires_at IS NULL OR expires_at > ?3)"
    f" AND key IN ({', '.join(f'?{i}' for i in range(4, 4 + n))})"
    for n in READ_MANY_SIZES
}
SQL_DELETE = f"DELETE {ROW}"
SQL_TAKE = f"{SQL_DELETE} RETURNING {COLUMNS}"
# delete (?5 NULL: any row; True if it was live) and delete_if (only the live row of version ?5)
SQL_REMOVE = f"{SQL_DELETE} AND (?5 IS NULL OR (version = ?5 AND {LIVE})) RETURNING expires_at"
SQL_NS_ROWS = f"SELECT row_count FROM namespace_rows WHERE {NS}"
# The page after a cursor: the row-value comparison walks entries_by_order from the cursor on.
SQL_SCAN_PAGE = f"""SELECT key, {COLUMNS} FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND (created_at, key) > (:after_c, :after_k)
AND (expires_at IS NULL OR expires_at > :now) ORDER BY created_at, key LIMIT :limit"""
# Live rows = the trigger-kept row count minus the namespace's expired rows (few: swept every
# 60 s, found by the expiry index): O(expired), not O(namespace).
SQL_COUNT_LIVE = """SELECT coalesce((SELECT row_count FROM namespace_rows WHERE plugin_id = :plugin AND namespace = :ns), 0)
    - (SELECT count(*) FROM entries INDEXED BY entries_by_expiry
       WHERE expires_at <= :now AND plugin_id = :plugin AND namespace = :ns)"""
SQL_CLEAR = "DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns"
# Over max_entries only: walking the (few) expired rows beats scanning the namespace by key.
SQL_DROP_EXPIRED = f"DELETE FROM entries INDEXED BY entries_by_expiry WHERE expires_at <= ?4 AND {NS}"
# The oldest live rows by (created_at, key): one seek into entries_by_order, never the key ?3.
OLDEST = f"""SELECT key FROM entries INDEXED BY entries_by_order WHERE {NS} AND {LIVE} AND key != ?3
ORDER BY created_at, key"""
SQL_EVICT = f"DELETE FROM entries WHERE {NS} AND key IN ({OLDEST} LIMIT ?5)"
# A namespace exactly at max_entries: a write takes over, in one UPDATE, the row of its own key,
# else an expired one (they never count), else (evict-oldest) the oldest live one: an eviction
# and an insert for the work of one write.
_TAKE_OVER = f"""UPDATE entries SET key = ?3, {SET} WHERE {NS} AND key = coalesce((SELECT key {ROW}),
(SELECT key FROM entries INDEXED BY entries_by_expiry WHERE expires_at <= ?4 AND {NS} LIMIT 1)"""
SQL_TAKE_OVER = {"evict-oldest": f"{_TAKE_OVER}, ({OLDEST} LIMIT 1))", "reject-new": f"{_TAKE_OVER})"}
SQL_SWEEP = """DELETE FROM entries WHERE (plugin_id, namespace, key) IN (
    SELECT plugin_id, namespace, key FROM entries WHERE expires_at <= :now LIMIT :batch)"""


# -- files: never follow, never adopt ---------------------------------------------------------
def check_path(path: Path, is_dir: bool, op: str = "open") -> os.stat_result | None:
    """Refuse a symlink (dangling or not), the wrong kind of file or one of another uid (OPEN_FAILED,
    saying what to do); None if `path` is missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    what = "state directory" if is_dir else "state file"
    if stat.S_ISLNK(st.st_mode):
        fix = (
            "point the state dir at the real directory"
            if is_dir
            else "remove the link and point the state dir at where the file really is"
        )
        problem = f"the {what} is a symlink, which is never followed; {fix}"
    elif is_dir and not stat.S_ISDIR(st.st_mode):
        problem = "a state directory path is not a directory; move that file away"
    elif not is_dir and not stat.S_ISREG(st.st_mode):
        problem = "the state path is not a regular file; move it away"
    elif st.st_uid != os.geteuid():
        fix = "use a state dir this user owns (or chown it)" if is_dir else "run as its owner (or chown it)"
        problem = f"the {what} is owned by uid {st.st_uid}, not this user ({os.geteuid()}); {fix}"
    else:
        return st
    raise StateStoreError("OPEN_FAILED", op, problem, path=str(path))


def prepare_dirs(db: Path, *, create: bool = True, op: str = "open") -> bool:
    """Check (and with `create`, make 0700) the database's directory and the state dir above
    `plugin-state`, top down, so a symlinked state dir is refused before anything is made in it;
    True if any was made. Raises OPEN_FAILED, OSError."""
    made = False
    for d in (db.parent.parent, db.parent) if db.parent.name == "plugin-state" else (db.parent,):
        if check_path(d, True, op) is None and create:
            missing = [p for p in (d, *d.parents) if not os.path.lexists(p)]
            os.makedirs(d, DIR_MODE, exist_ok=True)
            for p in missing:
                os.chmod(p, DIR_MODE)  # makedirs' mode is masked by the umask
            made = made or bool(missing)
            check_path(d, True, op)
    return made


def prepare(db: Path, *, create: bool = True, op: str = "open") -> tuple[bool, bool]:
    """Check (and with `create`, make) the database's place. Returns (the directory is the store's
    own: made by it, or `plugin-state`; the file has content). Raises OPEN_FAILED."""
    try:
        made = prepare_dirs(db, create=create, op=op)
        for side in SIDE_FILES:
            check_path(Path(f"{db}{side}"), False, op)
        st = check_path(db, False, op)
        if st is None and create:
            fd = os.open(db, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask did to os.open's mode
            os.close(fd)
    except OSError as exc:
        doing = "prepare" if create else "check"
        raise StateStoreError(
            "OPEN_FAILED", op, f"cannot {doing} the state path ({exc.strerror})", path=str(db)
        ) from None
    return made or db.parent.name == "plugin-state", st is not None and st.st_size > 0


class _Modes:
    """Keep `targets` (path, mode) at their modes, cheaply: each is opened once (never through a
    symlink), checked by fstat and fchmod-ed only when wrong; a missing one (-wal, -shm) is tried
    again next time, one deleted or replaced since (no links left) opened afresh."""

    def __init__(self, targets: tuple[tuple[Path, int], ...]) -> None:
        self._targets, self._fds, self._lock = targets, dict[Path, int](), threading.Lock()

    def ensure(self) -> None:
        """Raises OSError if an fchmod fails."""
        with self._lock:
            for path, mode in self._targets:
                fd = self._fds.get(path)
                st = None if fd is None else os.fstat(fd)
                if fd is None or st is None or st.st_nlink == 0:
                    if fd is not None:
                        os.close(self._fds.pop(path))
                    try:
                        fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue
                    st = os.fstat(fd)
                if stat.S_IMODE(st.st_mode) != mode:
                    os.fchmod(fd, mode)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


# -- the read-only check of an existing file --------------------------------------------------
def is_corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def newer_schema(version: int, op: str, where: str) -> StateStoreError:
    fix = "upgrade chatstate, or restore the backup made before the upgrade"
    message = f"the file has schema version {version}; this code reads versions up to {SCHEMA_VERSION}: {fix}"
    return StateStoreError("SCHEMA_UNSUPPORTED", op, message, path=where)


# Files this process checked, by path, as they looked right after the check. The gateway checks
# the file before it binds and again as it opens; at 1M rows a quick_check reads ~0.2 s, so the
# second is skipped when neither the file nor its WAL changed. get/set are atomic under the GIL.
_checked: dict[str, tuple[object, ...]] = {}


def _fingerprint(path: Path) -> tuple[object, ...] | None:
    """The file and its WAL as they look now (an empty WAL holds nothing: a read-only check may
    create one), or None if that cannot be told."""
    try:
        stats = [os.stat(p) if os.path.lexists(p) else None for p in (path, Path(f"{path}-wal"))]
    except OSError:
        return None
    return tuple(
        (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) if s and s.st_size else None for s in stats
    )


def _check_file(path: Path, where: str) -> None:
    """Refuse, read-only, a file that is not SQLite (OPEN_FAILED), is damaged (CORRUPT) or newer
    (SCHEMA_UNSUPPORTED)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StateStoreError(
            "OPEN_FAILED", "open", f"cannot read the state file ({exc.strerror})", path=where
        ) from None
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
        code = "CORRUPT" if is_corruption(exc) or "disk i/o" in str(exc).lower() else "OPEN_FAILED"
        raise StateStoreError(code, "open", f"SQLite said: {exc}", path=where) from None
    finally:
        conn.close()
    if result != "ok":
        raise StateStoreError("CORRUPT", "open", f"integrity check failed: {result}", path=where)
    if version > SCHEMA_VERSION:
        raise newer_schema(version, "open", where)


def check_database(path: Path, *, create: bool = False) -> bool:
    """Check the database's place (and make it when `create`), then `_check_file` a file with
    content, unless this process checked it and it is unchanged since. Returns whether the
    directory is the store's own (see `prepare`). Raises OPEN_FAILED, CORRUPT, SCHEMA_UNSUPPORTED."""
    where = str(path)
    if path.is_dir() and not path.is_symlink():
        raise StateStoreError("OPEN_FAILED", "open", "the state path is a directory", path=where)
    own_dir, has_content = prepare(path, create=create)
    before = _fingerprint(path) if has_content else None
    if has_content and (before is None or _checked.get(where) != before):
        _check_file(path, where)  # never writes: a bad file stays exactly as it was
        if before is not None and _fingerprint(path) == before:  # unchanged while it was read
            _checked[where] = before
    return own_dir


def backup(source: Path, target: Path) -> None:
    """Copy the database with SQLite's backup API from a read-only connection (WAL lets it read
    beside the caller's write lock) into a fresh 0600 file, then move it into place."""
    partial = Path(f"{target}.partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE))
    os.chmod(partial, FILE_MODE)  # whatever the umask
    src, dst = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True), sqlite3.connect(partial)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.replace(partial, target)


# -- the backend ------------------------------------------------------------------------------
class _ConditionFailed(Exception):
    """Roll back: a staged CLAIM or MATCH did not hold, or a call of a group commit failed."""


class _Slot:
    """One thread's connection, and the lock its calls hold so close() can wait for them."""

    __slots__ = ("conn", "lock", "batch")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.lock = conn, threading.Lock()
        self.batch: list[bool] | None = None  # set while `run_batch` holds a transaction: [spoiled]


def _outcome(call: Callable[[], Any]) -> tuple[Any, Exception | None]:
    try:
        return call(), None
    except Exception as exc:  # handed to that call's caller, not swallowed
        return None, exc


class SQLiteBackend:
    """The keyed store's statements on one database file, for the `Database` that owns it."""

    kind = "sqlite"
    one_writer = True  # the async twin sends this database's writes to one thread

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path, self.location, self.settings = path, str(path), settings
        self._uri = f"{path.as_uri()}?nofollow=1"  # SQLite refuses to open a symlink itself too
        self._pid = os.getpid()  # connections are used only by the process that opened them
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()  # guards _slots and _closed
        # One writer at a time in this process, woken the moment the last commits: without it they
        # collide on BEGIN IMMEDIATE and SQLite's busy handler sleeps 1, 2, 5, ... ms between tries.
        self._writer = threading.Lock()
        self._closed = False
        self._modes: _Modes | None = None  # set once the file is known good
        self._fault: str | None = None  # the last post-commit permission failure, until one succeeds
        own_dir = check_database(path, create=True)
        try:
            self._transact("open", self._migrate)
        except OSError as exc:  # the backup before a migration could not be written
            raise self._fail("OPEN_FAILED", "open", f"cannot write the pre-migration backup ({exc.strerror})") from None
        files = tuple((Path(f"{path}{s}"), FILE_MODE) for s in ("", *SIDE_FILES))
        self._modes = _Modes(((path.parent, DIR_MODE), *files) if own_dir else files)
        try:
            self._modes.ensure()
        except OSError as exc:
            raise self._fail("OPEN_FAILED", "open", f"cannot set permissions ({exc.strerror})") from None

    def _fail(self, code: str, op: str, message: str) -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION inside the open's transaction: a new file gets the
        schema; an older one is copied to `<file>.v<N>.bak` (0600) first, and a failed step leaves
        the file untouched. A newer one is SCHEMA_UNSUPPORTED."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise newer_schema(version, "open", self.location)
        if version == SCHEMA_VERSION:
            return
        if version:
            backup(self.path, Path(f"{self.path}.v{version}.bak"))
        steps = [SCHEMA] if version == 0 else [MIGRATIONS[n] for n in range(version, SCHEMA_VERSION)]
        for statement in itertools.chain.from_iterable(steps):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _slot(self, op: str) -> _Slot:
        """This thread's connection, opened on first use; refused in a forked child (pid check)."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if self._pid != os.getpid():
            raise self._fail("UNAVAILABLE", op, "the store was opened by another process (before a fork)")
        if slot is not None:
            return slot
        try:  # isolation_level None: BEGIN IMMEDIATE / COMMIT are ours; close() closes from any thread
            conn = sqlite3.connect(
                self._uri, uri=True, timeout=self.settings.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            # SQLite does not call the busy handler for this, so processes creating the database
            # together got "database is locked" at once: retry for up to busy_timeout_s.
            deadline = time.monotonic() + self.settings.busy_timeout_s
            while True:
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(WAL_RETRY_S)
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

    def _driver_error(self, op: str, exc: sqlite3.Error, *, open_error: bool = False) -> StateStoreError:
        code = "READ_FAILED" if op in READ_OPS else "WRITE_FAILED"
        code = "CORRUPT" if is_corruption(exc) else "OPEN_FAILED" if open_error or op == "open" else code
        return self._fail(code, op, f"SQLite said: {exc}")

    def _query(self, op: str, statement: str, params: tuple[object, ...] | dict[str, object] = ()) -> list[Any]:
        """Run one read on this thread's connection; close() waits for it. Inside `run_batch` it
        reads the batch's open transaction, whose lock this thread holds already."""
        slot = self._slot(op)
        with contextlib.nullcontext() if slot.batch is not None else slot.lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op, "the store is closed")
            try:
                return slot.conn.execute(statement, params).fetchall()
            except sqlite3.Error as exc:
                raise self._driver_error(op, exc) from None

    def _transact(self, op: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(conn)` as one write: BEGIN IMMEDIATE, ROLLBACK if it raises, else COMMIT, then
        re-apply permissions; the slot's lock is held throughout, so close() waits. Inside
        `run_batch` it joins the batch's transaction, and a failure spoils the batch."""
        slot = self._slot(op)
        if slot.batch is not None:
            try:
                return work(slot.conn)
            except BaseException as exc:
                slot.batch[0] = True
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
        """Run several writes of this thread in one transaction (group commit: a write costs about
        half); every call's (result, error) after the COMMIT. None, with nothing written, if a call
        failed in the transaction (not in validation) or BEGIN / COMMIT did: rerun them alone."""
        slot = self._slot("register")

        def work(conn: sqlite3.Connection) -> list[tuple[Any, Exception | None]]:
            slot.batch = spoiled = [False]
            try:
                outcomes = [_outcome(call) for call in calls]
            finally:
                slot.batch = None
            if spoiled[0]:
                raise _ConditionFailed
            return outcomes

        try:
            return self._transact("register", work)
        except (StateStoreError, _ConditionFailed):  # closed, or BEGIN / COMMIT failed
            return None

    def _after_commit(self, op: str) -> None:
        """Re-apply 0700/0600 after every write, so an outside chmod does not stick. Best effort:
        failing a committed write would orphan a claim, lose a consumed value or make a retry
        answer twice; a failure is logged once and shown by `fault()` until one succeeds."""
        if self._modes is None:
            return
        try:
            self._modes.ensure()
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

    def reopened(self) -> None:
        """Another store joins: check the paths again (OPEN_FAILED) and re-apply modes."""
        prepare(self.path, create=False)
        self._after_commit("open")

    # -- operations ---------------------------------------------------------------------
    def write(self, w: Write) -> bool:
        return self._transact(w.mode.value, lambda conn: self._apply(conn, w.mode.value, w))

    def commit(self, writes: Sequence[Write]) -> bool:
        def work(conn: sqlite3.Connection) -> None:
            if not all(self._apply(conn, "commit", w) for w in writes):
                raise _ConditionFailed  # rolls the whole transaction back

        with contextlib.suppress(_ConditionFailed):
            self._transact("commit", work)
            return True
        return False

    def _apply(self, conn: sqlite3.Connection, op: str, w: Write) -> bool:
        """One write inside the caller's transaction, keeping the namespace's cap (rules 8, 9)."""
        spec, claim = w.spec, w.mode is Mode.CLAIM
        params = (spec.plugin_id, spec.namespace, w.key, w.now_ms, w.value, w.expires_at, w.version)
        if w.mode is Mode.DELETE:
            conn.execute(SQL_DELETE, params[:3])
            return True
        if w.mode is Mode.MATCH:  # replaces a live row in place: the row count cannot grow
            return conn.execute(SQL_MATCH, (*params, w.expect)).rowcount > 0
        counted = conn.execute(SQL_NS_ROWS, params[:2]).fetchone()
        rows = counted[0] if counted else 0
        if rows == spec.max_entries:  # exactly full, the usual case of a capped namespace
            if claim and conn.execute(SQL_READ, params[:4]).fetchone():
                return False  # a live row holds the key
            if conn.execute(SQL_TAKE_OVER[spec.overflow], params).rowcount:
                return True
            if spec.overflow == "reject-new":
                raise self._full(op, spec)
            return False
        # Room for one more; or over the cap (max_entries lowered since): write, drop the
        # namespace's expired rows, then evict.
        if conn.execute(SQL_CLAIM if claim else SQL_UPSERT, params).rowcount == 0:
            return False
        if rows > spec.max_entries:
            excess = conn.execute(SQL_NS_ROWS, params[:2]).fetchone()[0] - spec.max_entries
            excess -= conn.execute(SQL_DROP_EXPIRED, params[:4]).rowcount
            if excess > 0 and spec.overflow == "reject-new":
                raise self._full(op, spec)
            if excess > 0:
                conn.execute(SQL_EVICT, (*params[:4], excess))
        return True

    def _full(self, op: str, spec: NamespaceSpec) -> StateStoreError:
        return self._fail("LIMIT_EXCEEDED", op, f"namespace is full: max_entries is {spec.max_entries} live rows")

    def read(self, spec: NamespaceSpec, key: str, now_ms: int) -> Row | None:
        rows = self._query("lookup", SQL_READ, (spec.plugin_id, spec.namespace, key, now_ms))
        return Row(key, *rows[0]) if rows else None

    def read_many(self, spec: NamespaceSpec, keys: Sequence[str], now_ms: int) -> list[Row]:
        size = next(n for n in READ_MANY_SIZES if n >= len(keys))
        params = (spec.plugin_id, spec.namespace, now_ms, *keys, *[keys[0]] * (size - len(keys)))
        return [Row(*r) for r in self._query("lookup_many", SQL_READ_MANY[size], params)]

    def take(self, spec: NamespaceSpec, key: str, now_ms: int, decode: Decode) -> Any:
        def work(conn: sqlite3.Connection) -> Any:
            row = conn.execute(SQL_TAKE, (spec.plugin_id, spec.namespace, key)).fetchone()
            if row is None or (row[2] is not None and row[2] <= now_ms):
                return None  # an expired row is gone either way; it was never visible
            return decode(Row(key, *row))  # unreadable JSON raises: the DELETE is rolled back

        return self._transact("consume", work)

    def remove(self, spec: NamespaceSpec, key: str, now_ms: int, expect: int | None = None) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(SQL_REMOVE, (spec.plugin_id, spec.namespace, key, now_ms, expect)).fetchone()
            return row is not None and (row[0] is None or row[0] > now_ms)

        return self._transact("delete" if expect is None else "delete_if", work)

    def remove_all(self, spec: NamespaceSpec, now_ms: int) -> int:
        args = {"plugin": spec.plugin_id, "ns": spec.namespace, "now": now_ms}

        def work(conn: sqlite3.Connection) -> int:
            live = conn.execute(SQL_COUNT_LIVE, args).fetchone()[0]
            conn.execute(SQL_CLEAR, args)
            return int(live)

        return self._transact("clear", work)

    def scan(self, spec: NamespaceSpec, now_ms: int, limit: int | None, after: tuple[int, str] | None) -> list[Row]:
        after_c, after_k = after or NO_CURSOR
        args = {"plugin": spec.plugin_id, "ns": spec.namespace, "now": now_ms, "after_c": after_c, "after_k": after_k}
        return [Row(*r) for r in self._query("entries", SQL_SCAN_PAGE, {**args, "limit": limit or -1})]

    def count(self, spec: NamespaceSpec, now_ms: int) -> int:
        args = {"plugin": spec.plugin_id, "ns": spec.namespace, "now": now_ms}
        return int(self._query("count", SQL_COUNT_LIVE, args)[0][0])

    def sweep(self, now_ms: int) -> int:
        """Delete expired rows in batches, each its own short transaction. A batch dirties hundreds
        of pages, so the automatic checkpoint (fsyncs included) would run in almost every COMMIT,
        under the write lock: it is off meanwhile, and a PASSIVE one follows each batch."""
        args = {"now": now_ms, "batch": self.settings.sweep_batch_rows}
        removed = 0
        self._query("sweep", "PRAGMA wal_autocheckpoint = 0")
        try:
            while True:
                n = self._transact("sweep", lambda conn: int(conn.execute(SQL_SWEEP, args).rowcount))
                removed += n
                self._query("sweep", "PRAGMA wal_checkpoint(PASSIVE)")
                if n < self.settings.sweep_batch_rows:
                    return removed
        finally:
            self._query("sweep", f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")

    def checkpoint(self, op: str = "close") -> None:
        self._query(op, "PRAGMA wal_checkpoint(TRUNCATE)")
        self._after_commit(op)

    def schema_version(self) -> int:
        return int(self._query("probe", "PRAGMA user_version")[0][0])

    def close(self) -> None:
        """Let running calls finish, checkpoint, close every connection; later calls: UNAVAILABLE."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        for slot in slots:
            slot.lock.acquire()
        try:
            if slots:  # any connection will do: every lock is held, so none is in a call
                try:
                    slots[0].conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as exc:
                    raise self._driver_error("close", exc) from None
                self._after_commit("close")
        finally:
            for slot in slots:
                slot.conn.close()
                slot.lock.release()
            if self._modes is not None:
                self._modes.close()
            self._local = threading.local()
