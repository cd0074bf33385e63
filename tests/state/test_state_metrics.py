"""Store metrics on prometheus_client's default REGISTRY, and op_counts() read from them."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from chatstate.state import StateStoreError, op_counts


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_call_is_counted_by_outcome_and_timed(make_store, target):
    backend = "redis" if "url" in target else "sqlite"
    store = make_store("p", "ns", max_entries=1, overflow="reject-new")
    ok = dict(op="register", backend=backend, outcome="ok")
    full = dict(op="register", backend=backend, outcome="LIMIT_EXCEEDED")
    timed = dict(op="register", backend=backend)

    def readings() -> tuple[float, ...]:
        return (
            sample("chatstate_store_operations_total", **ok),
            sample("chatstate_store_operations_total", **full),
            sample("chatstate_store_operation_seconds_count", **timed),
            sample("chatstate_store_operation_seconds_sum", **timed),
            op_counts().get("register", 0),
        )

    before = readings()
    store.register("a", 1)
    store.register("a", 2)
    with pytest.raises(StateStoreError):
        store.register("b", 3)
    after = readings()
    assert after[0] - before[0] == 2
    assert after[1] - before[1] == 1
    assert after[2] - before[2] == 2  # the histogram times successful calls
    assert after[3] > before[3]
    assert after[4] - before[4] == 3  # op_counts: every outcome, by operation name


def test_a_failed_lookup_is_counted_by_its_code(make_store, target):
    backend = "redis" if "url" in target else "sqlite"
    store = make_store("p", "ns", max_entries=1)
    labels = dict(op="lookup", backend=backend, outcome="INVALID_INPUT")
    before = sample("chatstate_store_operations_total", **labels)
    with pytest.raises(StateStoreError):
        store.lookup(" ")
    assert sample("chatstate_store_operations_total", **labels) - before == 1


def test_op_counts_names_each_operation(make_store):
    store = make_store("p", "ns", max_entries=10)
    before = op_counts()
    store.register("k", 1)
    store.lookup("k")
    store.lookup_entry("k")
    store.lookup_many(["k"])
    store.count()
    store.entries(limit=1)
    store.consume("k")
    after = op_counts()
    assert isinstance(after, dict) and all(isinstance(v, int) for v in after.values())
    grew = {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}
    assert grew == {"register": 1, "lookup": 2, "lookup_many": 1, "count": 1, "entries": 1, "consume": 1}
