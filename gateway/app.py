"""The aiohttp application: /healthz, each plugin's routes, and the resources behind them.

Resources live in `cleanup_ctx` generators, set up in order and torn down in reverse:
  store broker  -> teardown: final sweep + checkpoint, then close every store
  plugins       -> start each (they open their stores); teardown: stop each, newest first
  sweeper task  -> every sweep_interval_s; teardown: stop it, letting a running sweep finish
  readiness     -> /healthz says ready only once everything above is up
So SIGTERM, after aiohttp has stopped accepting and drained in-flight requests, stops the
plugins, sweeps and checkpoints, and closes the stores last. App state is reached through
typed `web.AppKey`s (STYLE.md rule 7).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from chatstate import state
from chatstate.gateway import health, ingress, logs, metrics, reply
from chatstate.gateway.config import GatewayConfig
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.plugin import Handler
from chatstate.gateway.registry import LoadedPlugin
from chatstate.gateway.runtime import GatewayRuntime, StoreBroker
from chatstate.gateway.sweeper import SweepStatus, run_sweeper, sweep_once

CALLER_ERROR_CODES = ("INVALID_INPUT", "LIMIT_EXCEEDED")  # store refusals caused by a caller's input
MAX_BODY_BYTES = 1024 * 1024  # 1 MiB; larger bodies get 413 before any handler runs
HEALTH_PATH = "/healthz"


@dataclass
class Lifecycle:
    """What /healthz and the shutdown path need to know about this process."""

    started_at: float = field(default_factory=time.time)
    ready: bool = False
    draining: bool = False


class PluginStartError(Exception):
    """`plugin.start()` raised; carries the plugin id so the exit message can name it."""

    def __init__(self, plugin_id: str, cause: BaseException) -> None:
        super().__init__(f"adapters.{plugin_id}: start failed ({type(cause).__name__}: {cause})")
        self.plugin_id = plugin_id
        self.cause = cause


CONFIG = web.AppKey("config", GatewayConfig)
PLUGINS = web.AppKey("plugins", list[LoadedPlugin])
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
BROKER = web.AppKey("broker", StoreBroker)
SWEEP = web.AppKey("sweep", SweepStatus)
PROBE = web.AppKey("probe", health.StoreProbe)


def database_location(config: GatewayConfig) -> tuple[Path | None, str | None]:
    """(path, url) for the state calls: the SQLite file under the state dir, or the Redis URL."""
    if config.state_url:
        return None, config.state_url
    return state.database_path(config.state_dir), None


def store_settings(config: GatewayConfig) -> state.StoreSettings:
    """The one StoreSettings of this process (the state package insists they never differ)."""
    return state.StoreSettings()


def build_app(config: GatewayConfig, plugins: Sequence[LoadedPlugin]) -> web.Application:
    """Build the application for `plugins`; nothing is opened until the runner starts it.

    Raises ConfigError when two plugins (or a plugin and /healthz) claim the same route.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    path, url = database_location(config)
    settings = store_settings(config)
    app[CONFIG] = config
    app[PLUGINS] = list(plugins)
    app[LIFECYCLE] = Lifecycle()
    app[SWEEP] = SweepStatus(config.sweep_interval_s)
    # The one Database of this app: no I/O here; opened on first use, closed by _stores_ctx.
    database = state.Database(path, url=url, settings=settings)
    app[PROBE] = health.StoreProbe(database)
    app[BROKER] = StoreBroker(database)
    app.router.add_get(HEALTH_PATH, _healthz)
    app.router.add_get(metrics.METRICS_PATH, metrics.handler())
    _mount(app, plugins)
    app.cleanup_ctx.extend([_stores_ctx, _plugins_ctx, _sweeper_ctx, _ready_ctx])
    return app


def _mount(app: web.Application, plugins: Sequence[LoadedPlugin]) -> None:
    taken: dict[tuple[str, str], str] = {
        ("GET", HEALTH_PATH): "the gateway",
        ("GET", metrics.METRICS_PATH): "the gateway",
    }
    for lp in plugins:
        for route in lp.plugin.routes():
            claim = (route.method.upper(), route.path)
            if claim in taken:
                raise ConfigError(
                    f"adapters.{lp.id}", f"route {claim[0]} {claim[1]} is already served by {taken[claim]}"
                )
            taken[claim] = lp.id
            app.router.add_route(route.method, route.path, _plugin_handler(lp.id, route.path, route.handler))


def _plugin_handler(plugin_id: str, route: str, handler: Handler) -> Handler:
    """Wrap a plugin handler: refuse a declared oversize body before it (or its signature check)
    runs, name the plugin for the access log line, and count the request and its latency by
    plugin, route template and status (gateway.metrics).

    A wrapper, not a middleware: aiohttp builds the middleware chain anew for every request,
    which cost more than the check. Bodies without a Content-Length are capped by
    `client_max_size` when the handler reads them; /healthz takes no body. Metric children are
    looked up once per status, not per request.
    """
    seconds = metrics.REQUEST_SECONDS.labels(plugin_id, route)
    counted: dict[int, Any] = {}

    async def plugin_handler(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request[logs.PLUGIN_ID] = plugin_id
        status = 500  # unless answered: a store fault, or the client went away (cancelled)
        try:
            size = request.content_length
            if size is not None and size > MAX_BODY_BYTES:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=size)
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception as exc:
            refusal = _refusal(plugin_id, exc)
            if refusal is None:
                raise  # a store fault: aiohttp's own 500, with its traceback
            status = refusal.status
            raise refusal from None
        finally:
            seconds.observe(time.perf_counter() - started)
            if (child := counted.get(status)) is None:
                child = counted[status] = metrics.REQUESTS.labels(plugin_id, route, str(status))
            child.inc()

    return plugin_handler


def _refusal(plugin_id: str, exc: Exception) -> web.HTTPException | None:
    """The HTTP answer for what a plugin handler raised: a caller's bad input is 400, any other
    bug 500 with one log line (the last line of defence: no traceback per request); None for a
    store fault, which aiohttp answers 500 itself."""
    if isinstance(exc, ingress.BadInput):
        return ingress.bad_request(exc)
    if isinstance(exc, state.StateStoreError):
        if exc.code not in CALLER_ERROR_CODES:
            return None
        # A caller's input the plugin did not validate first: still the caller's error (400),
        # one concise line, no traceback, no degraded health.
        logs.get("ingress").warning("input_refused_by_store", extra={"plugin": plugin_id, "code": str(exc.code)})
        return web.HTTPBadRequest(text=f"input refused: {exc.code}")
    tb = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{Path(tb.filename).name}:{tb.lineno}" if tb else "?"
    logs.get("ingress").warning(
        "handler_failed", extra={"plugin": plugin_id, "error": type(exc).__name__, "where": where}
    )
    return web.HTTPInternalServerError(text="internal error")


async def _healthz(request: web.Request) -> web.Response:
    app = request.app
    life = app[LIFECYCLE]
    store = await app[PROBE].result() if life.ready and not life.draining else None
    plugins = app[PLUGINS]  # bound first: inside the call mypy would infer AppKey[Sequence[...]]
    code, body = health.summarize(
        ready=life.ready,
        draining=life.draining,
        started_at=life.started_at,
        store=store,
        adapters=health.adapter_health(plugins),
        sweeper=app[SWEEP],
    )
    return web.json_response(body, status=code)


# -- cleanup contexts (set up in this order, torn down in reverse) ------------------------------
async def _stores_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    yield
    # Plugins are stopped by now: nothing writes any more. Sweep once more so a restart starts
    # clean, checkpoint so the WAL is folded into the main file, then close every store.
    database = broker.database
    await sweep_once(app[SWEEP], database)
    if database.is_file:
        with logs.Timer() as t:
            try:
                await asyncio.to_thread(database.checkpoint)
            except state.StateStoreError as exc:
                logs.get("store").error("checkpoint_failed", extra={"op": "checkpoint", "code": str(exc.code)})
            else:
                logs.get("store").info("checkpoint", extra={"op": "checkpoint", "duration_ms": t.ms})
    await broker.close_all()
    try:  # last, the app's own hold on the database: the backend's final checkpoint and close
        await asyncio.to_thread(database.close)
    except state.StateStoreError:
        logs.get("store").exception("store_close_failed", extra={"op": "close"})


async def _plugins_ctx(app: web.Application) -> AsyncIterator[None]:
    config, broker = app[CONFIG], app[BROKER]
    trusted = set(config.trusted_plugins)
    started: list[LoadedPlugin] = []
    try:
        for lp in app[PLUGINS]:
            runtime = GatewayRuntime(lp, broker=broker, trusted=lp.id in trusted)
            reply.install(lp.id, lp.reply_hook)
            with logs.Timer() as t:
                try:
                    await lp.plugin.start(runtime)
                except Exception as exc:
                    raise PluginStartError(lp.id, exc) from exc
            started.append(lp)
            runtime.log.info(
                "plugin_started", extra={"origin": lp.origin, "mode": lp.adapter.mode, "duration_ms": t.ms}
            )
        yield
    finally:
        for lp in reversed(started):
            with logs.Timer() as t:
                try:
                    await lp.plugin.stop()
                except Exception:  # one adapter's bad stop must not keep the others' stores open
                    logs.get("plugins").exception("plugin_stop_failed", extra={"plugin": lp.id, "adapter": lp.id})
                    continue
            logs.get("plugins").info("plugin_stopped", extra={"plugin": lp.id, "adapter": lp.id, "duration_ms": t.ms})


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    stop = asyncio.Event()
    task = asyncio.create_task(run_sweeper(app[SWEEP], stop, broker.database), name="gateway-sweeper")
    yield
    stop.set()
    await task


async def _ready_ctx(app: web.Application) -> AsyncIterator[None]:
    app[LIFECYCLE].ready = True
    yield
    app[LIFECYCLE].ready = False
