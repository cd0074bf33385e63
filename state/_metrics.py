"""Prometheus metrics of every store operation, on prometheus_client's default REGISTRY.

    chatstate_store_operations_total{op, backend, outcome}   outcome "ok" or the error code
    chatstate_store_operation_seconds{op, backend}           histogram of the call's duration

Why here and not in the gateway: every caller of the store (gateway, tools, tests) gets the
same numbers, and `op_counts()` (the gateway's /healthz `store_ops`) is read from them instead
of a second set of counters. The labelled children of the "ok" path are looked up once per
(op, backend) and kept: `labels()` costs ~0.7 us, more than the increment itself.
"""

from __future__ import annotations

import functools
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

from ._errors import StateStoreError

OPERATIONS = Counter(
    "chatstate_store_operations",  # exposed as chatstate_store_operations_total
    "Keyed-store operations finished in this process, by outcome (ok or the error code).",
    ["op", "backend", "outcome"],
)
SECONDS = Histogram(
    "chatstate_store_operation_seconds",
    "Duration of keyed-store operations in this process (the calling thread's wall time).",
    ["op", "backend"],
    buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
             0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

_ok: dict[tuple[str, str], tuple[Callable[[], None], Callable[[float], None]]] = {}
F = TypeVar("F", bound=Callable[..., Any])
clock = time.perf_counter


def ok_recorder(op: str, backend: str) -> tuple[Callable[[], None], Callable[[float], None]]:
    """(count-one, observe-seconds) for successful `op` calls on `backend`, cached."""
    pair = _ok.get((op, backend))
    if pair is None:
        pair = _ok[(op, backend)] = (OPERATIONS.labels(op, backend, "ok").inc, SECONDS.labels(op, backend).observe)
    return pair


def record(op: str, backend: str, outcome: str, seconds: float) -> None:
    OPERATIONS.labels(op, backend, outcome).inc()
    SECONDS.labels(op, backend).observe(seconds)


def measured(op: str) -> Callable[[F], F]:
    """Decorate a store method: count and time every call under `op` (self.backend_kind)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                result = fn(self, *args, **kwargs)
            except StateStoreError as exc:
                record(op, self.backend_kind, exc.code.value, clock() - started)
                raise
            except BaseException:
                record(op, self.backend_kind, "error", clock() - started)
                raise
            inc, observe = self._ok[op]
            inc()
            observe(clock() - started)
            return result

        return run  # type: ignore[return-value]

    return wrap


def op_counts() -> dict[str, int]:
    """How many store operations this process has run, by operation name (all outcomes)."""
    total: Tally[str] = Tally()
    for metric in OPERATIONS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total[sample.labels["op"]] += int(sample.value)
    return dict(total)
