"""Errors, spec and input validation: what every layer passes (`StateStoreError`, the limits, `StoreSettings`,
`NamespaceSpec`, rows, the backend interface) and the checks, run before any write so a bad call changes nothing."""

from __future__ import annotations

import functools
import json
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, NamedTuple, Protocol

MAX_NAMESPACE_BYTES = 128  # UTF-8 bytes, after trimming
MAX_KEY_BYTES = 512  # UTF-8 bytes, after trimming
MAX_PLUGIN_ID_BYTES = 128
MAX_VALUE_BYTES = 65_536  # default per-store limit: UTF-8 bytes of the compact JSON serialization
MAX_VALUE_BYTES_CEILING = 1_048_576  # the most a store may allow with `max_value_bytes=`
MAX_VALUE_DEPTH = 64  # nesting depth; the root value is depth 0
MAX_BATCH_KEYS = 1_000  # keys one `lookup_many` call may ask for
MAX_PAGE_ROWS = 10_000  # rows one `entries(limit=...)` page may hold
MAX_TTL_MS = 2**53 - 1  # keeps now + ttl inside SQLite's and Lua's exact integer range
UPDATE_ATTEMPTS = 8  # default tries of `update` before it raises CONFLICT
SCHEMA_VERSION = 2  # PRAGMA user_version (and the Redis schema marker) written by this code
CORE_PREFIX = "core:"  # plugin ids with this prefix belong to the gateway (open with core=True)
OVERFLOW_POLICIES = ("evict-oldest", "reject-new")
# re.ASCII: under Unicode case folding [a-z] also matches U+212A (Kelvin) and U+017F (long s).
NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9._-]*", re.IGNORECASE | re.ASCII)

Clock = Callable[[], int]  # ms since epoch


# -- errors: one public type, with stable codes a caller can branch on ---------------------------
class ErrorCode(StrEnum):
    OPEN_FAILED = "OPEN_FAILED"  # cannot open/create the database (not SQLite, no permission)
    SCHEMA_UNSUPPORTED = "SCHEMA_UNSUPPORTED"  # user_version newer than this code knows
    WRITE_FAILED = "WRITE_FAILED"
    READ_FAILED = "READ_FAILED"
    CORRUPT = "CORRUPT"  # the file or a stored JSON value is unreadable
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"  # a size, depth or row-count limit
    INVALID_INPUT = "INVALID_INPUT"
    UNAVAILABLE = "UNAVAILABLE"  # backend unreachable, or the store was closed
    CONFLICT = "CONFLICT"  # `update` lost the race for a row more times than it may retry


# What `StateStoreError.operation` may say; "commit" is commit_staged / commit_staged_async.
OPERATIONS = frozenset(
    "open register register_if_absent compare_and_set update lookup lookup_many consume delete delete_if "
    "clear count entries sweep probe close commit".split()
)
READ_OPS = frozenset({"lookup", "lookup_many", "entries", "count"})  # their driver faults are READ_FAILED


class StateStoreError(Exception):
    """Raised by every store call that fails; `code` is stable, the message is for people: it
    names the limit and the offending size, never a stored or offered value."""

    def __init__(self, code: ErrorCode | str, operation: str, message: str, *, path: str | None = None) -> None:
        self.code, self.operation, self.path, self._message = ErrorCode(code), operation, path, message
        super().__init__(f"{self.code} during {operation}: {message}" + (f" [{path}]" if path else ""))

    def __reduce__(self) -> tuple[object, ...]:  # keep code/operation/path across processes
        return functools.partial(StateStoreError, path=self.path), (self.code.value, self.operation, self._message)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def new_version() -> int:
    """A fresh row version: 63 random bits, never 0 (a v1 row's); random, so no write updates a counter row."""
    return random.getrandbits(63) or 1


@dataclass(frozen=True)
class StoreSettings:
    """Per-database tunables; the defaults are what the gateway uses."""

    busy_timeout_s: float = 10.0  # how long a writer waits for the SQLite write lock (>= 5 s)
    sweep_batch_rows: int = 1_024  # expired rows deleted per sweep transaction (<= 1,024)

    def __post_init__(self) -> None:
        if not (isinstance(self.busy_timeout_s, (int, float)) and self.busy_timeout_s >= 5):
            raise StateStoreError("INVALID_INPUT", "open", "busy_timeout_s must be >= 5")
        check_int(self.sweep_batch_rows, 1, 1_024, "open", "sweep_batch_rows")


@dataclass(frozen=True)
class NamespaceSpec:
    """What a store is opened with, checked once; one per (database, plugin_id, namespace) in a process."""

    plugin_id: str
    namespace: str
    max_entries: int
    default_ttl_ms: int | None = None
    overflow: str = "evict-oldest"  # or "reject-new"
    max_value_bytes: int = MAX_VALUE_BYTES

    @classmethod
    def checked(cls, plugin_id: object, namespace: object, *, core: bool = False, **options: Any) -> NamespaceSpec:
        """A spec from `open_keyed_store`'s arguments, or INVALID_INPUT (LIMIT_EXCEEDED: an oversized plugin id or
        namespace; TypeError: an unknown option). Ids starting `core:` are the gateway's: they need `core=True`."""
        bad = functools.partial(StateStoreError, "INVALID_INPUT", "open")
        if not isinstance(plugin_id, str) or not plugin_id.strip():
            raise bad("plugin_id must be a non-empty string")
        plugin_id = _sized(plugin_id, "plugin_id", MAX_PLUGIN_ID_BYTES, "open")
        if (is_core := plugin_id.lower().startswith(CORE_PREFIX)) and not core:
            raise bad(f"plugin ids starting {CORE_PREFIX!r} are reserved for the gateway")
        if core and (not is_core or len(plugin_id) == len(CORE_PREFIX)):
            raise bad(f"a core store id must look like '{CORE_PREFIX}<name>'")
        if not NAMESPACE_RE.fullmatch(namespace := _sized(namespace, "namespace", MAX_NAMESPACE_BYTES, "open")):
            raise bad("namespace must match ^[a-z0-9][a-z0-9._-]*$ (case-insensitive)")
        spec = cls(plugin_id, namespace, **options)
        check_int(spec.max_entries, 1, 2**63 - 1, "open", "max_entries", "max_entries must be an integer >= 1")
        if spec.overflow not in OVERFLOW_POLICIES:
            raise bad(f"overflow must be one of {OVERFLOW_POLICIES}")
        check_ttl(spec.default_ttl_ms, "open", "default_ttl_ms")
        check_int(spec.max_value_bytes, 1, MAX_VALUE_BYTES_CEILING, "open", "max_value_bytes")
        return spec


@dataclass(frozen=True)
class Entry:
    """One live row; `version` (new on every write) is left out of equality: an Entry compares by what it holds."""

    key: str
    value: Any
    created_at: int  # ms since epoch
    expires_at: int | None  # ms since epoch; None = never
    version: int = field(default=0, compare=False)


# -- the backend interface -------------------------------------------------------------------
class Row(NamedTuple):
    key: str
    value: str  # JSON text as stored
    created_at: int  # ms since epoch
    expires_at: int | None  # ms since epoch; None = never
    version: int


class Mode(Enum):
    """What a write requires of the row already under the key."""

    UPSERT = "register"  # nothing: write whatever is there
    CLAIM = "register_if_absent"  # no live row
    MATCH = "compare_and_set"  # a live row whose version is `expect`
    DELETE = "delete"  # staged deletes only (commit)


class Write(NamedTuple):
    """One write as a backend applies it: validated, serialized, its clock read."""

    spec: NamespaceSpec
    key: str
    value: str | None  # JSON text; None = delete (staged writes only)
    now_ms: int
    expires_at: int | None
    version: int
    mode: Mode = Mode.UPSERT
    expect: int | None = None  # the version a MATCH write requires


Decode = Callable[[Row], Any]  # raises StateStoreError CORRUPT for unreadable JSON
# Calls run in one transaction: each one's (result, what it raised), or None (nothing written) to run them alone.
Batch = Callable[[Sequence[Callable[[], Any]]], "list[tuple[Any, BaseException | None]] | None"]


class Backend(Protocol):
    """Storage under a `Database`: it gets checked, serialized input and the caller's `now_ms`, and makes every write
    atomic on its own (two processes may race on one key). Both backends subclass it for the methods with a body."""

    kind: str  # "sqlite" | "redis": the `backend` label of the metrics
    location: str  # a file path or a URL without credentials: goes into error messages

    def write(self, w: Write) -> bool: ...  # apply `w` if its mode allows, keep max_entries; False = not applied
    # staged writes in order, all or nothing; False (nothing written) when a CLAIM or MATCH fails
    def commit(self, writes: Sequence[Write]) -> bool: ...
    def read(self, spec: NamespaceSpec, key: str, now_ms: int) -> Row | None: ...
    def read_many(self, spec: NamespaceSpec, keys: Sequence[str], now_ms: int) -> list[Row]: ...
    # delete the live row and return `decode(row)`, or None; if decode raises, the row is kept
    def take(self, spec: NamespaceSpec, key: str, now_ms: int, decode: Decode) -> Any: ...
    def remove(self, spec: NamespaceSpec, key: str, now_ms: int, expect: int | None = None) -> bool: ...
    def remove_all(self, spec: NamespaceSpec, now_ms: int) -> int: ...
    # live rows in (created_at, key) order after the cursor `after`, at most `limit`
    def scan(self, spec: NamespaceSpec, now_ms: int, limit: int | None, after: tuple[int, str] | None) -> list[Row]: ...
    def count(self, spec: NamespaceSpec, now_ms: int) -> int: ...
    def sweep(self, now_ms: int) -> int: ...
    def checkpoint(self, op: str = "close") -> None: ...
    def schema_version(self) -> int: ...
    def close(self) -> None: ...  # wait for calls in flight, checkpoint, close; later calls: UNAVAILABLE

    # What a backend without files or group commit (Redis) does; SQLite overrides these three.
    run_batch: Batch | None = None  # several writes in one transaction: the async twin gets a writer thread

    def reopened(self) -> None:  # another store joined: check the paths (OPEN_FAILED), re-apply modes
        return None

    def fault(self) -> str | None:  # the last post-commit problem that did not fail a write, or None
        return None

    def _fail(self, code: str, op: str, message: str = "the store is closed") -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

    def _failed(self, op: str) -> str:
        """The code of a driver fault during `op`."""
        return "OPEN_FAILED" if op == "open" else "READ_FAILED" if op in READ_OPS else "WRITE_FAILED"

    def probe_schema(self) -> None:  # the probe's "schema" step
        if (version := self.schema_version()) < 1:
            raise self._fail("SCHEMA_UNSUPPORTED", "probe", f"schema version {version} was not initialised")

    def probe_round_trip(self) -> None:
        """The probe's "write-read-delete" step, on a core-owned pair (never a plugin's namespace)."""
        spec, key = NamespaceSpec("core:probe", "probe", 1_000), f"probe-{uuid.uuid4().hex}"
        now, value = wall_clock_ms(), '{"probe":true}'
        self.write(Write(spec, key, value, now, now + 60_000, new_version()))
        if (row := self.read(spec, key, now)) is None or row.value != value:
            raise self._fail("READ_FAILED", "probe", "a row just written could not be read back")
        if not self.remove(spec, key, now):
            raise self._fail("WRITE_FAILED", "probe", "a row just written could not be deleted")


# -- input checks ----------------------------------------------------------------------------
# Compact JSON, non-ASCII kept, NaN/inf refused; built once (json.dumps with options builds one
# per call); no circular-reference markers: `_check_shape` has bounded the depth.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False).encode
_FLAT_SCALARS = frozenset({str, int, bool, type(None)})  # exact types; floats need a finiteness check


class Json(str):
    """JSON text `serialize_value` checked already (the async twin's, on the caller): taken as is."""


class Key(str):
    """A key `check_key` returned already (the async twin's, on the caller): taken as is."""


def check_int(value: object, low: int, high: int, op: str, what: str, message: str | None = None) -> int:
    """`value` if an int (never a bool) from `low` to `high`; else INVALID_INPUT: `message`, or the range."""
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise StateStoreError("INVALID_INPUT", op, message or f"{what} must be an integer from {low} to {high}")
    return value


def _utf8_len(text: str, what: str, op: str) -> int:
    try:  # an ASCII text (the usual case) is as many bytes as characters: skip encoding it
        return len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise StateStoreError("INVALID_INPUT", op, f"{what} is not valid Unicode") from None


def _sized(value: object, what: str, limit: int, op: str) -> str:
    """`value` stripped, if it is a str (else INVALID_INPUT) of at most `limit` UTF-8 bytes (else LIMIT_EXCEEDED)."""
    if not isinstance(value, str):
        raise StateStoreError("INVALID_INPUT", op, f"{what} must be a string")
    value = value.strip()
    if (size := _utf8_len(value, what, op)) > limit:
        raise StateStoreError("LIMIT_EXCEEDED", op, f"{what} is {size} bytes; the limit is {limit}")
    return value


def check_key(value: object, op: str) -> str:
    if type(value) is Key:
        return str(value)  # an exact str for the driver
    if not (value := _sized(value, "key", MAX_KEY_BYTES, op)):
        raise StateStoreError("INVALID_INPUT", op, "key must not be empty")
    return value


def check_ttl(value: object, op: str, what: str = "ttl_ms") -> int | None:
    return None if value is None else check_int(value, 1, MAX_TTL_MS, op, what)


def check_version(value: object, op: str) -> int:
    return check_int(value, 0, 2**63 - 1, op, "version", "version must be an integer from Entry.version")


def check_keys(values: object, op: str) -> list[str]:
    """A list/tuple/set of at most MAX_BATCH_KEYS valid keys, duplicates folded."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, set, frozenset)):
        raise StateStoreError("INVALID_INPUT", op, "keys must be a list of strings")
    if len(values) > MAX_BATCH_KEYS:
        message = f"{len(values)} keys asked for; the limit is {MAX_BATCH_KEYS} a call"
        raise StateStoreError("LIMIT_EXCEEDED", op, message)
    return list(dict.fromkeys(check_key(k, op) for k in values))


def check_page(limit: object, after: object, op: str = "entries") -> tuple[int | None, tuple[int, str] | None]:
    """`entries(limit=, after=)`: limit 1..MAX_PAGE_ROWS or None; `after` an Entry (the cursor) or None."""
    limit = None if limit is None else check_int(limit, 1, MAX_PAGE_ROWS, op, "limit")
    if after is None:
        return limit, None
    created, k = getattr(after, "created_at", None), getattr(after, "key", None)
    if not isinstance(created, int) or isinstance(created, bool) or not isinstance(k, str):
        raise StateStoreError("INVALID_INPUT", op, "after must be an Entry this store returned")
    return limit, (created, k)


def serialize_value(value: object, op: str, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """The compact JSON text stored for `value`. Raises INVALID_INPUT for anything but plain JSON (tuples,
    sets, bytes, non-str keys, NaN/inf, lone surrogates), LIMIT_EXCEEDED past the depth or size limit."""
    if type(value) is Json:  # checked already (the async twin, on the caller): only the size is ours
        text = str(value)  # an exact str for the driver
    else:
        _check_shape(value, op)
        try:
            text = _encode(value)
        except ValueError:  # an int past Python's 4,300-digit str limit: it could never be read back
            raise StateStoreError("INVALID_INPUT", op, "value contains an integer too large to serialize") from None
    if (size := _utf8_len(text, "value", op)) > max_bytes:
        raise StateStoreError("LIMIT_EXCEEDED", op, f"value is {size} bytes serialized; the limit is {max_bytes}")
    return text


def _check_shape(root: object, op: str) -> None:
    # The usual value, a flat dict of strings and ints, passes in one pass; the rest takes the walk.
    if type(root) is dict and all(type(k) is str and type(v) in _FLAT_SCALARS for k, v in root.items()):
        return
    # Iterative so a hostile 100,000-deep list cannot blow the Python stack before we say no.
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            message = f"value nests {depth} levels deep; the limit is {MAX_VALUE_DEPTH}"
            raise StateStoreError("LIMIT_EXCEEDED", op, message)
        if type(value) is list:
            stack.extend((item, depth + 1) for item in value)
        elif type(value) is dict:
            if not all(isinstance(k, str) for k in value):
                raise StateStoreError("INVALID_INPUT", op, "value has a non-string object key")
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, float) and not math.isfinite(value):
            raise StateStoreError("INVALID_INPUT", op, "value contains a non-finite float")
        elif not (value is None or isinstance(value, (bool, int, float, str))):  # str: surrogates fail encoding
            message = f"value contains a {type(value).__name__}, which is not plain JSON"
            raise StateStoreError("INVALID_INPUT", op, message)
