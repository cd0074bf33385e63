"""The Discord Gateway simulator's own wire behaviour, driven by a raw aiohttp websocket (no
gateway): sequence numbers, heartbeats and their timeout, the resume window and its buffer."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from chatstate.gateway.sim.discord import ALICE
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator


async def connect(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(url + "?v=10&encoding=json")
    return ws, await ws.receive_json()


async def test_identify_dispatch_heartbeat_timeout_and_resume_with_missed_dispatches() -> None:
    async with DiscordGatewaySimulator(heartbeat_interval_ms=300) as sim:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bot {sim.bot_token}"}) as http:
            async with http.get(sim.base_url + "/api/v10/gateway/bot") as resp:
                url = (await resp.json())["url"]
            ws, hello = await connect(http, url)
            assert hello == {"op": 10, "d": {"heartbeat_interval": 300}, "s": None, "t": None}
            await ws.send_json(
                {"op": 2, "d": {"token": sim.bot_token, "intents": 0, "shard": [0, 1], "properties": {}}}
            )
            ready = await ws.receive_json()
            assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
            await ws.send_json({"op": 1, "d": 1})
            assert (await ws.receive_json())["op"] == 11
            first = await sim.dispatch_interaction(sim.interaction("component_button", user_id=ALICE))
            frame = await ws.receive_json()
            assert (frame["t"], frame["s"], frame["d"]["id"]) == ("INTERACTION_CREATE", 2, first.payload["id"])

            msg = await ws.receive()  # no more heartbeats: the server gives up after 1.5 intervals
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 4000
            missed = [
                await sim.dispatch_interaction(sim.interaction("component_button", user_id=ALICE)) for _ in range(2)
            ]

            ws2, _ = await connect(http, ready["d"]["resume_gateway_url"])
            await ws2.send_json(
                {"op": 6, "d": {"token": sim.bot_token, "session_id": ready["d"]["session_id"], "seq": 2}}
            )
            replay = [await ws2.receive_json() for _ in range(3)]
            assert [(f["t"], f["s"]) for f in replay] == [
                ("INTERACTION_CREATE", 3),
                ("INTERACTION_CREATE", 4),
                ("RESUMED", 5),
            ]
            assert [f["d"]["id"] for f in replay[:2]] == [m.payload["id"] for m in missed]
            await ws2.close(code=1000)  # a clean close ends the session

            ws3, _ = await connect(http, url)
            await ws3.send_json(
                {"op": 6, "d": {"token": sim.bot_token, "session_id": ready["d"]["session_id"], "seq": 5}}
            )
            assert await ws3.receive_json() == {"op": 9, "d": False, "s": None, "t": None}
            await ws3.close()
        assert [
            r.kind
            for r in sim.records
            if r.kind in ("gateway_heartbeat_timeout", "gateway_resume", "gateway_resume_refused")
        ] == ["gateway_heartbeat_timeout", "gateway_resume", "gateway_resume_refused"]


async def test_callback_is_accepted_once_and_only_inside_the_window() -> None:
    async with DiscordGatewaySimulator(callback_window_s=1.5) as sim:
        async with aiohttp.ClientSession() as http:
            on_time = await sim.dispatch_interaction(sim.interaction("component_button", user_id=ALICE))
            late = await sim.dispatch_interaction(sim.interaction("component_button", user_id=ALICE))
            body = {"type": 4, "data": {"content": "ok"}}

            async def callback(p: Any) -> int:
                url = f"{sim.base_url}/api/v10/interactions/{p.payload['id']}/{p.payload['token']}/callback"
                async with http.post(url, json=body) as resp:
                    return resp.status

            assert await callback(on_time) == 204
            assert await callback(on_time) == 400  # 40060: already acknowledged
            await asyncio.sleep(1.6)  # past Discord's window (compressed): the behaviour under test
            assert await callback(late) == 404  # 10062: unknown interaction
