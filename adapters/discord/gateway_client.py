"""The Discord Gateway transport: one shard's websocket on aiohttp, its session saved for RESUME
(https://discord.com/developers/docs/events/gateway). Not discord.py's `DiscordWebSocket`: it
needs a logged-in `Client`, whose REST base URL is shared process-wide (platform.py).

A dispatch counts into the saved sequence number only once handled, so a RESUME replays what was
in hand and the gate answers a replay once. A frame Discord would not send is logged and dropped;
anything else that breaks a link ends in a reconnect; `live` is false until READY or RESUMED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import discord  # before discord.gateway: discord's own modules import in this order
from discord.gateway import DiscordWebSocket as Op  # the opcode constants, nothing else

from chatstate.adapters.discord import platform
from chatstate.adapters.discord.config import DiscordSettings
from chatstate.adapters.discord.state import GatewayState, SavedSession

if TYPE_CHECKING:
    from discord.types.gateway import GatewayBot, ReadyEvent

Handle = Callable[[dict[str, Any], float], Awaitable[str]]  # (payload, monotonic arrival) -> a count's name
FATAL_CLOSE_CODES = (4004, 4010, 4011, 4012, 4013, 4014)  # bad token, shard or intents: stop
SESSION_GONE_CLOSE_CODES = (4007, 4009)  # invalid seq, session timed out: IDENTIFY afresh
KEEP_SESSION = 4000  # any close code but 1000/1001 keeps the session resumable
START_TIMEOUT_S = 30.0  # start() waits this long for READY / RESUMED (or standby)
STOP_TIMEOUT_S = 10.0  # stop() lets interactions in hand finish for this long
MAX_BACKOFF_S = 10.0  # after 3 failed connects (4 s) a RESUME goes to the main URL: the resume one may be down
COUNTS: tuple[str, ...] = ("identifies", "resumes", "reconnects", "missed_acks", "received_after_resume", "bad_frames")
COUNTS += ("interactions", "duplicates", "callback_failures")  # the names `handle` returns


class GatewayFailed(RuntimeError):
    """Discord refused the link for good (bad token, shard or intents)."""


class GatewayClient:
    """One shard's link. `start` returns once it is READY/RESUMED, or standing by for the shard
    lease another gateway holds; `stop` hands the session over intact."""

    def __init__(
        self, config: DiscordSettings, *, state: GatewayState, handle: Handle,
        log: logging.LoggerAdapter[logging.Logger], shard: tuple[int, int] = (0, 1),
    ) -> None:  # fmt: skip
        self._config, self._state, self._handle, self._log, self._shard = config, state, handle, log, shard
        self._lease_s = config.shard_lease_ms / 1000
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._runner: asyncio.Task[None] | None = None
        self._settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # READY, standby, failure
        self._stopping = self._resuming = False
        self._acked = True
        self._session: SavedSession | None = None  # in memory; the store has it as of the last save
        self._gen = 0  # bumped per session, so late tasks of an old one change nothing
        self._received = 0  # highest sequence number received (what heartbeats carry)
        self._in_hand: dict[int, asyncio.Task[None]] = {}
        self._saved_seq: int | None = None
        self._save_lock = asyncio.Lock()
        self.status = "starting"
        self.last_start: str | None = None  # "identified" | "resumed"
        self.identify_reason: str | None = None
        self.counts = dict.fromkeys(COUNTS, 0)

    async def start(self) -> None:
        """Connect; raises GatewayFailed (or aiohttp.ClientError) when Discord will not have us."""
        self._http = aiohttp.ClientSession(headers={"Authorization": f"Bot {self._config.bot_token}"})
        try:
            async with self._http.get(f"{self._config.api_base_url.rstrip('/')}/gateway/bot") as resp:
                if resp.status != 200:
                    raise GatewayFailed(f"GET /gateway/bot: HTTP {resp.status}")
                url = cast("GatewayBot", await resp.json())["url"]
            self._runner = asyncio.create_task(self._run(url), name="discord-gateway")
            await asyncio.wait_for(self._settled, START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._stopping = True
        if self._in_hand:
            await asyncio.wait(list(self._in_hand.values()), timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self._persist()
        if self._ws is not None:
            await self._ws.close(code=KEEP_SESSION)  # a restart may RESUME this session
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        with contextlib.suppress(Exception):
            await self._state.release_lease()
        if self._http is not None:
            await self._http.close()
        self.status = "stopped"

    @property
    def live(self) -> bool:
        """True while the link serves (READY/RESUMED) or stands by for another gateway's lease."""
        return self._runner is not None and not self._runner.done() and self.status in ("ready", "standby")

    def health(self) -> dict[str, Any]:
        return {
            "transport": "gateway", "status": self.status, "live": self.live, "last_start": self.last_start,
            "identify_reason": self.identify_reason, "seq": self._saved_seq,
            "session_id": self._session.session_id if self._session else None, **self.counts,
        }  # fmt: skip

    # -- the connection loop ------------------------------------------------------------------
    async def _run(self, url: str) -> None:
        backoff = 0.5
        while not self._stopping:
            if not await self._state.take_lease(self._config.shard_lease_ms):
                self.status = "standby"  # another gateway holds this shard's session
                self._settle()
                await asyncio.sleep(self._lease_s / 3)
                continue
            if self.status in ("starting", "standby"):
                self._session = await self._state.load()  # the latest save, ours or another's
                if self._session is None:
                    self.identify_reason = "no saved session"
            renew = asyncio.create_task(self._renew_lease(), name="discord-gateway-lease")
            try:
                await self._connect_once(self._session.resume_gateway_url if self._session and backoff < 4 else url)
                backoff = 0.5
            except GatewayFailed as exc:
                self.status = "failed"
                self._log.error("discord_gateway_failed", extra={"error": str(exc)})
                self._settle(exc)
                return
            except Exception as exc:  # a refused or broken link, or a reply we could not follow
                expected = isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError))  # else: a traceback
                self._log.warning(
                    "discord_gateway_connect_failed", extra={"error": type(exc).__name__}, exc_info=not expected
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            finally:
                renew.cancel()
            if not self._stopping:
                self.counts["reconnects"] += 1
                self.status = "reconnecting"

    async def _renew_lease(self) -> None:
        """Renew every third of the lease; a lost lease closes the link (another gateway has it)."""
        await asyncio.sleep(self._lease_s / 3)  # `_run` has just taken it
        while await self._state.take_lease(self._config.shard_lease_ms):
            await asyncio.sleep(self._lease_s / 3)
        self._log.warning("discord_gateway_lease_lost")
        self.status = "standby"
        if self._ws is not None:
            await self._ws.close(code=KEEP_SESSION)

    async def _connect_once(self, url: str) -> None:
        assert self._http is not None
        ws = self._ws = await self._http.ws_connect(url, params={"v": "10", "encoding": "json"})
        beat: asyncio.Task[None] | None = None
        try:
            hello = await ws.receive_json(timeout=30)
            if hello.get("op") != Op.HELLO:
                raise aiohttp.ClientError(f"expected HELLO, got op {hello.get('op')}")
            self._acked = True
            beat = asyncio.create_task(self._heartbeat(ws, hello["d"]["heartbeat_interval"] / 1000))
            await ws.send_json(self._hello_reply())
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame, problem = platform.gateway_frame(msg.data)
                if frame is not None:
                    try:
                        await self._on_frame(ws, frame)
                    except (KeyError, TypeError, ValueError) as exc:  # e.g. a READY without session_id
                        problem = f"{type(exc).__name__} in op {frame.get('op')}"
                if problem:
                    self.counts["bad_frames"] += 1
                    self._log.warning("discord_gateway_bad_frame", extra={"reason": problem, "chars": len(msg.data)})
        finally:
            if beat is not None:
                beat.cancel()
            await ws.close(code=KEEP_SESSION)
            self._ws = None
        if ws.close_code in FATAL_CLOSE_CODES:
            raise GatewayFailed(f"Discord closed the gateway with {ws.close_code}")
        if ws.close_code in SESSION_GONE_CLOSE_CODES:
            await self._forget_session(f"closed with {ws.close_code}")

    def _hello_reply(self) -> dict[str, Any]:
        """RESUME the saved session, else IDENTIFY (INTERACTION_CREATE needs no intents)."""
        token, session = self._config.bot_token, self._session
        if session is not None:
            self._resuming, self._received = True, max(self._received, session.seq)
            return {"op": Op.RESUME, "d": {"token": token, "session_id": session.session_id, "seq": session.seq}}
        self._log.info("discord_gateway_identify", extra={"reason": self.identify_reason})
        identify = {"token": token, "intents": discord.Intents.none().value | self._config.intents}
        properties = {"os": sys.platform, "browser": "chatstate", "device": "chatstate"}
        return {"op": Op.IDENTIFY, "d": {**identify, "shard": list(self._shard), "properties": properties}}

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval_s: float) -> None:
        await asyncio.sleep(interval_s * random.random())  # jitter, as Discord asks
        while not ws.closed:
            if not self._acked:
                self.counts["missed_acks"] += 1
                self._log.warning("discord_heartbeat_ack_missing", extra={"seq": self._received})
                await ws.close(code=KEEP_SESSION)  # zombied: reconnect and RESUME
                return
            self._acked = False
            try:
                await ws.send_json({"op": Op.HEARTBEAT, "d": self._received or None})
            except ConnectionError:  # the link is going away; the reader loop reconnects
                return
            await asyncio.sleep(interval_s)

    # -- frames -------------------------------------------------------------------------------
    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == Op.HEARTBEAT_ACK:
            self._acked = True
        elif op == Op.HEARTBEAT:  # Discord asks for one now
            await ws.send_json({"op": Op.HEARTBEAT, "d": self._received or None})
        elif op == Op.RECONNECT:
            self._log.info("discord_gateway_reconnect_requested")
            await ws.close(code=KEEP_SESSION)
        elif op == Op.INVALIDATE_SESSION:
            if not frame.get("d"):
                await self._forget_session("resume refused (INVALID_SESSION)" if self._resuming else "INVALID_SESSION")
                delay_s = self._config.reidentify_delay_s
                await asyncio.sleep(random.uniform(min(1.0, delay_s), delay_s))
            await ws.close(code=KEEP_SESSION)
        elif op == Op.DISPATCH:
            await self._on_dispatch(frame["t"], frame["s"], frame.get("d"))

    async def _on_dispatch(self, event: str, seq: int, data: Any) -> None:
        self._received = max(self._received, seq)
        if event == "READY":
            ready = cast("ReadyEvent", data)
            self._gen += 1
            self._in_hand.clear()
            self._received = seq
            self._session = SavedSession(ready["session_id"], ready["resume_gateway_url"], seq)
            self.counts["identifies"] += 1
            await self._ready("identified", extra={"session_id": ready["session_id"], "reason": self.identify_reason})
        elif event == "RESUMED":
            self._resuming, self.identify_reason = False, None
            self.counts["resumes"] += 1
            await self._ready("resumed", extra={"seq": seq})
        else:
            self.counts["received_after_resume"] += int(self._resuming)
            if event == "INTERACTION_CREATE" and isinstance(data, dict) and seq not in self._in_hand:
                work = self._interaction(self._gen, seq, data, time.monotonic())
                self._in_hand[seq] = asyncio.create_task(work, name=f"discord-interaction-{seq}")

    async def _ready(self, how: str, *, extra: dict[str, Any]) -> None:
        await self._persist()  # durable before we report ready
        self.status, self.last_start = "ready", how
        self._settle()
        self._log.info("discord_gateway_ready" if how == "identified" else "discord_gateway_resumed", extra=extra)

    def _settle(self, failure: BaseException | None = None) -> None:
        """Let `start` return (or raise `failure`): the first READY/RESUMED, standby or failure."""
        if not self._settled.done():
            self._settled.set_result(None) if failure is None else self._settled.set_exception(failure)

    async def _forget_session(self, reason: str) -> None:
        self._log.warning("discord_gateway_session_lost", extra={"reason": reason})
        self.identify_reason, self.status = reason, "reconnecting"  # no session: serves nothing until READY
        self._session, self._resuming, self._saved_seq, self._received = None, False, None, 0
        await self._state.drop()

    async def _interaction(self, gen: int, seq: int, data: dict[str, Any], received_at: float) -> None:
        try:
            self.counts[await self._handle(data, received_at)] += 1
        except Exception as exc:  # one bad interaction must not stop the link; say which
            self._log.exception("discord_interaction_failed", extra={"seq": seq, "error": type(exc).__name__})
        finally:
            if gen == self._gen:
                self._in_hand.pop(seq, None)
                await self._persist()

    async def _persist(self) -> None:
        """Save the session with the highest sequence number below every dispatch in hand."""
        async with self._save_lock:
            if self._session is None:
                return
            seq = min(self._in_hand) - 1 if self._in_hand else self._received
            if seq != self._saved_seq:
                self._session = self._session._replace(seq=seq)
                await self._state.save(self._session)
                self._saved_seq = seq
