"""The Slack plugin (wiring): one Events API route (or Socket Mode), acked fast, answered once
per event_id; `sdk.InboundGate` runs the exactly-once steps, handlers.py's `SlackBot` the rest.

Request path (POST /slack/events), in this order:
1. verify the v0 signature; 401 before anything is read or written; answer `url_verification`;
2. the bot decides (mention policy; a reply's thread looked up) and the gate claims
   `{team_id}:{event_id}` under a short lease, a thread new to the bot recorded and counted
   against the user's quota in the same write;
3. the bot replies in the thread; the gate commits the participation refresh with the done
   mark (one transaction, the second and last write);
4. ack 200 once 3 is done, or after `ack_budget_s` (Slack's 3 s rule) with 3 running on, the
   event held in `slack.pending` first (every gateway's recovery loop finishes held events whose
   owner died); so is a reply failing on Slack's last retry; `stop()` waits.

SIGKILL at any step loses no reply and doubles none (docs/migrations/slack.md walks each step):
a retry meets a live lease (503 + Retry-After), or takes a dead one over and first looks for its
own reply in the thread, whatever the delivery says; after the done mark it is acked and dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import web

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.handlers import SlackBot
from chatstate.adapters.slack.platform import RequestVerifier, SlackApi, is_last_attempt, parse_message
from chatstate.adapters.slack.socket_mode import SocketModeTransport
from chatstate.adapters.slack.state import ThreadParticipation, specs
from chatstate.gateway.sdk import AdapterState, Holding, InboundGate, PluginRuntime, StatefulPlugin, UserQuota, ingress

EVENTS_PATH = "/slack/events"


@dataclass(frozen=True)
class Running:
    """The Slack plugin's parts, built once in `build`."""

    settings: SlackSettings
    verifier: RequestVerifier
    api: SlackApi
    bot: SlackBot
    gate: InboundGate
    socket: SocketModeTransport | None  # transport = "socket"

    async def close(self) -> None:
        """Take no new envelopes, let replies in flight finish, then close the Web API client."""
        if self.socket is not None:
            await self.socket.stop()  # no new envelopes; those in hand are acked first
        await self.gate.stop()
        await self.api.close()

    def health(self) -> dict[str, Any]:
        """The gate's in-flight count and, in Socket Mode, the link: degraded while it is down
        (reconnecting, or `apps.connections.open` refusing), as no event can arrive then."""
        if self.socket is None:
            return {"in_flight": self.gate.in_flight}
        transport = self.socket.health()
        down = {} if transport["connected"] else {"status": "degraded"}
        return {"in_flight": self.gate.in_flight, "transport": transport, **down}


class SlackPlugin(StatefulPlugin[Running]):
    """Slack Events API in, `chat.postMessage` out; state through `sdk.AdapterState`."""

    id = "slack"
    settings_type = SlackSettings
    webhook = EVENTS_PATH

    async def build(self, runtime: PluginRuntime) -> Running:
        """Read the config, open the stores, and learn the bot's user id with `auth.test`. Raises
        ValueError (bad config), StateStoreError (opening a store) and SlackApiError /
        aiohttp.ClientError (auth.test failed)."""
        settings = SlackSettings.of(runtime)
        threads, events, pending, starters = [
            await self.open_state(AdapterState(spec, legacy=runtime.legacy), runtime) for spec in specs(settings)
        ]
        api = SlackApi(token=settings.bot_token, base_url=settings.api_base_url)
        socket = None
        try:
            bot = SlackBot(
                settings,
                api,
                await api.auth_test(),
                ThreadParticipation(threads),
                UserQuota(starters, per_user=settings.threads_per_user, ttl_ms=settings.thread_ttl_ms),
                watched=[threads, events],
                log=runtime.log,
            )
            gate = InboundGate(
                events,
                lease_ms=settings.event_lease_ms,
                ack_budget_s=settings.ack_budget_s,
                holding=Holding(pending, bot.resume),
                log=runtime.log,
            )
            if settings.transport == "socket":
                socket = SocketModeTransport(settings, partial(handle_envelope, bot, gate, runtime.log), runtime.log)
                await socket.start()
        except BaseException:
            if socket is not None:
                await socket.stop()
            await api.close()
            raise
        gate.start()
        return Running(settings, RequestVerifier(settings.signing_secret), api, bot, gate, socket)

    async def handle(self, request: web.Request) -> web.Response:
        """The Events API request URL. 401 for a bad signature, before any state is touched."""
        run = self.running
        if run.settings.transport != "http":
            raise web.HTTPNotFound(text="this gateway takes Slack events over Socket Mode")
        body = await request.read()
        if not run.verifier.is_valid(body, request.headers):
            raise web.HTTPUnauthorized(text="invalid Slack signature")
        try:
            envelope = ingress.json_object(body)  # depth-limited; 400 for anything else
            if envelope.get("type") == "url_verification":
                return web.json_response({"challenge": envelope.get("challenge")})
            message = parse_message(envelope)  # ids checked here, before any side effect
        except ingress.BadInput as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        if message is None:
            return web.Response(status=200)
        last_attempt = is_last_attempt(request.headers.get("X-Slack-Retry-Num"))
        return (await run.gate.deliver(run.bot.job(message), last_attempt=last_attempt)).response()


async def handle_envelope(
    bot: SlackBot,
    gate: InboundGate,
    log: logging.LoggerAdapter[logging.Logger],
    payload: dict[str, Any],
    retry_attempt: int | None,
) -> bool:
    """A Socket Mode `events_api` envelope, down the Events API route's path: True to ack it (where
    that route answers 2xx). A reconnect redelivers as attempt 0, so the gate's claim decides,
    never the retry attempt. Ids not of Slack's shape (that route's 400): acked and dropped."""
    try:
        message = parse_message(payload)
    except ingress.BadInput as exc:
        log.warning("slack_envelope_refused", extra={"error": str(exc)})
        return True
    if message is None:
        return True
    return (await gate.deliver(bot.job(message), last_attempt=is_last_attempt(retry_attempt))).taken
