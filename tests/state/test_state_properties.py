"""Property tests: the store behaves like a plain dict model, and bad input changes nothing."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstate.state import Entry, StateStoreError, StoreSettings, sweep_expired
from state_support import FakeClock

EXAMPLES = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CEILING = 3  # per-plugin live rows: below the two namespaces' caps added up, so it bites
STORE_SETTINGS = StoreSettings(plugin_max_live_rows=CEILING)
_plugins = itertools.count()  # each example gets its own plugin id on the shared file


# -- the model -----------------------------------------------------------------------------
@dataclass
class ModelNamespace:
    max_entries: int
    default_ttl_ms: int | None
    overflow: str
    rows: dict[str, tuple[Any, int, int | None]] = field(default_factory=dict)  # value, created, expires

    def live(self, now: int) -> dict[str, tuple[Any, int, int | None]]:
        return {k: r for k, r in self.rows.items() if r[2] is None or r[2] > now}


class ModelError(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


def oldest_first(rows: dict[str, tuple[Any, int, int | None]], keep: str) -> list[str]:
    return sorted((k for k in rows if k != keep), key=lambda k: (rows[k][1], k))


class Model:
    """What DESIGN.md §2 says the store does, written as directly as possible."""

    def __init__(self, namespaces: list[ModelNamespace]) -> None:
        self.namespaces = namespaces

    def write(self, i: int, key: str, value: Any, ttl: int | None, now: int, *, if_absent: bool) -> bool:
        ns = self.namespaces[i]
        rows = ns.live(now)
        if if_absent and key in rows:
            return False
        ttl = ttl if ttl is not None else ns.default_ttl_ms
        rows[key] = (value, now, None if ttl is None else now + ttl)
        if len(rows) > ns.max_entries:
            if ns.overflow == "reject-new":
                raise ModelError("LIMIT_EXCEEDED")
            for victim in oldest_first(rows, key)[: len(rows) - ns.max_entries]:
                del rows[victim]
        others = sum(len(o.live(now)) for j, o in enumerate(self.namespaces) if j != i)
        excess = others + len(rows) - CEILING
        if excess > 0:
            if ns.overflow == "reject-new":
                raise ModelError("LIMIT_EXCEEDED")
            victims = oldest_first(rows, key)[:excess]
            if len(victims) < excess:
                raise ModelError("LIMIT_EXCEEDED")
            for victim in victims:
                del rows[victim]
        ns.rows = rows
        return True

    def lookup_entry(self, i: int, key: str, now: int) -> Entry | None:
        row = self.namespaces[i].live(now).get(key)
        return None if row is None else Entry(key, *row)

    def lookup(self, i: int, key: str, now: int) -> Any:
        entry = self.lookup_entry(i, key, now)
        return None if entry is None else entry.value

    def consume(self, i: int, key: str, now: int) -> Any:
        entry = self.lookup_entry(i, key, now)
        self.namespaces[i].rows.pop(key, None)
        return None if entry is None else entry.value

    def delete(self, i: int, key: str, now: int) -> bool:
        entry = self.lookup_entry(i, key, now)
        self.namespaces[i].rows.pop(key, None)
        return entry is not None

    def clear(self, i: int, now: int) -> int:
        live = len(self.namespaces[i].live(now))
        self.namespaces[i].rows = {}
        return live

    def entries(self, i: int, now: int) -> list[Entry]:
        rows = self.namespaces[i].live(now)
        return [Entry(k, *rows[k]) for k in sorted(rows, key=lambda k: (rows[k][1], k))]


# -- strategies ----------------------------------------------------------------------------
KEYS = st.sampled_from(["a", "b", "c", "d", " a ", "b\t", "é", "😀", "k\x00z", "B"])
NS = st.integers(0, 1)
TTL = st.none() | st.integers(1, 30)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
WRITES = st.tuples(st.sampled_from(["register", "register", "register_if_absent"]), NS, KEYS, JSON, TTL)
OPS = st.one_of(  # writes weighted up so namespaces fill, evict and hit the ceiling often
    WRITES,
    WRITES,
    WRITES,
    st.tuples(st.sampled_from(["lookup", "lookup_entry", "consume", "delete"]), NS, KEYS),
    st.tuples(st.sampled_from(["clear", "entries"]), NS),
    st.tuples(st.just("advance"), st.integers(0, 25)),
    st.tuples(st.just("sweep")),
)


def observe(call) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except (StateStoreError, ModelError) as exc:
        return ("error", str(exc.code))


@EXAMPLES
@given(ops=st.lists(OPS, min_size=10, max_size=60))
def test_random_operations_match_a_dict_model(make_store, target, ops):
    clock = FakeClock()
    plugin = f"model-{next(_plugins)}"
    shapes = [(2, 20, "evict-oldest"), (2, None, "reject-new")]
    stores = [
        make_store(plugin, f"ns{i}", max_entries=m, default_ttl_ms=d, overflow=o, clock=clock,
                   settings=STORE_SETTINGS)
        for i, (m, d, o) in enumerate(shapes)
    ]
    model = Model([ModelNamespace(m, d, o) for m, d, o in shapes])
    for op, *args in ops:
        now = clock()
        if op == "advance":
            clock.advance(args[0])
            continue
        if op == "sweep":
            sweep_expired(**target, settings=STORE_SETTINGS, now_ms=now)
            continue
        i, store = args[0], stores[args[0]]
        if op in ("register", "register_if_absent"):
            _, key, value, ttl = args
            got = observe(lambda: getattr(store, op)(key, value, ttl_ms=ttl))
            want = observe(lambda: model.write(i, key.strip(), value, ttl, now, if_absent=op != "register"))
            if op == "register" and want[0] == "ok":
                want = ("ok", None)
        elif op in ("clear", "entries"):
            got = observe(getattr(store, op))
            want = observe(lambda: getattr(model, op)(i, now))
        else:
            key = args[1]
            got = observe(lambda: getattr(store, op)(key))
            want = observe(lambda: getattr(model, op)(i, key.strip(), now))
        assert got == want, (op, args)
    for i, store in enumerate(stores):
        assert store.entries() == model.entries(i, clock())


# -- invalid input -------------------------------------------------------------------------
def nest(leaf: Any, depth: int, as_dict: bool) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


BAD_LEAVES = st.sampled_from(
    [math.nan, math.inf, -math.inf, (1,), {1}, frozenset(), b"x", bytearray(), {1: "a"}, {None: 1},
     "x\ud800", {"\udfff": 1}, object(), 10**5000]
)
BAD_VALUES = st.one_of(
    st.builds(nest, BAD_LEAVES, st.integers(0, 4), st.booleans()),
    st.builds(nest, JSON, st.integers(65, 80), st.booleans()),  # too deep
    st.builds(lambda n, c: c * n, st.integers(65_535, 66_000), st.sampled_from(["x", "é"])),  # too big
)
BAD_KEYS = st.one_of(
    st.sampled_from(["", " ", "\t\n", None, 1, 1.5, b"k", ("k",), "\ud800", "a\udc00b"]),
    st.builds(lambda n, c: c * n, st.integers(513, 700), st.sampled_from(["k", "é", "€", "😀"])),
)
BAD_TTLS = st.one_of(
    st.integers(max_value=0), st.booleans(), st.floats(), st.sampled_from(["10", 2**53, [1]])
)
GOOD_KEYS = st.sampled_from(["a", "new", "€"])
GOOD_VALUES = JSON
GOOD_TTLS = st.none() | st.integers(1, 1_000)


@st.composite
def bad_calls(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    op = draw(st.sampled_from(["register", "register_if_absent", "lookup", "lookup_entry", "consume", "delete"]))
    if op not in ("register", "register_if_absent"):
        return op, (draw(BAD_KEYS),), {}
    bad = draw(st.sets(st.sampled_from(["key", "value", "ttl"]), min_size=1))
    key = draw(BAD_KEYS if "key" in bad else GOOD_KEYS)
    value = draw(BAD_VALUES if "value" in bad else GOOD_VALUES)
    ttl = draw(BAD_TTLS if "ttl" in bad else GOOD_TTLS)
    return op, (key, value), {"ttl_ms": ttl}


@EXAMPLES
@given(call=bad_calls())
def test_random_invalid_input_is_rejected_and_changes_nothing(make_store, dump_rows, call):
    store = make_store(f"bad-{next(_plugins)}", "ns", max_entries=3)
    store.register("a", {"keep": [1, 2]}, ttl_ms=50)
    store.register("b", "kept")
    before = dump_rows()
    op, args, kwargs = call
    with pytest.raises(StateStoreError) as err:
        getattr(store, op)(*args, **kwargs)
    assert err.value.code in ("INVALID_INPUT", "LIMIT_EXCEEDED")
    expected_op = "lookup" if op == "lookup_entry" else op
    assert err.value.operation == expected_op
    assert dump_rows() == before
