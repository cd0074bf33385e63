"""What every route does with hostile input, written once: read headers safely, parse JSON with a
depth limit, and answer a caller's mistake with a 4xx.

Rules (docs/gateway.md, "Security model"):
- a credential header that is not printable ASCII is simply a wrong credential (401), never a
  TypeError in `hmac.compare_digest` (a non-ASCII `str`) or a UnicodeEncodeError (aiohttp hands
  invalid UTF-8 over as surrogate escapes);
- a body is parsed only after authentication, and only to MAX_JSON_DEPTH levels of nesting:
  deeper bodies, invalid UTF-8, lone surrogates and non-JSON are 400 (never a RecursionError);
- a state key a caller's input would push past the store's limits is refused with 400 before any
  side effect (`check_key`), so a caller's error never reaches the store and never degrades
  /healthz; only store faults do.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from chatstate.state import MAX_KEY_BYTES

MAX_JSON_DEPTH = 32  # nesting levels a route accepts; platform payloads use < 10
MAX_HEADER_CHARS = 512  # a credential header longer than this is wrong whatever it says


class BadInput(ValueError):
    """The caller sent something the route does not take (answered 400)."""


def credential(headers: Any, name: str, *, max_chars: int = MAX_HEADER_CHARS) -> str | None:
    """The header `name` if it is present, printable ASCII and short; None otherwise.

    A None is answered like a wrong credential (401): junk in a credential header is never
    parsed further.
    """
    value = headers.get(name)
    if not isinstance(value, str) or not value or len(value) > max_chars:
        return None
    if not value.isascii() or not value.isprintable():
        return None
    return value


def loads(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON body no deeper than `max_depth`; raises BadInput for anything else.

    json's C parser raises RecursionError near the interpreter's limit (a 10,000-deep body),
    caught here; shallower bodies are measured on the parsed value, and only when the body has
    more brackets than the limit (a C-speed count), so a normal payload pays nothing extra.
    Lone surrogates (`"\\ud800"`) are refused too: no store, log or platform API can encode them.
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadInput("body is not JSON") from None
    if body.count(b"[") + body.count(b"{") > max_depth and _depth(value) > max_depth:
        raise BadInput(f"body nests deeper than {max_depth} levels")
    if ("\\ud" in text or "\\uD" in text) and not _encodable(value):  # a surrogate's escape; no lower-cased copy
        raise BadInput("body holds a lone surrogate")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in item if isinstance(child, (dict, list)))
    return deepest


def _encodable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def json_object(body: bytes) -> dict[str, Any]:
    """`loads` for routes that take a JSON object; raises BadInput otherwise."""
    value = loads(body)
    if not isinstance(value, dict):
        raise BadInput("body is not a JSON object")
    return value


def bad_request(exc: BadInput) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=str(exc))


def check_key(key: str, *, what: str = "key") -> str:
    """Return `key` if the store will take it; raises BadInput (400) before any side effect.

    The store's rule (state.MAX_KEY_BYTES UTF-8 bytes after trimming, not empty, encodable) is
    checked here so a caller's oversized or unencodable id is a 400, never a LIMIT_EXCEEDED
    from the store after the bot already acted, and never a degraded /healthz.
    """
    stripped = key.strip()
    try:
        size = len(stripped.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadInput(f"{what} is not valid Unicode") from None
    if not stripped:
        raise BadInput(f"{what} must not be empty")
    if size > MAX_KEY_BYTES:
        raise BadInput(f"{what} is {size} bytes; the limit is {MAX_KEY_BYTES}")
    return key


def short_id(value: str, *, limit: int = 64) -> str:
    """`value` if it is at most `limit` characters, else a stable `h:<sha256 hex>` of it.

    For platform ids that are part of a composite state key and may legitimately be long: the
    key stays under MAX_KEY_BYTES whatever the platform sends, and the same id always maps to
    the same key (so state written before and after is found).
    """
    if len(value) <= limit:
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
