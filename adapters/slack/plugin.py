"""The Slack plugin (wiring): one Events API route, acked fast, answered once per event_id;
the claim/answer/ack work itself is handlers.py's `EventWork`.

Request path (POST /slack/events), in this order:
1. verify the v0 signature; 401 before anything is read or written;
2. answer `url_verification` with its challenge;
3. claim `{team_id}:{event_id}` under a short lease (durable before anything else happens);
4. decide (mention policy + participation lookup), reply in the thread, record participation,
   then replace the lease with the done mark: each write awaited before the next step;
5. ack 200 as soon as 4 is done, or after `ack_budget_s` (Slack's 3 s rule) with 4 still running
   in the background; `stop()` waits for background work so SIGTERM loses no reply. Before
   that early 200 the event is held in `slack.pending` (awaited): Slack will not retry it, so
   a recovery loop in every gateway finishes held events whose owner died (claim first, then
   look for the reply in the thread, then answer), and the row goes when the event is done.

SIGKILL, step by step: before the claim, or holding the lease without having replied, Slack
gets no 2xx and retries; a retry that meets a live lease no task here owns gets 503 +
Retry-After, and once the lease has expired the retry wins the claim and answers (no reply
lost). After the done mark, a retry is acked and dropped (no double reply). Between Slack
accepting chat.postMessage and the done mark landing, a retry that wins the expired lease first
looks for its own reply in the thread (each reply carries the event_id as message metadata)
and, finding it, records what the dead process could not and answers nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.handlers import EventWork, Outcome
from chatstate.adapters.slack.platform import RETRY_NUM_HEADER, RequestVerifier, SlackApi, SlackMessage, parse_message
from chatstate.adapters.slack.socket_mode import SocketModeTransport
from chatstate.adapters.slack.state import (
    EventLedger,
    PendingWork,
    ThreadParticipation,
    ThreadQuota,
    events_spec,
    pending_spec,
    starters_spec,
    thread_spec,
)
from chatstate.gateway import ingress, metrics
from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.plugin import PluginRuntime, Route
from chatstate.gateway.stateful import StatefulPlugin

EVENTS_PATH = "/slack/events"


class SlackPlugin(StatefulPlugin):
    """Slack Events API in, `chat.postMessage` out; state through `gateway.adapter_state`."""

    id = "slack"
    origin = "bundled"
    settings_type = SlackSettings

    def __init__(self) -> None:
        super().__init__()
        self.settings: SlackSettings | None = None
        self.work: EventWork | None = None  # set by start()
        self._verifier: RequestVerifier | None = None
        self._api: SlackApi | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._runtime: PluginRuntime | None = None
        self._socket: SocketModeTransport | None = None  # transport = "socket"

    def routes(self) -> Sequence[Route]:
        return (Route("POST", EVENTS_PATH, self.handle_events),)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, runtime: PluginRuntime) -> None:
        """Read the config, open the stores, and learn the bot's identity with `auth.test`.

        Raises ValueError (bad config), StateStoreError (opening a store) and
        slack_sdk.errors.SlackApiError / aiohttp.ClientError (auth.test failed).
        """
        settings = SlackSettings.of(runtime)
        self._runtime = runtime
        self.settings = settings
        self._verifier = RequestVerifier(settings.signing_secret)
        threads, events, pending, starters = [
            await self.open_state(AdapterState(spec(settings), legacy=runtime.legacy), runtime)
            for spec in (thread_spec, events_spec, pending_spec, starters_spec)
        ]
        self._api = api = SlackApi(token=settings.bot_token, base_url=settings.api_base_url)
        await api.open()
        try:
            self.work = EventWork(
                settings,
                api=api,
                bot=await api.auth_test(),
                threads=ThreadParticipation(threads),
                events=EventLedger(events, lease_ms=settings.event_lease_ms),
                pending=PendingWork(pending),
                quota=ThreadQuota(starters, per_user=settings.threads_per_user, ttl_ms=settings.thread_ttl_ms),
                states=[threads, events, pending, starters],
                legacy=runtime.legacy,
                log=runtime.log,
            )
            if settings.transport == "socket":
                self._socket = SocketModeTransport(
                    app_token=settings.app_token,
                    api_base_url=settings.api_base_url,
                    handle=self.handle_envelope,
                    log=runtime.log,
                    ping_interval_s=settings.socket_ping_interval_s,
                )
                await self._socket.start()
        except BaseException:
            if self._socket is not None:
                await self._socket.stop()
            await api.close()
            raise
        if not runtime.legacy:  # the "before" has no held events to recover
            self._recovery = asyncio.create_task(self.work.recover_held(), name="slack-recovery")

    async def stop(self) -> None:
        """Let replies in flight finish (their writes are what a restart relies on), then close."""
        if self._socket is not None:
            await self._socket.stop()  # no new envelopes; those in hand are acked first
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self.work is not None:
            await self.work.drain()
        if self._api is not None:
            await self._api.close()
        await super().stop()

    def health(self) -> dict[str, Any]:
        states = {h["namespace"]: h for h in self.states_health()}
        in_flight = self.work.in_flight if self.work is not None else 0
        report = {"status": "degraded" if self.degraded() else "ok", "in_flight": in_flight, "state": states}
        if self._socket is not None:
            report["transport"] = self._socket.health()
        return report

    # -- inbound --------------------------------------------------------------------------
    async def handle_events(self, request: web.Request) -> web.Response:
        """The Events API request URL. 401 for a bad signature, before any state is touched."""
        assert self._verifier is not None and self.settings is not None, "start() first"
        if self.settings.transport != "http":
            raise web.HTTPNotFound(text="this gateway takes Slack events over Socket Mode")
        body = await request.read()
        if not self._verifier.is_valid(body, request.headers):
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
        outcome = await self.accept(message, retried=RETRY_NUM_HEADER in request.headers)
        return self._answer(outcome)

    async def handle_envelope(self, payload: dict[str, Any], retry_attempt: int) -> bool:
        """A Socket Mode `events_api` envelope: the same path as the Events API route; True when
        the envelope may be acknowledged (the HTTP route answers 2xx then, 503 otherwise).
        An envelope whose ids are not Slack's shape (the HTTP route's 400) is acked and dropped:
        redelivering it would not make it valid."""
        try:
            message = parse_message(payload)
        except ingress.BadInput as exc:
            assert self._runtime is not None
            self._runtime.log.warning("slack_envelope_refused", extra={"error": str(exc)})
            return True
        if message is None:
            return True
        outcome = await self.accept(message, retried=retry_attempt > 0)
        return outcome not in (Outcome.LEASED, Outcome.FAILED)

    async def accept(self, message: SlackMessage, *, retried: bool = False) -> Outcome | None:
        """Hand `message` to the event work (see handlers.EventWork.accept)."""
        assert self.work is not None, "start() first"
        return await self.work.accept(message, retried=retried)

    def _answer(self, outcome: Outcome | None) -> web.Response:
        assert self.settings is not None
        if outcome in (Outcome.ALREADY_DONE, Outcome.IN_PROGRESS):
            metrics.record_dedupe_hit(self.id, "event")  # a retry or duplicate dropped by the claim
        if outcome in (Outcome.LEASED, Outcome.FAILED):
            retry_after = math.ceil(self.settings.event_lease_ms / 1000) if outcome is Outcome.LEASED else 1
            return web.Response(status=503, headers={"Retry-After": str(retry_after)}, text=outcome.value)
        return web.Response(status=200, text=outcome.value if outcome else "accepted")
