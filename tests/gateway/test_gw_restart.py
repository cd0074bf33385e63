"""`chatstate restart` as an operator runs it: from another folder, without `--config`, twice,
with a typo, interrupted, with nothing running; every step a real `python -m chatstate` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_helpers import EXT_PLUGINS_DIR, SECRET

from chatstate.gateway import launch
from chatstate.gateway.echo import sign
from chatstate.gateway.sim.harness import CliResult, free_port, run_gateway_cli

ECHO = f'[adapters.echo]\nsecret = "{SECRET}"\n'


@dataclass
class Operator:
    """A person with a config folder, another folder to work from, and a shell environment."""

    config_dir: Path
    elsewhere: Path
    home: Path
    env: dict[str, str]

    async def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        return await run_gateway_cli(*args, env=env or self.env, cwd=cwd or self.elsewhere)

    async def status(self) -> dict:
        result = await self.run("status", "--json")
        return json.loads(result.stdout)


@pytest.fixture
async def operator(tmp_path: Path) -> AsyncIterator[Operator]:
    config_dir, elsewhere, home = tmp_path / "cfg", tmp_path / "elsewhere", tmp_path / "home"
    config_dir.mkdir()
    elsewhere.mkdir()
    # The secret only in the environment of the shell that started the gateway, as docs advise.
    env = {
        **os.environ,
        "CHATSTATE_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(EXT_PLUGINS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("CHATSTATE_GATEWAY_CONFIG", None)
    (config_dir / "gw.toml").write_text(f"[gateway]\nport = {free_port()}\n[adapters.echo]\n")
    op = Operator(config_dir, elsewhere, home, env)
    yield op
    info = _pid_info(home)
    if info:
        try:
            os.kill(info["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_info(home: Path) -> dict | None:
    try:
        return json.loads((home / "gateway.pid").read_text())
    except (OSError, ValueError):
        return None


async def _bump(url: str, key: str) -> int:
    body = json.dumps({"key": key}).encode()
    headers = {"X-Echo-Signature": sign(SECRET, "POST", "/echo", body)}
    async with aiohttp.ClientSession() as http, http.post(f"{url}/echo", data=body, headers=headers) as resp:
        resp.raise_for_status()
        return (await resp.json())["count"]


async def _start(op: Operator) -> dict:
    started = await op.run(
        "start", "--detach", "--config", "gw.toml", cwd=op.config_dir, env={**op.env, "CHATSTATE_ECHO_SECRET": SECRET}
    )
    assert started.returncode == 0, started.stderr
    return json.loads(started.stdout)


async def test_restart_without_config_starts_what_was_running_twice_from_elsewhere(operator: Operator) -> None:
    first = await _start(operator)
    assert await _bump(first["url"], "k") == 1
    pids = {first["pid"]}
    for _ in range(2):  # a second restart restarts what the first one started
        restarted = await operator.run("restart")  # no --config, no secret in this shell
        assert restarted.returncode == 0, restarted.stderr
        pids.add(json.loads(restarted.stdout)["pid"])
        report = await operator.status()
        assert (report["running"], report["health"], report["adapters"]) == (True, "ok", {"echo": "ok"})
        assert report["pid"] in pids and len(pids) > 1
        assert await _bump(report["url"], "k") == len(pids)  # same state, same adapters
    assert len(pids) == 3
    stopped = await operator.run("stop")
    assert stopped.returncode == 0


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        (f'[adapters.echo]\nsecret = "{SECRET}"\nmax_entires = 5\n', "adapters.echo.max_entires"),  # a typo
        ("[adapters.echo]\n", "adapters.echo.secret"),  # a secret missing from this shell
        ('external_plugins = ["no_such_module:Plugin"]\n', "external_plugins[0]"),  # not importable
        ('[adapters.discord]\npublic_key = "abc"\nbot_token = "t"\n', "adapters.discord.public_key"),  # check()
        # options the store refuses only when it opens, which the new gateway does after the old one stopped
        (f'[state]\nurl = "redis://127.0.0.1:1/0?socket_keepalve=1"\n{ECHO}', "state.url: INVALID_INPUT"),
        (f'[state]\nurl = "rediss://127.0.0.1:1/0?ssl_cert_reqs=requierd"\n{ECHO}', "Flag: requierd"),
    ],
)
async def test_a_config_that_fails_validation_stops_nothing(operator: Operator, toml: str, named: str) -> None:
    first = await _start(operator)
    (operator.elsewhere / "new.toml").write_text(toml + f"[gateway]\nport = {free_port()}\n")
    refused = await operator.run("restart", "--config", "new.toml")
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"gateway: restart refused, the running gateway (pid {first['pid']}) keeps serving")
    assert named in line and SECRET not in line
    report = await operator.status()
    assert (report["pid"], report["health"]) == (first["pid"], "ok")
    assert await _bump(first["url"], "still-serving") == 1


async def test_a_new_gateway_that_fails_to_start_names_the_log_and_the_command(operator: Operator) -> None:
    first = await _start(operator)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (operator.elsewhere / "new.toml").write_text(f'[gateway]\nport = {port}\n[adapters.echo]\nsecret = "s"\n')
        failed = await operator.run("restart", "--config", "new.toml")
    assert failed.returncode == 4
    [line] = failed.stderr.splitlines()  # one line says it all
    assert line.startswith("gateway: failed to start (exit 4): ")
    log = operator.home / "gateway.log"
    assert f"log: {log}" in line and f"port {port}" in line
    assert "CHATSTATE_ECHO_SECRET set as before" in line  # named, never its value
    assert SECRET not in failed.stderr
    command = line.split("run: ", 1)[1].split(" (with ", 1)[0]
    cd, _, start = command.partition(" && ")
    assert shlex.split(cd) == ["cd", str(operator.config_dir)]  # the folder it was started from
    argv = shlex.split(start)
    assert argv[:3] == [sys.executable, "-m", "chatstate"] and "--detach" in argv
    env = {**operator.env, "CHATSTATE_ECHO_SECRET": SECRET}
    again = await run_gateway_cli(*argv[3:], env=env, cwd=operator.config_dir)
    assert again.returncode == 0, again.stderr
    report = await operator.status()
    assert report["adapters"] == {"echo": "ok"} and report["pid"] != first["pid"]


@pytest.fixture(params=["terminal", "background"])
def runner_sigint(request: pytest.FixtureRequest) -> Iterator[None]:
    """How the suite itself was started: from a terminal (SIGINT handled), or as `pytest &` from a
    script, which a shell starts with SIGINT ignored, and every process the suite starts inherits."""
    previous = signal.signal(
        signal.SIGINT, signal.SIG_IGN if request.param == "background" else signal.default_int_handler
    )
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("runner_sigint")
async def test_ctrl_c_while_a_detached_start_waits_leaves_no_gateway(operator: Operator) -> None:
    fifo = operator.elsewhere / "started.fifo"
    os.mkfifo(fifo)
    (operator.elsewhere / "slow.toml").write_text(
        f'external_plugins = ["gw_ext_plugin:SlowStartPlugin"]\n[gateway]\nport = {free_port()}\n'
        f'[adapters.ext-slow]\nfifo = "{fifo}"\n'
    )
    with _sigint_as_a_terminal_gives():  # the Ctrl-C below is a person's, typed where they started it
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatstate",
            "start",
            "--detach",
            "--config",
            "slow.toml",
            env=operator.env,
            cwd=operator.elsewhere,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    said = await asyncio.to_thread(fifo.read_text)  # the gateway child is inside plugin.start
    assert said == "starting\n"
    child = _pid_info(operator.home)
    assert child is not None
    proc.send_signal(signal.SIGINT)
    out, err = await proc.communicate()
    assert proc.returncode == 130
    assert err.decode() == "gateway: interrupted\n" and out == b""
    assert not _alive(child["pid"])
    report = await operator.status()
    assert report["running"] is False


@pytest.mark.usefixtures("runner_sigint")
async def test_ctrl_c_while_a_restart_waits_says_the_previous_gateway_was_stopped(operator: Operator) -> None:
    """After it stopped the old gateway, a Ctrl-C kills the new one: nothing serves, which the one
    line says, with the command that starts the old configuration again."""
    first = await _start(operator)
    fifo = operator.elsewhere / "started.fifo"
    os.mkfifo(fifo)
    (operator.elsewhere / "slow.toml").write_text(
        f'external_plugins = ["gw_ext_plugin:SlowStartPlugin"]\n[gateway]\nport = {free_port()}\n'
        f'[adapters.ext-slow]\nfifo = "{fifo}"\n'
    )
    with _sigint_as_a_terminal_gives():
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "chatstate", "restart", "--config", "slow.toml"),
            env=operator.env,
            cwd=operator.elsewhere,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    assert await asyncio.to_thread(fifo.read_text) == "starting\n"  # the old one is stopped, the new one starting
    child = _pid_info(operator.home)
    assert child is not None and child["pid"] != first["pid"]
    proc.send_signal(signal.SIGINT)
    out, err = await proc.communicate()
    assert (proc.returncode, out) == (130, b"")
    [line] = err.decode().splitlines()
    said = "gateway: interrupted; the previous gateway was stopped; to start its configuration again run: cd "
    assert line.startswith(said) and "(with CHATSTATE_ECHO_SECRET set as before)" in line and SECRET not in line
    assert not _alive(child["pid"])  # ours, reaped; the first one is gone too (not our child: its lock, below)
    assert (await operator.status())["running"] is False


def test_ctrl_c_while_the_gateway_process_is_being_created_kills_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands inside Popen, once the child exists but before Popen returns it, left a
    gateway nobody could kill (in its own session, the terminal's next Ctrl-C never reaches it)."""
    children: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(*args: Any, **kwargs: Any) -> subprocess.Popen:
        children.append(real_popen(*args, **kwargs))
        signal.raise_signal(signal.SIGINT)  # in the parent, as a person's Ctrl-C at that instant
        return children[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", popen_then_ctrl_c)
    (tmp_path / "gw.toml").write_text(f"[gateway]\nport = {free_port()}\n")
    (home := tmp_path / "home").mkdir(mode=0o700)
    with _sigint_as_a_terminal_gives(), pytest.raises(KeyboardInterrupt):
        launch.spawn_detached(launch.Launch(home, tmp_path / "gw.toml"), ready_timeout_s=60)
    try:
        assert children and children[0].poll() is not None  # killed and reaped, not left serving
    finally:
        children[0].kill()
        children[0].wait()


@contextlib.contextmanager
def _sigint_as_a_terminal_gives() -> Iterator[None]:
    """Start processes with SIGINT at its default, as a shell starts a command typed at a terminal,
    whatever this process has: an ignored signal stays ignored across fork and exec (and Python
    then never raises KeyboardInterrupt), while a handled one is reset to the default by exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_restart_keeps_the_plugin_path_it_was_started_with(operator: Operator) -> None:
    (operator.config_dir / "ext.toml").write_text(
        'external_plugins = ["gw_ext_plugin:NotesPlugin"]\ntrusted_plugins = ["ext-notes"]\n'
        f"[gateway]\nport = {free_port()}\n"
    )
    started = await operator.run("start", "--detach", "--config", "ext.toml", cwd=operator.config_dir)
    assert started.returncode == 0, started.stderr
    bare = {k: v for k, v in operator.env.items() if k != "PYTHONPATH"}  # another shell, no PYTHONPATH
    restarted = await operator.run("restart", env=bare)
    assert restarted.returncode == 0, restarted.stderr
    report = await operator.status()
    assert report["adapters"] == {"ext-notes": "ok"} and report["pid"] != json.loads(started.stdout)["pid"]


@pytest.mark.parametrize("how", ["stop", "sigkill"])
async def test_restart_with_nothing_running_starts_the_last_launch_and_says_so(operator: Operator, how: str) -> None:
    first = await _start(operator)
    assert await _bump(first["url"], "k") == 1
    if how == "stop":
        assert (await operator.run("stop")).returncode == 0
    else:  # a crash: the pid file stays behind, the lock does not
        os.kill(first["pid"], signal.SIGKILL)
        assert _wait_gone(first["pid"])
    for attempt in range(2):  # the second restart finds the first one's gateway running
        restarted = await operator.run("restart", env={**operator.env, "CHATSTATE_ECHO_SECRET": SECRET})
        assert restarted.returncode == 0, restarted.stderr
        if attempt == 0:
            assert restarted.stderr == (
                f"gateway: not running; starting the last launch on {operator.home} again "
                f"(config {operator.config_dir / 'gw.toml'}, from {operator.home / 'last-launch.json'})\n"
            )
        report = await operator.status()
        assert report["adapters"] == {"echo": "ok"}  # the same adapters, never a default gateway
        assert await _bump(report["url"], "k") == attempt + 2


async def test_restart_with_nothing_ever_started_refuses_and_names_the_command(operator: Operator) -> None:
    refused = await operator.run("restart")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"gateway: no gateway is running on {operator.home} and none was started there before, so there is "
        "nothing to restart; start one with: chatstate start --config FILE --detach\n"
    )
    assert not operator.home.exists()  # refused, nothing made: not even an empty state dir
    assert (await operator.status())["running"] is False


async def test_restart_from_another_folder_finds_a_plugin_imported_from_the_start_folder(operator: Operator) -> None:
    (operator.config_dir / "my_notes.py").write_text((EXT_PLUGINS_DIR / "gw_ext_plugin.py").read_text())
    (operator.config_dir / "ext.toml").write_text(
        'external_plugins = ["my_notes:NotesPlugin"]\ntrusted_plugins = ["ext-notes"]\n'
        f"[gateway]\nport = {free_port()}\n"
    )
    bare = {k: v for k, v in operator.env.items() if k != "PYTHONPATH"}  # found only in the folder it ran in
    started = await operator.run("start", "--detach", "--config", "ext.toml", cwd=operator.config_dir, env=bare)
    assert started.returncode == 0, started.stderr
    for _ in range(2):
        restarted = await operator.run("restart", env=bare)  # from operator.elsewhere
        assert restarted.returncode == 0, restarted.stderr
    assert (await operator.status())["adapters"] == {"ext-notes": "ok"}
    assert (await operator.run("stop")).returncode == 0
    # a fresh start from elsewhere says where it looked, and what to do
    failed = await operator.run("start", "--config", str(operator.config_dir / "ext.toml"), env=bare)
    assert failed.returncode == 2
    assert failed.stderr.splitlines()[-1] == (  # after the JSON log line of a foreground start
        "gateway: config error: external_plugins[0]: cannot import 'my_notes': no module 'my_notes' in the folder "
        f"this command ran in ({operator.elsewhere}), on PYTHONPATH (unset) or among the installed packages; run "
        "it from the folder that holds my_notes/ or my_notes.py, or add that folder to PYTHONPATH"
    )


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    fd = os.pidfd_open(pid)
    try:
        import select

        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


async def test_the_command_a_failed_restart_prints_works_pasted_in_another_folder(operator: Operator) -> None:
    """The previous gateway's reply hook imports from the folder it was started from: the command
    starts there, wherever it is pasted (it used to fail with "cannot import 'mybot'")."""
    (operator.config_dir / "mybot.py").write_text("def answer(message):\n    return 'hi ' + message.user\n")
    port = free_port()
    (operator.config_dir / "gw.toml").write_text(f'[gateway]\nport = {port}\n[adapters.echo]\nreply = "mybot:answer"\n')
    await _start(operator)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        failed = await operator.run("restart", "--port", str(taken.getsockname()[1]))
    assert failed.returncode == 4, failed.stderr
    command = failed.stderr.split("run: ", 1)[1].split(" (with ", 1)[0]
    env = {**operator.env, "CHATSTATE_ECHO_SECRET": SECRET}
    pasted = await asyncio.create_subprocess_shell(command, cwd=operator.elsewhere, env=env, stdout=-1, stderr=-1)
    out, err = await pasted.communicate()
    assert pasted.returncode == 0, err.decode()
    assert json.loads(out)["url"] == f"http://127.0.0.1:{port}"
    assert (await operator.status())["adapters"] == {"echo": "ok"}
