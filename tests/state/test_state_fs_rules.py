"""The state side's filesystem rules: never follow a symlink, never adopt a directory or
file of another uid, and create every directory 0700 and file 0600 whatever the umask.

Each refusal is OPEN_FAILED naming the path and what to do, and leaves the target untouched.
The foreign-owner tests chown to another uid, so they need root (the CI container runs as root).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatstate.state import StateStoreError, check_database, database_path, open_keyed_store, probe
from chatstate.state.__main__ import main as cli_main

OTHER_UID = 54_321


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refused(state_dir: Path, where: Path, *, what: str) -> StateStoreError:
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, path=database_path(state_dir))
    assert (err.value.code, err.value.operation, err.value.path) == ("OPEN_FAILED", "open", str(where))
    assert what in str(err.value)
    return err.value


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory and a file some symlink could point at; they must stay as they are."""
    d = tmp_path / "outside"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "precious.txt").write_text("not a database")
    os.chmod(d / "precious.txt", 0o644)
    return d


def untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "not a database"
    assert mode(outside) == 0o755 and mode(outside / "precious.txt") == 0o644


def test_a_symlinked_state_dir_is_refused(tmp_path: Path, outside: Path) -> None:
    home = tmp_path / "home"
    home.symlink_to(outside, target_is_directory=True)
    err = refused(home, home, what="symlink")
    assert "never followed" in str(err)
    untouched(outside)


def test_a_symlinked_plugin_state_dir_is_refused(tmp_path: Path, outside: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "plugin-state").symlink_to(outside, target_is_directory=True)
    refused(home, home / "plugin-state", what="symlink")
    untouched(outside)


@pytest.mark.parametrize("name", ["state.sqlite", "state.sqlite-wal", "state.sqlite-shm"])
def test_a_symlinked_database_file_is_refused(tmp_path: Path, outside: Path, name: str) -> None:
    home = tmp_path / "home"
    (home / "plugin-state").mkdir(parents=True, mode=0o700)
    link = home / "plugin-state" / name
    link.symlink_to(outside / "precious.txt")
    err = refused(home, link, what="never followed")
    assert "is a symlink" in str(err)
    untouched(outside)


def test_a_symlink_to_an_empty_outside_file_never_makes_it_a_database(tmp_path: Path, outside: Path) -> None:
    """v1 turned such a file into a database (mode 0600): an empty file at the state path is
    taken as a new database, and the link was followed."""
    target = outside / "empty"
    target.touch()
    os.chmod(target, 0o644)
    home = tmp_path / "home"
    (home / "plugin-state").mkdir(parents=True, mode=0o700)
    link = home / "plugin-state" / "state.sqlite"
    link.symlink_to(target)
    refused(home, link, what="never followed")
    assert target.stat().st_size == 0 and mode(target) == 0o644


def test_a_dangling_symlink_is_refused_and_its_target_never_created(tmp_path: Path, outside: Path) -> None:
    home = tmp_path / "home"
    (home / "plugin-state").mkdir(parents=True, mode=0o700)
    link = home / "plugin-state" / "state.sqlite"
    link.symlink_to(outside / "made-by-us.sqlite")
    refused(home, link, what="symlink")
    untouched(outside)
    with pytest.raises(StateStoreError) as err:  # the read-only check says the same
        check_database(link)
    assert err.value.code == "OPEN_FAILED"
    assert probe(home)["ok"] is False
    untouched(outside)


def test_a_symlinked_state_dir_given_as_path_is_refused_too(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "db-dir"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(StateStoreError) as err:
        open_keyed_store("p", "ns", max_entries=1, path=link / "custom.sqlite")
    assert (err.value.code, err.value.path) == ("OPEN_FAILED", str(link))
    untouched(outside)


@pytest.fixture
def foreign(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "chowning to another uid needs root (the CI container runs as root)"
    yield tmp_path


@pytest.mark.parametrize("which", ["state-dir", "plugin-state"])
def test_a_directory_of_another_uid_is_refused_not_adopted(foreign: Path, which: str) -> None:
    home = foreign / "home"
    (home / "plugin-state").mkdir(parents=True)
    owned = home if which == "state-dir" else home / "plugin-state"
    os.chown(owned, OTHER_UID, OTHER_UID)
    os.chmod(owned, 0o777)
    err = refused(home, owned, what=f"owned by uid {OTHER_UID}")
    assert "chown" in str(err)
    assert mode(owned) == 0o777 and os.stat(owned).st_uid == OTHER_UID  # not adopted
    assert not (home / "plugin-state" / "state.sqlite").exists()


def test_a_database_file_of_another_uid_is_refused(foreign: Path) -> None:
    home = foreign / "home"
    with open_keyed_store("p", "ns", max_entries=1, path=database_path(home)) as store:
        store.register("k", 1)
    db = database_path(home)
    os.chown(db, OTHER_UID, OTHER_UID)
    refused(home, db, what=f"owned by uid {OTHER_UID}")


def test_a_file_refused_for_its_owner_is_never_advised_moved_aside(foreign: Path, capsys) -> None:
    """The file is healthy, only its owner is wrong: "move it aside to start with an empty store" would drop
    every row for nothing; the message says the fix (chown, or run as its owner) and nothing else."""
    home = foreign / "home"
    with open_keyed_store("p", "ns", max_entries=1, path=database_path(home)) as store:
        store.register("k", 1)
    os.chown(database_path(home), OTHER_UID, OTHER_UID)
    assert cli_main(["inspect", "--state-dir", str(home)]) == 1
    err = capsys.readouterr().err
    assert f"owned by uid {OTHER_UID}" in err and "chown" in err
    assert "move it aside" not in err and " mv " not in err


def test_under_umask_000_every_directory_is_0700_and_every_file_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        home = tmp_path / "a" / "b" / "home"  # three parents mkdir(parents=True) would make 0777
        with open_keyed_store("p", "ns", max_entries=10, path=database_path(home)) as store:
            for i in range(20):
                store.register(f"k{i}", i)
            db = database_path(home)
            for d in (tmp_path / "a", tmp_path / "a" / "b", home, home / "plugin-state"):
                assert mode(d) == 0o700, d
            for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                assert f.exists() and mode(f) == 0o600, f
        fresh = tmp_path / "probe-home"
        assert probe(database_path(fresh))["ok"] is True  # the probe creates the same way
        assert mode(fresh) == mode(fresh / "plugin-state") == 0o700
        assert mode(database_path(fresh)) == 0o600
    finally:
        os.umask(old)


def test_read_only_tools_create_nothing(tmp_path: Path) -> None:
    from chatstate.state import __main__ as cli

    home = tmp_path / "never-made"
    check_database(database_path(home))
    assert cli.main(["inspect", "--state-dir", str(home)]) == 1  # "no state database"
    assert cli.main(["inspect", "--path", str(database_path(home)), "--json"]) == 1
    assert not home.exists()
