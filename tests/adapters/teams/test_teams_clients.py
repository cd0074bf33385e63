"""The Bot Connector clients are built once and reused across turns (building two
msrest clients per activity was ~4 ms of CPU each turn); replies still reach the Bot Connector."""

from __future__ import annotations

from pathlib import Path

from teams_helpers import LocalGateway

from chatstate.adapters.teams import platform
from chatstate.adapters.teams.platform import ReusedClients
from chatstate.gateway.sim.teams import TeamsSimulator


async def test_turns_share_one_connector_client_and_one_user_token_client(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db) as gw:
        for n in range(3):
            assert await sim.deliver(sim.activity("message_mention", text=f"<at>chatstate</at> hello {n}")) == 200
        assert [a["text"] for a in sim.sent()] == [f"[mention] you said: hello {n}" for n in range(3)]
        auth = gw.plugin.running.bot.adapter.bot_framework_authentication
        assert isinstance(auth, ReusedClients)
        [(app_id, service_url, _)] = list(auth.connector_clients)
        assert (app_id, service_url) == (sim.app_id, sim.base_url)
        assert list(auth.user_token_clients) == [sim.app_id]


async def test_the_client_cache_is_bounded_least_recently_used_first() -> None:
    cache = platform._Lru()

    async def make() -> object:
        return object()

    first = await cache.get_or_make("k0", make)
    for n in range(1, platform.MAX_CLIENTS):
        await cache.get_or_make(f"k{n}", make)
    assert await cache.get_or_make("k0", make) is first  # used again: now the most recent
    await cache.get_or_make("new", make)
    assert len(cache) == platform.MAX_CLIENTS
    assert "k1" not in cache and "k0" in cache
