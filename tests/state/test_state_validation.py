"""Input validation: every limit at, just under and just over; a rejected call changes nothing."""

from __future__ import annotations

import math
from collections import OrderedDict
from decimal import Decimal

import pytest

from chatstate.state import (
    MAX_KEY_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_VALUE_BYTES,
    MAX_VALUE_DEPTH,
    Database,
    StateStoreError,
    open_keyed_store,
    probe,
)

SECRET = "SECRET-VALUE-MARKER"


def nested(depth: int, leaf: object = 0, *, kind: str = "list") -> object:
    """A value whose leaf sits `depth` levels below the root (root = depth 0)."""
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def rejects(call, code: str, operation: str) -> StateStoreError:
    with pytest.raises(StateStoreError) as err:
        call()
    assert (err.value.code, err.value.operation) == (code, operation)
    return err.value


@pytest.fixture
def store(make_store):
    store = make_store("p", "ns", max_entries=100)
    store.register("existing", {"keep": True})
    return store


def test_limits_are_the_documented_numbers():
    assert (MAX_NAMESPACE_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, MAX_VALUE_DEPTH) == (128, 512, 65_536, 64)


# -- namespace -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [127, 128])
def test_namespace_up_to_128_bytes_is_accepted(make_store, size):
    ns = "n" * size
    make_store("p", ns, max_entries=1).register("k", 1)
    assert make_store("p", f"  {ns}  ", max_entries=1).lookup("k") == 1


def test_namespace_of_129_bytes_is_limit_exceeded(make_store):
    err = rejects(lambda: make_store("p", "n" * 129, max_entries=1), "LIMIT_EXCEEDED", "open")
    assert "129" in str(err) and "128" in str(err)


@pytest.mark.parametrize("ns", ["Slack.Events", "0", "a.b_c-d", "x" * 10, "ns\n"])
def test_namespace_pattern_accepts(make_store, ns):
    make_store("p", ns, max_entries=1)


@pytest.mark.parametrize(
    "ns", ["", "   ", ".hidden", "-x", "_x", "a b", "a/b", "a:b", "é", "a\nb", "\u212aelvin", "\u017flack", "ns\x00"]
)
def test_namespace_pattern_rejects(make_store, ns):
    # U+212A KELVIN SIGN and U+017F LONG S match [a-z] under Unicode case folding; the
    # pattern is ASCII-only, so they must not pass as "k" and "s".
    rejects(lambda: make_store("p", ns, max_entries=1), "INVALID_INPUT", "open")


@pytest.mark.parametrize("ns", [None, 1, b"ns"])
def test_namespace_must_be_a_string(make_store, ns):
    rejects(lambda: make_store("p", ns, max_entries=1), "INVALID_INPUT", "open")


@pytest.mark.parametrize("plugin_id", ["", "   ", None, 7])
def test_plugin_id_must_be_a_non_empty_string(make_store, plugin_id):
    rejects(lambda: make_store(plugin_id, "ns", max_entries=1), "INVALID_INPUT", "open")


# -- key -----------------------------------------------------------------------------------
KEYS_AT_LIMIT = {
    "ascii-512": "k" * 512,
    "ascii-511": "k" * 511,
    "2-byte-512": "é" * 256,
    "3-byte-512": "€" * 170 + "kk",
    "4-byte-512": "😀" * 128,
    "padded-512": "  " + "k" * 512 + "\n",
}
KEYS_OVER_LIMIT = {
    "ascii-513": "k" * 513,
    "2-byte-514": "é" * 257,
    "3-byte-513": "€" * 171,
    "4-byte-516": "😀" * 129,
    "2-byte-513-chars-257": "é" * 256 + "k",
}
KEY_OPS = ["register", "register_if_absent", "lookup", "consume", "delete"]


def call_with_key(store, op: str, key: object):
    if op in ("register", "register_if_absent"):
        return getattr(store, op)(key, 1)
    return getattr(store, op)(key)


@pytest.mark.parametrize("key", KEYS_AT_LIMIT.values(), ids=KEYS_AT_LIMIT.keys())
def test_keys_up_to_512_utf8_bytes_work_with_every_method(store, key):
    store.register(key, "v")
    assert store.lookup(key) == "v"
    assert store.lookup(key.strip()) == "v"
    assert store.delete(key) is True
    assert store.register_if_absent(key, "w") is True
    assert store.consume(key) == "w"


@pytest.mark.parametrize("op", KEY_OPS)
@pytest.mark.parametrize("key", KEYS_OVER_LIMIT.values(), ids=KEYS_OVER_LIMIT.keys())
def test_keys_over_512_utf8_bytes_are_limit_exceeded(store, dump_rows, op, key):
    before = dump_rows()
    err = rejects(lambda: call_with_key(store, op, key), "LIMIT_EXCEEDED", op)
    assert f"{len(key.encode())} bytes" in str(err) and "512" in str(err)
    assert dump_rows() == before


@pytest.mark.parametrize("op", KEY_OPS)
@pytest.mark.parametrize("key", ["", "   ", "\t\n", None, 1, b"k", ["k"], "lone\ud800", "\udfff"])
def test_bad_keys_are_invalid_input(store, dump_rows, op, key):
    before = dump_rows()
    rejects(lambda: call_with_key(store, op, key), "INVALID_INPUT", op)
    assert dump_rows() == before


# -- value ---------------------------------------------------------------------------------
def string_of_serialized_size(size: int, char: str = "x") -> str:
    """A str whose compact JSON (quotes included) is exactly `size` UTF-8 bytes."""
    width = len(char.encode())
    body, rest = divmod(size - 2, width)
    return char * body + "x" * rest


@pytest.mark.parametrize("size", [MAX_VALUE_BYTES - 1, MAX_VALUE_BYTES])
@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_values_up_to_65536_serialized_bytes_are_accepted(store, size, char):
    value = string_of_serialized_size(size, char)
    store.register("big", value)
    assert store.lookup("big") == value


@pytest.mark.parametrize("op", ["register", "register_if_absent"])
@pytest.mark.parametrize("char", ["x", "é", "😀"])
def test_value_of_65537_serialized_bytes_is_limit_exceeded(store, dump_rows, op, char):
    value = SECRET + string_of_serialized_size(MAX_VALUE_BYTES + 1 - len(SECRET), char)
    before = dump_rows()
    err = rejects(lambda: getattr(store, op)("big", value), "LIMIT_EXCEEDED", op)
    assert "65537 bytes" in str(err) and "65536" in str(err)
    assert SECRET not in str(err) and SECRET not in repr(err.args)
    assert dump_rows() == before


def test_value_size_counts_the_compact_serialization(store):
    # {"a":[1,2]} is 11 bytes compact; json.dumps' default separators would add spaces.
    pad = string_of_serialized_size(MAX_VALUE_BYTES - len('{"a":[1,2],"b":}'))
    value = {"a": [1, 2], "b": pad}
    store.register("k", value)
    assert store.lookup("k") == value


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [MAX_VALUE_DEPTH - 1, MAX_VALUE_DEPTH])
def test_values_nested_up_to_depth_64_are_accepted(store, kind, depth):
    for leaf in (0, [], {}):
        value = nested(depth, leaf, kind=kind)
        store.register("deep", value)
        assert store.lookup("deep") == value


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("leaf", [0, [], {}, SECRET])
def test_value_nested_65_deep_is_limit_exceeded(store, dump_rows, kind, leaf):
    before = dump_rows()
    err = rejects(
        lambda: store.register("deep", nested(MAX_VALUE_DEPTH + 1, leaf, kind=kind)), "LIMIT_EXCEEDED", "register"
    )
    assert "65" in str(err) and "64" in str(err) and SECRET not in str(err)
    assert dump_rows() == before


def test_a_hostile_deep_value_is_rejected_without_recursion_error(store):
    rejects(lambda: store.register("deep", nested(100_000)), "LIMIT_EXCEEDED", "register")


class Weird:
    pass


INVALID_VALUES = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "nested-nan": {"a": [1, math.nan]},
    "tuple": (1, 2),
    "nested-tuple": {"a": (1,)},
    "set": {1, 2},
    "frozenset": frozenset(),
    "bytes": b"x",
    "bytearray": bytearray(b"x"),
    "int-key": {1: "a"},
    "bool-key": {True: "a"},
    "none-key": {None: "a"},
    "tuple-key": {("a",): 1},
    "nested-int-key": [{"ok": {2: 1}}],
    "lone-surrogate": "x\ud800",
    "lone-surrogate-key": {"\udc00": 1},
    "decimal": Decimal("1.5"),
    "object": Weird(),
    "ordered-dict": OrderedDict(a=1),
    "huge-int": 10**5000,  # Python refuses to print it; it could never be read back either
}


@pytest.mark.parametrize("op", ["register", "register_if_absent"])
@pytest.mark.parametrize("value", INVALID_VALUES.values(), ids=INVALID_VALUES.keys())
def test_non_json_values_are_invalid_input_and_change_nothing(store, dump_rows, op, value):
    before = dump_rows()
    rejects(lambda: getattr(store, op)("existing", value), "INVALID_INPUT", op)
    rejects(lambda: getattr(store, op)("new", value), "INVALID_INPUT", op)
    assert dump_rows() == before
    assert store.lookup("existing") == {"keep": True}


# -- max_entries, ttl_ms, overflow ---------------------------------------------------------
@pytest.mark.parametrize("max_entries", [0, -1, True, False, 1.0, "1", None])
def test_max_entries_must_be_an_integer_of_at_least_1(make_store, max_entries):
    rejects(lambda: make_store("p", "ns", max_entries=max_entries), "INVALID_INPUT", "open")


def test_max_entries_of_1_is_accepted(make_store):
    store = make_store("p", "ns", max_entries=1)
    store.register("a", 1)
    store.register("b", 2)
    assert [e.key for e in store.entries()] == ["b"]


BAD_TTLS = [0, -1, True, False, 1.5, 10.0, "10", 2**53]


@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_default_ttl_ms_must_be_an_integer_of_at_least_1(make_store, ttl):
    rejects(lambda: make_store("p", "ns", max_entries=1, default_ttl_ms=ttl), "INVALID_INPUT", "open")


@pytest.mark.parametrize("op", ["register", "register_if_absent"])
@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_ttl_ms_must_be_an_integer_of_at_least_1(store, dump_rows, op, ttl):
    before = dump_rows()
    rejects(lambda: getattr(store, op)("k", 1, ttl_ms=ttl), "INVALID_INPUT", op)
    assert dump_rows() == before


def test_ttl_ms_of_1_is_accepted(store, clock):
    store.register("k", 1, ttl_ms=1)
    assert store.lookup("k") == 1
    clock.advance(1)
    assert store.lookup("k") is None


def test_the_largest_ttl_ms_round_trips_exactly(store, clock):
    ttl = 2**53 - 1  # BAD_TTLS holds 2**53, one over
    store.register("far", 1, ttl_ms=ttl)
    assert store.lookup_entry("far").expires_at == clock() + ttl
    assert [e.expires_at for e in store.entries() if e.key == "far"] == [clock() + ttl]


@pytest.mark.parametrize("overflow", ["evict-newest", "", None, "EVICT-OLDEST"])
def test_overflow_must_be_a_known_policy(make_store, overflow):
    rejects(lambda: make_store("p", "ns", max_entries=1, overflow=overflow), "INVALID_INPUT", "open")


@pytest.mark.parametrize(
    "where",
    [
        {"url": 123},
        {"url": b"redis://127.0.0.1:6379/0"},
        {"path": 123},
        {"path": b"/tmp"},
        {"path": ""},  # would have been the current folder
        {"path": "   "},
        {"settings": "fast"},
        {"clock": "now"},
    ],
)
def test_where_and_how_to_open_are_checked_like_every_other_argument(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rejects(lambda: open_keyed_store("p", "ns", max_entries=1, **where), "INVALID_INPUT", "open")
    if "clock" not in where:  # a Database takes no clock
        rejects(lambda: Database(**{"path": None, **where}).sweep_expired(), "INVALID_INPUT", "open")
        result = probe(**where)  # never raises
        assert result["ok"] is False and result["steps"][-1]["code"] == "INVALID_INPUT", result
    assert list(tmp_path.iterdir()) == []  # nothing created where the process happens to run
