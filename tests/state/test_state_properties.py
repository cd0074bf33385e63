"""Property tests: the store behaves like a plain dict model, and bad input changes nothing."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_support import FakeClock

from chatstate.state import Entry, StateStoreError, StoreSettings, sweep_expired

EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STORE_SETTINGS = StoreSettings()
_plugins = itertools.count()  # each example gets its own plugin id on the shared file
Row = tuple[Any, int, "int | None", int]  # value, created, expires, version


# -- the model -----------------------------------------------------------------------------
@dataclass
class ModelNamespace:
    max_entries: int
    default_ttl_ms: int | None
    overflow: str
    rows: dict[str, Row] = field(default_factory=dict)

    def live(self, now: int) -> dict[str, Row]:
        return {k: r for k, r in self.rows.items() if r[2] is None or r[2] > now}


class ModelError(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


def oldest_first(rows: dict[str, Row], keep: str) -> list[str]:
    return sorted((k for k in rows if k != keep), key=lambda k: (rows[k][1], k))


class Model:
    """What docs/state.md says the store does, written as directly as possible.

    Versions are opaque: the model does not know the number a write draws, so after each write
    it applied, the test tells it (`learn`) what the store reports, and checks that the number
    never repeats for the key.
    """

    def __init__(self, namespaces: list[ModelNamespace]) -> None:
        self.namespaces = namespaces
        self.history: dict[tuple[int, str], list[int]] = {}  # every version a key has had

    def write(
        self, i: int, key: str, value: Any, ttl: int | None, now: int, *, mode: str, expect: int | None = None
    ) -> bool:
        ns = self.namespaces[i]
        rows = ns.live(now)
        if mode == "claim" and key in rows:
            return False
        if mode == "match" and (key not in rows or rows[key][3] != expect):
            return False
        ttl = ttl if ttl is not None else ns.default_ttl_ms
        rows[key] = (value, now, None if ttl is None else now + ttl, -1)  # version: learnt next
        if len(rows) > ns.max_entries:
            if ns.overflow == "reject-new":
                raise ModelError("LIMIT_EXCEEDED")
            for victim in oldest_first(rows, key)[: len(rows) - ns.max_entries]:
                del rows[victim]
        ns.rows = rows
        return True

    def learn(self, i: int, key: str, version: int) -> None:
        seen = self.history.setdefault((i, key), [])
        assert version not in seen, "a version repeated for one key"
        seen.append(version)
        value, created, expires, _ = self.namespaces[i].rows[key]
        self.namespaces[i].rows[key] = (value, created, expires, version)

    def current(self, i: int, key: str) -> int | None:
        row = self.namespaces[i].rows.get(key)
        return None if row is None else row[3]

    def lookup_entry(self, i: int, key: str, now: int) -> Entry | None:
        row = self.namespaces[i].live(now).get(key)
        return None if row is None else Entry(key, *row)

    def lookup(self, i: int, key: str, now: int) -> Any:
        entry = self.lookup_entry(i, key, now)
        return None if entry is None else entry.value

    def lookup_many(self, i: int, keys: list[str], now: int) -> dict[str, Any]:
        rows = self.namespaces[i].live(now)
        return {k: rows[k][0] for k in keys if k in rows}

    def consume(self, i: int, key: str, now: int) -> Any:
        entry = self.lookup_entry(i, key, now)
        self.namespaces[i].rows.pop(key, None)
        return None if entry is None else entry.value

    def delete(self, i: int, key: str, now: int) -> bool:
        entry = self.lookup_entry(i, key, now)
        self.namespaces[i].rows.pop(key, None)
        return entry is not None

    def delete_if(self, i: int, key: str, version: int, now: int) -> bool:
        entry = self.lookup_entry(i, key, now)
        if entry is None or entry.version != version:
            return False
        del self.namespaces[i].rows[key]
        return True

    def clear(self, i: int, now: int) -> int:
        live = len(self.namespaces[i].live(now))
        self.namespaces[i].rows = {}
        return live

    def count(self, i: int, now: int) -> int:
        return len(self.namespaces[i].live(now))

    def entries(self, i: int, now: int, limit: int | None = None, after: Entry | None = None) -> list[Entry]:
        rows = self.namespaces[i].live(now)
        ordered = [Entry(k, *rows[k]) for k in sorted(rows, key=lambda k: (rows[k][1], k))]
        if after is not None:
            ordered = [e for e in ordered if (e.created_at, e.key) > (after.created_at, after.key)]
        return ordered if limit is None else ordered[:limit]


# -- strategies ----------------------------------------------------------------------------
KEYS = st.sampled_from(["a", "b", "c", "d", " a ", "b\t", "é", "😀", "k\x00z", "B"])
NS = st.integers(0, 1)
TTL = st.none() | st.integers(1, 30)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
WHICH_VERSION = st.sampled_from(["current", "current", "stale", "bogus"])
WRITES = st.tuples(st.sampled_from(["register", "register", "register_if_absent"]), NS, KEYS, JSON, TTL)
OPS = st.one_of(  # writes weighted up so namespaces fill and evict often
    WRITES,
    WRITES,
    WRITES,
    st.tuples(st.just("compare_and_set"), NS, KEYS, JSON, TTL, WHICH_VERSION),
    st.tuples(st.just("delete_if"), NS, KEYS, WHICH_VERSION),
    st.tuples(st.just("update"), NS, KEYS, TTL),
    st.tuples(st.sampled_from(["lookup", "lookup_entry", "consume", "delete"]), NS, KEYS),
    st.tuples(st.just("lookup_many"), NS, st.lists(KEYS, max_size=5)),
    st.tuples(st.sampled_from(["clear", "entries", "count"]), NS),
    st.tuples(st.just("page"), NS, st.none() | st.integers(1, 3), st.integers(0, 8)),
    st.tuples(st.just("advance"), st.integers(0, 25)),
    st.tuples(st.just("sweep")),
)


def observe(call) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except (StateStoreError, ModelError) as exc:
        return ("error", str(exc.code))


def pick_version(model: Model, i: int, key: str, which: str) -> int:
    if which == "current" and model.current(i, key) is not None:
        return model.current(i, key)  # type: ignore[return-value]
    older = model.history.get((i, key), [])[:-1]
    if which == "stale" and older:
        return older[-1]
    return 12345


@EXAMPLES
@given(ops=st.lists(OPS, min_size=10, max_size=60))
def test_random_operations_match_a_dict_model(make_store, target, ops):
    clock = FakeClock()
    plugin = f"model-{next(_plugins)}"
    shapes = [(2, 20, "evict-oldest"), (2, None, "reject-new")]
    stores = [
        make_store(plugin, f"ns{i}", max_entries=m, default_ttl_ms=d, overflow=o, clock=clock, settings=STORE_SETTINGS)
        for i, (m, d, o) in enumerate(shapes)
    ]
    model = Model([ModelNamespace(m, d, o) for m, d, o in shapes])
    cursors: list[Entry] = []  # every Entry seen, stale ones too: paging must cope with both
    for op, *args in ops:
        now = clock()
        if op == "advance":
            clock.advance(args[0])
            continue
        if op == "sweep":
            sweep_expired(**target, settings=STORE_SETTINGS, now_ms=now)
            continue
        i, store = args[0], stores[args[0]]
        written: str | None = None  # the key whose new version the model must learn
        if op in ("register", "register_if_absent", "compare_and_set"):
            key, value, ttl = args[1], args[2], args[3]
            k = key.strip()
            mode = {"register": "upsert", "register_if_absent": "claim", "compare_and_set": "match"}[op]
            extra = {"version": pick_version(model, i, k, args[4])} if op == "compare_and_set" else {}
            got = observe(lambda: getattr(store, op)(key, value, ttl_ms=ttl, **extra))
            want = observe(lambda: model.write(i, k, value, ttl, now, mode=mode, expect=extra.get("version")))
            if op == "register" and want[0] == "ok":
                want = ("ok", None)
            if want[0] == "ok" and want[1] is not False:
                written = k
        elif op == "update":
            key, ttl = args[1], args[2]
            k = key.strip()
            got = observe(lambda: store.update(key, lambda v: [v, 1], ttl_ms=ttl))
            old = model.lookup(i, k, now)
            mode = "claim" if model.lookup_entry(i, k, now) is None else "match"
            want = observe(
                lambda: model.write(i, k, [old, 1], ttl, now, mode=mode, expect=model.current(i, k)) and [old, 1]
            )
            written = k if want[0] == "ok" else None
        elif op == "delete_if":
            k = args[1].strip()
            version = pick_version(model, i, k, args[2])
            got = observe(lambda: store.delete_if(args[1], version=version))
            want = observe(lambda: model.delete_if(i, k, version, now))
        elif op == "lookup_many":
            keys = args[1]
            got = observe(lambda: store.lookup_many(keys))
            want = observe(lambda: model.lookup_many(i, [k.strip() for k in keys], now))
        elif op == "page":
            limit, pick = args[1], args[2]
            after = cursors[pick % len(cursors)] if cursors and pick else None
            got = observe(lambda: store.entries(limit=limit, after=after))
            want = observe(lambda: model.entries(i, now, limit, after))
        elif op in ("clear", "entries", "count"):
            got = observe(getattr(store, op))
            want = observe(lambda: getattr(model, op)(i, now))
        else:
            key = args[1]
            got = observe(lambda: getattr(store, op)(key))
            want = observe(lambda: getattr(model, op)(i, key.strip(), now))
        assert got == want, (op, args)
        if isinstance(got[1], list) and got[1] and isinstance(got[1][0], Entry):
            assert [e.version for e in got[1]] == [e.version for e in want[1]], (op, args)
            cursors.extend(got[1])
        if isinstance(got[1], Entry):
            assert got[1].version == want[1].version, (op, args)
        if written is not None:
            entry = store.lookup_entry(written)
            assert entry is not None
            model.learn(i, written, entry.version)
    for i, store in enumerate(stores):
        assert store.entries() == model.entries(i, clock())
        assert [e.version for e in store.entries()] == [e.version for e in model.entries(i, clock())]


# -- invalid input -------------------------------------------------------------------------
def nest(leaf: Any, depth: int, as_dict: bool) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


BAD_LEAVES = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        (1,),
        {1},
        frozenset(),
        b"x",
        bytearray(),
        {1: "a"},
        {None: 1},
        "x\ud800",
        {"\udfff": 1},
        object(),
        10**5000,
    ]
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
BAD_TTLS = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.sampled_from(["10", 2**53, [1]]))
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
