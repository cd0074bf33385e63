"""Where the SQLite file may live: never through a symlink, never in someone else's directory.

A state directory holds every plugin's state, so the store refuses (OPEN_FAILED, naming the
path and what to do) rather than follow or adopt: a symlinked state dir, `plugin-state` dir or
database file (or -wal/-shm), a dangling symlink at any of those paths, and a directory or file
owned by another uid. What it creates itself it creates private whatever the umask: each
missing directory 0700 (one by one, not `mkdir(parents=True)`, whose parents get 0777 & ~umask)
and the database file 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._errors import StateStoreError

DIR_MODE = 0o700
FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm")


def _refuse(path: Path, what: str, fix: str, op: str) -> StateStoreError:
    return StateStoreError("OPEN_FAILED", op, f"{what}; {fix}", path=str(path))


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def guarded_dirs(db: Path) -> tuple[Path, ...]:
    """The directories the rules cover: the database's directory, and the state dir above a
    `plugin-state` directory."""
    parent = db.parent
    return (parent.parent, parent) if parent.name == "plugin-state" else (parent,)


def check_dir(directory: Path, op: str = "open") -> bool:
    """Refuse a symlink, a non-directory or a directory of another uid; False if it is missing."""
    st = _lstat(directory)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(
            directory,
            "the state directory is a symlink, which is never followed",
            "point the state dir at the real directory",
            op,
        )
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(directory, "a state directory path is not a directory", "move that file away", op)
    if st.st_uid != os.geteuid():
        raise _refuse(
            directory,
            f"the state directory is owned by uid {st.st_uid}, not this user ({os.geteuid()})",
            "use a state dir this user owns (or chown it)",
            op,
        )
    return True


def check_file(path: Path, op: str = "open") -> os.stat_result | None:
    """Refuse a symlink (dangling or not), a non-regular file or a file of another uid."""
    st = _lstat(path)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(
            path,
            "the state file is a symlink, which is never followed",
            "remove the link and point the state dir at where the file really is",
            op,
        )
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "the state path is not a regular file", "move it away", op)
    if st.st_uid != os.geteuid():
        raise _refuse(
            path,
            f"the state file is owned by uid {st.st_uid}, not this user ({os.geteuid()})",
            "run as its owner (or chown it)",
            op,
        )
    return st


def make_dirs(directory: Path, op: str = "open") -> list[Path]:
    """Create `directory` and its missing parents, each 0700 whatever the umask; return those made."""
    missing: list[Path] = []
    probe = directory
    while _lstat(probe) is None and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    made: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # another process made it first: checked like any other
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
        made.append(d)
    return made


def prepare(db: Path, *, create: bool = True, op: str = "open") -> tuple[bool, bool]:
    """Check (and unless `create` is False, make) the database's place.

    Returns (directory made by us or a `plugin-state` dir, database has content). Raises
    OPEN_FAILED for every refused path; OSError for what the filesystem refused.
    """
    made: list[Path] = []
    for d in guarded_dirs(db):  # top down: a symlinked state dir is refused before anything is made in it
        if not check_dir(d, op) and create:
            made += make_dirs(d, op)
            check_dir(d, op)
    for side in SIDE_FILES:
        check_file(Path(f"{db}{side}"), op)
    st = check_file(db, op)
    if st is None and create:
        flags = os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(db, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask did to os.open's mode
        finally:
            os.close(fd)
    own_dir = bool(made) or db.parent.name == "plugin-state"
    return own_dir, st is not None and st.st_size > 0
