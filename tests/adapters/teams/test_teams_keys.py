"""The signing-key cache: one fetch at a time, last good set kept while the host
fails, failures not retried for a while, and botframework-connector reading the same keys."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botframework.connector.auth import JwtTokenExtractor
from jwt.algorithms import RSAAlgorithm

from chatstate.adapters.teams.auth import KEYS_REFRESH_S, KeysUnavailable, SigningKeys, UnknownSigningKey, install
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sim.teams import new_signing_key


class _Host:
    def __init__(self) -> None:
        self.up = True
        self.hits = 0
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        jwk = json.loads(RSAAlgorithm.to_jwk(new_signing_key().public_key()))
        jwk.update(kid="k1", endorsements=["msteams"])
        self.jwks = {"keys": [jwk]}

    def app(self) -> web.Application:
        app = web.Application()

        async def metadata(request: web.Request) -> web.Response:
            self.hits += 1
            self.arrived.set()
            await self.release.wait()
            if not self.up:
                return web.Response(status=500)
            return web.json_response({"jwks_uri": str(request.url.with_path("/keys"))})

        async def keys(request: web.Request) -> web.Response:
            return web.json_response(self.jwks)

        app.router.add_get("/meta", metadata)
        app.router.add_get("/keys", keys)
        return app


async def test_single_flight_last_good_and_negative_cache() -> None:
    host = _Host()
    now = [1000.0]
    async with TestServer(host.app()) as server:
        keys = SigningKeys(
            str(server.make_url("/meta")),
            TeamsSettings(app_id="a", openid_retry_after_failure_s=30),
            clock=lambda: now[0],
        )
        host.release.clear()
        waiting = [asyncio.create_task(keys.get("k1")) for _ in range(20)]
        await asyncio.wait_for(host.arrived.wait(), 5)  # the fetch is held; all 20 are waiting on it
        host.release.set()
        found = await asyncio.gather(*waiting)
        assert host.hits == 1 and all(k.endorsements == ["msteams"] for k in found)
        with pytest.raises(UnknownSigningKey):
            await keys.get("forged")  # a fresh set: an unknown kid does not refetch
        assert host.hits == 1
        host.up = False
        now[0] += KEYS_REFRESH_S + 1  # stale: refetch, which fails -> the last good set is kept
        assert (await keys.get("k1")).endorsements == ["msteams"]
        assert host.hits == 2
        for _ in range(10):  # inside the negative-cache window: no more fetches
            await keys.get("k1")
        assert host.hits == 2 and keys.health()["failing"]
        now[0] += 31
        host.up = True
        await keys.get("k1")
        assert host.hits == 3 and not keys.health()["failing"]


async def test_no_keys_ever_is_unavailable_and_not_refetched() -> None:
    host = _Host()
    host.up = False
    async with TestServer(host.app()) as server:
        keys = SigningKeys(str(server.make_url("/meta")), TeamsSettings(app_id="a"))
        for _ in range(5):
            with pytest.raises(KeysUnavailable):
                await keys.get("k1")
        assert host.hits == 1


def test_install_puts_the_key_set_where_botframework_looks() -> None:
    keys = SigningKeys("http://127.0.0.1:1/meta-install-test", TeamsSettings(app_id="a"))
    install(keys)
    assert JwtTokenExtractor.get_open_id_metadata("http://127.0.0.1:1/meta-install-test") is keys


@pytest.mark.parametrize("bad", [0, -1, "x", True])
def test_fetch_settings_refuse_bad_values(bad: object) -> None:
    with pytest.raises(ConfigError, match="adapters.teams.openid_read_timeout_s"):
        TeamsSettings.from_table({"app_id": "a", "openid_read_timeout_s": bad})
