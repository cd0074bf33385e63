"""The SQLite file: where it is (the state dir), what it holds (the schema, its version and the migration
to it, with a backup), the rules for touching it (never through a symlink, never another uid's, private
modes kept after every write) and the read-only check of an existing file (opening, probe and inspect)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

from ._spec import SCHEMA_VERSION, StateStoreError

PathArg: TypeAlias = "str | os.PathLike[str] | None"
DIR_MODE, FILE_MODE = 0o700, 0o600
SIDE_FILES = ("-wal", "-shm")
SQLITE_HEADER = b"SQLite format 3\x00"
NOT_SQLITE = "the file at the state path is not a SQLite database"
CORRUPTION = ("malformed", "not a database", "corrupt")  # what SQLite says of a damaged file
WAL_RETRY_S = 0.005  # pause between attempts to switch a brand-new database to WAL
log = logging.getLogger("chatstate.state")


# -- where the database is ------------------------------------------------------------------
def env_path(env: Mapping[str, str], name: str) -> str | None:
    """The path in variable `name`; a blank one is unset (as a path it would be the current folder)."""
    return value if (value := env.get(name)) and value.strip() else None


def state_dir(state_dir: PathArg = None, *, env: Mapping[str, str] | None = None) -> Path:
    """The state dir: the argument, else $CHATSTATE_HOME (from `env`, default os.environ), else ~/.chatstate."""
    home = state_dir if state_dir is not None else env_path(os.environ if env is None else env, "CHATSTATE_HOME")
    return Path(home).expanduser() if home is not None else Path.home() / ".chatstate"


def database_path(state_dir_: PathArg = None) -> Path:
    """Where the SQLite file lives: `<state_dir>/plugin-state/state.sqlite`."""
    return state_dir(state_dir_) / "plugin-state" / "state.sqlite"


def resolve_path(path: PathArg) -> Path:
    """`path` names the database file; an existing directory is taken as a state dir."""
    if path is None:
        return database_path()
    p = Path(path).expanduser()  # a symlink is never taken for a directory: the backend refuses it
    # A directory at `plugin-state/state.sqlite` (what the gateway and the CLI pass) is the database file's place
    # taken, refused by the open (rule 18), never a state dir to nest a second database in.
    at_file = p.name == "state.sqlite" and p.parent.name == "plugin-state"
    return database_path(p) if p.is_dir() and not p.is_symlink() and not at_file else p


# -- never follow, never adopt -----------------------------------------------------------------
def check_path(path: Path, is_dir: bool, op: str = "open") -> os.stat_result | None:
    """Refuse a symlink, the wrong kind of file or another uid's (OPEN_FAILED, saying what to do); None if missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    what, uid = ("state directory" if is_dir else "state file"), os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        fix = "remove the link and point the state dir at where the file really is"
        fix = "point the state dir at the real directory" if is_dir else fix
        problem = f"the {what} is a symlink, which is never followed; {fix}"
    elif is_dir and not stat.S_ISDIR(st.st_mode):
        problem = "a state directory path is not a directory; move that file away"
    elif not is_dir and not stat.S_ISREG(st.st_mode):
        problem = "the state path is not a regular file; move it away"
    elif st.st_uid != uid:
        fix = "use a state dir this user owns (or chown it)" if is_dir else "run as its owner (or chown it)"
        problem = f"the {what} is owned by uid {st.st_uid}, not this user ({uid}); {fix}"
    else:
        return st
    raise StateStoreError("OPEN_FAILED", op, problem, path=str(path))


def prepare_dirs(db: Path, *, create: bool = True, op: str = "open") -> None:
    """Check (with `create`, make 0700) the database's directory and the state dir above `plugin-state`, top
    down, so a symlinked state dir is refused before anything is made in it. Raises OPEN_FAILED, OSError."""
    for d in (db.parent.parent, db.parent) if db.parent.name == "plugin-state" else (db.parent,):
        if check_path(d, True, op) is None and create:
            missing = [p for p in (d, *d.parents) if not os.path.lexists(p)]
            os.makedirs(d, DIR_MODE, exist_ok=True)
            for p in missing:
                os.chmod(p, DIR_MODE)  # makedirs' mode is masked by the umask
            check_path(d, True, op)


def prepare(db: Path, *, create: bool = True, op: str = "open") -> tuple[bool, bool]:
    """Check (with `create`, make) the database's place: (the directory is the store's own, the file has content)."""
    own_dir = db.parent.name == "plugin-state" or (create and not os.path.lexists(db.parent))
    try:
        prepare_dirs(db, create=create, op=op)
        for side in SIDE_FILES:
            check_path(Path(f"{db}{side}"), False, op)
        if (st := check_path(db, False, op)) is None and create:
            _create_private(db)
    except OSError as exc:
        message = f"cannot {'prepare' if create else 'check'} the state path ({exc.strerror})"
        raise StateStoreError("OPEN_FAILED", op, message, path=str(db)) from None
    return own_dir, st is not None and st.st_size > 0


def check_dir(directory: Path) -> None:
    """The probe's state-dir step: the directory passes the rules above and is writable."""
    prepare_dirs(directory / "state.sqlite", op="probe")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateStoreError("OPEN_FAILED", "probe", "the state directory is not writable", path=str(directory))


def _create_private(path: Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask did to os.open's mode
    os.close(fd)


class Modes:
    """Keep `targets` (path, mode) at their modes, cheaply: each opened once (never through a symlink), fstat-ed,
    fchmod-ed only when wrong; a missing one is tried again next time, one deleted or replaced opened afresh."""

    def __init__(self, targets: tuple[tuple[Path, int], ...] = (), location: str = "") -> None:
        self._targets, self._fds, self._lock = targets, dict[Path, int](), threading.Lock()
        self.location = location
        self.fault: str | None = None  # the last `after_commit` failure, until one works

    @classmethod
    def of(cls, db: Path, own_dir: bool) -> Modes:
        """The database's files at 0600, and its directory at 0700 when it is the store's own."""
        files = tuple((Path(f"{db}{s}"), FILE_MODE) for s in ("", *SIDE_FILES))
        return cls(((db.parent, DIR_MODE), *files) if own_dir else files, str(db))

    def ensure(self) -> None:
        """Raises OSError if an fchmod fails."""
        with self._lock:
            for path, mode in self._targets:
                st = None if (fd := self._fds.get(path)) is None else os.fstat(fd)
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

    def after_commit(self, op: str) -> None:
        """`ensure`, best effort: failing a committed write would orphan a claim, lose a consumed value or make a
        retry answer twice. A failure is logged once and kept in `fault` until one succeeds."""
        try:
            self.ensure()
        except OSError as exc:
            message = f"{op}: cannot re-apply permissions after commit ({exc.strerror}); the write is kept"
            if self.fault is None:
                log.warning("state_permissions_failed", extra={"op": op, "path": self.location, "error": message})
            self.fault = message
            return
        if self.fault is not None:
            self.fault = None
            log.info("state_permissions_restored", extra={"op": op, "path": self.location})

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


# -- the schema (its text is what the file stores) -------------------------------------------
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
    # No (plugin_id, namespace, expires_at) index: a register moves a row in each index; a third cost ~27% CPU.
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
SCHEMA = (*SCHEMA_V1, ADD_VERSION)  # a new file: v1's tables plus the version column
# N -> N + 1. random() >> 1 is in [-2^62, 2^62): abs() + 1 is never 0 and never overflows.
MIGRATIONS = {1: (ADD_VERSION, "UPDATE entries SET version = abs(random() >> 1) + 1")}


def backup(path: Path, version: int) -> None:
    """Copy the database to a fresh 0600 `<file>.v<N>.bak.partial`, then move that to `<file>.v<N>.bak`."""
    (partial := Path(f"{path}.v{version}.bak.partial")).unlink(missing_ok=True)
    _create_private(partial, os.O_EXCL)
    with contextlib.closing(read_only(path)) as src, contextlib.closing(sqlite3.connect(partial)) as dst:
        src.backup(dst)
    os.replace(partial, Path(f"{path}.v{version}.bak"))


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION in the caller's (the open's) transaction, an older one backed up first
    (WAL lets the copy read beside that transaction's write lock)."""
    if (version := conn.execute("PRAGMA user_version").fetchone()[0]) > SCHEMA_VERSION:
        raise newer_schema(version, "open", str(path))
    if version == SCHEMA_VERSION:
        return
    if version:
        backup(path, version)
    for statement in SCHEMA if version == 0 else [s for n in range(version, SCHEMA_VERSION) for s in MIGRATIONS[n]]:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def connect(path: Path, wait_s: float) -> sqlite3.Connection:
    """A connection in WAL mode (`nofollow`: SQLite refuses to open a symlink itself too). isolation_level None: the
    transactions are the caller's; check_same_thread: close() may run on any thread. The switch to WAL gets no busy
    handler (processes creating the file together saw "database is locked"): it is retried for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    uri = f"{path.as_uri()}?nofollow=1"
    conn = sqlite3.connect(uri, uri=True, timeout=wait_s, isolation_level=None, check_same_thread=False)
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_RETRY_S)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


# -- the read-only check of an existing file --------------------------------------------------
def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)


def newer_schema(version: int, op: str, where: str) -> StateStoreError:
    fix = "upgrade chatstate, or restore the backup made before the upgrade"
    message = f"the file has schema version {version}; this code reads versions up to {SCHEMA_VERSION}: {fix}"
    return StateStoreError("SCHEMA_UNSUPPORTED", op, message, path=where)


# Files this process checked, as they looked then: the gateway checks before it binds and again as it opens, and
# at 1M rows a quick_check reads ~0.2 s. An empty WAL holds nothing (a read-only check may create one).
_checked: dict[str, tuple[object, ...]] = {}


def _fingerprint(path: Path) -> tuple[object, ...] | None:
    try:
        stats = [os.stat(p) if os.path.lexists(p) else None for p in (path, Path(f"{path}-wal"))]
    except OSError:
        return None
    return tuple(
        (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) if s and s.st_size else None for s in stats
    )


def _check_file(path: Path, where: str) -> None:
    """Refuse, read-only, a file that is not SQLite (OPEN_FAILED), damaged (CORRUPT) or newer (SCHEMA_UNSUPPORTED)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        message = f"cannot read the state file ({exc.strerror})"
        raise StateStoreError("OPEN_FAILED", "open", message, path=where) from None
    if header != SQLITE_HEADER:
        raise StateStoreError("OPEN_FAILED", "open", NOT_SQLITE, path=where)
    try:
        with contextlib.closing(read_only(path)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as exc:
        code = "CORRUPT" if any(w in str(exc).lower() for w in (*CORRUPTION, "disk i/o")) else "OPEN_FAILED"
        raise StateStoreError(code, "open", f"SQLite said: {exc}", path=where) from None
    if result != "ok":
        raise StateStoreError("CORRUPT", "open", f"integrity check failed: {result}", path=where)
    if version > SCHEMA_VERSION:
        raise newer_schema(version, "open", where)


def check_file(path: Path, *, create: bool = False) -> bool:
    """Check the database's place (with `create`, make it), then `_check_file` a file with content unless this
    process checked it unchanged; whether the directory is the store's own (see `prepare`)."""
    if path.is_dir() and not path.is_symlink():
        raise StateStoreError("OPEN_FAILED", "open", "the state path is a directory; move it away", path=str(path))
    own_dir, has_content = prepare(path, create=create)
    before = _fingerprint(path) if has_content else None
    if has_content and (before is None or _checked.get(str(path)) != before):
        _check_file(path, str(path))  # never writes: a bad file stays exactly as it was
        if before is not None and _fingerprint(path) == before:  # unchanged while it was read
            _checked[str(path)] = before
    return own_dir


def check_database(path: PathArg = None) -> None:
    """Refuse, read-only, a state file that is not SQLite, damaged or newer (docs/state.md); missing or empty: fine."""
    check_file(resolve_path(path))


def path_text(text: str, why: str = "an empty path would be the current folder") -> str:
    """A --state-dir / --path value (argparse `type`; --url's through a partial with its own `why`): never blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty ({why})")
    return text


def to_go_on(path: Path, exc: StateStoreError) -> str:
    """ ". To go on: <what to do>" after the error refusing a database file for what it holds (nothing here moves it),
    else "": a file refused for where it is (a symlink, another uid's, a directory of another uid) is fine, and
    moving it aside fixes nothing."""
    content = exc.code in ("CORRUPT", "SCHEMA_UNSUPPORTED") or (exc.code == "OPEN_FAILED" and NOT_SQLITE in str(exc))
    if not (content and path.is_file() and not path.is_symlink()):
        return ""
    if exc.code == "SCHEMA_UNSUPPORTED":
        return ". To go on: it was written by a newer chatstate: run that version, or move it aside to start empty"
    moved = f"move it aside to start with an empty store (mv {path} {path}.bad, and its -wal/-shm files if any)"
    check = f"`sqlite3 {path}.bad 'PRAGMA integrity_check'` or `python -m chatstate state probe --path {path}.bad`"
    return f". To go on: {moved}, then check the old file with {check}"
