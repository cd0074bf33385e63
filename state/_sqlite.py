"""The SQLite backend: the statements, one connection per thread, every write one BEGIN IMMEDIATE transaction
through `_transact` followed by the permission step (the file itself, its schema and rules: `_files`).

WAL lets readers run beside the one writer; BEGIN IMMEDIATE takes the write lock up front, so two processes
never deadlock upgrading a read lock; trigger-kept row counts make the max_entries check O(1)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._aio import outcome
from ._files import CORRUPTION, Modes, check_file, connect, migrate, prepare
from ._spec import Backend, Decode, Mode, NamespaceSpec, Row, StateStoreError, StoreSettings, Write

WAL_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's default, restored after a sweep
NO_CURSOR = (-(2**63), "")  # sorts before every (created_at, key)
T = TypeVar("T")

# -- statements -----------------------------------------------------------------------------
# Hot statements bind numbered parameters (a lookup ~10% cheaper than by name): ?1 plugin_id ?2 namespace
# ?3 key ?4 now_ms ?5 value ?6 expires_at ?7 new version ?8 max_entries (a MATCH: the expected version).
# The rest bind :plugin :ns :now.
LIVE = "(expires_at IS NULL OR expires_at > ?4)"
NS = "plugin_id = ?1 AND namespace = ?2"
ROW = f"FROM entries WHERE {NS} AND key = ?3"
SET = "value = ?5, created_at = ?4, expires_at = ?6, version = ?7"
COLUMNS = "value, created_at, expires_at, version"
SQL_UPSERT = f"""INSERT INTO entries (plugin_id, namespace, key, value, created_at, expires_at, version)
VALUES (?1, ?2, ?3, ?5, ?4, ?6, ?7) ON CONFLICT (plugin_id, namespace, key) DO UPDATE SET {SET}"""
CLAIMABLE = "WHERE entries.expires_at IS NOT NULL AND entries.expires_at <= ?4"  # a claim's atomic check
SQL_CLAIM = f"{SQL_UPSERT} {CLAIMABLE}"
SQL_NS_ROWS = f"SELECT row_count FROM namespace_rows WHERE {NS}"
# Below max_entries rows: the upsert or claim; at or over it nothing, the key being NULL, which OR IGNORE drops. (Not
# INSERT ... SELECT ... WHERE: for the count trigger SQLite stages that row in a temporary table, dearer than a count.)
_BELOW_CAP = f"""INSERT OR IGNORE INTO entries (plugin_id, namespace, key, value, created_at, expires_at, version)
VALUES (?1, ?2, CASE WHEN ({SQL_NS_ROWS}) >= ?8 THEN NULL ELSE ?3 END, ?5, ?4, ?6, ?7)
ON CONFLICT (plugin_id, namespace, key) DO UPDATE SET {SET}"""
SQL_BELOW_CAP = {Mode.UPSERT: _BELOW_CAP, Mode.CLAIM: f"{_BELOW_CAP} {CLAIMABLE}"}
SQL_MATCH = f"UPDATE entries SET {SET} WHERE {NS} AND key = ?3 AND version = ?8 AND {LIVE}"
SQL_READ = f"SELECT {COLUMNS} {ROW} AND {LIVE}"
# lookup_many binds each key to its own parameter (keys holding NUL would not survive json_each),
# padded with repeats to one of a few sizes, so the statement cache holds a handful of statements.
READ_MANY_SIZES = (1, 4, 16, 64, 256, 1_000)
SQL_READ_MANY = {
    n: f"SELECT key, {COLUMNS} FROM entries WHERE {NS} AND (expires_at IS NULL OR expires_at > ?3)"
    f" AND key IN ({', '.join(f'?{i}' for i in range(4, 4 + n))})"
    for n in READ_MANY_SIZES
}
SQL_DELETE = f"DELETE {ROW}"
SQL_TAKE = f"{SQL_DELETE} RETURNING {COLUMNS}"
# delete (?5 NULL: any row), delete_if (the live row of version ?5); RETURNING {LIVE} reads ?4 as NULL (3.40)
SQL_REMOVE = f"{SQL_DELETE} AND (?5 IS NULL OR (version = ?5 AND {LIVE})) RETURNING expires_at"
# The page after a cursor: the row-value comparison walks entries_by_order from the cursor on.
SQL_SCAN_PAGE = f"""SELECT key, {COLUMNS} FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND (created_at, key) > (:after_c, :after_k)
AND (expires_at IS NULL OR expires_at > :now) ORDER BY created_at, key LIMIT :limit"""
# Live rows = the trigger-kept count minus the expired rows (few: swept every 60 s): O(expired), not O(namespace).
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
# A namespace exactly at max_entries (the statement checks the count): one UPDATE takes over the row of its own
# key, else an expired one, else (evict-oldest) the oldest live one: an eviction and an insert for one write.
_TAKE_OVER = f"""UPDATE entries SET key = ?3, {SET} WHERE ({SQL_NS_ROWS}) = ?8 AND {NS} AND key = coalesce(
(SELECT key {ROW}), (SELECT key FROM entries INDEXED BY entries_by_expiry WHERE expires_at <= ?4 AND {NS} LIMIT 1)"""
SQL_TAKE_OVER = {"evict-oldest": f"{_TAKE_OVER}, ({OLDEST} LIMIT 1))", "reject-new": f"{_TAKE_OVER})"}
SQL_SWEEP = """DELETE FROM entries WHERE (plugin_id, namespace, key) IN (
    SELECT plugin_id, namespace, key FROM entries WHERE expires_at <= :now LIMIT :batch)"""


# -- the backend ------------------------------------------------------------------------------
class _Rollback(Exception):
    """A staged CLAIM or MATCH did not hold, or a call of a group commit failed: undo the transaction."""


@dataclass(slots=True, eq=False)
class _Slot:
    """One thread's connection, and the lock its calls hold so close() can wait for them."""

    conn: sqlite3.Connection
    lock: threading.Lock = field(default_factory=threading.Lock)
    batch: list[bool] | None = None  # [spoiled] while `run_batch` holds a transaction


# A lock wait that ran out: whose lock it was and what to do (a busy store cannot tell it from a stuck one).
LOCKED = " after busy_timeout_s: another process held the write lock (a second gateway on this state dir?); stop it"


class SQLiteBackend(Backend):
    """The keyed store's statements on one database file, for the `Database` that owns it."""

    kind = "sqlite"

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path, self.location, self.settings = path, str(path), settings
        self._pid = os.getpid()  # connections are used only by the process that opened them
        self._local, self._slots, self._closed = threading.local(), list[_Slot](), False
        # _lock guards _slots and _closed. _writer: one writer at a time in this process, woken the moment the
        # last commits; without it they collide on BEGIN IMMEDIATE, and the busy handler sleeps 1, 2, 5, ... ms.
        self._lock, self._writer = threading.Lock(), threading.Lock()
        self._modes = Modes()  # set once the file is known good
        self._full = set[tuple[str, str]]()  # namespaces whose last write found them at max_entries
        own_dir, doing = check_file(path, create=True), "write the pre-migration backup"
        try:
            self._transact("open", lambda conn: migrate(conn, path))
            self._modes, doing = Modes.of(path, own_dir), "set permissions"
            self._modes.ensure()
        except OSError as exc:
            raise self._fail("OPEN_FAILED", "open", f"cannot {doing} ({exc.strerror})") from None

    def _slot(self, op: str) -> _Slot:
        """This thread's connection, opened on first use; refused in a forked child (pid check)."""
        if self._pid != os.getpid():
            raise self._fail("UNAVAILABLE", op, "the store was opened by another process (before a fork)")
        if (slot := getattr(self._local, "slot", None)) is not None:
            return slot
        try:
            conn = connect(self.path, self.settings.busy_timeout_s)
        except sqlite3.Error as exc:
            raise self._driver_error(op, exc, open_error=True) from None
        with self._lock:
            if self._closed:
                conn.close()
                raise self._fail("UNAVAILABLE", op)
            self._slots.append(slot := _Slot(conn))
        self._local.slot = slot
        return slot

    def _driver_error(self, op: str, exc: sqlite3.Error, *, open_error: bool = False) -> StateStoreError:
        corrupt = any(w in str(exc).lower() for w in CORRUPTION)
        code = "CORRUPT" if corrupt else "OPEN_FAILED" if open_error else self._failed(op)
        return self._fail(code, op, f"SQLite said: {exc}{LOCKED if 'locked' in str(exc) else ''}")

    def _query(self, op: str, statement: str, params: tuple[object, ...] | dict[str, object] = ()) -> list[Any]:
        """Run one read; close() waits for it. In `run_batch` it reads the batch's transaction, its lock held."""
        slot = self._slot(op)
        with contextlib.nullcontext() if slot.batch is not None else slot.lock:
            if self._closed:
                raise self._fail("UNAVAILABLE", op)
            try:
                return slot.conn.execute(statement, params).fetchall()
            except sqlite3.Error as exc:
                raise self._driver_error(op, exc) from None

    def _transact(self, op: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(conn)` as one write: BEGIN IMMEDIATE, ROLLBACK if it raises, else COMMIT, then re-apply
        permissions; close() waits for it. In `run_batch` it joins the batch's transaction (a failure spoils it)."""
        slot = self._slot(op)
        conn = slot.conn
        try:
            if slot.batch is not None:
                try:
                    return work(conn)
                except BaseException:
                    slot.batch[0] = True
                    raise
            with slot.lock, self._writer:
                if self._closed:
                    raise self._fail("UNAVAILABLE", op)
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
        self._modes.after_commit(op)
        return result

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]] | None:
        """Run several writes of this thread in one transaction (group commit: a write costs about half); each
        call's (result, error). None, nothing written, if one failed in the transaction: rerun them alone."""
        slot = self._slot("register")

        def work(conn: sqlite3.Connection) -> list[tuple[Any, BaseException | None]]:
            slot.batch = spoiled = [False]
            outcomes = [outcome(call) for call in calls]  # never raises: each call's error is its outcome
            slot.batch = None
            if spoiled[0]:
                raise _Rollback
            return outcomes

        try:
            return self._transact("register", work)
        except (StateStoreError, _Rollback):  # closed, or BEGIN / COMMIT failed
            return None

    def fault(self) -> str | None:
        return self._modes.fault

    def reopened(self) -> None:
        prepare(self.path, create=False)
        self._modes.after_commit("open")

    # -- operations ---------------------------------------------------------------------
    def write(self, w: Write) -> bool:
        op = w.mode.value  # once: an Enum's value is a Python-level property
        return self._transact(op, lambda conn: self._apply(conn, op, w))

    def commit(self, writes: Sequence[Write]) -> bool:
        def work(conn: sqlite3.Connection) -> None:
            if not all(self._apply(conn, "commit", w) for w in writes):
                raise _Rollback

        with contextlib.suppress(_Rollback):
            self._transact("commit", work)
            return True
        return False

    def _apply(self, conn: sqlite3.Connection, op: str, w: Write) -> bool:
        """One write inside the caller's transaction, keeping the namespace's cap (rules 8, 9)."""
        spec, claim = w.spec, w.mode is Mode.CLAIM
        params = (spec.plugin_id, spec.namespace, w.key, w.now_ms, w.value, w.expires_at, w.version, spec.max_entries)
        if w.mode is Mode.DELETE:
            conn.execute(SQL_DELETE, params[:3])
            return True
        if w.mode is Mode.MATCH:  # replaces a live row in place: the row count cannot grow
            return conn.execute(SQL_MATCH, (*params[:7], w.expect)).rowcount > 0
        # One statement: below the cap the upsert, at it the take-over (SQL_BELOW_CAP, SQL_TAKE_OVER), each reading
        # the trigger-kept row count itself and writing nothing on the other side of the cap. The one this
        # namespace's last write needed goes first (`_full`, a guess: each checks the count in this transaction).
        full = params[:2] in self._full
        if not full and conn.execute(SQL_BELOW_CAP[w.mode], params).rowcount:
            return True
        if claim and conn.execute(SQL_READ, params[:4]).fetchone():
            return False  # a live row holds the key
        if conn.execute(SQL_TAKE_OVER[spec.overflow], params).rowcount:
            self._full.add(params[:2])
            return True
        self._full.discard(params[:2])
        if full and conn.execute(SQL_BELOW_CAP[w.mode], params).rowcount:
            return True
        excess = 1  # a full reject-new namespace with no row to take over
        if conn.execute(SQL_NS_ROWS, params[:2]).fetchone()[0] > spec.max_entries:
            conn.execute(SQL_CLAIM if claim else SQL_UPSERT, params[:7])  # no live row holds a claim's key
            excess = conn.execute(SQL_NS_ROWS, params[:2]).fetchone()[0] - spec.max_entries
            excess -= conn.execute(SQL_DROP_EXPIRED, params[:4]).rowcount
            if excess > 0 and spec.overflow == "evict-oldest":
                conn.execute(SQL_EVICT, (*params[:4], excess))
                return True
        if excess > 0:
            raise self._fail("LIMIT_EXCEEDED", op, f"namespace is full: max_entries is {spec.max_entries} live rows")
        return True

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
        op, params = "delete" if expect is None else "delete_if", (spec.plugin_id, spec.namespace, key, now_ms, expect)
        gone = self._transact(op, lambda c: c.execute(SQL_REMOVE, params).fetchall())
        return bool(gone) and (gone[0][0] is None or gone[0][0] > now_ms)

    def remove_all(self, spec: NamespaceSpec, now_ms: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            live = conn.execute(SQL_COUNT_LIVE, _named(spec, now_ms)).fetchone()[0]
            conn.execute(SQL_CLEAR, _named(spec, now_ms))
            return int(live)

        return self._transact("clear", work)

    def scan(self, spec: NamespaceSpec, now_ms: int, limit: int | None, after: tuple[int, str] | None) -> list[Row]:
        after_c, after_k = after or NO_CURSOR
        args = _named(spec, now_ms, after_c=after_c, after_k=after_k, limit=limit or -1)
        return [Row(*r) for r in self._query("entries", SQL_SCAN_PAGE, args)]

    def count(self, spec: NamespaceSpec, now_ms: int) -> int:
        return int(self._query("count", SQL_COUNT_LIVE, _named(spec, now_ms))[0][0])

    def sweep(self, now_ms: int) -> int:
        """Delete expired rows in batches of short transactions; the automatic checkpoint (fsyncs included) would
        run in almost every one, under the write lock: it is off meanwhile, a PASSIVE one follows each batch."""
        args, removed, n = {"now": now_ms, "batch": self.settings.sweep_batch_rows}, 0, self.settings.sweep_batch_rows
        self._query("sweep", "PRAGMA wal_autocheckpoint = 0")
        try:
            while n == self.settings.sweep_batch_rows:  # a short batch: nothing expired is left
                n = self._transact("sweep", lambda conn: int(conn.execute(SQL_SWEEP, args).rowcount))
                removed += n
                self._query("sweep", "PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._query("sweep", f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        return removed

    def checkpoint(self, op: str = "close") -> None:
        self._query(op, "PRAGMA wal_checkpoint(TRUNCATE)")
        self._modes.after_commit(op)

    def schema_version(self) -> int:
        return int(self._query("probe", "PRAGMA user_version")[0][0])

    def close(self) -> None:
        """Let running calls finish, checkpoint, close every connection; later calls: UNAVAILABLE."""
        with self._lock:
            self._closed, slots, self._slots = True, self._slots, []
        for slot in slots:
            slot.lock.acquire()
        try:
            if slots:  # any connection will do: every lock is held, so none is in a call
                try:
                    slots[0].conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as exc:
                    raise self._driver_error("close", exc) from None
                self._modes.after_commit("close")
        finally:
            for slot in slots:
                slot.conn.close()
                slot.lock.release()
            self._modes.close()
            self._local = threading.local()


def _named(spec: NamespaceSpec, now_ms: int, **more: object) -> dict[str, object]:
    return {"plugin": spec.plugin_id, "ns": spec.namespace, "now": now_ms, **more}
