"""The gateway CLI as an operator runs it, from `/` and each command twice: a second start while
one runs, every command after a SIGKILL, a lost pid file, a state dir turned read-only, a bad or
unreachable `[state] url`, a `~user` of no user, a corrupt database before a restart; each step a
real `python -m chatstate` process."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
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


@pytest.mark.parametrize("via", ["file", "variable"])
async def test_status_with_a_malformed_state_url_names_the_fix_and_never_the_password(
    shell: Shell, tmp_path: Path, via: str
) -> None:
    url = "redis://ops:hunter2@127.0.0.1:notaport/0"
    config = tmp_path / "gw.toml"
    config.write_text(f'[state]\nurl = "{url}"\n' if via == "file" else "")
    if via == "variable":
        shell.env["CHATSTATE_STATE_URL"] = url
    fix = f"fix [state] url in {config}" if via == "file" else "fix $CHATSTATE_STATE_URL"
    for _ in range(2):
        status = await shell.run("status", "--config", str(config))
        assert status.returncode == 1 and status.stderr == ""  # not running, the documented answer
        store = status.stdout.splitlines()[1]
        assert store.startswith("store: UNUSABLE (INVALID_INPUT) ") and "Port could not be cast" in store, store
        assert store.endswith(f"; {fix}: `chatstate start` refuses it as it is"), store
        report = json.loads((await shell.run("status", "--json", "--config", str(config))).stdout)
        assert report["store"]["url"] == "redis://ops:***@127.0.0.1:notaport/0"
        stopped = await shell.run("stop", "--config", str(config))
        assert (stopped.returncode, stopped.stderr) == (0, "gateway: not running\n")
        for said in (status, stopped):
            assert "hunter2" not in said.stdout + said.stderr and "Traceback" not in said.stderr


async def test_an_unreachable_state_url_is_not_checked_while_down_and_says_what_checks_it(
    shell: Shell, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[state]\nurl = "redis://ops:hunter2@127.0.0.1:1/0"\n')
    status = await shell.run("status", "--config", str(config))
    assert (status.returncode, status.stdout.splitlines()[1]) == (
        1,
        "store: not checked while the gateway is down (redis://ops:***@127.0.0.1:1/0); `chatstate state probe` checks it",
    )


async def test_stop_with_state_dir_stops_the_gateway_whatever_the_default_config_holds(
    shell: Shell, tmp_path: Path
) -> None:
    pid = await shell.start()
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway]\nprot = 1\n")  # edited after the start: a typo
    shell.env["CHATSTATE_GATEWAY_CONFIG"] = str(broken)
    status = await shell.run("status")
    assert status.returncode == 2 and status.stderr.startswith("gateway: config error: gateway.prot: unknown key")
    stopped = await shell.run("stop", "--state-dir", str(shell.home))
    assert (stopped.returncode, stopped.stderr) == (0, f"gateway: stopped (pid {pid})\n")


@pytest.mark.parametrize("clobber", ["deleted", "garbage"])
async def test_a_pid_file_lost_under_a_running_gateway_still_lets_status_stop_and_restart_find_it(
    shell: Shell, tmp_path: Path, clobber: str
) -> None:
    config = tmp_path / "echo.toml"
    config.write_text('[gateway]\nport = 0\n[adapters.echo]\nsecret = "s"\n')
    started = await shell.run("start", "--detach", "--config", str(config))
    assert started.returncode == 0, started.stderr
    shell.pids.append(pid := json.loads(started.stdout)["pid"])
    pid_file = shell.home / "gateway.pid"
    pid_file.unlink() if clobber == "deleted" else pid_file.write_text("[1, 2]")  # a cleanup script, an editor
    status = await shell.run("status")
    assert (status.returncode, status.stdout.splitlines()[0]) == (
        0,
        f"gateway: running pid {pid}; its pid file is missing or unreadable, so its address is unknown "
        "(`chatstate stop` and `restart` still find it)",
    )
    restarted = await shell.run("restart")  # what it ran (last-launch.json), never a default gateway
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stderr.startswith(f"gateway: starting the last launch on {shell.home} again (config {config}")
    shell.pids.append(json.loads(restarted.stdout)["pid"])
    report = json.loads((await shell.run("status", "--json")).stdout)
    assert (report["pid"] != pid, report["adapters"]) == (True, {"echo": "ok"})
    pid_file.unlink()
    stopped = await shell.run("stop")
    assert (stopped.returncode, stopped.stderr) == (0, f"gateway: stopped (pid {report['pid']})\n")


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="drops root's override of file modes with setpriv")
async def test_stop_stops_a_gateway_whose_state_dir_became_read_only(shell: Shell) -> None:
    """A disk remounted read-only, a `chmod -w`: the gateway must still be stoppable (status keeps
    refusing the dir, exit 3, as documented for a dir a gateway cannot use)."""
    pid = await shell.start()
    shell.home.chmod(0o500)
    no_override = [str(SETPRIV), "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "chatstate"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*no_override, *args], env=shell.env, cwd="/", capture_output=True, text=True, check=False
        )

    try:
        status = await asyncio.to_thread(run, "status")
        assert status.returncode == 3 and "is not writable by you (mode 0500)" in status.stderr
        stopped = await asyncio.to_thread(run, "stop")
        assert (stopped.returncode, stopped.stderr) == (0, f"gateway: stopped (pid {pid})\n")
        again = await asyncio.to_thread(run, "stop")  # nothing runs: the documented refusal, exit 3
        assert again.returncode == 3 and "is not writable by you" in again.stderr
    finally:
        shell.home.chmod(0o700)


async def test_a_home_of_a_user_this_host_lacks_is_a_config_error_naming_where_it_came_from(
    shell: Shell, tmp_path: Path
) -> None:
    shell.env["CHATSTATE_HOME"] = "~no-such-user-here/cs"
    said = "~no-such-user-here (in ~no-such-user-here/cs) is no user of this host; give the whole path"
    for args in (["status"], ["stop"], ["restart"], ["start", "--detach"], ["state", "probe"]):
        result = await shell.run(*args)
        assert (result.returncode, result.stderr) == (2, f"gateway: config error: $CHATSTATE_HOME: {said}\n"), args
        result = await shell.run(*args, "--state-dir", "~no-such-user-here/cs")
        assert (result.returncode, result.stderr) == (2, f"gateway: config error: --state-dir: {said}\n"), args
    config = tmp_path / "gw.toml"
    config.write_text('[state]\ndir = "~no-such-user-here/cs"\n')
    result = await shell.run("status", "--config", str(config))
    assert (result.returncode, result.stderr) == (2, f"gateway: config error: state.dir: {said}\n")


async def test_check_only_and_restart_judge_the_database_file_before_anything_is_stopped(shell: Shell) -> None:
    pid = await shell.start()
    db = shell.home / "plugin-state" / "state.sqlite"
    assert (await shell.run("state", "probe")).returncode == 0  # the database exists
    garbage = db.with_name("garbage")
    garbage.write_bytes(b"not a SQLite database\n" * 100)
    garbage.chmod(0o600)
    os.replace(garbage, db)  # under the running gateway (it keeps its open file)
    checked = await shell.run("start", "--check-only")
    assert checked.returncode == 3 and checked.stderr.startswith("gateway: state store unusable: OPEN_FAILED")
    restarted = await shell.run("restart")
    assert restarted.returncode == 3
    assert restarted.stderr.startswith(f"gateway: restart refused, the running gateway (pid {pid}) keeps serving: ")
    report = json.loads((await shell.run("status", "--json")).stdout)
    assert (report["running"], report["pid"]) == (True, pid)  # untouched
    assert db.read_bytes() == b"not a SQLite database\n" * 100  # and the file too
