"""Start a gateway in the background, and restart one with the configuration it runs with.

A foreground `chatstate start` records how it was launched (`launch`: the config file, its
command-line overrides, the CHATSTATE_* variables it read and the folder it ran in) in the pid
file and, to outlive the process, in `<state-dir>/last-launch.json`. `restart` without
`--config` starts exactly that again, from the recorded folder (where external plugins and
reply hooks were found), so an operator who learnt that `status` and `stop` need no `--config`
never silently gets a gateway with other adapters. Before it stops anything, `restart`
validates the new configuration completely (parse, plugin imports, each plugin's settings and
offline `check`), and refuses, leaving the old gateway serving, when that fails.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatstate.gateway.config import GatewayConfig, load_config
from chatstate.gateway.exits import BAD_CONFIG, FAILED, OK, GatewayExit
from chatstate.gateway.pidfile import FILE_MODE, check_state_dir
from chatstate.gateway.settings import ENV_PREFIX
from chatstate.state._database import shown_url
from chatstate.state._files import env_path

LOG_NAME = "gateway.log"  # under the state dir, for --detach and restart
CONFIG_ENV = "CHATSTATE_GATEWAY_CONFIG"  # the default for --config
WARNING = "gateway: warning: "  # a line that is not the reason a command failed
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD")  # in a variable's name: its value is a credential


def config_path(env: Mapping[str, str]) -> str | None:
    """The default for --config: $CHATSTATE_GATEWAY_CONFIG, unset when empty (never the current folder)."""
    return env_path(env, CONFIG_ENV)


def launch_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a launch keeps: every CHATSTATE_* one (config values, secrets) and
    PYTHONPATH (where external plugins are imported from)."""
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) or k == "PYTHONPATH"}


def is_secret(name: str, value: str) -> bool:
    """A variable whose value is never written to disk: a credential by its name, or a URL
    carrying a password (`CHATSTATE_STATE_URL=redis://user:pw@...`)."""
    return any(word in name for word in SECRET_WORDS) or ("://" in value and shown_url(value) != value)


def environ_of(pid: int) -> dict[str, str]:
    """The environment process `pid` was started with (Linux, same user), or {} if unreadable."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if b"=" in item)


@dataclass(frozen=True)
class Launch:
    """How a gateway is started: the part of the command line and environment that matters."""

    state_dir: Path
    config: Path | None = None  # absolute
    host: str | None = None  # command-line overrides only; None = the config's value
    port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # CHATSTATE_* variables and PYTHONPATH
    cwd: Path | None = None  # the folder it was started from: plugins and hooks import from there
    secrets: tuple[str, ...] = ()  # variables it had whose values are recorded nowhere (is_secret)

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "chatstate", "start", "--state-dir", str(self.state_dir)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.host is not None:
            argv += ["--host", self.host]
        if self.port is not None:
            argv += ["--port", str(self.port)]
        return argv

    def command(self) -> str:
        """The shell command that starts this configuration in the background (no values of
        variables: secrets stay out of terminals; the names are listed instead), from the folder
        its plugins and reply hooks were imported from, so it works wherever it is pasted."""
        start = shlex.join([*self.argv(), "--detach"])
        return f"cd {shlex.quote(str(self.cwd))} && {start}" if self.cwd is not None else start

    def record(self) -> dict[str, Any]:
        """What the pid file and last-launch.json keep: a secret variable by its name only
        (those files outlive the process and get copied; the secret stays in the config file
        or in the environment of the shell and the process)."""
        secret = {k for k, v in self.env.items() if is_secret(k, v)} | set(self.secrets)
        return {
            "config": str(self.config) if self.config else None,
            "host": self.host,
            "port": self.port,
            "env": {k: v for k, v in self.env.items() if k not in secret},
            "secret_env": sorted(secret),
            "cwd": str(self.cwd) if self.cwd else None,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], state_dir: Path, *, pid: int | None = None) -> Launch:
        """The launch `record` describes; the values of its secret variables are taken from the
        environment of the running gateway `pid` when given (else the caller's shell must have them)."""
        env = record.get("env")
        names = record.get("secret_env")
        secrets = tuple(str(n) for n in names) if isinstance(names, list) else ()
        running = environ_of(pid) if pid else {}
        return cls(
            state_dir=state_dir,
            config=Path(record["config"]) if record.get("config") else None,
            host=record.get("host") if isinstance(record.get("host"), str) else None,
            port=record.get("port") if isinstance(record.get("port"), int) else None,
            env={
                **({str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}),
                **{k: running[k] for k in secrets if k in running},
            },
            cwd=Path(record["cwd"]) if isinstance(record.get("cwd"), str) else None,
            secrets=secrets,
        )

    def unset(self) -> list[str]:
        """The variables this launch had that neither its record nor this shell can give again."""
        return sorted(set(self.secrets) - set(self.env) - set(os.environ))

    def folder(self) -> Path | None:
        """The recorded folder to run in, if it still exists (else the caller's)."""
        return self.cwd if self.cwd is not None and self.cwd.is_dir() else None

    def environment(self) -> dict[str, str]:
        """This process's environment, with recorded variables filling in what is unset (and no
        default config file when this launch has none: it must start what it says)."""
        env = {**self.env, **os.environ}
        if self.config is None:
            env.pop(CONFIG_ENV, None)
        return env

    def load(self) -> GatewayConfig:
        """Parse the configuration this launch would run. Raises ConfigError."""
        return load_config(
            self.config, env=self.environment(), state_dir=self.state_dir, host=self.host, port=self.port
        )


def validate(launch: Launch) -> GatewayConfig:
    """Check everything a start checks before it touches anything: the config, the state dir,
    every enabled plugin's import, settings and offline `check`.

    The plugin part runs in a child (`chatstate start --check-only`) with exactly the
    environment the new gateway will get (recorded PYTHONPATH included), so an import that
    only works there is judged there. Raises ConfigError / GatewayExit with the child's own
    message and exit code (2 config, 3 state dir).
    """
    if unset := launch.unset():
        why = f"held a secret when the gateway on {launch.state_dir} was started, and secrets are never written to disk"
        raise GatewayExit(BAD_CONFIG, f"{', '.join(unset)} {why}; set it in this shell and run restart again")
    config = launch.load()
    check_state_dir(config.state_dir, create=False)
    proc = subprocess.run(
        [*launch.argv(), "--check-only"],
        env=launch.environment(),
        cwd=launch.folder(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        said = [line[len("gateway: ") :] for line in proc.stderr.splitlines() if _is_reason(line)]
        raise GatewayExit(
            proc.returncode, said[-1] if said else f"checking the configuration failed (exit {proc.returncode})"
        )
    return config


@dataclass(frozen=True)
class Started:
    """What a background start came to: exit code, the ready line, the log, the child's reason."""

    code: int
    ready: dict[str, Any] | None
    log_path: Path
    reason: str = ""


def spawn_detached(launch: Launch, *, ready_timeout_s: float) -> Started:
    """Run `chatstate start` in a new session with its output appended to `<state-dir>/gateway.log`,
    and wait for its ready line on a pipe. A child not ready in time is killed (exit 1)."""
    log_path = launch.state_dir / LOG_NAME
    read_end, write_end = os.pipe()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # also when it existed with a looser mode, whatever the umask
    offset = os.fstat(fd).st_size
    # A Ctrl-C while Popen runs would leave a started child nobody kills: it is held back until the
    # `try` below, which kills the child (SIGINT: the child is in a session of its own).
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: held.append(1))
    try:
        with os.fdopen(fd, "ab") as log_file:
            proc = subprocess.Popen(
                [*launch.argv(), "--ready-fd", str(write_end)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(write_end,),
                start_new_session=True,
                env=launch.environment(),
                cwd=launch.folder(),
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        os.close(write_end)
        if held:
            signal.raise_signal(signal.SIGINT)  # as it would have been, now that the child has a pid
        line = _read_line(read_end, ready_timeout_s)
    except BaseException:  # Ctrl-C while waiting: no half-started gateway is left behind
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(read_end)
    if line is None:  # timed out: do not leave a half-started gateway behind
        proc.kill()
        proc.wait()
        return Started(FAILED, None, log_path, f"not ready after {ready_timeout_s:g} s; killed it")
    if not line:  # EOF without a ready line: the child exited, its code and last words say why
        code = proc.wait()
        return Started(code, None, log_path, _child_reason(log_path, offset) or f"exited with code {code}")
    return Started(OK, json.loads(line), log_path)


def _read_line(fd: int, timeout_s: float) -> str | None:
    """Read one line from `fd`: the line, "" on EOF, None on timeout."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return ""
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _child_reason(log_path: Path, offset: int) -> str:
    """The child's own `gateway: ...` line (what a foreground start would have printed)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line[len("gateway: ") :] for line in text.splitlines() if _is_reason(line)]
    return lines[-1] if lines else ""


def _is_reason(line: str) -> bool:
    return line.startswith("gateway: ") and not line.startswith(WARNING)
