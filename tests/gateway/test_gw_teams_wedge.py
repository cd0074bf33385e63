"""Teams cannot be wedged from outside: with the OpenID metadata host
accepting connections and never answering, forged tokens leave /healthz, other adapters and
SIGTERM unaffected. A real subprocess gateway."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from gw_helpers import SECRET, bump
from hostile_helpers import HangingServer

from chatstate.gateway.health import PROBE_CACHE_S
from chatstate.gateway.sim.harness import GatewayHarness

DRAIN_TIMEOUT_S = 2.0
FORGED = 12  # more than the loop's default executor has threads on a 2-core machine (6)


def _forged_token() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {
        "iss": "https://api.botframework.com",
        "aud": "bot-app",
        "exp": now + 600,
        "nbf": now - 60,
        "serviceurl": "http://127.0.0.1:9",
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "forged"})


async def test_hanging_metadata_host_cannot_wedge_the_gateway(tmp_path: Path) -> None:
    async with HangingServer() as hang:
        teams = {
            "app_id": "bot-app",
            "openid_metadata_url": hang.url,
            "token_issuer": "https://api.botframework.com",
            "connector_token": "t",
            "openid_total_timeout_s": 60,
            "openid_read_timeout_s": 60,
        }
        async with GatewayHarness(
            adapters={"teams": teams, "echo": {"secret": SECRET}},
            state_dir=tmp_path / "s",
            config={"gateway": {"drain_timeout_s": DRAIN_TIMEOUT_S}},
        ) as gw:
            token = _forged_token()
            body = json.dumps({"type": "message", "serviceUrl": "http://127.0.0.1:9", "conversation": {"id": "c"}})
            async with aiohttp.ClientSession() as session:

                async def forged() -> int:
                    async with session.post(
                        gw.gateway_url + "/api/messages", data=body, headers={"Authorization": f"Bearer {token}"}
                    ) as resp:
                        return resp.status

                pending = [asyncio.create_task(forged()) for _ in range(FORGED)]
                await asyncio.wait_for(hang.connected.wait(), 10)
                # the forged requests are all waiting on the one stalled fetch; everything else works
                # past the probe cache, so /healthz really runs its store probe (off the loop)
                await asyncio.sleep(PROBE_CACHE_S + 0.5)
                status, health = await asyncio.wait_for(gw.healthz(), 5)
                assert status == 200 and health["status"] == "ok", health
                assert await asyncio.wait_for(bump(gw, "still-works"), 5) == 1
                assert not any(t.done() for t in pending)
                started = time.monotonic()
                code = await gw.stop(timeout_s=DRAIN_TIMEOUT_S + 8)
                took = time.monotonic() - started
                results = await asyncio.gather(*pending, return_exceptions=True)
            assert code == 0, f"exit code {code} after {took:.1f} s"
            assert took < DRAIN_TIMEOUT_S + 5, f"SIGTERM took {took:.1f} s"
            assert all(not isinstance(r, int) or r != 200 for r in results)
            assert hang.accepted == 1, "one fetch at a time per metadata URL"
