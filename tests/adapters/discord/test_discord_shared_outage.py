"""Two gateways' Discord state on one real Redis, the Redis process killed: while the outage is
younger than a failover (SHARED_OUTAGE_WAIT_MS), no decision that the store makes across
processes (a single-use button's use, a modal's submit, the shard's session lease) is made in
one process's memory instead, since the other gateway would make the same decision in its
own memory and both would act. Such a call raises the store's error (the user clicks again,
the Gateway link stands by and retries), and once the store is back it decides again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis_support import RedisServer

from chatstate.adapters.discord import handlers
from chatstate.adapters.discord.state import GatewayState, Registry
from chatstate.state import AsyncKeyedStore, StateStoreError, open_async_keyed_store

LEASE_MS = 500  # the shard lease; the outage outlives it


class RedisRuntime:
    """A plugin runtime whose stores are on one Redis, as each of two gateways would open them."""

    plugin_id, log = "discord", logging.LoggerAdapter(logging.getLogger("test.discord"), {})

    def __init__(self, url: str) -> None:
        self.url = url

    async def open_keyed_store(self, namespace: str, **kw: Any) -> AsyncKeyedStore:
        return await open_async_keyed_store("discord", namespace, url=self.url, **kw)


@pytest.fixture
async def two(own_redis: RedisServer) -> AsyncIterator[tuple[Registry, Registry, GatewayState, GatewayState]]:
    """Two gateways' registries and shard states; the Redis stays up at the end for the close."""
    with redis.Redis(port=own_redis.port) as server:  # an acknowledged write outlives a SIGKILL
        server.config_set("appendfsync", "always")  # (everysec may postpone its write on a busy disk)
    runtime = RedisRuntime(f"{own_redis.url}?prefix=two&retries=0&socket_connect_timeout_s=0.2")
    registries = [Registry(legacy=False), Registry(legacy=False)]
    links = [GatewayState(legacy=False, shard=(0, 1), owner=name) for name in "ab"]
    states = [*registries[0].states, *registries[1].states, *(link.sessions for link in links)]
    for st in states:
        await st.open(runtime)
    try:
        yield registries[0], registries[1], links[0], links[1]
    finally:
        own_redis.start() if own_redis.proc is None else None
        for st in states:
            await st.close()


async def outcome(call: Any) -> Any:
    try:
        return await call
    except StateStoreError as exc:
        return exc.code.value


async def test_a_single_use_button_and_a_modal_are_not_used_twice_during_a_failover(
    two: tuple[Registry, Registry, GatewayState, GatewayState], own_redis: RedisServer
) -> None:
    a, b, _, _ = two
    panel = handlers.build_panel(allowed_user_ids=[])
    await a.register(panel.components, panel.modals)
    approve = next(cid for cid, e in panel.components.items() if e["action"] == "approve")
    [modal] = panel.modals
    for registry in (a, b):  # both have seen the panel (each served a click on it)
        assert await registry.peek_component(approve) is not None and await registry.peek_modal(modal) is not None

    own_redis.stop(kill=True)
    uses = [await outcome(a.claim_use(approve, "1")), await outcome(b.claim_use(approve, "2"))]
    submits = [await outcome(a.take_modal(modal)), await outcome(b.take_modal(modal))]
    assert uses.count(True) <= 1, uses  # two users both approving one single-use button
    assert sum(isinstance(s, dict) for s in submits) <= 1, submits  # one modal submitted twice
    assert uses == ["UNAVAILABLE"] * 2 and submits == ["UNAVAILABLE"] * 2  # the user is told to try again

    own_redis.start()  # the store decides again: exactly one use, one submit
    uses = [await a.claim_use(approve, "1"), await b.claim_use(approve, "2")]
    submits = [await a.take_modal(modal), await b.take_modal(modal)]
    assert uses == [True, False] and submits[0] is not None and submits[1] is None


async def test_the_shard_lease_is_never_held_by_two_gateways_during_a_failover(
    two: tuple[Registry, Registry, GatewayState, GatewayState], own_redis: RedisServer
) -> None:
    _, _, a, b = two
    assert await a.take_lease(LEASE_MS) and not await b.take_lease(LEASE_MS)

    own_redis.stop(kill=True)  # B stands by and retries the lease every third of it
    await asyncio.sleep(2 * LEASE_MS / 1000)  # the lease both last read from the store runs out
    held = [await a.take_lease(LEASE_MS), await b.take_lease(LEASE_MS)]
    assert held.count(True) <= 1, held  # two links on one shard: every event handled twice
    assert held == [False, False]  # nobody holds it on memory's word; A's link waits for the store

    own_redis.start()
    assert await a.take_lease(LEASE_MS) and not await b.take_lease(LEASE_MS)  # the store decides again
