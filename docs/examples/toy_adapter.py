"""A fifth adapter on the plugin SDK: a bot for "Toy", a made-up chat platform, that answers
each message exactly once and at most `questions_per_user` questions per user an hour. Toy
POSTs each message to /toy/events as `{"id", "user", "channel", "text"}`, signed with
`X-Toy-Signature: sha256=<hex HMAC-SHA256 of the body>`, and sends the same `id` again until it
gets a 2xx. The bot answers with POST {api_url}/messages `{"channel", "text", "reply_to": id}`;
GET {api_url}/messages?reply_to=<id> lists the messages that answer `id`. Each "# N." comment
is step N of docs/migrating-an-adapter.md (a test checks the titles).

# 9. Register the plugin: in the gateway config, with this folder on PYTHONPATH
    external_plugins = ["toy_adapter:ToyPlugin"]
    trusted_plugins = ["toy"]                # an external plugin needs this to get a store
    [adapters.toy]
    secret = "..."                           # or CHATSTATE_TOY_SECRET
    api_url = "https://toy.example/api"
# 10. Test it across a real SIGKILL: tests/e2e/test_toy_adapter.py
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import aiohttp
from aiohttp import web
from pydantic import Field

from chatstate.gateway import sdk

HOUR_MS = 3600 * 1000

# 1. Choose namespace, key, value, TTL and cap: one StateSpec per row of the page's table.
EVENTS = sdk.StateSpec("toy.events", ttl_ms=HOUR_MS, max_entries=10_000)  # the gate's claims, by message id
ASKED = sdk.StateSpec("toy.questions", ttl_ms=HOUR_MS, max_entries=1_000)  # the quota's counts, by user


# 2. Declare the settings: [adapters.toy]; an unknown key or a wrong type stops the gateway (exit 2).
class ToySettings(sdk.AdapterSettings):
    secret: Annotated[str, Field(min_length=1)]  # the HMAC key of X-Toy-Signature
    api_url: str  # Toy's API, where answers are posted
    questions_per_user: Annotated[int, Field(ge=1)] = 5  # answered per user per hour
    lease_ms: Annotated[int, Field(ge=100)] = 30_000  # a dead owner's claim is taken over after this


def sign(secret: str, body: bytes) -> str:
    """The X-Toy-Signature of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Message:
    id: str
    user: str
    channel: str
    text: str


def parse(body: bytes) -> Message:
    """Toy's message; raises ingress.BadInput (a 400) for anything else."""
    fields = sdk.ingress.json_object(body)
    values = [fields.get(name) for name in ("id", "user", "channel", "text")]
    if not all(isinstance(v, str) for v in values):
        raise sdk.ingress.BadInput('expected {"id", "user", "channel", "text"}, all strings')
    sdk.ingress.check_key(values[0], what="id")
    sdk.ingress.check_key(values[1], what="user")
    return Message(*values)


@dataclass(frozen=True)
class Running:
    """What the plugin runs on, built once in `build`: nothing optional, nothing to assert."""

    settings: ToySettings
    http: aiohttp.ClientSession
    gate: sdk.InboundGate
    quota: sdk.UserQuota

    async def close(self) -> None:
        await self.gate.stop()  # new messages get 503; those in flight finish and commit
        await self.http.close()

    def health(self) -> dict[str, Any]:
        # 8. Report health: the base adds `status` and each state's mode; add your own parts.
        return {"in_flight": self.gate.in_flight}


class ToyPlugin(sdk.StatefulPlugin[Running]):
    id = "toy"
    settings_type = ToySettings
    webhook = "/toy/events"  # Toy's request URL: POSTed to `handle`

    # 3. Build the running parts once: states (memory only in legacy mode), gate, quota, client.
    async def build(self, runtime: sdk.PluginRuntime) -> Running:
        settings = ToySettings.of(runtime)
        events, asked = [
            await self.open_state(sdk.AdapterState(spec, legacy=runtime.legacy), runtime) for spec in (EVENTS, ASKED)
        ]
        return Running(
            settings,
            aiohttp.ClientSession(raise_for_status=True, timeout=aiohttp.ClientTimeout(total=10)),
            sdk.InboundGate(events, lease_ms=settings.lease_ms, log=runtime.log),
            sdk.UserQuota(asked, per_user=settings.questions_per_user, ttl_ms=HOUR_MS),
        )

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        # 4. Verify before touching state: a forged request claims nothing and counts nothing.
        given = sdk.ingress.credential(request.headers, "X-Toy-Signature") or ""
        if not hmac.compare_digest(given, sign(self.running.settings.secret, body)):
            raise web.HTTPUnauthorized(text="bad signature")
        try:
            message = parse(body)
        except sdk.ingress.BadInput as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        # 5. Hand each delivery to the gate: its key, its work, its "already answered?" check.
        job = sdk.Job(message.id, work=partial(self.work, message), answered=partial(self.answered, message))
        return (await self.running.gate.deliver(job)).response()  # 200, or 503 + Retry-After

    # 6. Do the work, staging state writes: committed with the done mark, or not at all.
    async def work(self, message: Message, writes: sdk.Writes) -> str:
        wait_ms = await self.running.quota.admit(message.user, writes)
        if wait_ms is None:  # the user's reply hook (`reply = "module:function"`) writes the text
            asked = sdk.reply.Message(message.text, message.user, message.channel, "toy")
            text = await sdk.reply.answer(asked, default=f"you asked: {message.text}")
        else:
            text = f"You asked {self.running.quota.per_user} this hour; ask again in {wait_ms // 60_000 + 1} min."
        if text is None:
            return "ignored"  # the hook had nothing to say
        await self.send(message, text)
        return "answered"

    async def send(self, message: Message, text: str) -> None:
        """The one send path; raises aiohttp.ClientError (the gate then releases the message)."""
        answer = {"channel": message.channel, "text": text, "reply_to": message.id}
        async with self.running.http.post(f"{self.running.settings.api_url}/messages", json=answer):
            pass

    # 7. Say whether it was already answered: asked after taking over a dead process's claim.
    async def answered(self, message: Message, writes: sdk.Writes) -> bool:
        url = f"{self.running.settings.api_url}/messages"
        async with self.running.http.get(url, params={"reply_to": message.id}) as resp:
            found = bool((await resp.json())["messages"])
        if found:  # stage what the dead process could not commit: this answer's count
            await self.running.quota.admit(message.user, writes)
        return found
