"""The bundled `echo` plugin: a signed counter, so the gateway is testable without a real adapter.

POST /echo with body `{"key": "k"}` adds one to k's counter and answers `{"key", "count"}` only
after the new count is durably written (awaited), so a SIGKILL right after the answer loses
nothing. With `"text": "..."` in the body the answer also carries `"reply"`: the user's reply
hook's answer (gateway/reply.py; `key` is the user and the conversation), else `echo: <text>`. Reads go to memory first, then the store (the adapters' pattern, DESIGN.md §3).
GET /echo/{key} reads it. Both routes check an HMAC-SHA256 signature before anything else and
answer 401 without touching state when it is wrong, like a platform adapter would. The counters
are an `AdapterState` like every adapter's: a store fault degrades to memory (shown in /healthz)
and the writes are replayed when the store is back.

Signature: header `X-Echo-Signature: sha256=<hex>` over `METHOD \\n raw-path \\n body`, keyed with
`[adapters.echo] secret` (or CHATSTATE_ECHO_SECRET). `mode = "legacy"` keeps counters in a dict.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Sequence
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from chatstate.gateway import ingress, reply
from chatstate.gateway.adapter_state import CALLER_ERRORS, AdapterState, StateSpec
from chatstate.gateway.plugin import PluginRuntime, Route
from chatstate.gateway.settings import AdapterSettings
from chatstate.gateway.stateful import StatefulPlugin
from chatstate.state import StateStoreError

NAMESPACE = "echo.counters"
DEFAULT_MAX_ENTRIES = 10_000  # counters kept; the oldest-written is evicted past this
SIGNATURE_HEADER = "X-Echo-Signature"
_LOCK_STRIPES = 64  # read-modify-write locks, striped by key so memory stays bounded


def _checked(key: str) -> str:
    """The key if the store takes it; 400 (never 503, never degraded health) otherwise."""
    try:
        return ingress.check_key(key)
    except ingress.BadInput as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def sign(secret: str, method: str, raw_path: str, body: bytes = b"") -> str:
    """Return the `X-Echo-Signature` value for a request (clients and tests use this)."""
    message = f"{method.upper()}\n{raw_path}\n".encode() + body
    return "sha256=" + hmac.digest(secret.encode(), message, "sha256").hex()  # one-shot: C fast path


class EchoSettings(AdapterSettings):
    """`[adapters.echo]`: `CHATSTATE_ECHO_SECRET`, `CHATSTATE_ECHO_MAX_ENTRIES`."""

    adapter_id = "echo"

    secret: Annotated[str, Field(min_length=1)]  # HMAC key for X-Echo-Signature
    max_entries: Annotated[int, Field(ge=1)] = DEFAULT_MAX_ENTRIES


class EchoPlugin(StatefulPlugin):
    """Signed per-key counters in one keyed store (or a dict in legacy mode)."""

    id = "echo"
    origin = "bundled"
    settings_type = EchoSettings

    def __init__(self) -> None:
        super().__init__()
        self._secret = ""
        self._counters: AdapterState | None = None  # legacy: memory only
        self._legacy = False
        self._locks: list[asyncio.Lock] = []

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/echo", self._increment), Route("GET", "/echo/{key}", self._read))

    async def start(self, runtime: PluginRuntime) -> None:
        """Read the secret and open the counter store (StateStoreError if it cannot be opened)."""
        settings = EchoSettings.of(runtime)
        self._secret = settings.secret
        self._legacy = runtime.legacy
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        spec = StateSpec(NAMESPACE, ttl_ms=None, max_entries=settings.max_entries)
        self._counters = await self.open_state(AdapterState(spec, legacy=runtime.legacy), runtime)

    def health(self) -> dict[str, Any]:
        last_error = self._counters.last_error if self._counters is not None else None
        out: dict[str, Any] = {
            "status": "degraded" if last_error else "ok",
            "mode": "legacy" if self._legacy else "store",
        }
        if last_error:
            out["last_error"] = last_error
        return out

    # -- handlers ---------------------------------------------------------------------------
    async def _verified_body(self, request: web.Request) -> bytes:
        body = await request.read()  # over the app's client_max_size -> 413 from aiohttp
        given = ingress.credential(request.headers, SIGNATURE_HEADER) or ""  # junk reads as wrong
        expected = sign(self._secret, request.method, request.raw_path, body)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPUnauthorized(text="bad signature")
        return body

    async def _increment(self, request: web.Request) -> web.Response:
        body = await self._verified_body(request)
        try:
            body_json = ingress.json_object(body)
        except ingress.BadInput:
            raise web.HTTPBadRequest(text='body must be {"key": "<non-empty string>"}') from None
        key = body_json.get("key")
        if not isinstance(key, str) or not key.strip():
            raise web.HTTPBadRequest(text='body must be {"key": "<non-empty string>"}')
        key = _checked(key)
        async with self._locks[hash(key) % _LOCK_STRIPES]:
            count = await self._get(key) + 1
            await self._put(key, count)
        text = body_json.get("text")
        if not isinstance(text, str):
            return web.json_response({"key": key, "count": count})
        answer = await reply.answer(reply.Message(text, key, key, "echo"), default=f"echo: {text}")
        return web.json_response({"key": key, "count": count, "reply": answer})

    async def _read(self, request: web.Request) -> web.Response:
        await self._verified_body(request)
        key = _checked(request.match_info["key"])
        return web.json_response({"key": key, "count": await self._get(key)})

    # -- state ------------------------------------------------------------------------------
    async def _get(self, key: str) -> int:
        """Memory first, then the store (DESIGN.md §3): this process is the only writer. While
        the store fails nothing is answered from memory alone (503): a counter read from a cold
        cache would start again from 0."""
        assert self._counters is not None, "start() first"
        if self._counters.last_error is not None and not await self._counters.recover():
            raise self._unavailable()
        value = await self._guard(self._counters.get(key))
        return int(value["count"]) if isinstance(value, dict) else 0

    async def _put(self, key: str, count: int) -> None:
        """Durable first: the reply goes out only after this returns."""
        assert self._counters is not None, "start() first"
        await self._guard(self._counters.record(key, {"count": count}, or_raise=True))

    def _unavailable(self) -> web.HTTPServiceUnavailable:
        assert self._counters is not None
        return web.HTTPServiceUnavailable(
            text=json.dumps({"error": self._counters.last_error}), content_type="application/json"
        )

    async def _guard(self, op: Any) -> Any:
        """Await a state call; a store fault answers 503 and shows in /healthz until the store
        works again. A counter write is `or_raise`: a 503 increment is not counted, later either.

        A refusal of the caller's input (INVALID_INPUT, LIMIT_EXCEEDED) is the caller's error:
        400, and health stays as it was. `_checked` normally catches it first.
        """
        assert self._counters is not None
        try:
            result = await op
        except StateStoreError as exc:
            if exc.code in CALLER_ERRORS:
                raise web.HTTPBadRequest(
                    text=json.dumps({"error": str(exc.code)}), content_type="application/json"
                ) from None
            raise self._unavailable() from None
        if self._counters.last_error is not None:
            raise self._unavailable()
        return result
