"""The Slack plugin (wiring): one Events API route (or Socket Mode), acked fast, answered once
per event_id; `sdk.InboundGate` runs the exactly-once steps, handlers.py's `SlackBot` the work.

Request path (POST /slack/events), in this order:
1. verify the v0 signature; 401 before anything is read or written;
2. answer `url_verification` with its challenge;
3. the gate claims `{team_id}:{event_id}` under a short lease (one durable write);
4. the bot decides (mention policy + participation lookup) and replies in the thread, staging
   participation and the user's quota count; the gate commits them with the done mark (one
   transaction, the second write);
5. ack 200 as soon as 4 is done, or after `ack_budget_s` (Slack's 3 s rule) with 4 still running
   in the background, the event held in `slack.pending` first (Slack will not retry it, so every
   gateway's recovery loop finishes held events whose owner died); `stop()` waits for them.

SIGKILL, step by step: before the claim, or holding the lease without having replied, Slack
gets no 2xx and retries; a retry that meets a live lease gets 503 + Retry-After, and once the
lease has run out the retry takes it over and answers (no reply lost). After the done mark, a
retry is acked and dropped (no double reply). Between Slack accepting chat.postMessage and the
done mark, the claim that takes over the expired lease always looks for its own reply in the
thread first, whatever the delivery says about retries (Socket Mode redelivers after a
reconnect as a first attempt), and finding it records the thread and answers nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from aiohttp import web

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.handlers import SlackBot
from chatstate.adapters.slack.platform import RequestVerifier, SlackApi, parse_message
from chatstate.adapters.slack.socket_mode import SocketModeTransport
from chatstate.adapters.slack.state import ThreadParticipation, events_spec, pending_spec, starters_spec, thread_spec
from chatstate.gateway.sdk import (
    AdapterState,
    Holding,
    InboundGate,
    PluginRuntime,
    Route,
    StatefulPlugin,
    UserQuota,
    ingress,
)

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
    log: logging.LoggerAdapter[logging.Logger]

    async def close(self) -> None:
        """Take no new envelopes, let replies in flight finish, then close the Web API client."""
        if self.socket is not None:
            await self.socket.stop()  # no new envelopes; those in hand are acked first
        await self.gate.stop()
        await self.api.close()

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"in_flight": self.gate.in_flight}
        if self.socket is not None:
            report["transport"] = self.socket.health()
        return report


class SlackPlugin(StatefulPlugin[Running]):
    """Slack Events API in, `chat.postMessage` out; state through `sdk.AdapterState`."""

    id = "slack"
    origin = "bundled"
    settings_type = SlackSettings

    def routes(self) -> Sequence[Route]:
        return (Route("POST", EVENTS_PATH, self.handle_events),)

    async def build(self, runtime: PluginRuntime) -> Running:
        """Read the config, open the stores, and learn the bot's identity with `auth.test`.

        Raises ValueError (bad config), StateStoreError (opening a store) and
        slack_sdk.errors.SlackApiError / aiohttp.ClientError (auth.test failed).
        """
        settings = SlackSettings.of(runtime)
        threads, events, pending, starters = [
            await self.open_state(AdapterState(spec(settings), legacy=runtime.legacy), runtime)
            for spec in (thread_spec, events_spec, pending_spec, starters_spec)
        ]
        api = SlackApi(token=settings.bot_token, base_url=settings.api_base_url)
        await api.open()
        socket = None
        try:
            bot = SlackBot(
                settings,
                api=api,
                bot=await api.auth_test(),
                threads=ThreadParticipation(threads),
                quota=UserQuota(starters, per_user=settings.threads_per_user, ttl_ms=settings.thread_ttl_ms),
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
            running = Running(settings, RequestVerifier(settings.signing_secret), api, bot, gate, None, runtime.log)
            if settings.transport == "socket":
                socket = SocketModeTransport(
                    app_token=settings.app_token,
                    api_base_url=settings.api_base_url,
                    handle=partial(handle_envelope, bot, gate, runtime.log),
                    log=runtime.log,
                    ping_interval_s=settings.socket_ping_interval_s,
                )
                running = replace(running, socket=socket)
                await socket.start()
        except BaseException:
            if socket is not None:
                await socket.stop()
            await api.close()
            raise
        gate.start()
        return running

    # -- inbound --------------------------------------------------------------------------
    async def handle_events(self, request: web.Request) -> web.Response:
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
        return (await run.gate.deliver(run.bot.job(message))).response()


async def handle_envelope(
    bot: SlackBot, gate: InboundGate, log: logging.LoggerAdapter[logging.Logger], payload: dict[str, Any], _retry: int
) -> bool:
    """A Socket Mode `events_api` envelope: the same path as the Events API route; True when the
    envelope may be acknowledged (the HTTP route answers 2xx then, 503 otherwise). The retry
    attempt is not trusted (a reconnect redelivers as attempt 0): the gate's claim decides.
    An envelope whose ids are not Slack's shape (the HTTP route's 400) is acked and dropped:
    redelivering it would not make it valid."""
    try:
        message = parse_message(payload)
    except ingress.BadInput as exc:
        log.warning("slack_envelope_refused", extra={"error": str(exc)})
        return True
    if message is None:
        return True
    return (await gate.deliver(bot.job(message))).taken
