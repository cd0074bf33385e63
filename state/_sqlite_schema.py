"""The SQLite schema, its statements, the v1 -> v2 migration, and the read-only file check.

Schema v2 (PRAGMA user_version = 2) adds `entries.version`. Why the shape: WAL lets readers run
beside the single writer; a per-namespace row count kept by triggers makes the max-entries
check O(1) instead of a count over the namespace.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ._errors import StateStoreError
from ._settings import SCHEMA_VERSION

SQLITE_HEADER = b"SQLite format 3\x00"
FILE_MODE = 0o600

_ENTRIES_V1 = """CREATE TABLE IF NOT EXISTS entries (
    plugin_id  TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,   -- compact JSON
    created_at INTEGER NOT NULL,   -- ms since epoch; reset by every register
    expires_at INTEGER,            -- ms since epoch; NULL = never
    PRIMARY KEY (plugin_id, namespace, key)
) WITHOUT ROWID"""
# v2: a row version, new (random 63-bit) on every write; 0 only before a v1 file is migrated.
ADD_VERSION = "ALTER TABLE entries ADD COLUMN version INTEGER NOT NULL DEFAULT 0"
# random() >> 1 is in [-2^62, 2^62): abs() + 1 is never 0 and never overflows.
VERSION_V1_ROWS = "UPDATE entries SET version = abs(random() >> 1) + 1"

SCHEMA_V1 = (
    _ENTRIES_V1,
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
SCHEMA = (*SCHEMA_V1, ADD_VERSION)  # a new file: v1's tables plus the version column
MIGRATIONS = {1: (ADD_VERSION, VERSION_V1_ROWS)}  # from version N to N + 1, in one transaction

LIVE = "(expires_at IS NULL OR expires_at > :now)"
# The statements every call runs bind a tuple to numbered parameters: binding a tuple is about
# 10% of a lookup cheaper than binding a dict (benchmarks/store_bench.py). Their order:
#   ?1 plugin_id  ?2 namespace  ?3 key  ?4 now_ms  ?5 value (JSON text)  ?6 expires_at
#   ?7 the new version  ?8 the version a compare_and_set expects
SQL_UPSERT = """
INSERT INTO entries (plugin_id, namespace, key, value, created_at, expires_at, version)
VALUES (?1, ?2, ?3, ?5, ?4, ?6, ?7)
ON CONFLICT (plugin_id, namespace, key) DO UPDATE SET
    value = excluded.value, created_at = excluded.created_at, expires_at = excluded.expires_at,
    version = excluded.version
"""
# A claim overwrites only a row that has expired: the conflict clause is the atomic check.
SQL_CLAIM = SQL_UPSERT + " WHERE entries.expires_at IS NOT NULL AND entries.expires_at <= ?4"
SQL_MATCH = """UPDATE entries SET value = ?5, created_at = ?4, expires_at = ?6, version = ?7
WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3 AND version = ?8
AND (expires_at IS NULL OR expires_at > ?4)"""
SQL_READ = """SELECT value, created_at, expires_at, version FROM entries
WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3 AND (expires_at IS NULL OR expires_at > ?4)"""
# lookup_many binds its keys one per parameter (a JSON array through json_each would lose keys
# holding NUL), padded with repeats of a key to one of a few sizes, so the statement cache
# holds a handful of statements, not one per batch size.
READ_MANY_SIZES = (1, 4, 16, 64, 256, 1_000)


def sql_read_many(size: int) -> str:
    marks = ", ".join(f"?{n}" for n in range(4, 4 + size))
    return f"""SELECT key, value, created_at, expires_at, version FROM entries
WHERE plugin_id = ?1 AND namespace = ?2 AND (expires_at IS NULL OR expires_at > ?3) AND key IN ({marks})"""


SQL_READ_MANY = {size: sql_read_many(size) for size in READ_MANY_SIZES}
SQL_TAKE = """DELETE FROM entries WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3
RETURNING value, created_at, expires_at, version"""
SQL_DELETE = "DELETE FROM entries WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3"
SQL_REMOVE_MATCH = """DELETE FROM entries WHERE plugin_id = ?1 AND namespace = ?2 AND key = ?3
AND version = ?5 AND (expires_at IS NULL OR expires_at > ?4)"""
SQL_NS_ROWS_FAST = "SELECT row_count FROM namespace_rows WHERE plugin_id = ?1 AND namespace = ?2"
SQL_SCAN = f"""SELECT key, value, created_at, expires_at, version FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND {LIVE} ORDER BY created_at, key"""
# The page after a cursor: the row-value comparison walks entries_by_order from the cursor on.
SQL_SCAN_PAGE = f"""SELECT key, value, created_at, expires_at, version FROM entries
WHERE plugin_id = :plugin AND namespace = :ns AND (created_at, key) > (:after_c, :after_k) AND {LIVE}
ORDER BY created_at, key LIMIT :limit"""
# Live rows = the trigger-kept row count minus the namespace's expired rows, which the expiry
# index finds among the few expired rows (swept every 60 s): O(expired), not a walk over the
# namespace (8 ms at 100,000 rows).
SQL_COUNT_LIVE = """SELECT coalesce((SELECT row_count FROM namespace_rows WHERE plugin_id = :plugin AND namespace = :ns), 0)
    - (SELECT count(*) FROM entries INDEXED BY entries_by_expiry
       WHERE expires_at <= :now AND plugin_id = :plugin AND namespace = :ns)"""
SQL_CLEAR = "DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns"
SQL_NS_ROWS = "SELECT row_count FROM namespace_rows WHERE plugin_id = :plugin AND namespace = :ns"
# Only runs when a namespace is over max_entries. INDEXED BY: walking the (few, swept every
# 60 s) expired rows beats the planner's choice of scanning the whole namespace by primary key.
SQL_DROP_EXPIRED_NS = """DELETE FROM entries INDEXED BY entries_by_expiry
WHERE plugin_id = :plugin AND namespace = :ns AND expires_at <= :now"""
# Oldest live rows first by (created_at, key), never the row just written.
SQL_EVICT = f"""DELETE FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND key IN (
    SELECT key FROM entries WHERE plugin_id = :plugin AND namespace = :ns AND key != :key
    AND {LIVE} ORDER BY created_at, key LIMIT :excess)"""
SQL_SWEEP = """DELETE FROM entries WHERE (plugin_id, namespace, key) IN (
    SELECT plugin_id, namespace, key FROM entries WHERE expires_at <= :now LIMIT :batch)"""


def is_corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def newer_schema(version: int, op: str, where: str) -> StateStoreError:
    return StateStoreError(
        "SCHEMA_UNSUPPORTED",
        op,
        f"the file has schema version {version}; this code reads versions up to {SCHEMA_VERSION}: "
        "upgrade chatstate, or restore the backup made before the upgrade",
        path=where,
    )


def backup_path(path: Path, version: int) -> Path:
    return Path(f"{path}.v{version}.bak")


def migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring a database at schema `version` to SCHEMA_VERSION inside the caller's BEGIN IMMEDIATE.

    First a full copy of the file (as it is: the caller holds the write lock, so nothing can
    change it) goes to `<file>.v<N>.bak`, 0600; then every step runs in the caller's one
    transaction, so a failure leaves the file at its old version, untouched.
    """
    if version == 0:
        for statement in SCHEMA:
            conn.execute(statement)
    else:
        backup(path, backup_path(path, version))
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def backup(source: Path, target: Path) -> None:
    """Copy the database with SQLite's backup API from a second, read-only connection (WAL lets
    it read beside the caller's write lock) into a fresh 0600 file, then move it into place."""
    partial = Path(f"{target}.partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE))
    os.chmod(partial, FILE_MODE)  # whatever the umask
    src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(partial)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.replace(partial, target)


# Files this process checked, by path: what they looked like on disk right after the check.
# The gateway checks the file read-only before it binds, then the backend checks it again as it
# opens; at 1M rows each quick_check reads the whole file (~0.2 s), so the second one is skipped
# when neither the file nor its WAL changed in between (issue 20, target 6). A dict's get and
# set are atomic under the GIL, so no lock (and nothing a fork could leave held).
_checked: dict[str, tuple[object, ...]] = {}


def _fingerprint(path: Path) -> tuple[object, ...] | None:
    parts: list[object] = []
    for p in (path, Path(f"{path}-wal")):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            parts.append(None)
            continue
        except OSError:
            return None
        # An empty WAL holds nothing: a read-only check may create one without changing a byte.
        parts.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) if st.st_size else None)
    return tuple(parts)


def check_existing(path: Path) -> None:
    """Refuse a file that is not a readable SQLite database of a known schema, read-only.

    Raises OPEN_FAILED (not SQLite), CORRUPT (damaged) or SCHEMA_UNSUPPORTED; the file, and its
    permissions, are left exactly as they were. A file this process already checked and that has
    not changed since (same inode, size, mtime and ctime, WAL included) is not read again.
    """
    where = str(path)
    before = _fingerprint(path)
    if before is not None and _checked.get(where) == before:
        return
    _check_file(path, where)
    if before is not None and _fingerprint(path) == before:  # unchanged while it was read
        _checked[where] = before


def _check_file(path: Path, where: str) -> None:
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
