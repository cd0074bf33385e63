"""Run one gateway process in the foreground, from checked config to a clean exit.

Order matters, and each step fails with its own exit code before the next one can do harm:
  0. pin to `[gateway] cpu` if set (exit 2: not a CPU this process may use)
  1. load plugins             (exit 2: bad plugin config)
  2. take the state-dir lock  (exit 4: a gateway already runs here)
  3. check the database, read-only (exit 3: not SQLite / corrupt / newer schema; untouched)
  4. bind the port            (exit 4: port in use) — bound, not yet listening
  5. open stores, start plugins, start the sweeper (exit 2/3 on a plugin or store refusal)
  6. listen; /healthz ready; pid file says where
SIGTERM or SIGINT: stop listening, drain in-flight requests for up to drain_timeout_s, stop the
plugins, sweep and checkpoint, close the stores, remove the pid file, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from chatstate import state
from chatstate.gateway import logs
from chatstate.gateway.app import CALLER_ERROR_CODES, LIFECYCLE, PLUGINS, PluginStartError, build_app, database_location
from chatstate.gateway.config import GatewayConfig
from chatstate.gateway.cpu import pin_process
from chatstate.gateway.exits import BAD_CONFIG, FAILED, IN_USE, OK, STORE_UNUSABLE, UNUSABLE_STORE_CODES, GatewayExit
from chatstate.gateway.pidfile import PidFile, check_database_file
from chatstate.gateway.registry import load_plugins
from chatstate.gateway.runtime import PluginNotTrusted
from chatstate.state._files import to_go_on

# CPython's default, a young collection every 700 new objects, runs one every few requests (each
# makes about a hundred: coroutines, futures, rows), and it walks the objects of the requests still
# in flight only to find them alive: what a request leaves behind dies by reference count.
YOUNG_COLLECTION_EVERY = 10_000


def run(config: GatewayConfig, *, ready_fd: int | None = None, launch: dict[str, Any] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code.

    `ready_fd`, if given, receives one JSON line {pid, url} once /healthz is ready and is then
    closed (how `--detach` and the harness learn readiness without polling). `launch` (config
    path, CHATSTATE_* variables, command-line overrides) goes into the pid file, so `restart`
    can start the same configuration again.
    Raises GatewayExit with BAD_CONFIG, STORE_UNUSABLE or IN_USE as described in the module doc.
    """
    t0 = process_started_monotonic()
    log = logs.get("server")
    pin_process(config.cpu)
    plugins = load_plugins(config)
    with PidFile.acquire(config.state_dir) as pidfile:
        check_database_file(database_location(config)[0])
        sock = _bind(config.host, config.port)
        try:
            app = build_app(config, plugins)
            pidfile.update(launch=launch or {})
            return asyncio.run(_serve(app, config, sock, pidfile, ready_fd=ready_fd, t0=t0))
        finally:
            sock.close()
            log.info("gateway_exited", extra={"duration_ms": round((time.monotonic() - t0) * 1000, 3)})


def _bind(host: str, port: int) -> socket.socket:
    """Bind (not listen) so "port in use" is known before any store opens; connections are
    refused, not queued, until the gateway is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart through TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GatewayExit(
                IN_USE,
                f"port {port} on {host} is already in use; choose another with --port N, [gateway] port "
                "in the config or CHATSTATE_GATEWAY_PORT (0 = any free port), or stop what listens there",
            ) from None
        raise GatewayExit(
            BAD_CONFIG, f"config error: gateway.host/port: cannot bind {host}:{port} ({exc.strerror})"
        ) from None
    sock.setblocking(False)
    return sock


async def _serve(
    app: web.Application,
    config: GatewayConfig,
    sock: socket.socket,
    pidfile: PidFile,
    *,
    ready_fd: int | None,
    t0: float,
) -> int:
    log = logs.get("server")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.drain_timeout_s,
        access_log_class=logs.AccessLogger,
        access_log=logs.get("access").logger if config.access_log else None,
    )
    ready = _ReadyPipe(ready_fd)
    try:
        await runner.setup()  # cleanup_ctx: stores, plugins, sweeper, readiness
    except BaseException as exc:
        ready.close()
        await runner.cleanup()  # tears down whatever did start, in reverse
        mapped = _exit_for(exc)
        if mapped is exc:
            raise
        raise mapped from exc
    try:
        if not stop.is_set():  # SIGTERM during startup: skip straight to the clean shutdown
            # What start built (modules, config, plugins and their SDKs: most of the heap) lives
            # as long as the process: frozen, no full collection walks it again while serving.
            gc.freeze()
            gc.set_threshold(YOUNG_COLLECTION_EVERY)
            await web.SockSite(runner, sock).start()
            host, port = sock.getsockname()[:2]
            url = f"http://{host}:{port}"
            pidfile.update(host=host, port=port, url=url, ready=True)
            log.info(
                "gateway_ready",
                extra={
                    "url": url,
                    "plugins": [lp.id for lp in app[PLUGINS]],
                    "duration_ms": round((time.monotonic() - t0) * 1000, 3),
                },
            )
            ready.send(url)
            await stop.wait()
        log.info("gateway_stopping", extra={"drain_timeout_s": config.drain_timeout_s})
        app[LIFECYCLE].draining = True
    finally:
        ready.close()
        await runner.cleanup()  # stop listening, drain, stop plugins, sweep, checkpoint, close
        logs.flush()  # access lines of the last loop turn
    log.info("gateway_stopped")
    return OK


class _ReadyPipe:
    """The write end of `--ready-fd`: one JSON line {pid, url} when ready, then closed.

    The parent (`--detach`, the harness) reads it instead of polling; EOF without a line
    means startup failed and the exit code will say why.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def send(self, url: str) -> None:
        if self._fd is not None:
            line = json.dumps({"pid": os.getpid(), "url": url}) + "\n"
            with contextlib.suppress(OSError):  # the parent may be gone; nothing left to tell
                os.write(self._fd, line.encode())
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _exit_for(exc: BaseException) -> BaseException:
    """Map a startup failure to the documented exit code and one line naming the plugin and the
    cause; the traceback of a plugin's own failure goes to the log (`plugin_start_failed`)."""
    cause = exc.cause if isinstance(exc, PluginStartError) else exc
    where = f"adapters.{exc.plugin_id}: " if isinstance(exc, PluginStartError) else ""
    if isinstance(cause, PluginNotTrusted):
        return GatewayExit(BAD_CONFIG, f"config error: trusted_plugins: {cause}")
    if isinstance(cause, state.StateStoreError) and cause.code in UNUSABLE_STORE_CODES:
        hint = to_go_on(Path(cause.path), cause) if cause.path else ""
        return GatewayExit(STORE_UNUSABLE, f"state store unusable: {where}{cause}{hint}")
    if not isinstance(exc, PluginStartError):
        return exc
    logs.get("plugins").error(
        "plugin_start_failed", exc_info=cause, extra={"plugin": exc.plugin_id, "adapter": exc.plugin_id}
    )
    # A store refusing the open's own input (a bad [state] url, a namespace or limit from the
    # plugin's settings) is its configuration too, as a ValueError would be.
    refused = isinstance(cause, state.StateStoreError) and cause.code in CALLER_ERROR_CODES
    if refused or isinstance(cause, (ValueError, LookupError, TypeError)):
        return GatewayExit(BAD_CONFIG, f"config error: {where}{_one_line(cause)} (traceback in the log)")
    return GatewayExit(FAILED, f"{where}start failed: {_one_line(cause)} (traceback in the log)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def process_started_monotonic() -> float:
    """When this process started, on the monotonic clock: `gateway_ready.duration_ms` counts the
    interpreter start and imports too (counting from `run` alone reported 8 ms for a 424 ms start).

    Linux: /proc/self/stat field 22 (start time in clock ticks since boot) against
    CLOCK_BOOTTIME; elsewhere, now.
    """
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - started_s
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(since_start, 0.0)
