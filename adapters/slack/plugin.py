"""The Slack plugin: one Events API route, acked fast, answered once per event_id.

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
from enum import Enum
from typing import Any

import aiohttp
from aiohttp import web
from slack_sdk.errors import SlackApiError

from chatstate.adapters.common import AdapterState, now_ms
from chatstate.adapters.slack.platform import (
    RETRY_NUM_HEADER,
    BotIdentity,
    RequestVerifier,
    SlackApi,
    SlackMessage,
    parse_message,
)
from chatstate.adapters.slack.policy import MentionPolicy
from chatstate.adapters.slack.socket_mode import SocketModeTransport
from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.state import (
    EventLedger,
    PendingWork,
    ThreadParticipation,
    ThreadQuota,
    ThreadRef,
    events_spec,
    pending_spec,
    starters_spec,
    thread_spec,
)
from chatstate.gateway import ingress, metrics
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route

EVENTS_PATH = "/slack/events"
QUOTA_NOTE = ("(You have {limit} threads I am following, the most one person may have, so I won't "
              "follow this one: mention me here to get an answer.)")
STOP_TIMEOUT_S = 10.0  # how long stop() waits for replies still being written
MIN_RECOVERY_INTERVAL_S = 0.2  # the recovery loop looks for orphaned held events every lease/2


class Outcome(Enum):
    """What became of one delivery; decides the HTTP answer Slack gets."""

    REPLIED = "replied"
    IGNORED = "ignored"  # the policy said no; the event is still marked done
    ALREADY_DONE = "already_done"  # a retry or duplicate of a finished event: ack and drop
    IN_PROGRESS = "in_progress"  # a duplicate of an event this process is working on
    LEASED = "leased"  # a live lease nobody here owns (its process died mid-reply)
    FAILED = "failed"  # the Web API call failed; the lease is released for Slack's retry


def compose_reply(message: SlackMessage, bot_user_id: str) -> str:
    """The bot's answer. A stand-in for an agent: it echoes the text without the mention."""
    text = message.text.replace(f"<@{bot_user_id}>", "").strip()
    return f"echo: {text}" if text else "echo"


class SlackPlugin(Plugin):
    """Slack Events API in, `chat.postMessage` out; state through `adapters.common`."""

    id = "slack"
    origin = "bundled"
    settings_type = SlackSettings

    def __init__(self) -> None:
        self.settings: SlackSettings | None = None
        self.bot: BotIdentity | None = None
        self._verifier: RequestVerifier | None = None
        self._policy = MentionPolicy()
        self._api: SlackApi | None = None
        self._threads: ThreadParticipation | None = None
        self._events: EventLedger | None = None
        self._quota: ThreadQuota | None = None
        self._states: list[AdapterState] = []
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self._pending: PendingWork | None = None
        self._held: set[str] = set()  # keys this process holds in slack.pending
        self._recovery: asyncio.Task[None] | None = None
        self._runtime: PluginRuntime | None = None
        self._socket: SocketModeTransport | None = None  # transport = "socket"

    def routes(self) -> Sequence[Route]:
        return (Route("POST", EVENTS_PATH, self.handle_events),)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, runtime: PluginRuntime) -> None:
        """Read the config, open both stores, and learn the bot's identity with `auth.test`.

        Raises ValueError (bad config), StateStoreError (opening a store) and
        slack_sdk.errors.SlackApiError / aiohttp.ClientError (auth.test failed).
        """
        settings = SlackSettings.of(runtime)
        self._runtime = runtime
        self.settings = settings
        self._verifier = RequestVerifier(settings.signing_secret)
        self._policy = MentionPolicy(settings.require_mention, settings.require_explicit_mention)
        threads = AdapterState(thread_spec(settings), legacy=runtime.legacy)
        events = AdapterState(events_spec(settings), legacy=runtime.legacy)
        pending = AdapterState(pending_spec(settings), legacy=runtime.legacy)
        starters = AdapterState(starters_spec(settings), legacy=runtime.legacy)
        for st in (threads, events, pending, starters):
            await st.open(runtime)
        self._states = [threads, events, pending, starters]
        self._threads = ThreadParticipation(threads)
        self._quota = ThreadQuota(starters, per_user=settings.threads_per_user, ttl_ms=settings.thread_ttl_ms)
        self._events = EventLedger(events, lease_ms=settings.event_lease_ms)
        self._pending = PendingWork(pending)
        self._api = SlackApi(token=settings.bot_token, base_url=settings.api_base_url)
        await self._api.open()
        try:
            self.bot = await self._api.auth_test()
            if settings.transport == "socket":
                self._socket = SocketModeTransport(
                    app_token=settings.app_token, api_base_url=settings.api_base_url,
                    handle=self.handle_envelope, log=runtime.log, ping_interval_s=settings.socket_ping_interval_s,
                )
                await self._socket.start()
        except BaseException:
            if self._socket is not None:
                await self._socket.stop()
            await self._api.close()
            raise
        if not runtime.legacy:  # the "before" has no held events to recover
            self._recovery = asyncio.create_task(self._recover_held(), name="slack-recovery")

    async def stop(self) -> None:
        """Let replies in flight finish (their writes are what a restart relies on), then close."""
        if self._socket is not None:
            await self._socket.stop()  # no new envelopes; those in hand are acked first
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=STOP_TIMEOUT_S)
        if self._api is not None:
            await self._api.close()
        for st in self._states:
            await st.close()

    def health(self) -> dict[str, Any]:
        states = {st.spec.namespace: st.health() for st in self._states}
        degraded = any(h["mode"] == "degraded" for h in states.values())
        report = {"status": "degraded" if degraded else "ok", "in_flight": len(self._inflight), "state": states}
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
        """Start (or join) the work on `message`; return its outcome, or None if it is still
        running after `ack_budget_s` (then it finishes in the background)."""
        assert self.settings is not None
        key = EventLedger.key(message.team_id, message.event_id)
        if key in self._inflight:
            return Outcome.IN_PROGRESS
        task = self._start(key, message, retried=retried)
        done, _ = await asyncio.wait({task}, timeout=self.settings.ack_budget_s)
        if done:
            return task.result()
        if self._pending is not None and not self.legacy:
            # Slack gets its 200 now and will not retry: hold the event first, so a crash
            # before the reply lands leaves it to the recovery loop instead of losing it
            self._held.add(key)
            await self._pending.hold(key, message)
        return None

    @property
    def legacy(self) -> bool:
        return self._runtime is None or self._runtime.legacy

    def _start(self, key: str, message: SlackMessage, *, retried: bool) -> asyncio.Task[Outcome]:
        task = asyncio.create_task(self._run(key, message, retried=retried), name=f"slack-event-{key}")
        self._inflight[key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return task

    async def _recover_held(self) -> None:
        """Finish events held in `slack.pending` that no task here is working on: those of a
        process that died after acking them. The event claim decides who does it (a live
        owner's lease makes this a no-op until it finishes or its lease runs out)."""
        assert self.settings is not None and self._pending is not None
        interval = max(MIN_RECOVERY_INTERVAL_S, self.settings.event_lease_ms / 2000)
        while True:
            for key, message in await self._pending.held():
                if key not in self._inflight:
                    assert self._runtime is not None
                    self._runtime.log.info("slack_held_event_taken", extra={"event_key": key})
                    self._held.add(key)
                    self._start(key, message, retried=True)
            await asyncio.sleep(interval)

    def _answer(self, outcome: Outcome | None) -> web.Response:
        assert self.settings is not None
        if outcome in (Outcome.ALREADY_DONE, Outcome.IN_PROGRESS):
            metrics.record_dedupe_hit(self.id, "event")  # a retry or duplicate dropped by the claim
        if outcome in (Outcome.LEASED, Outcome.FAILED):
            retry_after = math.ceil(self.settings.event_lease_ms / 1000) if outcome is Outcome.LEASED else 1
            return web.Response(status=503, headers={"Retry-After": str(retry_after)}, text=outcome.value)
        return web.Response(status=200, text=outcome.value if outcome else "accepted")

    async def _run(self, key: str, message: SlackMessage, *, retried: bool) -> Outcome:
        """Claim, answer, mark done; every write awaited before the next step."""
        assert self._events is not None and self._runtime is not None
        received_at = now_ms()
        if not await self._events.claim(key, received_at=received_at):
            if await self._events.is_done(key):
                await self._finish_held(key)
                return Outcome.ALREADY_DONE
            return Outcome.LEASED
        try:
            if retried and not self._runtime.legacy and await self._answered_before(message):
                await self._events.mark_done(key, received_at=received_at)
                await self._finish_held(key)
                return Outcome.ALREADY_DONE
            replied = await self._respond(message)
        except (SlackApiError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self._runtime.log.warning("slack_reply_failed", extra={"event_key": key, "error": type(exc).__name__})
            await self._events.release(key)
            return Outcome.FAILED
        await self._events.mark_done(key, received_at=received_at)
        await self._finish_held(key)
        return Outcome.REPLIED if replied else Outcome.IGNORED

    async def _finish_held(self, key: str) -> None:
        """Drop the `slack.pending` row of a done event, if this process held or recovered it."""
        if key in self._held and self._pending is not None:
            self._held.discard(key)
            await self._pending.finish(key)

    async def _answered_before(self, message: SlackMessage) -> bool:
        """For a retried event we just claimed: did an earlier attempt post its reply and die
        before marking the event done? If so, record the participation it could not record.

        Part of the migration, so legacy mode (the "before") does not do it.
        """
        assert self._api is not None and self._threads is not None and self.settings is not None
        thread = self.thread_of(message)
        found = await self._api.answered(
            channel=thread.channel_id, thread_ts=thread.thread_ts, after_ts=message.ts, event_id=message.event_id
        )
        if found and await self._may_follow(thread, message.user):
            await self._threads.record_participation(thread, agent_id=self.settings.agent_id)
        return found

    async def _respond(self, message: SlackMessage) -> bool:
        """Apply the mention policy and reply if it says so; True if the bot replied."""
        assert self.bot is not None and self._threads is not None
        thread = self.thread_of(message)
        participated = False
        if self._policy.needs_participation(message, self.bot.user_id):
            participated = await self._threads.replied_in(thread) is not None
        answer, _reason = self._policy.decide(message, self.bot.user_id, participated=participated)
        if answer:
            await self.reply(thread, compose_reply(message, self.bot.user_id), event_id=message.event_id,
                             requester=message.user)
        return answer

    # -- outbound: the one send path ------------------------------------------------------
    def thread_of(self, message: SlackMessage) -> ThreadRef:
        """The thread a reply to `message` goes to: keyed by the root, never a child ts."""
        assert self.settings is not None
        return ThreadRef(message.team_id, self.settings.account_id, message.channel, message.thread_root)

    async def reply(self, thread: ThreadRef, text: str, *, event_id: str, requester: str | None = None) -> str:
        """Post `text` in `thread`, answering `event_id`, and record participation; returns
        the posted message's ts.

        Every message the bot sends goes through here, so no send path can forget to record
        (a bug the reference system had). Returns only after the row is durable. A thread new
        to the bot counts against `requester`'s quota (`threads_per_user`); past it the bot
        still answers, says it will not follow the thread, and records nothing (issue 15).
        Raises SlackApiError / aiohttp.ClientError when the post fails (nothing is recorded then).
        """
        assert self._api is not None and self._threads is not None and self.settings is not None
        follow = requester is None or await self._may_follow(thread, requester)
        if not follow:
            text = f"{text}\n{QUOTA_NOTE.format(limit=self.settings.threads_per_user)}"
        ts = await self._api.post_message(
            channel=thread.channel_id, text=text, thread_ts=thread.thread_ts, event_id=event_id
        )
        if follow:
            await self._threads.record_participation(thread, agent_id=self.settings.agent_id)
        return ts

    async def _may_follow(self, thread: ThreadRef, requester: str) -> bool:
        """True if `requester` is under their quota (one read, one write for a thread new to
        them), or the bot already follows `thread`, or the quota's store is failing."""
        assert self._threads is not None and self._quota is not None
        if any(st.last_error for st in self._states):
            return True  # the store is failing (the claim just found out): fail open, add no slow calls
        admitted = await self._quota.admit(thread, user_id=requester)
        if admitted is not False:
            return True
        if await self._threads.replied_in(thread) is not None:
            return True  # at the quota, but the bot already follows this thread: keep following
        if self._runtime is not None:
            self._runtime.log.info("thread_quota_refused", extra={"per_user": self._quota.per_user})
        return False
