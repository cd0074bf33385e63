"""The keyed-store contract (DESIGN.md §2), method by method and rule by rule, on every backend."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from state_support import HA_BACKENDS, T0_MS, FakeClock, fresh_target

from chatstate.state import Entry, StateStoreError, open_keyed_store


@pytest.fixture(params=HA_BACKENDS)
def target(request: pytest.FixtureRequest, state_home: Path) -> dict[str, Any]:
    """The contract holds on every backend: SQLite, Redis, Valkey and a three-master cluster."""
    return fresh_target(request, state_home)


# -- each method ---------------------------------------------------------------------------
def test_register_then_lookup_round_trips_plain_json(make_store):
    store = make_store("p", "ns", max_entries=10)
    value = {"a": [1, 2.5, "three", True, False, None], "b": {"c": "é✓😀"}, "d": -0.0}
    store.register("k", value)
    assert store.lookup("k") == value
    assert store.lookup("missing") is None


def test_register_is_an_upsert_that_restarts_created_at(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    store.register("a", 1)
    clock.advance(5)
    store.register("b", 2)
    clock.advance(5)
    store.register("a", 3)
    assert [(e.key, e.value, e.created_at) for e in store.entries()] == [("b", 2, T0_MS + 5), ("a", 3, T0_MS + 10)]


def test_register_returns_none_and_register_if_absent_claims_once(make_store):
    store = make_store("p", "ns", max_entries=10)
    assert store.register("k", 1) is None
    assert store.register_if_absent("c", "first") is True
    assert store.register_if_absent("c", "second") is False
    assert store.lookup("c") == "first"


def test_lookup_entry_reports_created_and_expiry(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", {"x": 1}, ttl_ms=250)
    assert store.lookup_entry("k") == Entry("k", {"x": 1}, T0_MS, T0_MS + 250)
    assert store.lookup_entry("nope") is None


def test_consume_reads_and_deletes(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", [1, 2])
    assert store.consume("k") == [1, 2]
    assert store.consume("k") is None
    assert store.lookup("k") is None


def test_consume_of_a_stored_null_is_indistinguishable_from_absent(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", None)
    assert store.entries()[0].value is None
    assert store.consume("k") is None
    assert store.entries() == []


def test_delete_says_whether_a_live_row_went(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", 1)
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.lookup("k") is None


def test_clear_removes_only_this_namespace_and_counts_live_rows(make_store, clock):
    a = make_store("p", "a", max_entries=10)
    b = make_store("p", "b", max_entries=10)
    a.register("1", 1)
    a.register("2", 2)
    a.register("gone", 3, ttl_ms=1)
    b.register("1", "b")
    clock.advance(1)
    assert a.clear() == 2
    assert a.entries() == []
    assert b.lookup("1") == "b"
    assert a.clear() == 0


def test_entries_are_ordered_by_created_at_then_key(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    for key in ["m", "b", "z"]:
        store.register(key, key)
    clock.advance(1)
    store.register("a", "a")
    assert [e.key for e in store.entries()] == ["b", "m", "z", "a"]
    assert all(isinstance(e, Entry) for e in store.entries())


def test_keys_are_trimmed(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("  k \n", 1)
    assert store.lookup("k") == 1
    assert store.consume("\tk") == 1


# -- isolation -----------------------------------------------------------------------------
def test_plugin_and_namespace_pairs_are_isolated(make_store):
    pairs = [("p", "a"), ("p", "b"), ("q", "a"), ("q", "b")]
    stores = {pair: make_store(*pair, max_entries=10) for pair in pairs}
    for (plugin, ns), store in stores.items():
        store.register("k", f"{plugin}/{ns}")
        store.register(f"only-{plugin}-{ns}", 1)
    for (plugin, ns), store in stores.items():
        assert store.lookup("k") == f"{plugin}/{ns}"
        assert [e.key for e in store.entries()] == ["k", f"only-{plugin}-{ns}"]
        for other in pairs:
            if other != (plugin, ns):
                assert store.lookup(f"only-{other[0]}-{other[1]}") is None
                assert store.delete(f"only-{other[0]}-{other[1]}") is False
                assert store.consume(f"only-{other[0]}-{other[1]}") is None
                assert store.register_if_absent(f"only-{other[0]}-{other[1]}", 2) is True
    assert stores[("p", "a")].clear() == 5
    assert stores[("p", "b")].lookup("k") == "p/b"
    assert stores[("q", "a")].lookup("k") == "q/a"


def test_trimmed_namespace_is_the_same_pair(make_store):
    make_store("p", "ns", max_entries=10).register("k", 1)
    assert make_store("p", "  ns  ", max_entries=10).lookup("k") == 1


def test_namespace_case_is_significant_for_isolation(make_store):
    make_store("p", "ns", max_entries=10).register("k", "lower")
    assert make_store("p", "NS", max_entries=10).lookup("k") is None


# -- TTL -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ttl_ms", "default_ttl_ms", "expected"),
    [(100, 1_000, T0_MS + 100), (None, 1_000, T0_MS + 1_000), (None, None, None), (100, None, T0_MS + 100)],
)
def test_ttl_precedence(make_store, ttl_ms, default_ttl_ms, expected):
    store = make_store("p", "ns", max_entries=10, default_ttl_ms=default_ttl_ms)
    store.register("k", 1, ttl_ms=ttl_ms)
    store.register_if_absent("c", 1, ttl_ms=ttl_ms)
    assert [e.expires_at for e in store.entries()] == [expected, expected]


def test_row_is_live_until_its_expiry_ms(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", 1, ttl_ms=100)
    clock.advance(99)
    assert store.lookup("k") == 1
    clock.advance(1)
    assert store.lookup("k") is None


def test_expired_rows_are_invisible_to_every_read_before_a_sweep(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    for key in ["lookup", "consume", "delete", "claim", "listed"]:
        store.register(key, "old", ttl_ms=10)
    clock.advance(10)
    assert store.lookup("lookup") is None
    assert store.lookup_entry("lookup") is None
    assert store.consume("consume") is None
    assert store.delete("delete") is False
    assert store.entries() == []
    assert store.register_if_absent("claim", "new", ttl_ms=10) is True
    assert store.lookup_entry("claim") == Entry("claim", "new", clock(), clock() + 10)
    assert store.clear() == 1


def test_register_replaces_the_expiry(make_store, clock):
    store = make_store("p", "ns", max_entries=10, default_ttl_ms=50)
    store.register("k", 1, ttl_ms=10)
    store.register("k", 2)
    clock.advance(20)
    assert store.lookup("k") == 2


# -- eviction ------------------------------------------------------------------------------
def test_eviction_drops_oldest_by_created_at_then_key(make_store, clock):
    store = make_store("p", "ns", max_entries=3)
    store.register("b", 1)
    store.register("a", 1)  # same ms as "b": "a" sorts first, so it is older
    clock.advance(1)
    store.register("c", 1)
    clock.advance(1)
    store.register("d", 1)
    assert [e.key for e in store.entries()] == ["b", "c", "d"]
    store.register("e", 1)
    assert [e.key for e in store.entries()] == ["c", "d", "e"]


def test_eviction_never_drops_the_row_just_written(make_store, clock):
    store = make_store("p", "ns", max_entries=2)
    clock.advance(10)
    store.register("late", 1)
    store.register("later", 1)
    clock.now_ms = T0_MS  # a clock that went backwards: the new row is the oldest
    store.register("aaa", "new")
    assert store.lookup("aaa") == "new"
    assert [e.key for e in store.entries()] == ["aaa", "later"]


def test_expired_rows_do_not_count_and_are_not_evicted_instead_of_live_ones(make_store, clock):
    store = make_store("p", "ns", max_entries=2)
    store.register("old-live", 1)
    store.register("short", 1, ttl_ms=5)
    clock.advance(5)
    store.register("new", 1)
    assert [e.key for e in store.entries()] == ["old-live", "new"]


def test_register_if_absent_also_evicts(make_store, clock):
    store = make_store("p", "ns", max_entries=1)
    assert store.register_if_absent("a", 1) is True
    clock.advance(1)
    assert store.register_if_absent("b", 2) is True
    assert [e.key for e in store.entries()] == ["b"]


def test_reject_new_refuses_a_new_key_but_updates_an_existing_one(make_store, clock):
    store = make_store("p", "ns", max_entries=2, overflow="reject-new")
    store.register("a", 1)
    store.register("b", 1, ttl_ms=5)
    with pytest.raises(StateStoreError) as err:
        store.register("c", 1)
    assert (err.value.code, err.value.operation) == ("LIMIT_EXCEEDED", "register")
    assert "max_entries" in str(err.value) and "2" in str(err.value)
    with pytest.raises(StateStoreError) as err:
        store.register_if_absent("c", 1)
    assert (err.value.code, err.value.operation) == ("LIMIT_EXCEEDED", "register_if_absent")
    clock.advance(1)
    store.register("a", 2)  # an update does not grow the namespace
    assert [(e.key, e.value) for e in store.entries()] == [("b", 1), ("a", 2)]
    clock.advance(4)  # "b" expired: room for one more
    store.register("c", 3)
    assert [e.key for e in store.entries()] == ["a", "c"]


# -- no per-plugin ceiling ---------------------------------------------------------------
def test_a_plugins_other_namespaces_never_lock_a_namespace_up(make_store):
    """v1 refused this write forever once the plugin's other namespaces held the ceiling; v2 has
    no per-plugin cap."""
    a = make_store("p", "a", max_entries=100)
    b = make_store("p", "b", max_entries=2, overflow="reject-new")
    for i in range(20):
        a.register(f"a{i}", i)
    b.register("b0", 0)
    assert b.register_if_absent("b1", 1) is True
    assert [e.key for e in b.entries()] == ["b0", "b1"]
    assert len(a.entries()) == 20
    with pytest.raises(StateStoreError) as err:  # only the namespace's own max_entries refuses
        b.register("b2", 2)
    assert "max_entries is 2" in str(err.value)


# -- reopening -----------------------------------------------------------------------------
def test_reopen_with_same_settings_shares_rows(make_store):
    make_store("p", "ns", max_entries=10, default_ttl_ms=100).register("k", 1)
    assert make_store("p", "ns", max_entries=10, default_ttl_ms=100).lookup("k") == 1


@pytest.mark.parametrize("change", [{"max_entries": 11}, {"default_ttl_ms": 99}, {"default_ttl_ms": None}])
def test_reopen_with_different_settings_is_invalid_input(make_store, change):
    make_store("p", "ns", max_entries=10, default_ttl_ms=100)
    with pytest.raises(StateStoreError) as err:
        make_store("p", "ns", **{"max_entries": 10, "default_ttl_ms": 100, **change})
    assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
    # Other pairs are unaffected, and closing frees the pair for new settings.
    make_store("p", "other", max_entries=1)
    make_store("q", "ns", max_entries=1)


def test_reopen_after_close_may_change_settings(target):
    first = open_keyed_store("p", "ns", max_entries=10, **target)
    first.register("k", 1)
    first.close()
    second = open_keyed_store("p", "ns", max_entries=20, default_ttl_ms=5, **target)
    try:
        assert second.lookup("k") == 1
    finally:
        second.close()


def _fill_and_close(target, clock, rows: int) -> None:
    """Rows k0..k<rows-1>, one ms apart, in a namespace opened with max_entries=rows, then closed."""
    big = open_keyed_store("p", "ns", max_entries=rows, clock=clock, **target)
    for i in range(rows):
        big.register(f"k{i}", i)
        clock.advance(1)
    big.close()


def test_a_smaller_max_entries_after_reopen_evicts_down_on_the_next_write(target, clock):
    _fill_and_close(target, clock, 10)
    small = open_keyed_store("p", "ns", max_entries=3, clock=clock, **target)
    try:
        assert len(small.entries()) == 10  # nothing is evicted until a write
        small.register("new", 1)
        assert [e.key for e in small.entries()] == ["k8", "k9", "new"]
    finally:
        small.close()


# -- closing -------------------------------------------------------------------------------
def test_closed_store_raises_unavailable_and_close_is_idempotent(make_store):
    store = make_store("p", "ns", max_entries=10)
    other = make_store("p", "other", max_entries=10)
    store.close()
    store.close()
    for call in (lambda: store.register("k", 1), lambda: store.lookup("k"), store.entries, store.clear):
        with pytest.raises(StateStoreError) as err:
            call()
        assert err.value.code == "UNAVAILABLE"
    other.register("k", 1)  # closing one store leaves the database open for the others
    assert other.lookup("k") == 1


def test_closed_store_error_names_the_operation(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.close()
    with pytest.raises(StateStoreError) as err:
        store.consume("k")
    assert err.value.operation == "consume"


def test_open_racing_the_last_close_gets_a_working_store(target):
    """The last close() releases the backend outside the global lock; an open() that saw the
    backend alive just before must not end up on the closed one (it used to: UNAVAILABLE)."""
    a = open_keyed_store("p", "a", max_entries=10, **target)
    backend = a.database  # the open database the store is a view onto: its holders are counted there
    real_acquire, real_release = backend.hold, backend.release
    in_release, opener_checked, released = threading.Event(), threading.Event(), threading.Event()

    def paused_release():  # a.close(): past its bookkeeping, about to release the backend
        in_release.set()
        assert opener_checked.wait(30)
        try:
            return real_release()
        finally:
            released.set()

    def late_acquire():  # open(): saw the backend alive, then lost the race
        opener_checked.set()
        assert released.wait(30)
        return real_acquire()

    backend.release, backend.hold = paused_release, late_acquire
    closer = threading.Thread(target=a.close)
    closer.start()
    assert in_release.wait(30)
    b = open_keyed_store("p", "b", max_entries=10, **target)
    closer.join(30)
    try:
        b.register("k", 1)
        assert b.lookup("k") == 1
    finally:
        b.close()


def test_two_stores_with_their_own_clocks_share_one_database(make_store):
    early, late = FakeClock(T0_MS), FakeClock(T0_MS + 1_000)
    a = make_store("p", "ns", max_entries=10, clock=early)
    b = make_store("p", "ns", max_entries=10, clock=late)
    a.register("k", 1, ttl_ms=500)
    assert a.lookup("k") == 1
    assert b.lookup("k") is None  # for b's clock, the row has expired


def test_entries_sort_keys_by_code_point_like_utf8_bytes(make_store):
    # Ties on created_at sort by key: UTF-8 byte order, which is code-point order, as in Python.
    keys = ["\uffff", "\U00010000", "z", "é", "Z", "\x01"]
    store = make_store("p", "ns", max_entries=10)
    for key in keys:
        store.register(key, 1)
    assert [e.key for e in store.entries()] == sorted(keys)


def test_a_namespace_reopened_with_a_smaller_cap_is_brought_down_to_it(make_store, clock):
    """A write into a full namespace re-keys its oldest row in place; a namespace over its cap
    (max_entries lowered since) still goes back to it on the next write."""
    big = make_store("p", "shrink", max_entries=10)
    for i in range(6):
        big.register(f"k{i}", i)
        clock.advance(1)
    big.close()
    small = make_store("p", "shrink", max_entries=3)
    small.register("k2", "again")  # an existing key: the oldest others go
    assert [e.key for e in small.entries()] == ["k4", "k5", "k2"]
    small.register("new", 1)  # exactly full: the oldest live row makes room
    assert [e.key for e in small.entries()] == ["k5", "k2", "new"]
    assert small.register_if_absent("k5", 0) is False and small.count() == 3


def test_a_claim_at_the_cap_takes_an_expired_row_of_its_own_key_or_another(make_store, clock):
    """At max_entries a claim of a key whose row expired writes that row again; a claim of a new key
    takes an expired row's place first, in a reject-new namespace too, and only then is refused."""
    for overflow in ("evict-oldest", "reject-new"):
        store = make_store("p", overflow, max_entries=2, overflow=overflow)
        store.register("live", 1)
        store.register("short", 1, ttl_ms=5)
        clock.advance(5)
        assert store.register_if_absent("short", 2) is True  # its own expired row
        assert [(e.key, e.value) for e in store.entries()] == [("live", 1), ("short", 2)]
        assert store.register_if_absent("short", 3) is False  # live now: the row stays
        if overflow == "reject-new":
            with pytest.raises(StateStoreError, match="max_entries is 2"):
                store.register_if_absent("brief", 1)
            store.register("live", 1, ttl_ms=5)  # an update: no growth
        else:
            store.register("brief", 1, ttl_ms=5)  # evicts "live"
        clock.advance(5)
        assert store.register_if_absent("new", 4) is True  # an expired row's place
        assert store.count() == 2 and store.lookup("new") == 4


def test_a_namespace_over_its_cap_refuses_a_claim_on_a_live_key_and_evicts_for_a_new_one(target, clock):
    _fill_and_close(target, clock, 5)
    small = open_keyed_store("p", "ns", max_entries=2, clock=clock, **target)
    try:
        assert small.register_if_absent("k3", "again") is False  # nothing written, nothing evicted
        assert small.count() == 5
        assert small.register_if_absent("new", 1) is True
        assert [e.key for e in small.entries()] == ["k4", "new"]
    finally:
        small.close()
