"""`gateway demo` end to end: the four restart scenarios, both kill modes, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
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
    return subprocess.run([sys.executable, "-m", "chatstate", "demo", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
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
    assert {"double_mention", "bot_echo", "edit", "thread_broadcast", "rate_limited", "server_error",
            "reset_after_post"} <= set(hits["slack"]), hits
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
    assert (keep / "store" / "plugin-state" / "state.sqlite").exists()


def test_unknown_adapter_is_bad_usage(tmp_path: Path) -> None:
    result = demo("--only", "slack,irc", tmp=tmp_path)
    assert result.returncode == 2
    assert "--only" in result.stderr


def test_ctrl_c_cleans_up_processes_and_temp_dirs(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with subprocess.Popen([sys.executable, "-m", "chatstate", "demo"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until a gateway is really up, then interrupt
            if "gateway ready" in line:
                break
        assert processes_mentioning(str(tmp_path)), "a gateway should be running now"
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, rest
    deadline = time.monotonic() + 30
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)  # a SIGTERMed gateway takes a moment to exit
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []
