"""Prometheus metrics of every store operation, on prometheus_client's default REGISTRY.

    chatstate_store_operations_total{op, backend, outcome}   outcome "ok" or the error code
    chatstate_store_operation_seconds{op, backend}           histogram of successful calls

Why here and not in the gateway: every caller of the store (gateway, tools, tests) gets the
same numbers, and `op_counts()` (the gateway's /healthz `store_ops`) is read from them instead
of a second set of counters.

Why the "ok" series is read from the histogram: a successful call already adds one to the
histogram's `_count`, so `operations_total{outcome="ok"}` is that count, reported by a
collector at scrape time; a successful lookup then pays one metric update (~0.5 us), not two.
Failures (rare) are counted by error code in a plain Counter and not timed. The labelled
children of the success path are looked up once per (op, backend) and kept: `labels()` costs
~0.7 us, more than the update itself.
"""

from __future__ import annotations

import functools
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ._errors import StateStoreError

OPERATIONS_NAME = "chatstate_store_operations"  # exposed as chatstate_store_operations_total
OPERATIONS_HELP = "Keyed-store operations finished in this process, by outcome (ok or the error code)."
SECONDS = Histogram(
    "chatstate_store_operation_seconds",
    "Duration of successful keyed-store operations in this process (the calling thread's wall time).",
    ["op", "backend"],
    buckets=(
        0.00001,
        0.000025,
        0.00005,
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    ),
)
FAILURES = Counter(
    "chatstate_store_operation_failures",
    "Failed store calls by error code (exposed as operations_total).",
    ["op", "backend", "outcome"],
    registry=None,
)  # not registered: _Operations exposes it


class _Operations(Collector):
    """`chatstate_store_operations_total`: ok from the histogram's counts, the rest from FAILURES."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(OPERATIONS_NAME, OPERATIONS_HELP, labels=["op", "backend", "outcome"])
        for metric in SECONDS.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count"):
                    family.add_metric([sample.labels["op"], sample.labels["backend"], "ok"], sample.value)
        for metric in FAILURES.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    family.add_metric([labels["op"], labels["backend"], labels["outcome"]], sample.value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(OPERATIONS_NAME, OPERATIONS_HELP, labels=["op", "backend", "outcome"])


REGISTRY.register(_Operations())
F = TypeVar("F", bound=Callable[..., Any])
clock = time.perf_counter


def ok_recorder(op: str, backend: str) -> Callable[[float], None]:
    """The `observe` of successful `op` calls on `backend` (a kept labelled child)."""
    return SECONDS.labels(op, backend).observe


def failed(op: str, backend: str, outcome: str) -> None:
    FAILURES.labels(op, backend, outcome).inc()


def measured(op: str) -> Callable[[F], F]:
    """Decorate a store method: time a successful call under `op`, count a failed one by code."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                result = fn(self, *args, **kwargs)
            except StateStoreError as exc:
                failed(op, self.backend_kind, exc.code.value)
                raise
            except BaseException:
                failed(op, self.backend_kind, "error")
                raise
            self._ok[op](clock() - started)
            return result

        return run  # type: ignore[return-value]

    return wrap


def op_counts() -> dict[str, int]:
    """How many store operations this process has run, by operation name (all outcomes; an
    operation never run is left out, as before v2)."""
    total: Tally[str] = Tally()
    for metric in _Operations().collect():
        for sample in metric.samples:
            total[sample.labels["op"]] += int(sample.value)
    return {op: n for op, n in total.items() if n}
