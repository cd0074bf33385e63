"""`gateway demo` end to end: the four restart scenarios, both kill modes, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

BEHAVIOURS = {
    ("slack", "untagged follow-up in a participated thread"),
    ("discord", "click a pre-restart single-use button"),
    ("discord", "submit a modal opened before the restart"),
    ("teams", "reply to a pre-restart bot message"),
    ("matrix", "react to a pre-restart approval prompt"),
}


def demo(*args: str, tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}  # so the test can see what temp dirs it left
    return subprocess.run(
        [sys.executable, "-m", "chatstate", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("kill", ["term", "kill"])
def test_every_conversation_survives_with_the_store_and_is_lost_without(tmp_path: Path, kill: str) -> None:
    result = demo("--json", "--kill", kill, tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["kill"] == kill
    assert {(r["adapter"], r["behaviour"]) for r in report["rows"]} == BEHAVIOURS
    for row in report["rows"]:
        assert row["store_survived"] is True, row
        assert row["legacy_survived"] is False, row
    assert list(tmp_path.iterdir()) == []  # its temp dirs are gone
    assert processes_mentioning(str(tmp_path)) == []  # and so are its gateways


def test_hostile_far_ends_still_pass_and_the_table_names_the_edge_behaviours_hit(tmp_path: Path) -> None:
    result = demo("--json", "--hostile", tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {(r["adapter"], r["behaviour"]) for r in report["rows"]} == BEHAVIOURS
    assert all(r["store_survived"] and not r["legacy_survived"] for r in report["rows"]), report["rows"]
    hits = report["hostile"]
    # every conversation met its platform's edge behaviours, counted by the simulators
    assert {
        "double_mention",
        "bot_echo",
        "edit",
        "thread_broadcast",
        "rate_limited",
        "server_error",
        "reset_after_post",
    } <= set(hits["slack"]), hits
    assert {"deferred", "double_click", "slow_message"} <= set(hits["discord"]), hits
    assert {"duplicate", "redelivered", "edit", "rate_limited", "server_error"} <= set(hits["teams"]), hits
    table = demo("--hostile", "--only", "slack", tmp=tmp_path)
    assert table.returncode == 0 and "Edge behaviours the simulators played" in table.stdout
    assert "double_mention" in table.stdout and "PASS" in table.stdout


def test_table_output_and_kept_state_dir(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    result = demo("--only", "teams,slack", "--state-dir", str(keep), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| adapter | behaviour" in result.stdout and "PASS" in result.stdout
    assert "teams" in result.stdout and "discord" not in result.stdout
    assert "gateway SIGKILLed" in result.stderr  # progress goes to stderr
    [run] = list(keep.iterdir())  # this run's own folder
    assert run.name.startswith("run-") and (run / "store" / "plugin-state" / "state.sqlite").exists()


def test_unknown_adapter_is_bad_usage(tmp_path: Path) -> None:
    result = demo("--only", "slack,irc", tmp=tmp_path)
    assert result.returncode == 2
    assert "--only" in result.stderr


def test_a_reply_hook_typo_is_one_line_naming_the_key_not_a_traceback(tmp_path: Path) -> None:
    """docs/quickstart.md step 2: a typo in `mybot:answer` stops the gateway with a line naming the key."""
    (tmp_path / "mybot.py").write_text("def answer(message):\n    return 'hi'\n")
    env = {**os.environ, "TMPDIR": str(tmp_path), "CHATSTATE_SLACK_REPLY": "mybot:answr"}
    cmd = [sys.executable, "-m", "chatstate", "demo", "--only", "slack"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "gateway: config error: adapters.slack.reply: module 'mybot' has no attribute 'answr'" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "mybot.py"]  # its temp dir is gone


# Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group (the demo and the
# gateway it started), at several points of the run, each recognised by a progress line.
CTRL_C_POINTS = [
    "== legacy in-memory maps ==",  # the first gateway is starting
    "gateway ready",  # the first gateway just got ready
    "first half done",  # between a first half and the restart
    "and back in",  # right after a restart
    "== keyed store (SQLite) ==",  # the second mode is starting
]


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("point", CTRL_C_POINTS)
def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path: Path, point: str, twice: bool) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-m", "chatstate", "demo"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        seen = []
        for line in proc.stderr:  # wait for the point, then press Ctrl-C
            seen.append(line)
            if point in line:
                break
        assert point in seen[-1], "".join(seen)
        os.killpg(proc.pid, signal.SIGINT)
        if twice:  # an impatient second Ctrl-C while the first one's cleanup runs
            time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
        rest = proc.stderr.read()
        out = proc.stdout.read()
        assert proc.wait(timeout=120) == 130, rest
    assert rest.strip().splitlines()[-1] == "interrupted: simulators and gateway stopped", rest
    for bad in ("Traceback", "Unclosed", "Warning", "Exception ignored", "Task was destroyed"):
        assert bad not in rest, rest
    assert out == ""
    assert processes_mentioning(str(tmp_path)) == []  # no gateway left
    assert list(tmp_path.iterdir()) == []  # no temp dir left


def test_a_rerun_on_the_same_state_dir_works_and_keeps_each_runs_logs(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    runs = [demo("--only", "slack,slack,discord", "--json", "--state-dir", str(keep), tmp=tmp_path) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert [r["adapter"] for r in report["rows"]].count("slack") == 1  # --only deduplicated
    dirs = sorted(keep.iterdir())
    assert [str(d) for d in dirs] == sorted(json.loads(r.stdout)["state_dir"] for r in runs)
    for d in dirs:  # each run in its own folder, with its own logs
        assert (d / "store" / "gateway-run2.log").exists() and (d / "legacy" / "gateway-run1.log").exists()


def test_the_table_explains_its_time_column(tmp_path: Path) -> None:
    result = demo("--only", "discord", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| time" in result.stdout
    assert "\ntime: wall-clock time spent playing that conversation" in result.stdout


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The demo's kept config holds tokens: files 0600 and folders 0700 even under umask 000."""
    keep = tmp_path / "kept" / "deeper"
    script = f"umask 000 && exec {sys.executable} -m chatstate demo --only slack --state-dir {keep}"
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "kept").rglob("*")}
    modes["kept"] = stat.S_IMODE((tmp_path / "kept").stat().st_mode)
    assert any(name.endswith("gateway.toml") for name in modes)
    loose = {
        name: oct(mode) for name, mode in modes.items() if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)
    }
    assert loose == {}


def test_run_in_process_gives_the_callers_ctrl_c_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """`demo.run` ignores SIGINT while it cleans up; a caller that runs it in-process (a test, a notebook)
    could not Ctrl-C anything after it returned."""
    from chatstate.gateway import demo
    from chatstate.gateway.cli import build_parser

    async def nothing_to_play(*_: object) -> list[demo.Row]:
        return []

    monkeypatch.setattr(demo, "_play_transports", nothing_to_play)  # the signal handling is what is under test
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for argv in (["demo", "--json"], ["demo", "--only", "nope"]):  # a run, and bad usage
            assert demo.run(build_parser().parse_args(argv)) in (0, 2)
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, argv
    finally:
        signal.signal(signal.SIGINT, handler)
