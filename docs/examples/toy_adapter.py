"""A fifth adapter in under 100 lines: first-ack-wins alerts for a made-up webhook platform.

The platform POSTs `{"alert_id": "...", "user": "..."}` to /toy/ack, signed with HMAC-SHA256 in
`X-Toy-Signature: sha256=<hex>`. The first ack of an alert wins; a later ack, even after a
gateway restart, is told who acked first. It follows docs/migrating-an-adapter.md's recipe: each
"# N." comment is that page's step N (a test checks the titles match).

# 9. Register the plugin: as an external one, in the gateway config
    external_plugins = ["toy_adapter:ToyPlugin"]   # with docs/examples on PYTHONPATH
    trusted_plugins = ["toy"]                      # external plugins need this for a store
    [adapters.toy]
    secret = "..."                                 # or CHATSTATE_TOY_SECRET

# 10. Test it across a real restart: tests/e2e/test_toy_adapter.py
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from chatstate.adapters.common import AdapterState, StateSpec
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route
from chatstate.gateway.settings import AdapterSettings

# 1. Choose namespace, key, value, TTL and cap: key = the alert id (a string), one row a day.
ACKS = StateSpec(namespace="toy.acks", ttl_ms=24 * 3600 * 1000, max_entries=1_000)


# 2. Declare the settings: one key; any other key in [adapters.toy] is refused at start.
class ToySettings(AdapterSettings):
    secret: Annotated[str, Field(min_length=1)]


def sign(secret: str, body: bytes) -> str:
    """The platform's signature over the raw body (the simulator and tests use it too)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class ToyPlugin(Plugin):
    """First-ack-wins alert acknowledgements that survive a restart."""

    id = "toy"
    settings_type = ToySettings

    def __init__(self) -> None:
        self._secret = ""
        self._acks: AdapterState | None = None

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/toy/ack", self._ack),)

    async def start(self, runtime: PluginRuntime) -> None:
        """Open the ack store (memory only in legacy mode); the gateway checked the settings."""
        self._secret = ToySettings.of(runtime).secret
        # 3. Open the state, with a legacy mode: the same class, memory only, as the "before".
        self._acks = AdapterState(ACKS, legacy=runtime.legacy)
        await self._acks.open(runtime)

    async def stop(self) -> None:
        if self._acks is not None:
            await self._acks.close()

    def health(self) -> dict[str, Any]:
        # 8. Degrade and recover visibly: a store failure shows in /healthz until it is back.
        info = self._acks.health() if self._acks else {"mode": "stopped"}
        return {"status": "degraded" if info["mode"] == "degraded" else "ok", **info}

    async def _ack(self, request: web.Request) -> web.Response:
        body = await request.read()
        # 4. Verify before touching state: a bad signature never reads or writes a row.
        if not hmac.compare_digest(request.headers.get("X-Toy-Signature", ""), sign(self._secret, body)):
            raise web.HTTPUnauthorized(text="bad signature")
        try:
            event = json.loads(body)
            alert_id, user = str(event["alert_id"]), str(event["user"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='expected {"alert_id": ..., "user": ...}') from None
        assert self._acks is not None
        # 5. One recording function: every ack goes through this claim, and
        # 6. Await the durable write before answering: on disk before the 200, atomic across processes.
        won = await self._acks.claim(alert_id, {"user": user, "acked_at": int(time.time() * 1000)})
        if won:
            return web.json_response({"alert_id": alert_id, "acked_by": user, "first": True})
        # 7. Read through, keeping the stored expiry: a read never extends the row's day.
        first = await self._acks.get(alert_id)
        return web.json_response({"alert_id": alert_id, "acked_by": (first or {}).get("user"), "first": False})
