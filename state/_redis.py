"""The Redis backend: the same contract as SQLite for several gateways sharing one Redis.

    open_keyed_store("discord", "discord.components", max_entries=500,
                     url="redis://127.0.0.1:6379/0?prefix=myproject")

Why this shape:
- The sync redis-py client, not `redis.asyncio`: the store's rules live once in the sync core and
  the async twin runs that core on worker threads (state/_aio.py), so the loop never waits on
  Redis either, and there is no second copy of the logic to drift.
- Every multi-step operation is one Lua script (state/_redis_lua.py), Redis's transaction.
- Visibility is decided by the caller's clock (`now_ms`), exactly like SQLite, so a fake clock in
  the contract tests means the same thing on both backends. Redis still cleans up by itself:
  each row key gets a server-side expiry of its remaining TTL plus `expiry_grace_ms`, measured
  from the write (PEXPIRE, i.e. PEXPIREAT on the server's clock). Absolute PEXPIREAT of the
  client's expires_at would let a skewed or fake client clock delete a row the contract says
  is still live; the grace keeps server cleanup strictly after client-side expiry.
- Connection failures are retried a bounded number of times with exponential backoff (redis-py
  `Retry`), then raise UNAVAILABLE. Claims, takes and clears carry a nonce, so a retry after a
  lost reply returns the first result instead of applying the operation twice.
- No KEYS and no SCAN: each namespace has its own sorted sets, and a small registry of
  plugins and their namespaces lets `sweep` reach every namespace.
Redis Cluster is not supported (scripts touch keys of several namespaces of one plugin).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import _redis_lua as lua
from ._backend import Decode, Holders, Limits, Mode, Row
from ._errors import StateStoreError
from ._redis_options import split_url
from ._redis_schema import open_schema, schema_marker
from ._settings import StoreSettings

WRITE_OPS = {Mode.UPSERT: "register", Mode.CLAIM: "register_if_absent", Mode.MATCH: "compare_and_set"}
MODE_FLAGS = {Mode.UPSERT: "u", Mode.CLAIM: "c", Mode.MATCH: "m"}

T = TypeVar("T")


class RedisBackend(Holders):
    """One Redis database as seen by this process; share it between stores via `acquire`."""

    kind = "redis"
    one_writer = False  # Redis takes writes from many connections: the async pool runs them

    def __init__(self, url: str, settings: StoreSettings) -> None:
        client_url, self.options, self.location = split_url(url)
        self.settings = settings
        self._prefix = f"{self.options.prefix}:"
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0  # calls in flight: release() waits for them before closing the pool
        self._users = 0
        self._closed = False
        opts = self.options
        try:
            self._client = redis.Redis.from_url(
                client_url,
                decode_responses=True,
                socket_connect_timeout=opts.socket_connect_timeout_s,
                socket_timeout=opts.socket_timeout_s,
                retry=Retry(ExponentialBackoff(cap=opts.backoff_cap_s, base=opts.backoff_base_s), opts.retries),
            )
        except ValueError as exc:
            raise StateStoreError("INVALID_INPUT", "open", f"bad Redis URL ({exc})", path=self.location) from None
        self._write = self._client.register_script(lua.WRITE)
        self._take = self._client.register_script(lua.TAKE)
        self._clear = self._client.register_script(lua.CLEAR)
        self._scan = self._client.register_script(lua.SCAN)
        self._sweep = self._client.register_script(lua.SWEEP)
        self._read_many = self._client.register_script(lua.READ_MANY)
        self._count = self._client.register_script(lua.COUNT)
        self._migrate_v1 = self._client.register_script(lua.MIGRATE_V1)
        try:
            open_schema(self)  # also the first connection: redis-py reads its URL options here
        except TypeError:
            self._client.close()
            raise StateStoreError(
                "INVALID_INPUT", "open", "the Redis URL has an option neither we nor redis-py know", path=self.location
            ) from None
        except BaseException:
            self._client.close()  # a failed open leaves no pool behind
            raise

    # -- key names ----------------------------------------------------------------------
    def _plugin(self, plugin_id: str) -> str:
        return quote(plugin_id, safe="")  # ':' and '{' escaped: names stay unambiguous

    def _ns_prefix(self, plugin_id: str) -> str:
        return f"{self._prefix}p:{self._plugin(plugin_id)}:n:"

    def _ns(self, plugin_id: str, namespace: str) -> tuple[str, str, str]:
        """(row key prefix, order zset, expiry zset) of one namespace."""
        base = self._ns_prefix(plugin_id) + namespace
        return f"{base}:r:", f"{base}:order", f"{base}:exp"

    def _namespaces_key(self, plugin_id: str) -> str:
        return f"{self._prefix}p:{self._plugin(plugin_id)}:namespaces"

    @property
    def _plugins_key(self) -> str:
        return f"{self._prefix}plugins"

    def _op_key(self) -> str:
        return f"{self._prefix}op:{uuid.uuid4().hex}"

    # -- shared machinery ---------------------------------------------------------------
    @contextmanager
    def _translate(self, op: str) -> Iterator[None]:
        """Turn redis-py errors into StateStoreError where they happen; retries are behind us."""
        if self._closed:
            raise StateStoreError("UNAVAILABLE", op, "the store is closed", path=self.location)
        try:
            yield
        except StateStoreError:
            raise
        except redis.AuthenticationError:
            raise StateStoreError("OPEN_FAILED", op, "Redis refused the credentials", path=self.location) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateStoreError(
                "UNAVAILABLE",
                op,
                f"Redis unreachable after {self.options.retries} retries ({type(exc).__name__})",
                path=self.location,
            ) from None
        except redis.ResponseError as exc:
            text = str(exc)
            code = (
                "CORRUPT"
                if text.startswith("WRONGTYPE")
                else (
                    "OPEN_FAILED" if op == "open" else "READ_FAILED" if op in ("lookup", "entries") else "WRITE_FAILED"
                )
            )
            raise StateStoreError(code, op, f"Redis said: {text.splitlines()[0][:200]}", path=self.location) from None
        except redis.RedisError as exc:
            raise StateStoreError(
                "UNAVAILABLE", op, f"Redis client failed ({type(exc).__name__})", path=self.location
            ) from None

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise StateStoreError("UNAVAILABLE", op, "the store is closed", path=self.location)
            self._active += 1
        try:
            with self._translate(op):
                return fn()
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._idle.notify_all()

    def schema_version(self) -> int:
        return schema_marker(self, "probe")

    def reopened(self) -> None:
        """Nothing to re-check: Redis has no files."""

    def abandon(self) -> None:
        """In a forked child: closed here; the parent's sockets are left to it."""
        self._closed = True

    def fault(self) -> str | None:
        return None

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]] | None:
        """No group commit on Redis: each script is its own transaction already."""
        return None

    # -- operations ---------------------------------------------------------------------
    def write(
        self,
        plugin_id: str,
        namespace: str,
        key: str,
        value: str,
        *,
        now_ms: int,
        expires_at: int | None,
        limits: Limits,
        mode: Mode,
        version: int,
        expect: int | None = None,
    ) -> bool:
        op = WRITE_OPS[mode]
        rows, order, exp = self._ns(plugin_id, namespace)
        pexpire = "" if expires_at is None else str(max(expires_at - now_ms, 1) + self.options.expiry_grace_ms)
        keys = [
            rows + key,
            order,
            exp,
            self._namespaces_key(plugin_id),
            self._plugins_key,
            "" if mode is Mode.UPSERT else self._op_key(),
        ]  # an upsert is idempotent: no retry cache
        args: list[str | int] = [
            key,
            value,
            now_ms,
            "" if expires_at is None else expires_at,
            pexpire,
            limits.max_entries,
            limits.overflow,
            MODE_FLAGS[mode],
            self._ns_prefix(plugin_id),
            namespace,
            self._plugin(plugin_id),
            self.options.op_result_ttl_ms,
            str(version),
            "" if expect is None else str(expect),
        ]
        result = self._call(op, lambda: self._write(keys=keys, args=args))
        if result == "NS_FULL":
            raise StateStoreError(
                "LIMIT_EXCEEDED",
                op,
                f"namespace is full: max_entries is {limits.max_entries} live rows",
                path=self.location,
            )
        return result == "1"

    def read(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None:
        rows, _, _ = self._ns(plugin_id, namespace)
        # decode_responses=True: redis-py's stubs say bytes | str, the replies are str
        reply = self._call("lookup", lambda: self._client.hmget(rows + key, "v", "c", "e", "n"))
        value, created, expires, version = cast("list[str | None]", reply)
        return _live_row(key, value, created, expires, version, now_ms)

    def read_many(self, plugin_id: str, namespace: str, keys: Sequence[str], *, now_ms: int) -> list[Row]:
        rows, _, _ = self._ns(plugin_id, namespace)
        wanted = list(keys)
        flat = self._call("lookup_many", lambda: self._read_many(keys=[rows + k for k in wanted], args=[now_ms]))
        return [
            Row(
                wanted[int(flat[i]) - 1],
                flat[i + 1],
                int(flat[i + 2]),
                int(flat[i + 3]) if flat[i + 3] else None,
                int(flat[i + 4]),
            )
            for i in range(0, len(flat), 5)
        ]

    def _take_row(
        self, op: str, plugin_id: str, namespace: str, key: str, now_ms: int, *, check: bool, expect: int | None
    ) -> tuple[bool, Row | None]:
        """Run TAKE; (deleted, the row if one was live)."""
        rows, order, exp = self._ns(plugin_id, namespace)
        keys = [rows + key, order, exp, self._op_key()]
        args: list[str | int] = [
            key,
            self.options.op_result_ttl_ms,
            now_ms,
            "1" if check else "0",
            "" if expect is None else str(expect),
        ]
        text = self._call(op, lambda: self._take(keys=keys, args=args))
        if not text:
            return False, None
        created, expires, version, value = text[1:].split(":", 3)
        return text[0] == "D", _live_row(key, value, created, expires, version, now_ms)

    def take(self, plugin_id: str, namespace: str, key: str, *, now_ms: int, decode: Decode) -> Any:
        _, row = self._take_row("consume", plugin_id, namespace, key, now_ms, check=True, expect=None)
        return None if row is None else decode(row)  # a kept (unreadable) row raises CORRUPT here

    def remove(self, plugin_id: str, namespace: str, key: str, *, now_ms: int, expect: int | None = None) -> bool:
        op = "delete" if expect is None else "delete_if"
        deleted, row = self._take_row(op, plugin_id, namespace, key, now_ms, check=False, expect=expect)
        return deleted and row is not None

    def remove_all(self, plugin_id: str, namespace: str, *, now_ms: int) -> int:
        _, order, exp = self._ns(plugin_id, namespace)
        keys = [order, exp, self._namespaces_key(plugin_id), self._op_key()]
        args: list[str | int] = [now_ms, self._ns_prefix(plugin_id), namespace, self.options.op_result_ttl_ms]
        return int(self._call("clear", lambda: self._clear(keys=keys, args=args)))

    def scan(
        self,
        plugin_id: str,
        namespace: str,
        *,
        now_ms: int,
        limit: int | None = None,
        after: tuple[int, str] | None = None,
    ) -> list[Row]:
        rows, order, _ = self._ns(plugin_id, namespace)
        args: list[str | int] = [
            now_ms,
            rows,
            "" if limit is None else limit,
            "" if after is None else after[0],
            "" if after is None else after[1],
        ]
        flat = self._call("entries", lambda: self._scan(keys=[order], args=args))
        return [
            Row(flat[i], flat[i + 1], int(flat[i + 2]), int(flat[i + 3]) if flat[i + 3] else None, int(flat[i + 4]))
            for i in range(0, len(flat), 5)
        ]

    def count(self, plugin_id: str, namespace: str, *, now_ms: int) -> int:
        _, order, exp = self._ns(plugin_id, namespace)
        return int(self._call("count", lambda: self._count(keys=[order, exp], args=[now_ms])))

    def sweep(self, *, now_ms: int) -> int:
        """Drop expired rows and their index entries, namespace by namespace, in batches."""
        batch = self.settings.sweep_batch_rows
        removed = 0
        # decode_responses=True: the members are str, whatever redis-py's stubs say
        for plugin in cast("set[str]", self._call("sweep", lambda: self._client.smembers(self._plugins_key))):
            plugin_id = unquote(plugin)
            ns_key = self._namespaces_key(plugin_id)
            for namespace in cast("set[str]", self._call("sweep", lambda: self._client.smembers(ns_key))):  # noqa: B023 -- called at once
                _, order, _ = self._ns(plugin_id, namespace)
                keys = [order, ns_key, self._plugins_key]
                args: list[str | int] = [now_ms, self._ns_prefix(plugin_id), namespace, batch, plugin]
                while True:
                    n = int(self._call("sweep", lambda: self._sweep(keys=keys, args=args)))  # noqa: B023 -- called at once
                    removed += n
                    if n < batch:
                        break
        return removed

    def checkpoint(self, op: str = "close") -> None:
        """Nothing to fold back (Redis persists on its own); a PING proves the server answers."""
        self._call(op, self._client.ping)

    # -- closing (the users are counted by Holders, state/_backend.py) ---------------------
    def _stop_calls(self) -> None:
        while self._active:  # calls already running finish on an open pool first
            self._idle.wait()

    def _close_now(self, running: None) -> None:
        self._client.close()


def _live_row(
    key: str, value: str | None, created: str | None, expires: str | None, version: str | None, now_ms: int
) -> Row | None:
    if value is None or created is None:
        return None
    expires_at = int(expires) if expires else None
    if expires_at is not None and expires_at <= now_ms:
        return None
    return Row(key, value, int(created), expires_at, int(version) if version else 0)
