"""The Redis backend when the network or the server misbehaves: UNAVAILABLE after a bounded
retry, recovery when the server is back, durable writes with appendonly, and retries that
never apply a claim or a take twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis_support import ReplyDroppingProxy, with_prefix
from state_support import FakeClock

from chatstate.state import StateStoreError, open_async_keyed_store, open_keyed_store, probe, sweep_expired

FAST_RETRY = "&retries=2&backoff_base_s=0.01&backoff_cap_s=0.05"


def test_unreachable_server_is_unavailable_then_recovers(own_redis):
    url = with_prefix(own_redis.url, "t") + FAST_RETRY
    with open_keyed_store("p", "ns", max_entries=10, url=url) as store:
        store.register("before", 1)
        own_redis.stop()
        for call, op in [
            (lambda: store.register("k", 1), "register"),
            (lambda: store.lookup("k"), "lookup"),
            (lambda: store.consume("k"), "consume"),
            (store.entries, "entries"),
            (store.clear, "clear"),
        ]:
            with pytest.raises(StateStoreError) as err:
                call()
            assert (err.value.code, err.value.operation) == ("UNAVAILABLE", op)
            assert err.value.path == url
            assert "start it, or fix the address in the URL" in str(err.value)  # what the operator can do
        own_redis.start()  # same port: the same store object reconnects on its own
        store.register("after", 2)
        assert [e.key for e in store.entries()] == ["before", "after"]  # appendonly kept "before"


def test_acknowledged_writes_survive_a_sigkill_of_redis_with_appendonly(own_redis):
    url = with_prefix(own_redis.url, "t") + FAST_RETRY
    with open_keyed_store("p", "ns", max_entries=1_000, url=url) as store:
        for i in range(200):
            store.register(f"k{i}", {"i": i})
        assert store.consume("k0") == {"i": 0}
        own_redis.restart(kill=True)
        assert len(store.entries()) == 199
        assert store.lookup("k0") is None and store.lookup("k199") == {"i": 199}


@pytest.fixture
def proxy(redis_url: str) -> Iterator[ReplyDroppingProxy]:
    port = int(redis_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    p = ReplyDroppingProxy(port)
    yield p
    p.close()


@pytest.fixture
def proxied_store(proxy: ReplyDroppingProxy):
    url = with_prefix(proxy.url, f"t{uuid.uuid4().hex[:10]}") + FAST_RETRY
    with open_keyed_store("discord", "discord.components", max_entries=10, url=url) as store:
        # Load every script first, so the EVALSHA whose reply is dropped really ran (no NOSCRIPT).
        store.register_if_absent("warm-up", 0)
        store.consume("warm-up")
        store.clear()
        yield store


def test_a_claim_whose_reply_was_lost_is_still_won_by_its_caller(proxy, proxied_store):
    proxy.arm()
    assert proxied_store.register_if_absent("button-1", {"version": 1}) is True
    assert proxy.dropped.is_set()  # the first reply really was lost; the retry answered
    assert proxied_store.register_if_absent("button-1", {"version": 1}) is False


def test_a_take_whose_reply_was_lost_still_returns_the_value(proxy, proxied_store):
    proxied_store.register("button-2", {"version": 1, "entry": "approve"})
    proxy.arm()
    assert proxied_store.consume("button-2") == {"version": 1, "entry": "approve"}
    assert proxy.dropped.is_set()
    assert proxied_store.consume("button-2") is None


def test_a_delete_and_a_clear_whose_replies_were_lost_report_what_they_did(proxy, proxied_store):
    proxied_store.register("a", 1)
    proxy.arm()
    assert proxied_store.delete("a") is True and proxy.dropped.is_set()
    proxied_store.register("b", 1)
    proxy.arm()
    assert proxied_store.clear() == 1 and proxy.dropped.is_set()


async def test_fifty_concurrent_async_claims_have_one_winner(redis_url):
    url = with_prefix(redis_url, f"t{uuid.uuid4().hex[:10]}")
    store = await open_async_keyed_store("discord", "discord.components", max_entries=500, url=url)
    try:
        results = await asyncio.gather(*(store.register_if_absent("once", {"n": n}) for n in range(50)))
        assert results.count(True) == 1
        taken = await asyncio.gather(*(store.consume("once") for _ in range(50)))
        assert [t for t in taken if t is not None] == [{"n": results.index(True)}]
    finally:
        await store.close()


def test_a_redis_that_restarted_empty_is_swept_and_probed_again(own_redis):
    # No persistence: Redis comes back with nothing, not even the schema marker or the registry
    # of plugins that sweep walks. The store goes on; the registry and marker come back.
    url = with_prefix(own_redis.url, "t") + FAST_RETRY
    clock = FakeClock()
    with open_keyed_store("p", "ns", max_entries=10, url=url, clock=clock) as store:
        store.register("before", 1, ttl_ms=10)
        with redis.Redis(port=own_redis.port) as raw:
            raw.flushall()
        store.register("after", 1, ttl_ms=10)
        clock.advance(10)
        assert sweep_expired(url=url, now_ms=clock()) == 1
        assert probe(url=url)["ok"] is True


def test_a_reply_lost_with_no_retry_left_is_unavailable_never_a_guess(proxy):
    url = with_prefix(proxy.url, f"t{uuid.uuid4().hex[:10]}") + "&retries=0&socket_timeout_s=1"
    with open_keyed_store("discord", "discord.components", max_entries=10, url=url) as store:
        store.register_if_absent("warm-up", 0)  # the scripts loaded: the dropped EVALSHA really runs
        store.consume("warm-up")
        for call in (lambda: store.register_if_absent("a", 1), lambda: store.consume("a"), store.clear):
            proxy.arm()
            with pytest.raises(StateStoreError) as err:
                call()
            assert proxy.dropped.wait(5) and err.value.code == "UNAVAILABLE"  # set just after the cut
            assert "TLS" not in str(err.value)  # a dropped link, not a set-up mistake
