"""Run a real gateway subprocess against platform simulators, for tests and the demo.

    async with GatewayHarness([SlackSimulator()], modes={"slack": "store"}) as gw:
        await slack_sim.send_event(...)          # the simulator posts to gw.gateway_url
        await gw.restart(kind="kill")            # SIGKILL, then start again on the same port
        await slack_sim.wait_for(lambda recs: ...)

The harness owns: the simulators' lifecycle, a state dir (a temp dir unless given), one free
gateway port kept across restarts, the TOML config (each simulator's `gateway_config()` plus its
mode, plus any extra adapter tables such as `echo`), and the `python -m chatstate start` process.
Readiness comes from the gateway's `--ready-fd` line (an event, not a poll), confirmed by one
GET /healthz. On any error, and on exit, it stops what it started; a gateway that ignores
SIGTERM for `stop_timeout_s` is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp

from chatstate.gateway.settings import Mode
from chatstate.gateway.sim.base import SimulatorServer
from chatstate.gateway.sim.tomlwrite import dumps

DEFAULT_READY_TIMEOUT_S = 30.0  # a cold start imports aiohttp and every adapter SDK
DEFAULT_STOP_TIMEOUT_S = 30.0


class GatewayStartError(RuntimeError):
    """The gateway exited (or never got ready) during start; `exit_code` says why (2, 3, 4...)."""

    def __init__(self, exit_code: int | None, log_tail: str) -> None:
        super().__init__(f"gateway failed to start (exit {exit_code}):\n{log_tail}")
        self.exit_code = exit_code
        self.log_tail = log_tail


@dataclass(frozen=True)
class CliResult:
    """What a `python -m chatstate ...` run returned."""

    returncode: int
    stdout: str
    stderr: str


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def run_gateway_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 60.0, cwd: str | Path | None = None
) -> CliResult:
    """Run `python -m chatstate *args` to completion; for exit-code tests and `stop`/`status`.
    `cwd`: run it from another folder, as a person would (relative paths then resolve there)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatstate",
        *args,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class GatewayHarness:
    """Async context manager: simulators + config + a gateway subprocess you can stop/kill/restart."""

    def __init__(
        self,
        simulators: Sequence[SimulatorServer] = (),
        *,
        modes: Mode | Mapping[str, Mode] = "store",
        adapters: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        state_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[str | Path] = (),
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        host: str = "127.0.0.1",
    ) -> None:
        """`modes`: one mode for every simulator's adapter, or a mode per adapter id.
        `adapters`: extra `[adapters.<id>]` tables (e.g. {"echo": {"secret": "..."}}).
        `config`: extra top-level config merged last (e.g. {"trusted_plugins": [...]},
        {"state": {"sweep_interval_s": 1}}). `pythonpath`: dirs for external plugin modules.
        """
        self.simulators = list(simulators)
        self.modes = modes
        self.extra_adapters = {k: dict(v) for k, v in (adapters or {}).items()}
        self.extra_config = dict(config or {})
        self.host = host
        self.port = 0
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="chatstate-gw-"))
        self.config_path = self.state_dir / "gateway.toml"
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        if pythonpath:
            parts = [str(Path(p).resolve()) for p in pythonpath]
            self.env["PYTHONPATH"] = os.pathsep.join([*parts, self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0  # how many times the gateway was started; one log file per run
        self._http: aiohttp.ClientSession | None = None

    # -- context manager ------------------------------------------------------------------------
    async def __aenter__(self) -> GatewayHarness:
        try:
            for sim in self.simulators:
                if not sim.port:
                    await sim.start()
            self.port = free_port(self.host)
            self.write_config()
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the gateway (SIGTERM, then SIGKILL), the simulators and the HTTP session."""
        try:
            if self.running:
                await self.stop()
        finally:
            if self.proc is not None and self.proc.returncode is None:  # stop() was interrupted
                self.proc.kill()
                await self.proc.wait()
            if self._http is not None:
                await self._http.close()
                self._http = None
            for sim in reversed(self.simulators):
                await sim.stop()
            if self._own_dir:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- config ---------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "plugin-state" / "state.sqlite"

    def mode_for(self, adapter_id: str) -> Mode:
        return self.modes if isinstance(self.modes, str) else self.modes.get(adapter_id, "store")

    def config_doc(self) -> dict[str, Any]:
        """The config the gateway will get, as a dict (written by `write_config`)."""
        adapters: dict[str, dict[str, Any]] = {}
        for sim in self.simulators:
            adapters[sim.name] = {**sim.gateway_config(), "mode": self.mode_for(sim.name)}
        for adapter_id, table in self.extra_adapters.items():
            adapters[adapter_id] = {"mode": self.mode_for(adapter_id), **adapters.get(adapter_id, {}), **table}
        doc: dict[str, Any] = {
            "gateway": {"host": self.host, "port": self.port},
            "state": {"dir": str(self.state_dir)},
            "adapters": adapters,
        }
        return _merge(doc, self.extra_config)

    def write_config(self) -> Path:
        """(Re)write the TOML config; call again after changing modes or tables, then restart."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0600 whatever the umask: the config holds the adapters' tokens
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(dumps(self.config_doc()))
        return self.config_path

    # -- process control ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        """Start the gateway and return once it is ready; raises GatewayStartError otherwise."""
        if self.running:
            raise RuntimeError("the gateway is already running")
        self.runs += 1
        log_path = self.log_path(self.runs)
        read_end, write_end = os.pipe()
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.fchmod(log_fd, 0o600)
            with os.fdopen(log_fd, "ab") as log_file:  # the gateway's JSON log lines, one file per run
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "chatstate",
                    "start",
                    "--config",
                    str(self.config_path),
                    "--ready-fd",
                    str(write_end),
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(write_end,),
                )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        try:
            line = await self._ready_line(read_end)
            if not line:  # EOF: the gateway exited before it was ready
                code = await asyncio.wait_for(self.proc.wait(), self.ready_timeout_s)
                raise GatewayStartError(code, self.log_tail())
            await self._confirm_ready()
        except BaseException:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            raise
        for sim in self.simulators:
            sim.gateway_url = self.gateway_url

    async def _ready_line(self, fd: int) -> bytes:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            return await asyncio.wait_for(reader.readline(), self.ready_timeout_s)
        except TimeoutError:
            raise GatewayStartError(None, f"not ready after {self.ready_timeout_s}s\n{self.log_tail()}") from None
        finally:
            transport.close()

    async def _confirm_ready(self) -> None:
        status, body = await self.healthz()
        if status != 200 or not body.get("ready"):
            raise GatewayStartError(None, f"/healthz said {status} {body}")

    async def stop(self, *, timeout_s: float | None = None) -> int:
        """SIGTERM the gateway and wait for it to exit (SIGKILL after the timeout); its exit code."""
        return await self._signal(signal.SIGTERM, timeout_s if timeout_s is not None else self.stop_timeout_s)

    async def kill(self) -> int:
        """SIGKILL the gateway (what a crash or OOM kill looks like); its exit code (-9)."""
        return await self._signal(signal.SIGKILL, None)

    async def restart(self, kind: Literal["term", "kill"] = "term") -> int:
        """Stop (SIGTERM) or kill (SIGKILL) the gateway, then start it on the same port and
        state dir; returns the old process's exit code."""
        code = await (self.stop() if kind == "term" else self.kill())
        await self.start()
        return code

    async def _signal(self, sig: signal.Signals, timeout_s: float | None) -> int:
        proc = self.proc
        if proc is None:
            raise RuntimeError("the gateway was never started")
        if proc.returncode is not None:
            return proc.returncode
        proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    # -- talking to it --------------------------------------------------------------------------
    @property
    def http(self) -> aiohttp.ClientSession:
        """A client session for talking to the gateway (closed by the harness)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def healthz(self) -> tuple[int, dict[str, Any]]:
        """GET /healthz: (HTTP status, JSON body)."""
        async with self.http.get(f"{self.gateway_url}/healthz") as resp:
            return resp.status, await resp.json()

    async def cli(self, *args: str) -> CliResult:
        """Run `python -m chatstate <args> --config <this config>` (e.g. "status", "--json")."""
        return await run_gateway_cli(*args, "--config", str(self.config_path), env=self.env)

    # -- logs -----------------------------------------------------------------------------------
    def log_path(self, run: int) -> Path:
        return self.state_dir / f"gateway-run{run}.log"

    def logs(self, run: int | None = None) -> list[dict[str, Any]]:
        """Structured log events of one run (default: all runs), in order; non-JSON lines skipped."""
        runs = [run] if run is not None else range(1, self.runs + 1)
        events: list[dict[str, Any]] = []
        for n in runs:
            try:
                text = self.log_path(n).read_text(errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
        return events

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(self.runs).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out
