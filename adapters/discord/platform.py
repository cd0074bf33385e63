"""Discord's wire: verify and parse interactions and Gateway frames, build responses (enums and
bodies are discord.py's), and the bot's REST calls. No state lives here. The calls go through
aiohttp, not discord.py's `HTTPClient`: its base URL (`Route.BASE`) is one class variable for
the whole process, so pointing one bot at a simulator would repoint every discord.py user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import discord
from discord.http import Route, handle_message_parameters
from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from chatstate.gateway.sdk import CredentialRefused, ingress

DEFAULT_API_BASE = Route.BASE  # https://discord.com/api/v10
SIGNATURE_HEADER = "X-Signature-Ed25519"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
_LABEL = 18  # ComponentType.label: newer modals wrap each input in a label, not an action row
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,500}")  # an interaction token goes into webhook URLs


class BadRequest(ValueError):
    """The body is not an interaction we understand (answered 400)."""


def load_verify_key(public_key_hex: str) -> VerifyKey:
    """The application's public key as the developer portal shows it (64 hex characters).
    Raises ValueError naming `public_key` when it is not 32 bytes of hex."""
    try:
        return VerifyKey(public_key_hex.encode(), encoder=HexEncoder)
    except (ValueError, TypeError):  # nacl's errors subclass these, as does binascii.Error
        raise ValueError("public_key: must be 32 bytes of hex (64 characters)") from None


def fresh(timestamp: str | None, *, window_s: float, now_s: float) -> bool:
    """True when the signed timestamp (unix seconds) is within `window_s` of now: an old capture
    replayed verbatim still verifies, so this window and the gate's claim stop it."""
    if not timestamp or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(now_s - int(timestamp)) <= window_s


def verify(key: VerifyKey, *, signature: str | None, timestamp: str | None, body: bytes) -> bool:
    """True only when `signature` is the Ed25519 signature of `timestamp + body` under `key`."""
    if not signature or not timestamp:
        return False
    try:
        key.verify(timestamp.encode() + body, bytes.fromhex(signature))
    except (BadSignatureError, ValueError):  # ValueError: not hex, or not 64 bytes
        return False
    return True


@dataclass(frozen=True)
class Interaction:
    """The parts of one interaction the bot acts on."""

    type: discord.InteractionType
    user_id: str
    channel_id: str
    token: str = ""  # the interaction webhook token (15 min) for deferred answers
    application_id: str = ""
    custom_id: str = ""  # component and modal submit
    component_type: discord.ComponentType | None = None  # component
    values: list[str] = field(default_factory=list)  # select
    fields: dict[str, str] = field(default_factory=dict)  # modal submit: input custom_id -> value
    command: str = ""  # application command name
    options: dict[str, Any] = field(default_factory=dict)  # application command options
    id: str = ""  # the interaction's snowflake (claimed once: a replay has no second effect)


def parse(body: bytes) -> Interaction:
    """Parse a verified body; ids are checked here, before any lookup uses them as keys.
    Raises BadRequest for JSON or shapes Discord would not send."""
    try:
        payload = ingress.json_object(body)  # depth-limited
        kind = discord.InteractionType(payload["type"])
        if kind is discord.InteractionType.ping:
            return Interaction(kind, "", "")
        user = (payload.get("member") or {}).get("user") or payload["user"]  # guild, else DM
        data = payload.get("data") or {}
        token = payload.get("token", "")
        if token != "" and not (isinstance(token, str) and TOKEN_PATTERN.fullmatch(token)):
            raise ValueError("not an interaction token")
        parts: dict[str, Any] = {
            "type": kind,
            "user_id": _snowflake(user["id"]),
            "channel_id": _snowflake(payload.get("channel_id", ""), optional=True),
            "id": _snowflake(payload["id"]),
            "token": token,
            "application_id": _snowflake(payload.get("application_id", ""), optional=True),
        }
        if kind in (discord.InteractionType.component, discord.InteractionType.modal_submit):
            parts["custom_id"] = _text(data["custom_id"], 100)  # Discord's custom_id limit
        if kind is discord.InteractionType.component:
            parts["component_type"] = discord.ComponentType(data["component_type"])
            parts["values"] = [_text(v, 100) for v in (data.get("values") or [])[:25]]
        elif kind is discord.InteractionType.modal_submit:
            parts["fields"] = _modal_values(data["components"])
        elif kind is discord.InteractionType.application_command:
            options = {str(o["name"]): o.get("value") for o in data.get("options") or []}
            if options.get("restrict_to") is not None:
                options["restrict_to"] = _snowflake(options["restrict_to"])
            parts.update(command=_text(data["name"], 32), options=options)
        return Interaction(**parts)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ingress.BadInput is a ValueError
        raise BadRequest(f"not an interaction payload ({type(exc).__name__})") from None


def _snowflake(value: Any, *, optional: bool = False) -> str:
    """A Discord id: digits, at most 20 (it ends up in state keys and REST URLs)."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not (optional and text == "") and not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise ValueError("not a snowflake")
    return text


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError("not a short string")
    return value


def _modal_values(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Text input values of a submit, whether wrapped in action rows (1) or labels (18)."""
    inputs: list[dict[str, Any]] = []
    for row in rows:
        if row["type"] == discord.ComponentType.action_row.value:
            inputs.extend(row["components"])
        elif row["type"] == _LABEL:
            inputs.append(row["component"])
    text_input = discord.ComponentType.text_input.value
    return {str(i["custom_id"]): str(i.get("value") or "") for i in inputs if i["type"] == text_input}


def gateway_frame(text: str) -> tuple[dict[str, Any] | None, str]:
    """One Gateway text frame: (the JSON object, "") or (None, why Discord would not send it):
    not JSON, not an object, or a dispatch (op 0) without an integer `s` and a string `t`."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None, "not JSON"
    if not isinstance(frame, dict):
        return None, f"a JSON {type(frame).__name__}, not an object"
    seq = frame.get("s")
    if frame.get("op") == 0 and (not isinstance(frame.get("t"), str) or type(seq) is not int or seq < 1):
        return None, "a dispatch without an integer s and a string t"
    return frame, ""


# -- responses (an interaction's answer, in the HTTP body or through the callback) ---------------
Kind = discord.InteractionResponseType
DEFERRALS = (Kind.deferred_channel_message.value, Kind.deferred_message_update.value)


def pong() -> dict[str, Any]:
    return {"type": Kind.pong.value}


def no_choices() -> dict[str, Any]:
    """APPLICATION_COMMAND_AUTOCOMPLETE_RESULT with no choices: the only answer Discord takes
    for an autocomplete interaction (the bot's options offer none)."""
    return {"type": Kind.autocomplete_result.value, "data": {"choices": []}}


def message(content: str, *, ephemeral: bool = False) -> dict[str, Any]:
    """CHANNEL_MESSAGE_WITH_SOURCE; `ephemeral` shows it only to the user who clicked."""
    flags = discord.MessageFlags(ephemeral=True) if ephemeral else discord.utils.MISSING
    return {"type": Kind.channel_message.value, "data": _body(content=content, flags=flags)}


def update(content: str) -> dict[str, Any]:
    """UPDATE_MESSAGE: edit the message the component is on; its components stay."""
    return {"type": Kind.message_update.value, "data": _body(content=content)}


def modal(view: discord.ui.Modal) -> dict[str, Any]:
    """MODAL: open `view` for the user who clicked (not valid in answer to a modal submit)."""
    return {"type": Kind.modal.value, "data": view.to_dict()}


def defer(it: Interaction) -> dict[str, Any]:
    """The deferral for `it`: a click's (DEFERRED_UPDATE_MESSAGE) or "thinking..." whose edit
    follows, ephemeral for a command (its answer is for the user) and not for a submit."""
    if it.type is discord.InteractionType.component:
        return {"type": Kind.deferred_message_update.value}
    body: dict[str, Any] = {"type": Kind.deferred_channel_message.value}
    if it.type is discord.InteractionType.application_command:
        body["data"] = {"flags": discord.MessageFlags(ephemeral=True).value}
    return body


def _body(**params: Any) -> dict[str, Any]:
    with handle_message_parameters(allowed_mentions=discord.AllowedMentions.none(), **params) as p:
        return dict(cast("dict[str, Any]", p.payload))  # None only when files are sent


# -- REST ----------------------------------------------------------------------------------------
REQUEST_TIMEOUT_S = 10.0  # a send that takes longer fails
RESPONSE_DEADLINE_S = 3.0  # Discord takes an interaction's initial response this long after it arrives
RATE_LIMIT_RETRIES = 3  # a call answered 429 is tried again at most this often
MAX_RETRY_AFTER_S = 10.0  # a longer wait fails the call instead
GONE_CODES = {10062: "unknown interaction", 50027: "invalid webhook token", 40060: "already acknowledged"}


class RestError(Exception):
    """Discord refused a REST call or could not be reached."""


class InteractionGone(RestError):
    """The interaction takes no (more) answers: its token expired or was never valid (10062,
    50027), or it was answered already (40060). Nothing to retry; `code` says which."""

    def __init__(self, code: int) -> None:
        super().__init__(f"interaction gone: {code} {GONE_CODES.get(code, '')}".strip())
        self.code = code


class DiscordRest:
    """One aiohttp session for the bot's REST calls, Discord's rate limits honoured; `open`
    in the plugin's build, `close` on stop."""

    def __init__(self, *, api_base: str, bot_token: str) -> None:
        self.api_base = api_base.rstrip("/")
        self._headers = {
            "Authorization": f"Bot {bot_token}",
            "User-Agent": f"DiscordBot (https://github.com/Rapptz/discord.py {discord.__version__}) chatstate",
        }
        self._session: aiohttp.ClientSession | None = None
        self._buckets: dict[str, tuple[int, float]] = {}  # route -> (remaining, monotonic reset time)

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        try:  # the token checked as discord.py's login checks it: a wrong one shows now, not at the first message
            await self._call("GET", "/users/@me", None, route="GET /users/@me")
        except RestError as exc:
            await self.close()
            if str(exc).endswith("HTTP 401"):
                raise CredentialRefused("discord", "bot_token", str(exc)) from exc
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send_message(self, channel_id: str, *, content: str, view: discord.ui.View) -> dict[str, Any]:
        """POST /channels/{channel_id}/messages; Discord's message object. Raises RestError."""
        path = f"/channels/{channel_id}/messages"
        return await self._call("POST", path, _body(content=content, view=view), route=f"POST {path}")

    async def callback(self, it: Interaction, response: dict[str, Any], *, received_at: float) -> None:
        """POST the initial response of `it` (arrived at monotonic `received_at`) to its
        callback: how the Gateway transport answers. A 429 is retried while the retry still
        lands within RESPONSE_DEADLINE_S of the arrival; later, Discord failed it anyway.
        Raises InteractionGone and RestError."""
        deadline = received_at + RESPONSE_DEADLINE_S
        path = f"/interactions/{it.id}/{it.token}/callback"
        await self._call("POST", path, response, route=f"callback {it.id}", deadline=deadline)

    async def webhook(self, it: Interaction, data: dict[str, Any], *, edit: bool) -> dict[str, Any]:
        """Through `it`'s webhook: PATCH its deferred (or original) answer (`edit`), else POST a
        follow-up message. Raises InteractionGone and RestError."""
        path = f"/webhooks/{it.application_id}/{it.token}" + ("/messages/@original" if edit else "")
        return await self._call("PATCH" if edit else "POST", path, data, route=f"webhook {it.application_id}")

    async def _call(
        self, method: str, path: str, payload: Any, *, route: str, deadline: float | None = None
    ) -> dict[str, Any]:
        """One call: wait out an exhausted bucket (`X-RateLimit-Remaining: 0` until
        `Reset-After`); on 429 wait `retry_after` (JSON body, else Retry-After) and try again,
        at most RATE_LIMIT_RETRIES times, MAX_RETRY_AFTER_S a wait, never past `deadline`."""
        assert self._session is not None, "open() first"
        what = f"{method} {path.split('/')[1]}"  # never the token
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            remaining, reset_at = self._buckets.get(route, (1, 0.0))
            if remaining <= 0 and (wait := _wait(reset_at - time.monotonic(), deadline)):
                await asyncio.sleep(wait)
            try:
                async with self._session.request(method, self.api_base + path, json=payload) as resp:
                    headers = resp.headers
                    with contextlib.suppress(KeyError, ValueError):  # no (or a broken) bucket
                        reset = time.monotonic() + float(headers["X-RateLimit-Reset-After"])
                        self._buckets[route] = (int(headers["X-RateLimit-Remaining"]), reset)
                    body = await resp.json() if resp.content_type == "application/json" else {}
                    body = body if isinstance(body, dict) else {}
                    if resp.status == 429 and attempt < RATE_LIMIT_RETRIES:
                        wait = _wait(body.get("retry_after", headers.get("Retry-After")), deadline)
                        if wait is not None:
                            await asyncio.sleep(wait)
                            continue
                    if resp.status >= 300:
                        if body.get("code") in GONE_CODES:
                            raise InteractionGone(int(body["code"]))
                        raise RestError(f"{what}: HTTP {resp.status}")
                    return body
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RestError(f"{what}: {type(exc).__name__}") from None
        raise RestError(f"{what}: still rate limited after {RATE_LIMIT_RETRIES} retries")


def _wait(value: Any, deadline: float | None) -> float | None:
    """A wait Discord asks for, in seconds, if we honour it: 0..MAX_RETRY_AFTER_S, and a call
    retried after it still lands before `deadline` (monotonic; None: no limit)."""
    try:
        wait = float(value)
    except (TypeError, ValueError):
        return None
    in_time = deadline is None or time.monotonic() + wait < deadline
    return wait if 0 <= wait <= MAX_RETRY_AFTER_S and in_time else None
