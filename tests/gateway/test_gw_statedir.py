"""Unusable state dirs, `status`, a corrupt database and plugin start failures, as an operator
meets them: one `gateway:` line naming the path and what to do, no traceback,
the documented exit code; every case a real `python -m chatstate` process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
from gw_helpers import EXT_PLUGINS_DIR, SECRET

from chatstate.gateway.sim.harness import GatewayHarness, free_port, run_gateway_cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "start": ["start", "--port", "0"],
    "start --detach": ["start", "--detach", "--port", "0"],
    "start --check-only": ["start", "--check-only"],
    "restart": ["restart", "--port", "0"],
    "status": ["status"],
    "stop": ["stop"],
    "state probe": ["state", "probe"],
}


def _bad_dir(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A state dir the gateway must refuse, and a phrase the message must contain."""
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    if kind == "file":
        path = tmp_path / "a-file"
        path.write_text("not a directory\n")
        return path, "is not a directory; move that file away or pass another --state-dir"
    if kind == "symlink":
        path = tmp_path / "link"
        path.symlink_to(target)
        return path, "is a symlink"
    if kind == "uncreatable":  # missing, under a folder nobody may write to (not even root: procfs)
        return Path("/proc/1/state"), "cannot be created"
    if kind == "unwritable":  # root writes through any mode bits, but not into procfs
        if os.getuid() == 0:
            return Path("/proc/1"), "is not writable by you"
        target.chmod(0o555)
        return target, "is not writable by you"
    if os.getuid() == 0:  # foreign-owned: as root, give it to nobody; otherwise root's /usr/share
        os.chown(target, 65534, 65534)
        return target, "is owned by uid 65534"
    return Path("/usr/share"), "is owned by uid 0"


@pytest.mark.parametrize("kind", ["file", "symlink", "foreign", "unwritable", "uncreatable"])
@pytest.mark.parametrize("command", list(COMMANDS))
async def test_an_unusable_state_dir_is_one_line_and_exit_3(tmp_path: Path, command: str, kind: str) -> None:
    path, phrase = _bad_dir(tmp_path, kind)
    result = await run_gateway_cli(*COMMANDS[command], "--state-dir", str(path), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("gateway:")]
    assert lines == [f"gateway: state dir {path} {phrase}" + lines[0].split(phrase, 1)[1]]
    assert "Traceback" not in result.stderr + result.stdout
    if kind == "file":
        assert path.read_text() == "not a directory\n"  # untouched


async def test_status_without_a_database_says_so(tmp_path: Path) -> None:
    result = await run_gateway_cli("status", "--state-dir", str(tmp_path / "fresh"))
    assert result.returncode == 1
    assert (
        result.stdout.splitlines()[1]
        == f"store: no database yet ({tmp_path / 'fresh' / 'plugin-state' / 'state.sqlite'})"
    )
    assert not (tmp_path / "fresh").exists()  # status only looks


async def test_status_of_a_frozen_gateway_says_not_responding_in_time(gw: GatewayHarness) -> None:
    assert gw.pid is not None
    os.kill(gw.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        result = await gw.cli("status", "--timeout", "1")
        took = time.monotonic() - t0
    finally:
        os.kill(gw.pid, signal.SIGCONT)
    assert result.returncode == 0
    assert "health: not responding (timeout 1 s)" in result.stdout
    assert "FAILING" not in result.stdout and "Traceback" not in result.stderr
    assert took < 10  # one short wait, not the old 5 s per attempt plus a store check
    assert (await gw.healthz())[0] == 200


async def test_a_corrupt_database_says_how_to_move_it_aside_and_check_it(tmp_path: Path) -> None:
    db = tmp_path / "s" / "plugin-state" / "state.sqlite"
    db.parent.mkdir(parents=True, mode=0o700)
    db.write_bytes(b"this is not a SQLite database\n" * 200)
    started = await run_gateway_cli("start", "--state-dir", str(tmp_path / "s"), "--port", "0")
    status = await run_gateway_cli("status", "--state-dir", str(tmp_path / "s"))
    assert started.returncode == 3 and status.returncode == 1
    [line] = [x for x in started.stderr.splitlines() if x.startswith("gateway:")]
    for text in (line, status.stdout):
        assert "not a SQLite database" in text
        assert f"mv {db} {db}.bad" in text and f"sqlite3 {db}.bad 'PRAGMA integrity_check'" in text
    assert db.read_bytes() == b"this is not a SQLite database\n" * 200


async def test_a_database_of_another_uid_says_chown_never_move_it_aside(tmp_path: Path) -> None:
    """A healthy file whose owner is wrong: moving it aside would start an empty store and drop its rows."""
    assert os.geteuid() == 0, "chowning to another uid needs root (the CI container runs as root)"
    from chatstate.state import database_path, open_keyed_store

    with open_keyed_store("p", "ns", max_entries=1, path=database_path(tmp_path / "s")) as store:
        store.register("k", 1)
    os.chown(database_path(tmp_path / "s"), 65534, 65534)
    started = await run_gateway_cli("start", "--state-dir", str(tmp_path / "s"), "--port", "0")
    status = await run_gateway_cli("status", "--state-dir", str(tmp_path / "s"))
    assert started.returncode == 3 and status.returncode == 1
    for text in (started.stderr, status.stdout):
        assert "owned by uid 65534" in text and "chown" in text
        assert "move it aside" not in text and "mv " not in text


async def test_a_plugin_start_failure_is_one_line_with_the_traceback_in_the_log(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'external_plugins = ["gw_ext_plugin:BrokenStartPlugin"]\n[gateway]\nport = {free_port()}\n')
    env = {**os.environ, "PYTHONPATH": str(EXT_PLUGINS_DIR)}
    result = await run_gateway_cli(
        "start", "--detach", "--config", str(config), "--state-dir", str(tmp_path / "s"), env=env
    )
    assert result.returncode == 1
    log = tmp_path / "s" / "gateway.log"
    assert result.stderr == (
        "gateway: failed to start (exit 1): adapters.ext-broken: start failed: ConnectionRefusedError: "
        f"[Errno 111] upstream refused the connection (traceback in the log); log: {log}\n"
    )
    events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    [failed] = [e for e in events if e["event"] == "plugin_start_failed"]
    assert failed["plugin"] == "ext-broken" and "Traceback" in failed["traceback"]
    assert not any(e["event"] == "gateway_crashed" for e in events)


async def test_gateway_ready_counts_from_process_start(tmp_path: Path) -> None:
    launched = time.time()  # wall clock, to compare with the event's own `ts`
    async with GatewayHarness(adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "s") as h:
        [ready] = [e for e in h.logs() if e["event"] == "gateway_ready"]
    launch_to_ready_ms = (ready["ts"] - launched) * 1000
    # launch-to-ready includes the interpreter and the imports (hundreds of ms), which the old
    # timer (started inside server.run) left out; the slack is the harness's own fork and exec
    assert 0.7 * launch_to_ready_ms <= ready["duration_ms"] <= launch_to_ready_ms + 20, (ready, launch_to_ready_ms)


def test_every_log_event_is_in_the_docs_table() -> None:
    doc = (ROOT / "docs" / "gateway.md").read_text()
    table = doc.split("## Logs", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    pattern = re.compile(r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z][a-z0-9_]+)\"")
    emitted = set()
    for folder in ("gateway", "adapters", "state"):
        for path in (ROOT / folder).rglob("*.py"):
            emitted |= set(pattern.findall(path.read_text()))
    assert emitted, "no log events found: the pattern is wrong"
    assert sorted(emitted - documented) == []


def test_no_message_is_logged_without_an_event_name() -> None:
    """Log lines are events (`"event": "snake_case"`), never free text with %-arguments."""
    free_text = re.compile(r"\blog\w*\.(?:debug|info|warning|error|exception)\(\s*\"[^\"]*[ %]")
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("gateway", "adapters")
        for p in (ROOT / folder).rglob("*.py")
        if free_text.search(p.read_text())
    ]
    assert offenders == []


async def test_gateway_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """gateway.log, gateway.lock, gateway.pid and last-launch.json 0600 and new dirs 0700, under
    umask 000: they can hold tokens."""
    state_dir = tmp_path / "a" / "b"
    script = f"umask 000 && exec {sys.executable} -m chatstate start --detach --state-dir {state_dir} --port 0"
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    try:
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "a", state_dir, *state_dir.iterdir()]}
        modes.pop("plugin-state", None)  # the state package's (docs/state.md)
        files = ("gateway.log", "gateway.lock", "gateway.pid", "last-launch.json")
        assert modes == {"a": 0o700, "b": 0o700, **dict.fromkeys(files, 0o600)}
    finally:
        stopped = await run_gateway_cli("stop", "--state-dir", str(state_dir))
        assert stopped.returncode == 0
