"""`chatstate start|stop|status|restart|state`: the command line of the gateway process.

Exit codes are gateway.exits' (`build_parser`'s epilog lists them); `status` exits 0 when a
gateway runs and 1 when none does. docs/gateway.md has the details.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import select
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from chatstate import __version__
from chatstate.gateway import logs, pidfile, state_commands
from chatstate.gateway.config import GatewayConfig, check_state_url, default_state_dir, expanded, load_config
from chatstate.gateway.exits import BAD_CONFIG, FAILED, INTERRUPTED, OK, GatewayExit
from chatstate.gateway.launch import (
    CONFIG_ENV,
    WARNING,
    Launch,
    Started,
    config_path,
    launch_env,
    spawn_detached,
    validate,
)
from chatstate.gateway.pidfile import LAST_LAUNCH_NAME, check_state_dir, last_launch, running_info
from chatstate.gateway.usage import Command
from chatstate.state._files import path_text

DEFAULT_STOP_TIMEOUT_S = 30.0
DEFAULT_READY_TIMEOUT_S = 60.0
STATUS_TIMEOUT_S = 3.0  # gateway.status.STATUS_TIMEOUT_S, here so --help needs no import
STOP_TIMEOUT_HELP = "seconds to wait after SIGTERM before SIGKILL"
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatstate",
        description="Run the chatstate gateway: adapters as plugins, keyed stores that survive restarts.",
        epilog="exit codes: 0 ok, 1 unexpected error, 2 bad usage/config, 3 state store unusable, "
        "4 port in use or already running",
    )
    parser.add_argument("--version", action="version", version=f"chatstate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Command)

    start = sub.add_parser("start", help="run the gateway (foreground unless --detach)")
    _where(start)
    _listen(start)
    start.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return once /healthz is ready (log: <state-dir>/gateway.log)",
    )
    _wait_option(start, "--ready-timeout", DEFAULT_READY_TIMEOUT_S, "with --detach: give up after S seconds")
    start.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # see server._ReadyPipe
    start.add_argument(
        "--check-only",
        action="store_true",
        help="check the config, the state dir, every enabled plugin's settings and reply hook and the database "
        "file (read-only), then exit (0 = it would start); connects to nothing, starts nothing",
    )
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="SIGTERM the running gateway, SIGKILL after --timeout")
    _where(stop)
    _wait_option(stop, "--timeout", DEFAULT_STOP_TIMEOUT_S, STOP_TIMEOUT_HELP)
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="is a gateway running: pid, uptime, address, health, store")
    _where(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    _wait_option(status, "--timeout", STATUS_TIMEOUT_S, "seconds to wait for /healthz before 'not responding'")
    status.set_defaults(func=cmd_status)

    restart = sub.add_parser(
        "restart",
        help="validate, then stop (if running) and start --detach; reuses the running config",
        description="Without --config, start again what the running gateway runs (its recorded config "
        "file, overrides, CHATSTATE_* variables and folder), or, with nothing running, what was last "
        "started on the state dir (said on stderr; exit 2 if nothing ever was). The new configuration is "
        "validated completely first; if that fails nothing is stopped (exit 2).",
    )
    restart.add_argument("--config", metavar="FILE", help="start this TOML config instead of the running gateway's")
    restart.add_argument("--state-dir", type=path_text, metavar="D", help="state dir of the gateway to restart")
    _listen(restart)
    _wait_option(restart, "--timeout", DEFAULT_STOP_TIMEOUT_S, STOP_TIMEOUT_HELP)
    ready_help = "give up on the new gateway (and kill it) if it is not ready after S seconds"
    _wait_option(restart, "--ready-timeout", DEFAULT_READY_TIMEOUT_S, ready_help)
    restart.set_defaults(func=cmd_restart, detach=True, ready_fd=None, check_only=False)

    state_commands.add_parsers(sub)

    from chatstate.gateway import demo  # light: the simulators and harness load only when it runs

    demo.add_parser(sub)
    sub.choices["demo"].set_defaults(func=partial(demo.run, exiting=True))
    return parser


def _seconds(text: str) -> float:
    """A wait given on the command line: a finite number of seconds >= 0, else argparse's usage
    error (exit 2) naming the flag, before anything is signalled or started."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=config_path(os.environ),
        metavar="FILE",
        help=f"TOML config (default ${CONFIG_ENV}; without one, built-in defaults)",
    )
    p.add_argument(
        "--state-dir",
        type=path_text,
        metavar="D",
        help="state dir (overrides [state] dir; default $CHATSTATE_HOME or ~/.chatstate)",
    )


def _listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (overrides [gateway] host; default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, metavar="N", help="listen port (overrides [gateway] port; default 8787; 0 = any free)"
    )


def _wait_option(p: argparse.ArgumentParser, flag: str, default_s: float, what: str) -> None:
    """A wait in seconds (`_seconds`), its default said in its help."""
    p.add_argument(flag, type=_seconds, default=default_s, metavar="S", help=f"{what} (default {default_s:g})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (argparse itself exits 2 on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # the `chatstate` script, like `python -m chatstate`, imports plugins and reply hooks
        # from the folder it runs in (import errors say so)
        sys.path.insert(0, os.getcwd())
    args = state_commands.parse(argv) or build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GatewayExit as exc:
        if str(exc):
            _say(str(exc))
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C: whatever this command started is already undone
        _say("interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # `chatstate status | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


def _say(text: str) -> None:
    """One line on stderr, as every message of the gateway's commands: `gateway: <text>`."""
    print(f"gateway: {text}", file=sys.stderr)


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(
        args.config, state_dir=args.state_dir, host=getattr(args, "host", None), port=getattr(args, "port", None)
    )


def _launch(args: argparse.Namespace, state_dir: Path, config: Path | None) -> Launch:
    """How this command line starts a gateway (recorded in the pid file for `restart`)."""
    return Launch(state_dir, config, args.host, args.port, launch_env(os.environ), Path.cwd())


# -- start ----------------------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    config = _config(args)
    check_state_url(config)
    launch = _launch(args, config.state_dir, config.source)
    _warn_variables(config)
    if args.check_only:  # everything a start checks before it touches anything; nothing is started
        from chatstate.gateway.status import check_startable

        return check_startable(config)
    if args.detach:
        check_state_dir(config.state_dir)
        if info := running_info(config.state_dir):  # refused here, before a child is spawned to fail
            raise pidfile.already_running(config.state_dir, info.get("pid"))
        return _report_started(spawn_detached(launch, ready_timeout_s=args.ready_timeout), config)
    from chatstate.gateway import server  # imports aiohttp and the state package: only when serving

    log = logs.configure(config.log_level)
    try:
        return server.run(config, ready_fd=args.ready_fd, launch=launch.record())
    except GatewayExit as exc:
        log.error("gateway_failed", extra={"exit_code": exc.code, "reason": str(exc)})
        raise
    except Exception as exc:
        log.exception("gateway_crashed", extra={"exit_code": FAILED})
        raise GatewayExit(FAILED, f"unexpected error ({type(exc).__name__}: {exc}); traceback in the log") from None
    finally:
        # The gateway has stopped and the process exits next: without this, the collector's last
        # pass walks the whole heap at interpreter exit (the adapters' SDKs make that hundreds of
        # ms of every stop and restart) to free memory the exit frees anyway.
        gc.freeze()


def _warn_variables(config: GatewayConfig) -> None:
    """Say which CHATSTATE_* variables change nothing (a typo is otherwise silently ignored)."""
    from chatstate.gateway.registry import variable_warnings

    for line in variable_warnings(config):
        print(f"{WARNING}{line}", file=sys.stderr)


def _report_started(started: Started, config: GatewayConfig, *, previous: str = "") -> int:
    """Print where the gateway runs (JSON on stdout), or one `gateway:` line saying why not."""
    if started.code == OK and started.ready is not None:
        print(json.dumps({**started.ready, "state_dir": str(config.state_dir), "log": str(started.log_path)}))
        return OK
    _say(f"failed to start (exit {started.code}): {started.reason}; log: {started.log_path}{previous}")
    return started.code


# -- stop / restart ---------------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace) -> int:  # --state-dir is all it needs: a broken config never blocks it
    state_dir = expanded(args.state_dir, "--state-dir").absolute() if args.state_dir else _config(args).state_dir
    check_state_dir(state_dir, create=False, write=False)  # never through a symlink, nor another user's
    if running_info(state_dir) is None:  # else a read-only one (a disk remounted ro) still lets it stop
        check_state_dir(state_dir, create=False)
    return stop_gateway(state_dir, timeout_s=args.timeout)  # a state dir not there: "not running"


def stop_gateway(state_dir: Path, *, timeout_s: float, quiet: bool = False) -> int:
    """SIGTERM the gateway running on `state_dir`, SIGKILL it after `timeout_s`; 0 once gone.
    `quiet`: no "stopped" line (restart reports the outcome in one line of its own)."""
    say = (lambda _text: None) if quiet else _say
    info = running_info(state_dir)
    if info is None:
        say(pidfile.not_running(state_dir))
        return OK
    pid = info.get("pid")
    if not isinstance(pid, int):
        raise GatewayExit(FAILED, f"a gateway holds {state_dir} but its pid file is unreadable")
    os.kill(pid, signal.SIGTERM)
    if _wait_exit(pid, timeout_s):
        say(f"stopped (pid {pid})")
        return OK
    os.kill(pid, signal.SIGKILL)
    _wait_exit(pid, 10.0)
    say(f"pid {pid} did not stop within {timeout_s:g}s; sent SIGKILL")
    return OK


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait for a process that is not our child to exit, via a pidfd (an event, not a poll)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])  # readable once it exited
    finally:
        os.close(pidfd)


def cmd_restart(args: argparse.Namespace) -> int:
    """Validate the new configuration completely, then stop the running gateway and start the new
    one (which configuration: the subcommand's description)."""
    explicit = args.config is not None
    if args.state_dir is not None:
        state_dir = expanded(args.state_dir, "--state-dir").absolute()
    elif explicit:  # the gateway to restart is the one on the new config's state dir
        state_dir = _refused_if_bad(lambda: load_config(args.config).state_dir, default_state_dir(os.environ))
    else:
        state_dir = load_config(config_path(os.environ)).state_dir
    check_state_dir(state_dir, create=False)  # made only once there is something to start
    info = running_info(state_dir)
    recorded = info.get("launch") if info else None
    if recorded is None and not explicit:  # none runs (or its pid file is gone): the last launch, never a default
        recorded = last_launch(state_dir)
        if recorded is None:
            raise GatewayExit(
                BAD_CONFIG,
                f"no gateway is running on {state_dir} and none was started there before, so there is "
                "nothing to restart; start one with: chatstate start --config FILE --detach",
            )
        where = f"config {recorded.get('config') or 'none: built-in defaults'}, from {state_dir / LAST_LAUNCH_NAME}"
        _say(f"{'' if info else 'not running; '}starting the last launch on {state_dir} again ({where})")
    pid = info.get("pid") if info else None  # a running gateway's environment holds its secrets
    previous = Launch.from_record(recorded, state_dir, pid=pid) if isinstance(recorded, dict) else None
    if previous is not None and not explicit:
        given = {flag: getattr(args, flag) for flag in ("host", "port") if getattr(args, flag) is not None}
        launch = replace(previous, **given)  # the overrides it ran with, but for those given now
    else:
        path = args.config or config_path(os.environ)
        launch = _launch(args, state_dir, Path(path).expanduser().absolute() if path else None)
    config = _refused_if_bad(lambda: validate(launch), state_dir)
    _warn_variables(config)
    hint = ""
    if info is not None and previous is not None:
        missing = ", ".join(sorted((set(previous.env) | set(previous.secrets)) - set(os.environ)))
        hint = f"; the previous gateway was stopped; to start its configuration again run: {previous.command()}"
        hint += f" (with {missing} set as before)" if missing else ""
    if info is not None:
        stop_gateway(state_dir, timeout_s=args.timeout, quiet=True)
    check_state_dir(state_dir)
    try:
        started = spawn_detached(launch, ready_timeout_s=args.ready_timeout)
    except KeyboardInterrupt:  # the new one is killed: say that nothing serves, and how to undo that
        raise GatewayExit(INTERRUPTED, f"interrupted{hint}") from None
    return _report_started(started, config, previous=hint)


def _refused_if_bad(step: Callable[[], T], state_dir: Path) -> T:
    """Run a validation step; on failure say that the gateway running on `state_dir` (if any)
    was left alone, keeping the step's exit code (2 config, 3 state dir)."""
    try:
        return step()
    except GatewayExit as exc:
        info = running_info(state_dir) if state_dir.is_dir() else None
        if info is None:
            raise
        kept = f"restart refused, the running gateway (pid {info.get('pid')}) keeps serving"
        raise GatewayExit(exc.code, f"{kept}: {exc}") from None


# -- status -----------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from chatstate.gateway.status import gateway_status, status_text

    report = gateway_status(_config(args), timeout_s=args.timeout)
    print(json.dumps(report, indent=2) if args.json else status_text(report))
    return OK if report["running"] else FAILED
