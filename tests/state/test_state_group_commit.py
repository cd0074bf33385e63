"""Group commit: writes that queue up on a SQLite database's writer thread share one transaction,
and each caller still gets exactly the result or error it would have had alone."""

from __future__ import annotations

import asyncio

import pytest

from chatstate.state import StateStoreError, open_async_keyed_store, open_keyed_store


def test_run_batch_commits_together_and_a_failing_write_reruns_the_batch_one_by_one(tmp_path):
    store = open_keyed_store("p", "full", max_entries=2, overflow="reject-new", path=tmp_path / "s.sqlite")
    try:
        backend = store._backend
        ok = backend.run_batch([lambda i=i: store.register(f"k{i}", i) for i in range(2)])
        assert ok == [(None, None), (None, None)]
        # The third write overflows inside the transaction: nothing of that batch is written and
        # the caller must run the calls alone.
        assert backend.run_batch([lambda: store.register("k0", "new"), lambda: store.register("k9", 9)]) is None
        assert [(e.key, e.value) for e in store.entries()] == [("k0", 0), ("k1", 1)]
        # A call refused before it touches the database does not spoil the batch.
        out = backend.run_batch([lambda: store.register("", 1), lambda: store.register("k0", "again")])
        assert out is not None and isinstance(out[0][1], StateStoreError) and out[1] == (None, None)
        assert store.lookup("k0") == "again"
    finally:
        store.close()


async def test_concurrent_async_writes_each_get_their_own_outcome(tmp_path):
    store = await open_async_keyed_store("p", "cap", max_entries=10, overflow="reject-new", path=tmp_path / "s.sqlite")
    try:
        results = await asyncio.gather(*(store.register(f"k{i:02d}", i) for i in range(40)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, StateStoreError)]
        assert len(refused) == 30 and all(r.code == "LIMIT_EXCEEDED" for r in refused)
        assert [e.key for e in await store.entries()] == [f"k{i:02d}" for i in range(40) if results[i] is None]
        claims = await asyncio.gather(*(store.register_if_absent("k00", i) for i in range(8)))
        assert claims == [False] * 8  # k00 is live already
        taken = await asyncio.gather(*(store.consume("k01") for _ in range(8)))
        assert sorted(taken, key=lambda v: v is None) == [1] + [None] * 7  # exactly one winner
    finally:
        await store.close()


@pytest.mark.parametrize("n", [1, 64])
async def test_acknowledged_writes_are_on_disk(tmp_path, n):
    path = tmp_path / "s.sqlite"
    store = await open_async_keyed_store("p", "ns", max_entries=1000, path=path)
    await asyncio.gather(*(store.register(f"k{i}", i) for i in range(n)))
    other = open_keyed_store("p", "ns", max_entries=1000, path=path)  # same backend, another thread
    try:
        assert len(other.entries()) == n
    finally:
        other.close()
        await store.close()


async def test_updates_batched_with_other_writes_complete(tmp_path):
    """The twin's `update` runs on the writer, inside a group commit when others queued with it:
    its read joins the batch's transaction (it used to wait for the lock the batch held)."""
    store = await open_async_keyed_store("p", "ns", max_entries=100, path=tmp_path / "s.sqlite")
    try:
        for _ in range(5):
            done = await asyncio.wait_for(
                asyncio.gather(
                    store.register("a", 1),
                    store.update("n", lambda v: (v or 0) + 1),
                    store.update("n", lambda v: (v or 0) + 1),
                    store.consume("a"),
                ),
                30,
            )
            assert done[0] is None
        assert await store.lookup("n") == 10
    finally:
        await store.close()
