"""Staged writes: several namespaces of one database committed in one transaction, all or none."""

from __future__ import annotations

import asyncio
import inspect
import json
import random

import pytest
import state_workers
from state_support import killed_writer

from chatstate.state import (
    AsyncKeyedStore,
    KeyedStore,
    StagedWrite,
    StateStoreError,
    commit_staged,
    commit_staged_async,
    open_async_keyed_store,
    open_keyed_store,
)


def test_one_commit_writes_and_deletes_across_namespaces(make_store, clock):
    a = make_store("p", "a", max_entries=10, default_ttl_ms=1_000)
    b = make_store("p", "b", max_entries=10)
    b.register("gone", 1)
    old = b.lookup_entry("gone")
    assert old is not None
    w = [a.stage_register(" k ", {"x": 1}), b.stage_register("k", [2], ttl_ms=50), b.stage_delete("gone")]
    assert all(isinstance(x, StagedWrite) for x in w)
    commit_staged(w)
    assert (a.lookup("k"), b.lookup("k"), b.lookup("gone")) == ({"x": 1}, [2], None)
    ea, eb = a.lookup_entry("k"), b.lookup_entry("k")
    assert ea is not None and eb is not None
    assert (ea.created_at, ea.expires_at, eb.expires_at) == (clock.now_ms, clock.now_ms + 1_000, clock.now_ms + 50)
    clock.advance(50)
    assert (a.lookup("k"), b.lookup("k")) == ({"x": 1}, None)  # each write keeps its store's TTL


def test_every_write_gets_a_new_version(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", 1)
    before = store.lookup_entry("k")
    assert before is not None
    commit_staged([store.stage_register("k", 2)])
    after = store.lookup_entry("k")
    assert after is not None and after.value == 2 and after.version != before.version
    assert not store.compare_and_set("k", 3, version=before.version)


def test_writes_apply_in_order(make_store):
    store = make_store("p", "ns", max_entries=10)
    commit_staged([store.stage_register("k", 1), store.stage_delete("k"), store.stage_register("j", 2)])
    assert (store.lookup("k"), store.lookup("j")) == (None, 2)
    commit_staged([store.stage_delete("j"), store.stage_register("j", 3)])
    assert store.lookup("j") == 3


def test_an_empty_list_is_a_no_op(make_store, dump_rows):
    make_store("p", "ns", max_entries=1)
    before = dump_rows()
    commit_staged([])
    commit_staged(iter(()))
    assert dump_rows() == before


def test_eviction_is_oldest_first_and_never_the_row_just_written(make_store, clock):
    store = make_store("p", "ns", max_entries=2)
    other = make_store("p", "other", max_entries=5)
    store.register("old", 1)
    clock.advance(1)
    store.register("mid", 2)
    clock.advance(1)
    commit_staged([other.stage_register("x", 0), store.stage_register("new", 3)])
    assert [e.key for e in store.entries()] == ["mid", "new"]
    assert other.lookup("x") == 0
    # at max_entries=2 a batch of three writes to one namespace keeps the last two, as three
    # registers would
    commit_staged([store.stage_register(k, k) for k in ("p", "q", "r")])
    assert sorted(e.key for e in store.entries()) == ["q", "r"]


def test_a_batch_that_fails_in_its_last_write_leaves_nothing(make_store, dump_rows):
    free = make_store("p", "free", max_entries=10)
    full = make_store("p", "full", max_entries=1, overflow="reject-new")
    full.register("taken", 1)
    free.register("before", 1)
    before = dump_rows()
    batch = [free.stage_register("a", 1), free.stage_delete("before"), full.stage_register("b", 2)]
    with pytest.raises(StateStoreError) as err:
        commit_staged(batch)
    assert (err.value.code, err.value.operation) == ("LIMIT_EXCEEDED", "commit")
    assert "max_entries is 1" in str(err.value)
    assert dump_rows() == before
    # a delete earlier in the batch makes room, exactly as a delete then a register would
    commit_staged([full.stage_delete("taken"), full.stage_register("b", 2)])
    assert [e.key for e in full.entries()] == ["b"]
    commit_staged([full.stage_register("b", 3)])  # rewriting the live row adds none
    assert full.lookup("b") == 3


# -- conditional staged writes: a claim or a version check the whole commit depends on ----------
def test_a_claim_that_wins_writes_every_row(make_store):
    gate = make_store("p", "gate", max_entries=10)
    data = make_store("p", "data", max_entries=10)
    assert commit_staged([gate.stage_register_if_absent("msg-1", "claimed"), data.stage_register("k", 1)]) is True
    assert (gate.lookup("msg-1"), data.lookup("k")) == ("claimed", 1)


def test_a_claim_that_loses_writes_nothing_and_keeps_the_row(make_store, dump_rows):
    gate = make_store("p", "gate", max_entries=10)
    data = make_store("p", "data", max_entries=10)
    gate.register("msg-1", "first")
    held = gate.lookup_entry("msg-1")
    assert held is not None
    before = dump_rows()
    batch = [data.stage_register("k", 1), gate.stage_register_if_absent("msg-1", "second"), data.stage_delete("x")]
    assert commit_staged(batch) is False
    assert dump_rows() == before
    after = gate.lookup_entry("msg-1")
    assert after is not None and (after.value, after.version) == ("first", held.version)
    assert data.lookup("k") is None


def test_a_staged_claim_counts_an_expired_row_as_absent(make_store, clock):
    gate = make_store("p", "gate", max_entries=10)
    gate.register("msg-1", "old", ttl_ms=10)
    clock.advance(10)
    assert commit_staged([gate.stage_register_if_absent("msg-1", "new")]) is True
    entry = gate.lookup_entry("msg-1")
    assert entry is not None and (entry.value, entry.expires_at) == ("new", None)


def test_a_staged_compare_and_set_holds_only_on_its_version(make_store, dump_rows):
    store = make_store("p", "ns", max_entries=10)
    other = make_store("p", "other", max_entries=10)
    store.register("k", 1)
    seen = store.lookup_entry("k")
    assert seen is not None
    store.register("k", 2)  # the version read is stale now
    before = dump_rows()
    assert (
        commit_staged([other.stage_register("a", 1), store.stage_compare_and_set("k", 3, version=seen.version)])
        is False
    )
    assert dump_rows() == before
    fresh = store.lookup_entry("k")
    assert fresh is not None
    assert commit_staged([other.stage_register("a", 1), store.stage_compare_and_set("k", 3, version=fresh.version)])
    after = store.lookup_entry("k")
    assert after is not None and after.value == 3 and after.version != fresh.version
    assert other.lookup("a") == 1
    # a row that is gone matches no version
    assert commit_staged([store.stage_delete("k"), store.stage_compare_and_set("k", 4, version=after.version)]) is False
    assert store.lookup("k") == 3


def test_conditional_writes_mix_with_deletes(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("old", 1)
    seen = store.lookup_entry("old")
    assert seen is not None
    batch = [
        store.stage_compare_and_set("old", 2, version=seen.version),
        store.stage_delete("old"),
        store.stage_register_if_absent("old", 3),  # the delete made it absent again
        store.stage_register_if_absent("new", 4),
    ]
    assert commit_staged(batch) is True
    assert (store.lookup("old"), store.lookup("new")) == (3, 4)


def test_a_conditional_commit_into_a_full_reject_new_namespace_raises_and_writes_nothing(make_store, dump_rows):
    gate = make_store("p", "gate", max_entries=10)
    full = make_store("p", "full", max_entries=1, overflow="reject-new")
    full.register("taken", 1)
    before = dump_rows()
    with pytest.raises(StateStoreError) as err:
        commit_staged([gate.stage_register_if_absent("msg-1", 1), full.stage_register_if_absent("b", 2)])
    assert (err.value.code, err.value.operation) == ("LIMIT_EXCEEDED", "commit")
    assert dump_rows() == before


def test_bad_conditional_input_is_refused_when_staged(make_store):
    store = make_store("p", "ns", max_entries=10)
    for call in (
        lambda: store.stage_register_if_absent("", 1),
        lambda: store.stage_compare_and_set("k", 1, version=-1),
        lambda: store.stage_compare_and_set("k", 1, version="1"),
        lambda: store.stage_register_if_absent("k", float("nan")),
    ):
        with pytest.raises(StateStoreError) as err:
            call()
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "commit")


async def test_the_async_twin_commits_conditional_writes(target):
    a = await open_async_keyed_store("p", "a", max_entries=10, **target)
    try:
        assert await commit_staged_async([]) is True
        assert await commit_staged_async([a.stage_register_if_absent("k", 1)]) is True
        # a losing claim among plain writes of the same loop turn: it alone answers False
        results = await asyncio.gather(
            a.register("x", 1), commit_staged_async([a.stage_register_if_absent("k", 2)]), a.register("y", 2)
        )
        assert results == [None, False, None]
        assert (await a.lookup("k"), await a.lookup("x"), await a.lookup("y")) == (1, 1, 2)
        entry = await a.lookup_entry("k")
        assert entry is not None
        assert await commit_staged_async([a.stage_compare_and_set("k", 5, version=entry.version)]) is True
        assert await a.lookup("k") == 5
    finally:
        await a.close()


def test_bad_input_is_refused_when_staged(make_store, dump_rows):
    store = make_store("p", "ns", max_entries=10, max_value_bytes=10)
    before = dump_rows()
    cases = [
        (lambda: store.stage_register("", 1), "INVALID_INPUT"),
        (lambda: store.stage_register("k", {1, 2}), "INVALID_INPUT"),
        (lambda: store.stage_register("k", "x" * 20), "LIMIT_EXCEEDED"),
        (lambda: store.stage_register("k", 1, ttl_ms=0), "INVALID_INPUT"),
        (lambda: store.stage_delete("k" * 513), "LIMIT_EXCEEDED"),
        (lambda: commit_staged([("k", 1)]), "INVALID_INPUT"),
        (lambda: commit_staged("k"), "INVALID_INPUT"),
    ]
    for call, code in cases:
        with pytest.raises(StateStoreError) as err:
            call()
        assert (err.value.code, err.value.operation) == (code, "commit")
    assert dump_rows() == before


def test_writes_on_two_databases_are_refused_and_nothing_is_written(make_store, dump_rows, tmp_path):
    store = make_store("p", "ns", max_entries=10)
    elsewhere = open_keyed_store("p", "ns", max_entries=10, path=tmp_path / "elsewhere")
    try:
        before = dump_rows()
        with pytest.raises(StateStoreError) as err:
            commit_staged([store.stage_register("a", 1), elsewhere.stage_register("b", 2)])
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "commit")
        assert dump_rows() == before
        assert elsewhere.lookup("b") is None
    finally:
        elsewhere.close()


def test_a_closed_store_is_unavailable_and_nothing_is_written(make_store, dump_rows):
    a = make_store("p", "a", max_entries=10)
    b = make_store("p", "b", max_entries=10)
    staged = [a.stage_register("k", 1), b.stage_register("k", 2)]
    b.close()
    before = dump_rows()
    with pytest.raises(StateStoreError) as err:
        commit_staged(staged)
    assert (err.value.code, err.value.operation) == ("UNAVAILABLE", "commit")
    assert dump_rows() == before


async def test_the_async_twin_stages_on_the_caller_and_commits_off_the_loop(target):
    a = await open_async_keyed_store("p", "a", max_entries=10, **target)
    b = await open_async_keyed_store("p", "b", max_entries=1, overflow="reject-new", **target)
    try:
        value = {"n": 1}
        staged = [a.stage_register("k", value), b.stage_register("k", 2)]
        value["n"] = 99  # captured at the stage call
        await commit_staged_async(staged)
        assert (await a.lookup("k"), await b.lookup("k")) == ({"n": 1}, 2)
        await commit_staged_async([])
        # group commit: a failing batch among plain writes of the same loop turn spoils nothing
        results = await asyncio.gather(
            a.register("x", 1),
            commit_staged_async([a.stage_register("y", 1), b.stage_register("z", 3)]),
            a.register("w", 2),
            return_exceptions=True,
        )
        assert isinstance(results[1], StateStoreError) and results[1].code == "LIMIT_EXCEEDED"
        assert results[0] is None and results[2] is None
        assert (await a.lookup("x"), await a.lookup("y"), await a.lookup("w"), await b.lookup("z")) == (
            1,
            None,
            2,
            None,
        )
    finally:
        await a.close()
        await b.close()


STAGED_ROUNDS = 8


def test_sigkill_mid_commit_leaves_each_batch_whole_or_absent(target):
    rng = random.Random(25)
    acked: list[int] = []
    for round_no in range(STAGED_ROUNDS):
        lines = killed_writer(["staged", json.dumps(target), str(round_no)], kill_after=rng.randrange(3, 40))
        acked.extend(round_no * 1_000_000 + int(line) for line in lines)
    left = open_keyed_store("staged", "left", max_entries=1_000_000, **target)
    right = open_keyed_store("staged", "right", max_entries=1_000_000, **target)
    try:
        keys = {e.key for e in left.entries()} | {"R" + e.key for e in right.entries()}
    finally:
        left.close()
        right.close()
    batches: dict[str, int] = {}
    for key in keys:
        batch = key.lstrip("R").rsplit("-", 1)[0]
        batches[batch] = batches.get(batch, 0) + 1
    assert set(batches.values()) == {2 * state_workers.STAGED_KEYS}  # every batch whole, or absent
    for n in acked:
        assert batches.get(f"r{n // 1_000_000}-{n % 1_000_000}") == 2 * state_workers.STAGED_KEYS


def test_stage_calls_are_plain_on_both_twins():
    for name in ("stage_register", "stage_register_if_absent", "stage_compare_and_set", "stage_delete"):
        sync, aio = getattr(KeyedStore, name), getattr(AsyncKeyedStore, name)
        assert not inspect.iscoroutinefunction(aio)
        assert inspect.signature(sync) == inspect.signature(aio)
