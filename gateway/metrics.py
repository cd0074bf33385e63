"""Prometheus metrics of the gateway, served at GET /metrics on the gateway's own listener.

Every metric object the gateway and the adapters report to is defined here, once, on
prometheus_client's default REGISTRY; /metrics serves that whole registry, so the state
package's store-operation metrics (`chatstate_store_operations_total{op,backend,outcome}`,
`chatstate_store_operation_seconds{op,backend}`, defined in state/) and the process collector
appear beside these. Adapters call the small functions below (never the objects' labels
directly), so a label set is spelled in one place.

Label values are bounded: plugin ids, route *templates* (`/echo/{key}`, not the path), HTTP
status codes, store namespaces and a few fixed reasons. Nothing derived from a request body.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Protocol

from aiohttp.typedefs import Handler
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

METRICS_PATH = "/metrics"
MODES = ("store", "degraded", "legacy")

REQUESTS = Counter(
    "chatstate_http_requests",
    "HTTP requests answered, by plugin, route template and status",
    ["plugin", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "chatstate_http_request_seconds",
    "Time from routing to the handler's answer, by plugin and route",
    ["plugin", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SWEEP_SECONDS = Histogram(
    "chatstate_sweep_seconds",
    "Duration of one sweep of expired rows",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
SWEEP_ROWS = Counter("chatstate_sweep_rows", "Expired rows deleted by sweeps")
SWEEP_FAILURES = Counter("chatstate_sweep_failures", "Sweeps that failed (retried next interval)")
DEDUPE_HITS = Counter(
    "chatstate_dedupe_hits",
    "Deliveries dropped because a store claim showed them already handled (Slack event ids, "
    "Discord interaction ids, ...)",
    ["plugin", "kind"],
)
MATRIX_BACKFILL_EVENTS = Counter(
    "chatstate_matrix_backfill_events", "Events fetched by back-filling limited Matrix timelines"
)
MATRIX_SKIPPED_EVENTS = Counter("chatstate_matrix_skipped_events", "Matrix events not acted on, by reason", ["reason"])


def record_dedupe_hit(plugin: str, kind: str) -> None:
    """A duplicate delivery was dropped by a claim (`kind`: e.g. "event", "interaction")."""
    DEDUPE_HITS.labels(plugin, kind).inc()


def record_matrix_backfill(events: int) -> None:
    """`events` were fetched to fill a limited /sync timeline."""
    MATRIX_BACKFILL_EVENTS.inc(events)


def record_matrix_skip(reason: str, count: int = 1) -> None:
    """Events skipped (`reason`: e.g. "already_handled", "too_old", "backfill_bound")."""
    MATRIX_SKIPPED_EVENTS.labels(reason).inc(count)


def record_sweep(seconds: float, rows: int | None) -> None:
    """One sweep finished (`rows` None: it failed)."""
    SWEEP_SECONDS.observe(seconds)
    if rows is None:
        SWEEP_FAILURES.inc()
    else:
        SWEEP_ROWS.inc(rows)


class TrackedState(Protocol):
    """What the adapter-state collector reads (gateway.adapter_state.AdapterState has it)."""

    plugin_id: str | None

    @property
    def namespace(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def pending_writes(self) -> int: ...


class _AdapterStates(Collector):
    """Adapter state mode and pending replay writes, read when scraped (never stale)."""

    def __init__(self) -> None:
        self._states: weakref.WeakSet[TrackedState] = weakref.WeakSet()

    def track(self, state: TrackedState) -> None:
        self._states.add(state)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mode = GaugeMetricFamily(
            "chatstate_adapter_state_mode",
            "1 for the mode an adapter namespace is in (store, degraded, legacy), 0 for the others",
            labels=["plugin", "namespace", "mode"],
        )
        pending = GaugeMetricFamily(
            "chatstate_adapter_pending_writes",
            "Writes kept in memory while the store failed, replayed when it is back",
            labels=["plugin", "namespace"],
        )
        for state in list(self._states):
            plugin = state.plugin_id or ""
            for m in MODES:
                mode.add_metric([plugin, state.namespace, m], 1.0 if state.mode == m else 0.0)
            pending.add_metric([plugin, state.namespace], float(state.pending_writes))
        yield mode
        yield pending

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected on demand; nothing to check for name clashes up front


_ADAPTER_STATES = _AdapterStates()
REGISTRY.register(_ADAPTER_STATES)


def track_adapter_state(state: TrackedState) -> None:
    """Report `state`'s mode and pending writes at /metrics for as long as it exists."""
    _ADAPTER_STATES.track(state)


def handler() -> Handler:
    """The aiohttp handler serving the default registry (prometheus_client's own)."""
    return make_aiohttp_handler(REGISTRY)
