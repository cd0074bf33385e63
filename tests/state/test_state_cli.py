"""probe() and `python -m chatstate.state probe|inspect`: shapes, exit codes, and never a stored value."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from state_support import FakeClock

from chatstate.state import database_path, open_keyed_store, probe
from chatstate.state.__main__ import main as cli_main

SECRET = "SECRET-VALUE-MARKER"
PROBE_STEPS = ["state-dir", "open", "schema", "write-read-delete", "checkpoint", "permissions"]


@pytest.fixture
def populated(state_home: Path) -> Path:
    """A state dir with live and expired rows in two namespaces, values holding SECRET."""
    past = FakeClock()  # 2023: a row with a TTL is long expired by the wall clock inspect uses
    store = open_keyed_store("slack", "slack.events", max_entries=10, path=state_home, clock=past)
    store.register("T1:Ev1", {"token": SECRET})
    store.register("T1:Ev2", {"token": SECRET}, ttl_ms=1)
    other = open_keyed_store("discord", "discord.components", max_entries=10, path=state_home)
    other.register("custom-1", SECRET)
    store.close()
    other.close()
    return state_home


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatstate.state", *args], capture_output=True, text=True, timeout=120)


def test_probe_reports_each_step_and_never_a_value(populated, db_path, query):
    before = query("SELECT * FROM entries ORDER BY plugin_id, namespace, key")
    result = probe(populated)
    assert set(result) == {"ok", "database_path", "steps"}
    assert result["ok"] is True
    assert result["database_path"] == str(db_path)
    assert [s["name"] for s in result["steps"]] == PROBE_STEPS
    assert all(s == {"name": s["name"], "ok": True} for s in result["steps"])
    assert SECRET not in json.dumps(result)
    assert query("SELECT * FROM entries ORDER BY plugin_id, namespace, key") == before  # probe row removed


def test_probe_creates_a_missing_state_dir(tmp_path):
    result = probe(database_path(tmp_path / "fresh"))
    assert result["ok"] is True
    assert (tmp_path / "fresh" / "plugin-state" / "state.sqlite").is_file()


def test_probe_cli_says_when_it_made_the_database_so_a_mistyped_state_dir_shows(tmp_path):
    db = tmp_path / "fresh" / "plugin-state" / "state.sqlite"
    first, again = (run_cli("probe", "--state-dir", str(tmp_path / "fresh")) for _ in range(2))
    assert (first.returncode, json.loads(first.stdout)["ok"]) == (0, True)
    assert first.stderr == (
        f"probe: there was no database; made an empty {db} (expected one? give --state-dir D or --path FILE)\n"
    )
    assert (again.returncode, again.stderr) == (0, "")  # it is there now: nothing to say


def test_probe_failure_names_the_step_code_and_path(state_home, db_path):
    db_path.parent.mkdir()
    db_path.write_text("not a database")
    result = probe(state_home)
    assert result["ok"] is False
    failed = result["steps"][-1]
    assert failed["name"] == "open" and failed["ok"] is False
    assert failed["code"] == "OPEN_FAILED" and str(db_path) in failed["message"]
    assert db_path.read_text() == "not a database"


def test_cli_probe_prints_json_and_exits_0(populated, db_path):
    done = run_cli("probe", "--state-dir", str(populated))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True and result["database_path"] == str(db_path)
    assert SECRET not in done.stdout + done.stderr


def test_cli_probe_exits_1_on_a_bad_file(state_home, db_path):
    db_path.parent.mkdir()
    db_path.write_bytes(b"\x00" * 1000)
    done = run_cli("probe", "--state-dir", str(state_home))
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False
    assert db_path.read_bytes() == b"\x00" * 1000


def test_cli_bad_usage_exits_2():
    assert run_cli("frobnicate").returncode == 2
    assert run_cli().returncode == 2


TWO_PLACES = "not allowed with argument"  # two places to look: argparse refuses, never a silent pick
EMPTY_PLACE = "must not be empty"  # an empty place to look is not the current folder


@pytest.mark.parametrize(
    ("where", "said"),
    [
        (["probe", "--state-dir", "d", "--path", "f"], TWO_PLACES),
        (["probe", "--path", "f", "--url", "redis://h:6379/0"], TWO_PLACES),
        (["probe", "--state-dir", "d", "--url", "redis://h:6379/0"], TWO_PLACES),
        (["inspect", "--state-dir", "d", "--path", "f"], TWO_PLACES),
        (["probe", "--state-dir", ""], EMPTY_PLACE),
        (["probe", "--path", " "], EMPTY_PLACE),
        (["inspect", "--state-dir", ""], EMPTY_PLACE),
        (["probe", "--url", ""], EMPTY_PLACE),  # `--url "$UNSET"`: never the SQLite file instead
        (["probe", "--url", " "], EMPTY_PLACE),
    ],
)
def test_a_place_to_look_given_twice_or_empty_is_bad_usage(where, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATSTATE_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as done:
        cli_main(where)
    assert done.value.code == 2 and said in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created where the command ran


def test_a_reader_that_stops_early_gets_no_traceback(populated):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `... | head -0`: the reader is gone before the JSON is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chatstate.state", "probe", "--state-dir", str(populated)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, b"")


def test_inspect_lists_namespaces_with_live_and_expired_counts(populated, capsys):
    assert cli_main(["inspect", "--state-dir", str(populated), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["namespaces"] == [
        {"plugin_id": "discord", "namespace": "discord.components", "live": 1, "expired": 0},
        {"plugin_id": "slack", "namespace": "slack.events", "live": 1, "expired": 1},
    ]
    assert out["keys"] == []
    assert SECRET not in json.dumps(out)


def test_inspect_namespace_lists_keys_without_values_by_default(populated, capsys):
    assert cli_main(["inspect", "--state-dir", str(populated), "--plugin", "slack", "--namespace", "slack.events"]) == 0
    text = capsys.readouterr().out
    assert "T1:Ev1" in text and "T1:Ev2" not in text  # expired keys are not listed
    assert "expires=never" in text
    assert SECRET not in text
    assert cli_main(["inspect", "--state-dir", str(populated), "--namespace", "slack.events", "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)["keys"]
    assert [(k["plugin_id"], k["key"], k["expires_at"]) for k in keys] == [("slack", "T1:Ev1", None)]
    assert "value" not in keys[0] and keys[0]["created_at"].endswith("Z")


def test_inspect_values_only_when_asked(populated, capsys):
    assert cli_main(["inspect", "--state-dir", str(populated), "--namespace", "slack.events", "--values"]) == 0
    assert SECRET in capsys.readouterr().out
    done = run_cli("inspect", "--state-dir", str(populated), "--namespace", "discord.components", "--values", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["keys"][0]["value"] == SECRET


def test_inspect_does_not_write(populated, db_path):
    before = db_path.read_bytes()
    assert run_cli("inspect", "--state-dir", str(populated), "--namespace", "slack.events").returncode == 0
    assert db_path.read_bytes() == before


def test_inspect_of_a_missing_database_exits_1(tmp_path):
    done = run_cli("inspect", "--state-dir", str(tmp_path / "nothing-here"))
    assert done.returncode == 1 and "no state database" in done.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_inspect_of_a_missing_database_says_what_to_do(tmp_path):
    done = run_cli("inspect", "--path", str(tmp_path / "typo.sqlite"))
    assert done.returncode == 1
    assert str(tmp_path / "typo.sqlite") in done.stderr and "--state-dir" in done.stderr and "--path" in done.stderr


def test_inspect_values_of_unreadable_json_is_a_clear_error(populated, db_path, capsys):
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE entries SET value = '{\"" + SECRET + "' WHERE key = 'T1:Ev1'")
    conn.commit()
    conn.close()
    assert cli_main(["inspect", "--state-dir", str(populated), "--namespace", "slack.events", "--values"]) == 1
    err = capsys.readouterr().err
    assert "CORRUPT" in err and "T1:Ev1" in err and str(db_path) in err and SECRET not in err
    assert cli_main(["inspect", "--state-dir", str(populated), "--namespace", "slack.events"]) == 0


def test_inspect_of_a_damaged_database_says_how_to_move_it_aside_and_check_it(state_home, db_path, capsys):
    db_path.parent.mkdir(parents=True, mode=0o700)
    db_path.write_bytes(b"this is not a SQLite database\n" * 200)
    assert cli_main(["inspect", "--state-dir", str(state_home)]) == 1
    err = capsys.readouterr().err
    assert "not a SQLite database" in err
    assert f"mv {db_path} {db_path}.bad" in err and f"sqlite3 {db_path}.bad 'PRAGMA integrity_check'" in err
    assert db_path.read_bytes() == b"this is not a SQLite database\n" * 200


def test_inspect_of_a_file_elsewhere_that_is_not_sqlite_never_advises_moving_it(tmp_path, capsys):
    """`--path` at someone's file (a typo, the wrong argument): moving it aside would start no store."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert cli_main(["inspect", "--path", str(notes)]) == 1
    err = capsys.readouterr().err
    assert "not a SQLite database" in err and f"mv {notes}" not in err
    assert "plugin-state/state.sqlite" in err and "--state-dir" in err
    assert notes.read_text() == "my notes\n"


def test_a_home_of_a_user_this_host_lacks_is_bad_usage_not_a_traceback(tmp_path):
    for args in (["--state-dir", "~no-such-user-here/cs"], ["--path", "~no-such-user-here/db"]):
        for command in ("probe", "inspect"):
            done = run_cli(command, *args)
            assert (done.returncode, done.stderr) == (2, f"{args[1]}: no such user's home; give the whole path\n")
