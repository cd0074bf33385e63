"""The bundled `echo` plugin: a signed counter, so the gateway is testable without a real adapter.

POST /echo with body `{"key": "k"}` adds one to k's counter and answers `{"key", "count"}` only
after the new count is durably written (awaited), so a SIGKILL right after the answer loses
nothing. With `"text": "..."` in the body the answer also carries `"reply"`: the user's reply
hook's answer (gateway/reply.py; `key` is the user and the conversation), else `echo: <text>`.
Reads go to memory first, then the store (the adapters' pattern, DESIGN.md §3).
GET /echo/{key} reads it. Both routes check an HMAC-SHA256 signature before anything else and
answer 401 without touching state when it is wrong, like a platform adapter would. The counters
are an `AdapterState` like every adapter's: a store fault degrades to memory (shown in /healthz)
and the writes are replayed when the store is back.

Exactly once: a body may carry `"id": "<the client's idempotency key>"` (inside the signed
body). Then the increment goes through the `InboundGate` like an adapter's event: a Job whose
whole work is its prepared write (the counter), committed with the id's done mark in ONE
conditional write, so the id counts once across retries, restarts and concurrent copies. A
duplicate answers 200 with the counter's current value and `"duplicate": true` (no reply hook
call: that would be a second effect); the first answer carries `"duplicate": false`. Ids are
remembered for ID_TTL_MS (at most ID_MAX_ENTRIES, oldest first). A 503 with an id may have
counted (the write is kept and replayed once the store is back): retry with the same id.
Without an `id` an increment is one plain write, and a 503 is never counted.

Both ways the read-modify-write of a counter runs under its key's lock, so two requests never
both read 5 and write 6.

Signature: header `X-Echo-Signature: sha256=<hex>` over `METHOD \\n raw-path \\n body`, keyed with
`[adapters.echo] secret` (or CHATSTATE_ECHO_SECRET). `mode = "legacy"` keeps counters in a dict.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from chatstate.gateway.sdk import (
    CALLER_ERRORS,
    AdapterSettings,
    AdapterState,
    InboundGate,
    Job,
    KeyedLocks,
    Outcome,
    PluginRuntime,
    Route,
    StatefulPlugin,
    StateSpec,
    StateStoreError,
    Writes,
    ingress,
    reply,
)

NAMESPACE = "echo.counters"
DEFAULT_MAX_ENTRIES = 10_000  # counters kept; the oldest-written is evicted past this
IDS_NAMESPACE = "echo.ids"  # the gate's claims: one done mark per request id
ID_TTL_MS = 24 * 60 * 60 * 1000  # a retry later than a day counts again
ID_MAX_ENTRIES = 100_000  # ids remembered; the oldest is forgotten past this
ID_LEASE_MS = 10_000  # only a Retry-After here: an id's claim is written done, never leased
BAD_BODY = 'body must be {"key": "<non-empty string>"}'
SIGNATURE_HEADER = "X-Echo-Signature"


def _given(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _checked(key: str, what: str = "key") -> str:
    """The key (or id) if the store takes it; 400 (never 503, never degraded health) otherwise."""
    try:
        return ingress.check_key(key, what=what)
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


@dataclass(frozen=True)
class Running:
    """Echo's parts, built once in `build`: the secret, the counters (read-modify-written under
    one lock per key) and the gate that makes an increment with an id exactly-once."""

    secret: str
    counters: AdapterState
    gate: InboundGate
    legacy: bool
    locks: KeyedLocks = field(default_factory=KeyedLocks)

    async def close(self) -> None:
        """Let increments in flight finish; the states are closed by the base."""
        await self.gate.stop()

    def health(self) -> dict[str, Any]:
        return {"mode": "legacy" if self.legacy else "store", "in_flight": self.gate.in_flight}


class EchoPlugin(StatefulPlugin[Running]):
    """Signed per-key counters in one keyed store (or a dict in legacy mode)."""

    id = "echo"
    settings_type = EchoSettings

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/echo", self._increment), Route("GET", "/echo/{key}", self._read))

    async def build(self, runtime: PluginRuntime) -> Running:
        """Read the secret, open the counters and the ids (StateStoreError if a store cannot be
        opened) and start the gate."""
        settings = EchoSettings.of(runtime)
        spec = StateSpec(NAMESPACE, ttl_ms=None, max_entries=settings.max_entries)
        counters = await self.open_state(AdapterState(spec, legacy=runtime.legacy), runtime)
        ids_spec = StateSpec(IDS_NAMESPACE, ttl_ms=ID_TTL_MS, max_entries=ID_MAX_ENTRIES)
        ids = await self.open_state(AdapterState(ids_spec, legacy=runtime.legacy), runtime)
        gate = InboundGate(ids, lease_ms=ID_LEASE_MS, log=runtime.log)
        gate.start()
        return Running(settings.secret, counters, gate, runtime.legacy)

    # -- handlers ---------------------------------------------------------------------------
    def _verify(self, request: web.Request, body: bytes) -> None:
        """401 unless the signature header is right for this request and `body`."""
        given = ingress.credential(request.headers, SIGNATURE_HEADER) or ""  # junk reads as wrong
        expected = sign(self.running.secret, request.method, request.raw_path, body)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPUnauthorized(text="bad signature")

    async def _increment(self, request: web.Request) -> web.Response:
        body = await request.read()  # over the app's client_max_size -> 413 from aiohttp
        self._verify(request, body)
        try:
            body_json = ingress.json_object(body)
        except ingress.BadInput:
            raise web.HTTPBadRequest(text=BAD_BODY) from None
        key, request_id = body_json.get("key"), body_json.get("id")
        if not _given(key):
            raise web.HTTPBadRequest(text=BAD_BODY)
        if not (request_id is None or _given(request_id)):
            raise web.HTTPBadRequest(text='"id" must be a non-empty string')
        key = _checked(key)
        if request_id is None:
            answer = {"key": key, "count": await self._add_one(key)}
        else:
            count, duplicate = await self._add_once(key, _checked(request_id, "id"))
            answer = {"key": key, "count": count, "duplicate": duplicate}
            if duplicate:
                return web.json_response(answer)
        text = body_json.get("text")
        if isinstance(text, str):
            message = reply.Message(text, key, key, "echo")
            answer["reply"] = await reply.answer(message, default=f"echo: {text}")
        return web.json_response(answer)

    async def _read(self, request: web.Request) -> web.Response:
        self._verify(request, await request.read())
        key = _checked(request.match_info["key"])
        return web.json_response({"key": key, "count": await self._get(key)})

    # -- state ------------------------------------------------------------------------------
    async def _add_one(self, key: str) -> int:
        """One plain write, durable before the answer; a 503 is never counted."""
        running = self.running
        async with running.locks.hold(key):
            count = await self._get(key) + 1
            try:
                await running.counters.record(key, {"count": count}, or_raise=True)
            except StateStoreError as exc:
                raise self._refused(exc) from None
        return count

    async def _add_once(self, key: str, request_id: str) -> tuple[int, bool]:
        """(count, duplicate): the gate commits the new count with the id's done mark in one
        conditional write, so only the first copy of an id counts."""
        running = self.running
        counted: list[int] = []

        async def prepare(writes: Writes) -> None:
            counted.append(await self._get(key) + 1)
            writes.put(running.counters, key, {"count": counted[-1]})

        async with running.locks.hold(key):  # the read and the conditional write, together
            answer = await running.gate.deliver(Job(request_id, prepare=prepare))
            if answer.outcome is Outcome.ALREADY_DONE:
                return await self._get(key), True
        if answer.outcome is not Outcome.DONE:  # FAILED (a store fault), DRAINING, LEASED
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": answer.text}),
                content_type="application/json",
                headers={"Retry-After": str(answer.retry_after_s)},
            )
        if running.counters.last_error is not None or running.gate.claims.last_error is not None:
            raise self._unavailable()  # kept in memory, replayed later: a retry of the id says so
        return counted[-1], False

    async def _get(self, key: str) -> int:
        """Memory first, then the store (DESIGN.md §3): this process is the only writer. While
        the store fails nothing is answered from memory alone (503): a counter read from a cold
        cache would start again from 0. A key held in memory costs no await."""
        counters = self.running.counters
        if counters.last_error is not None and not await counters.recover():
            raise self._unavailable()
        entry = counters.memory.get(key.strip())  # the key as the store keeps it
        if entry is None:
            try:
                entry = await counters.get_entry(key)
            except StateStoreError as exc:
                raise self._refused(exc) from None
            if counters.last_error is not None:  # the read met a store fault
                raise self._unavailable()
        return int(entry.value["count"]) if entry is not None and isinstance(entry.value, dict) else 0

    def _unavailable(self) -> web.HTTPServiceUnavailable:
        return web.HTTPServiceUnavailable(
            text=json.dumps({"error": self.running.counters.last_error}), content_type="application/json"
        )

    def _refused(self, exc: StateStoreError) -> web.HTTPException:
        """A state call raised: a store fault answers 503 and shows in /healthz until the store
        works again (a counter write is `or_raise`: a 503 increment is not counted, later either).

        A refusal of the caller's input (INVALID_INPUT, LIMIT_EXCEEDED) is the caller's error:
        400, and health stays as it was. `_checked` normally catches it first.
        """
        if exc.code in CALLER_ERRORS:
            return web.HTTPBadRequest(text=json.dumps({"error": str(exc.code)}), content_type="application/json")
        return self._unavailable()
