"""SQLite connections and transactions for one database file: one connection per thread,
one in-process writer lock, `_transact` for a single write, `run_batch` for group commit, the
best-effort permission step after each COMMIT, and closing that waits for calls in flight.

Split from state/_sqlite.py (which holds the file's statements) so each module has one job.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import _sqlite_schema as sql
from ._backend import Holders
from ._errors import StateStoreError
from ._perms import PermissionGuard
from ._settings import StoreSettings

WAL_RETRY_S = 0.005  # pause between attempts to switch a brand-new database to WAL
READ_OPS = frozenset({"lookup", "lookup_many", "entries", "count"})
T = TypeVar("T")
log = logging.getLogger("chatstate.state")


class Connections(Holders):
    """One database file as seen by this process; share it between stores via `acquire`."""

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path = path
        self.location = str(path)
        self.settings = settings
        self._uri = f"{path.as_uri()}?nofollow=1"  # SQLite refuses to open a symlink itself too
        self._local = _ThreadSlot()
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

    def _fail(self, code: str, op: str, message: str) -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

    def _slot(self, op: str) -> _Slot:
        """This thread's connection (opened on first use) and the lock close() waits on."""
        slot: _Slot | None = self._local.slot
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

    # -- closing (the users are counted by Holders, state/_backend.py) ---------------------
    def _stop_calls(self) -> list[_Slot]:
        slots, self._slots = self._slots, []
        return slots

    def _close_now(self, slots: list[_Slot]) -> None:
        """Let calls already running finish (each holds its slot), checkpoint, close."""
        for slot in slots:
            slot.lock.acquire()
        try:
            mine: _Slot | None = self._local.slot
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
            self._local = _ThreadSlot()

    def abandon(self) -> None:
        """In a forked child (state/_registry.py's fork rule): closed here, calls raise
        UNAVAILABLE; the parent's connections and inotify watch are kept, never used or closed
        (closing a SQLite connection inherited across fork can disturb the parent's locks)."""
        _inherited.append((self._slots, self._perms))
        self._local, self._slots, self._lock = _ThreadSlot(), [], threading.Lock()
        self._writer = threading.Lock()
        self._perms = None
        self._closed = True


_inherited: list[object] = []  # what a forked child inherited: referenced so it is never closed here


class _ThreadSlot(threading.local):
    """This thread's connection slot on one database; None until the thread first uses it."""

    slot: _Slot | None = None


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
