"""The gateway CLI as an operator runs it from another folder: a second start while one runs, and
every command after the gateway was SIGKILLed; each step a real `python -m chatstate` process."""

from __future__ import annotations

import json
import os
import select
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatstate.gateway.sim.harness import CliResult, run_gateway_cli


class Shell:
    """A shell whose CHATSTATE_HOME is a fresh folder, running commands from `/`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "CHATSTATE_HOME": str(home)}
        self.env.pop("CHATSTATE_GATEWAY_CONFIG", None)
        self.pids: list[int] = []

    async def run(self, *args: str) -> CliResult:
        return await run_gateway_cli(*args, env=self.env, cwd="/")

    async def start(self) -> int:
        started = await self.run("start", "--detach", "--port", "0")
        assert started.returncode == 0, started.stderr
        self.pids.append(json.loads(started.stdout)["pid"])
        return self.pids[-1]


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Shell]:
    sh = Shell(tmp_path / "home")
    yield sh
    for pid in sh.pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_start_detach_while_one_runs_refuses_at_once_and_spawns_nothing(shell: Shell) -> None:
    pid = await shell.start()
    log = shell.home / "gateway.log"
    logged = log.read_bytes()
    for _ in range(2):
        again = await shell.run("start", "--detach", "--port", "0")
        assert again.returncode == 4
        assert again.stderr == (
            f"gateway: a gateway is already running on {shell.home} (pid {pid}); stop it with "
            f"`chatstate stop --state-dir {shell.home}` or restart it with `chatstate restart --state-dir {shell.home}`, "
            "or give this one another --state-dir\n"
        )
    assert log.read_bytes() == logged  # no child was started to fail into the log
    report = json.loads((await shell.run("status", "--json")).stdout)
    assert (report["running"], report["pid"], report["health"]) == (True, pid, "ok")


async def test_every_command_after_a_sigkill_names_the_killed_gateway_and_needs_no_cleanup(shell: Shell) -> None:
    pid = await shell.start()
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    said = f"the last gateway (pid {pid}) ended without stopping (killed or crashed?)"
    for _ in range(2):
        status = await shell.run("status")
        assert status.returncode == 1, status.stderr
        first = status.stdout.splitlines()[0]
        assert first.startswith(f"gateway: not running (state dir {shell.home}); {said}"), status.stdout
        report = json.loads((await shell.run("status", "--json")).stdout)
        assert report["running"] is False and report["last_gateway"] == {"pid": pid, "stopped": False}
    for _ in range(2):
        stopped = await shell.run("stop")
        assert stopped.returncode == 0 and stopped.stderr.startswith(f"gateway: not running; {said}")
    again = await shell.start()  # no manual cleanup
    assert (await shell.run("stop")).stderr == f"gateway: stopped (pid {again})\n"
    status = await shell.run("status")  # a clean stop leaves nothing to report
    assert status.stdout.splitlines()[0] == f"gateway: not running (state dir {shell.home})"
    assert "last_gateway" not in json.loads((await shell.run("status", "--json")).stdout)


def _wait_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], 30)[0], f"pid {pid} did not exit after SIGKILL"
    finally:
        os.close(fd)
