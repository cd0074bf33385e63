"""Discord's wire, and nothing else: verify and parse interactions, build responses (sending
them is rest.py's `DiscordRest`).

Inbound: Discord POSTs every interaction to the bot's endpoint, signed with the application's Ed25519
key over `X-Signature-Timestamp + raw body`; the endpoint answers in the HTTP response with an
interaction response (`InteractionResponseType`). Payload shapes follow
https://discord.com/developers/docs/interactions/receiving-and-responding; enums and message
bodies come from discord.py so we never hand-write what the library already knows.

Outbound (`rest.py`, kept apart for size): the bot's message posts go through aiohttp, not discord.py's `HTTPClient`: its base
URL is `discord.http.Route.BASE`, a class variable shared by the whole process, and
`HTTPClient.static_login` always calls `GET /users/@me` on it, so pointing one bot at a
simulator would repoint every discord.py user in the gateway. The request is ours
(`Authorization: Bot <token>`); the body is discord.py's: `handle_message_parameters`
serializes content, allowed mentions and the `discord.ui.View` exactly as `Messageable.send`
would. No state lives here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import discord
from discord.http import Route, handle_message_parameters
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from chatstate.gateway.sdk import ingress

DEFAULT_API_BASE = Route.BASE  # https://discord.com/api/v10
SIGNATURE_HEADER = "X-Signature-Ed25519"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
_LABEL = 18  # ComponentType.label: newer modals wrap each input in a label, not an action row
_DISPATCH = 0  # the Gateway's op for events; each carries its sequence number `s`


class BadRequest(ValueError):
    """The body is not an interaction we understand (answered 400)."""


def load_verify_key(public_key_hex: str) -> VerifyKey:
    """The application's public key as shown in the developer portal (64 hex characters).

    Raises ValueError when it is not a 32-byte hex key.
    """
    try:
        raw = bytes.fromhex(public_key_hex)
    except ValueError:
        raise ValueError("public_key: must be hex") from None
    if len(raw) != 32:
        raise ValueError(f"public_key: must be 32 bytes (64 hex characters), got {len(raw)} bytes")
    return VerifyKey(raw)


def fresh(timestamp: str | None, *, window_s: float, now_s: float) -> bool:
    """True when the signed `X-Signature-Timestamp` (unix seconds) is within `window_s` of now.

    Discord signs the timestamp with the body, so an old capture replayed verbatim still
    verifies; this window (plus the interaction-id claim in the gate, `discord.interactions`) stops it.
    """
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


class _Common(TypedDict):
    """The Interaction fields every non-ping kind shares."""

    type: discord.InteractionType
    user_id: str
    channel_id: str
    id: str
    token: str
    application_id: str


def parse(body: bytes) -> Interaction:
    """Parse a verified body. Raises BadRequest for JSON or shapes Discord would not send."""
    try:
        payload = ingress.json_object(body)  # depth-limited
        kind = discord.InteractionType(payload["type"])
        if kind is discord.InteractionType.ping:
            return Interaction(kind, "", "")
        user = (payload.get("member") or {}).get("user") or payload["user"]  # guild, else DM
        data = payload.get("data") or {}
        common: _Common = {
            "type": kind,
            "user_id": _snowflake(user["id"]),
            "channel_id": _snowflake(payload.get("channel_id", ""), optional=True),
            "id": _snowflake(payload["id"]),
            "token": _token(payload.get("token", "")),
            "application_id": _snowflake(payload.get("application_id", ""), optional=True),
        }
        if kind is discord.InteractionType.component:
            return Interaction(
                **common,
                custom_id=_custom_id(data["custom_id"]),
                component_type=discord.ComponentType(data["component_type"]),
                values=[_text(v, 100) for v in data.get("values", [])[:25]],
            )
        if kind is discord.InteractionType.modal_submit:
            return Interaction(
                **common, custom_id=_custom_id(data["custom_id"]), fields=_modal_values(data["components"])
            )
        if kind is discord.InteractionType.application_command:
            options = {str(o["name"]): o.get("value") for o in data.get("options", [])}
            restrict = options.get("restrict_to")
            if restrict is not None:
                options["restrict_to"] = _snowflake(restrict)
            return Interaction(**common, command=_text(data["name"], 32), options=options)
        return Interaction(**common)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ingress.BadInput is a ValueError
        raise BadRequest(f"not an interaction payload ({type(exc).__name__})") from None


def _snowflake(value: Any, *, optional: bool = False) -> str:
    """A Discord id: digits, at most 20 (it ends up in state keys and REST URLs)."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if optional and text == "":
        return text
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise ValueError("not a snowflake")
    return text


TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,500}")


def _token(value: Any) -> str:
    """An interaction token (it goes into webhook URLs): URL-safe characters, bounded; "" if
    absent (then the answer cannot be deferred)."""
    if value == "":
        return ""
    if not (isinstance(value, str) and TOKEN_PATTERN.fullmatch(value)):
        raise ValueError("not an interaction token")
    return value


def _custom_id(value: Any) -> str:
    """Discord caps custom_id at 100 characters; it is a state key, checked before any lookup."""
    return _text(value, 100)


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
    return {
        str(i["custom_id"]): str(i.get("value", ""))
        for i in inputs
        if i["type"] == discord.ComponentType.text_input.value
    }


# -- responses (the HTTP body answering the interaction) ---------------------------------------
def pong() -> dict[str, Any]:
    return {"type": discord.InteractionResponseType.pong.value}


def message(content: str, *, ephemeral: bool = False) -> dict[str, Any]:
    """CHANNEL_MESSAGE_WITH_SOURCE; `ephemeral` shows it only to the user who clicked."""
    flags = discord.MessageFlags(ephemeral=True) if ephemeral else discord.utils.MISSING
    return {"type": discord.InteractionResponseType.channel_message.value, "data": _data(content, flags=flags)}


def update(content: str) -> dict[str, Any]:
    """UPDATE_MESSAGE: edit the message the component is on; its components stay."""
    return {"type": discord.InteractionResponseType.message_update.value, "data": _data(content)}


def modal(view: discord.ui.Modal) -> dict[str, Any]:
    """MODAL: open `view` for the user who clicked (not valid in answer to a modal submit)."""
    return {"type": discord.InteractionResponseType.modal.value, "data": view.to_dict()}


def defer_message(*, ephemeral: bool) -> dict[str, Any]:
    """DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking...", the answer follows as an edit."""
    body: dict[str, Any] = {"type": discord.InteractionResponseType.deferred_channel_message.value}
    if ephemeral:
        body["data"] = {"flags": discord.MessageFlags(ephemeral=True).value}
    return body


def defer_update() -> dict[str, Any]:
    """DEFERRED_UPDATE_MESSAGE: acknowledge a click now, answer through the webhook later."""
    return {"type": discord.InteractionResponseType.deferred_message_update.value}


DEFERRALS = (
    discord.InteractionResponseType.deferred_channel_message.value,
    discord.InteractionResponseType.deferred_message_update.value,
)


def _data(content: str, *, flags: Any = discord.utils.MISSING) -> dict[str, Any]:
    with handle_message_parameters(
        content=content, flags=flags, allowed_mentions=discord.AllowedMentions.none()
    ) as params:
        return dict(cast("dict[str, Any]", params.payload))  # None only when files are sent


# -- the Gateway transport's frames ------------------------------------------------------------


def gateway_frame(text: str) -> tuple[dict[str, Any] | None, str]:
    """One Gateway text frame as Discord sends it: (the JSON object, "") or (None, why it is not
    one): not JSON, not an object, or a dispatch (op 0) without an integer `s` and a string `t`."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None, "not JSON"
    if not isinstance(frame, dict):
        return None, f"a JSON {type(frame).__name__}, not an object"
    if frame.get("op") == _DISPATCH:
        seq, event = frame.get("s"), frame.get("t")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(event, str):
            return None, "a dispatch without an integer s and a string t"
    return frame, ""
