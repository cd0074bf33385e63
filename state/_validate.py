"""Input checks shared by every backend: run before any write so a bad call changes nothing."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeGuard

from ._errors import StateStoreError
from ._settings import (
    CORE_PREFIX,
    MAX_BATCH_KEYS,
    MAX_KEY_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_PAGE_ROWS,
    MAX_VALUE_BYTES,
    MAX_VALUE_BYTES_CEILING,
    MAX_VALUE_DEPTH,
)

# re.ASCII: under Unicode case folding [a-z] also matches U+212A (Kelvin) and U+017F (long s).
NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9._-]*", re.IGNORECASE | re.ASCII)
MAX_PLUGIN_ID_BYTES = 128
MAX_TTL_MS = 2**53 - 1  # keeps now + ttl inside SQLite's and Lua's exact integer range
OVERFLOW_POLICIES = ("evict-oldest", "reject-new")

# Compact JSON, non-ASCII kept, NaN/inf refused; one encoder built once (json.dumps with options
# builds a new one per call). No circular-reference markers needed: `_check_shape` has already
# bounded the depth, so a cycle is refused (LIMIT_EXCEEDED) before it gets here.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False).encode

JSON = dict[str, Any] | list[Any] | str | int | float | bool | None


def _utf8_len(text: str, what: str, op: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise StateStoreError("INVALID_INPUT", op, f"{what} is not valid Unicode") from None


def _is_int(n: object) -> TypeGuard[int]:
    return isinstance(n, int) and not isinstance(n, bool)


def plugin_id(value: object, op: str = "open", *, core: bool = False) -> str:
    """A plugin id; ids starting `core:` are the gateway's own and need `core=True` (and only they)."""
    if not isinstance(value, str) or not value.strip():
        raise StateStoreError("INVALID_INPUT", op, "plugin_id must be a non-empty string")
    value = value.strip()
    size = _utf8_len(value, "plugin_id", op)
    if size > MAX_PLUGIN_ID_BYTES:
        raise StateStoreError("LIMIT_EXCEEDED", op, f"plugin_id is {size} bytes; the limit is {MAX_PLUGIN_ID_BYTES}")
    is_core = value.lower().startswith(CORE_PREFIX)
    if is_core and not core:
        raise StateStoreError("INVALID_INPUT", op, f"plugin ids starting {CORE_PREFIX!r} are reserved for the gateway")
    if core and (not is_core or len(value) == len(CORE_PREFIX)):
        raise StateStoreError("INVALID_INPUT", op, f"a core store id must look like '{CORE_PREFIX}<name>'")
    return value


def namespace(value: object, op: str = "open") -> str:
    if not isinstance(value, str):
        raise StateStoreError("INVALID_INPUT", op, "namespace must be a string")
    value = value.strip()
    size = _utf8_len(value, "namespace", op)
    if size > MAX_NAMESPACE_BYTES:
        raise StateStoreError("LIMIT_EXCEEDED", op, f"namespace is {size} bytes; the limit is {MAX_NAMESPACE_BYTES}")
    if not NAMESPACE_RE.fullmatch(value):
        raise StateStoreError("INVALID_INPUT", op, "namespace must match ^[a-z0-9][a-z0-9._-]*$ (case-insensitive)")
    return value


def key(value: object, op: str) -> str:
    if not isinstance(value, str):
        raise StateStoreError("INVALID_INPUT", op, "key must be a string")
    value = value.strip()
    if not value:
        raise StateStoreError("INVALID_INPUT", op, "key must not be empty")
    # An ASCII key (the usual case) is as many bytes as characters: skip encoding it.
    size = len(value) if value.isascii() else _utf8_len(value, "key", op)
    if size > MAX_KEY_BYTES:
        raise StateStoreError("LIMIT_EXCEEDED", op, f"key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    return value


def max_entries(value: object) -> int:
    if not _is_int(value) or value < 1:
        raise StateStoreError("INVALID_INPUT", "open", "max_entries must be an integer >= 1")
    return value


def ttl_ms(value: object, op: str, what: str = "ttl_ms") -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_TTL_MS:
        raise StateStoreError("INVALID_INPUT", op, f"{what} must be an integer from 1 to {MAX_TTL_MS}")
    return value


def max_value_bytes(value: object) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_VALUE_BYTES_CEILING:
        raise StateStoreError(
            "INVALID_INPUT", "open", f"max_value_bytes must be an integer from 1 to {MAX_VALUE_BYTES_CEILING}"
        )
    return value


def version(value: object, op: str) -> int:
    if not _is_int(value) or not 0 <= value < 2**63:
        raise StateStoreError("INVALID_INPUT", op, "version must be an integer from Entry.version")
    return value


def attempts(value: object, op: str) -> int:
    if not _is_int(value) or not 1 <= value <= 1_000:
        raise StateStoreError("INVALID_INPUT", op, "max_attempts must be an integer from 1 to 1000")
    return value


def keys(values: object, op: str) -> list[str]:
    """A batch of keys: a list/tuple/set of at most MAX_BATCH_KEYS valid keys, duplicates folded."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, set, frozenset)):
        raise StateStoreError("INVALID_INPUT", op, "keys must be a list of strings")
    if len(values) > MAX_BATCH_KEYS:
        raise StateStoreError(
            "LIMIT_EXCEEDED", op, f"{len(values)} keys asked for; the limit is {MAX_BATCH_KEYS} a call"
        )
    return list(dict.fromkeys(key(k, op) for k in values))


def page(limit: object, after: object, op: str = "entries") -> tuple[int | None, tuple[int, str] | None]:
    """`entries(limit=, after=)`: limit 1..MAX_PAGE_ROWS or None; after an Entry (its
    (created_at, key) is the cursor) or None."""
    if limit is not None and (not _is_int(limit) or not 1 <= limit <= MAX_PAGE_ROWS):
        raise StateStoreError("INVALID_INPUT", op, f"limit must be an integer from 1 to {MAX_PAGE_ROWS}")
    if after is None:
        return limit, None
    created, k = getattr(after, "created_at", None), getattr(after, "key", None)
    if not _is_int(created) or not isinstance(k, str):
        raise StateStoreError("INVALID_INPUT", op, "after must be an Entry this store returned")
    return limit, (created, k)


def overflow(value: object) -> str:
    if value not in OVERFLOW_POLICIES:
        raise StateStoreError("INVALID_INPUT", "open", f"overflow must be one of {OVERFLOW_POLICIES}")
    return value


def serialize_value(value: object, op: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """Return the compact JSON text stored for `value`.

    Raises INVALID_INPUT for anything that is not plain JSON (tuples, sets, bytes, non-str dict
    keys, NaN/inf, lone surrogates) and LIMIT_EXCEEDED past the depth or size limit.
    """
    _check_shape(value, op)
    try:
        text = _encode(value)
    except ValueError:  # an int past Python's 4,300-digit str limit: it could never be read back
        raise StateStoreError("INVALID_INPUT", op, "value contains an integer too large to serialize") from None
    size = len(text) if text.isascii() else _utf8_len(text, "value", op)
    if size > max_bytes:
        raise StateStoreError("LIMIT_EXCEEDED", op, f"value is {size} bytes serialized; the limit is {max_bytes}")
    return text


_FLAT_SCALARS = frozenset({str, int, bool, type(None)})  # exact types; floats need a finiteness check


def _check_shape(root: object, op: str) -> None:
    # The usual adapter value is one flat dict of strings and ints: accept it in one pass
    # (~1 us less per write); anything else, or anything odd in it, takes the general walk.
    if type(root) is dict and all(type(k) is str and type(v) in _FLAT_SCALARS for k, v in root.items()):
        return
    # Iterative so a hostile 100,000-deep list cannot blow the Python stack before we say no.
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise StateStoreError(
                "LIMIT_EXCEEDED", op, f"value nests {depth} levels deep; the limit is {MAX_VALUE_DEPTH}"
            )
        if value is None or isinstance(value, (bool, int, str)):
            continue  # str validity (surrogates) is checked when encoding
        if isinstance(value, float):
            if not math.isfinite(value):
                raise StateStoreError("INVALID_INPUT", op, "value contains a non-finite float")
            continue
        if type(value) is list:
            stack.extend((item, depth + 1) for item in value)
            continue
        if type(value) is dict:
            for k, item in value.items():
                if not isinstance(k, str):
                    raise StateStoreError("INVALID_INPUT", op, "value has a non-string object key")
                stack.append((item, depth + 1))
            continue
        raise StateStoreError("INVALID_INPUT", op, f"value contains a {type(value).__name__}, which is not plain JSON")
