"""One owner per database: a `Location` (SQLite file or Redis URL open in this process) alone opens and closes
the backend, runs the writer thread (group commit), keeps one spec per open (plugin_id, namespace) and counts its
holders (stores and `Database`s); the last one closes it. One registry maps a location to its `Location`. Fork
safety is a pid check where a connection or thread is used."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import fields
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote_plus

from . import _files, _sqlite
from . import _redis_layout as layout  # no redis-py here
from ._aio import POOL, WORKER_PREFIX, AsyncKeyedStore, Workers, open_async
from ._files import PathArg, resolve_path
from ._spec import MAX_VALUE_BYTES, Backend, Clock, NamespaceSpec, StateStoreError, StoreSettings, wall_clock_ms
from ._store import KeyedStore

P = ParamSpec("P")
T = TypeVar("T")


def database_of(url: str) -> tuple[str, tuple[Any, ...]]:
    """The database `url` names, as whom, and its other options (which two opens must agree on):
    one name however the URL spells it, so the process keeps one `Location` per database, prefix
    and user. A URL this cannot read is its own database (opening it says what is wrong)."""
    try:
        parts, options, theirs, hosts, service, db = layout.split_url(url, "")
        pairs = parse_qsl(theirs, keep_blank_values=True)
        if parts.scheme == "unix":
            hosts, db = [(parts.path, 0)], ""
        hosts = [(h.lower(), p) for h, p in hosts or [(parts.hostname or "", parts.port or 6379)]]
        db = "0" if parts.scheme == "redis+cluster" else str(int(dict(pairs).get("db", db) or 0))
    except (ValueError, StateStoreError):
        return f"url:{url}", ()
    who = hashlib.sha256(parts.netloc.rpartition("@")[0].encode()).hexdigest()[:32]  # never the password
    where = f"{','.join(sorted({f'{h}:{p}' for h, p in hosts}))}/{service}/{db}?prefix={options.prefix}"
    return f"url:{parts.scheme}://{who}@{where}", (options, sorted(p for p in pairs if p[0] != "db"))


def shown_url(url: str) -> str:
    """`url` as it may be printed anywhere: passwords (user part or query) shown as `***`, the rest
    kept, so an operator still sees which server and user: `redis://u:***@h:6379/0`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"  # not a URL at all: nothing in it is safe to echo
    # The user part ends at the last '@', wherever it is: a password holding an unencoded '/',
    # '?' or '#' stays hidden (the backend refuses such a URL, and its error shows this form).
    creds, at, rest = rest.rpartition("@")
    netloc, slash, tail = rest.partition("/")
    path, qmark, query = tail.partition("?")
    if not slash and "?" in netloc:
        netloc, qmark, query = netloc.partition("?")
    if at:
        user, colon, _ = creds.partition(":")
        # a lone `x@` is shown as `***@` too: people put a password there by mistake; and a user
        # part that is not plain (an '@' past the host) is shown as nothing but `***`
        netloc = f"{user}:***@{netloc}" if colon and not any(c in creds for c in "/?#") else f"***@{netloc}"
    # A query option whose name, as redis-py decodes it, mentions a password is never shown
    # (`password`, `sentinel_password`, `ssl_password`, `%70assword`).
    pairs = [p.partition("=") for p in query.split("&")] if query else []
    query = "&".join(f"{k}={'***' if 'password' in unquote_plus(k).lower() else v}" if eq else k for k, eq, v in pairs)
    return f"{scheme}{sep}{netloc}{slash}{path.partition('#')[0]}{qmark}{query.partition('#')[0]}"


class Location:
    """One database open in this process, shared by every store and `Database` on it."""

    def __init__(self, backend: Backend, settings: StoreSettings, how: tuple[Any, ...] = ()) -> None:
        self.backend, self.settings, self.how = backend, settings, how  # how: a URL's credentials and options
        self.location, self.pid, self._lock = backend.location, os.getpid(), threading.Lock()
        self._holders, self._closed = 1, False  # the opener holds it
        self._specs: dict[tuple[str, str], tuple[NamespaceSpec, int]] = {}  # open pairs, counted
        # Where the async twin sends writes: with group commit (SQLite) one thread (more would only queue on the
        # write lock and fight the loop for the GIL); else (Redis) the shared pool.
        self.writer = Workers(1, f"{WORKER_PREFIX}-writer", backend.run_batch) if backend.run_batch else POOL

    def hold(self) -> bool:
        """One more holder, the paths checked and modes re-applied again (on every open, not the first only);
        False if this location has closed already (open it afresh). Raises OPEN_FAILED."""
        with self._lock:
            if self._closed:
                return False
            self._holders += 1
        try:
            self.backend.reopened()
        except BaseException:
            self.release()
            raise
        return True

    def release(self) -> None:
        """One holder less; the last one closes the backend (calls in flight finish first)."""
        with self._lock:
            self._holders -= 1
            self._closed = self._holders <= 0  # the registry entry stays until an open replaces it
            if not self._closed:
                return
        self.backend.close()

    def open_store(self, spec: NamespaceSpec, clock: Clock | None) -> KeyedStore:
        """A store on this location, held by the caller; a pair reopened with another spec is INVALID_INPUT."""
        pair = (spec.plugin_id, spec.namespace)
        if clock is not None and not callable(clock):
            self.release()
            raise StateStoreError("INVALID_INPUT", "open", "clock must be a function returning ms since the epoch")
        with self._lock:
            held = self._specs.get(pair)
            if held is None or held[0] == spec:
                self._specs[pair] = (spec, (held[1] if held else 0) + 1)
                return KeyedStore(self, spec, clock or wall_clock_ms)
        self.release()
        limits = ", ".join(f"{f.name}={getattr(held[0], f.name)}" for f in fields(NamespaceSpec)[2:])
        message = f"{spec.plugin_id}/{spec.namespace} is already open with {limits}; reopen it with the same settings"
        raise StateStoreError("INVALID_INPUT", "open", message, path=self.location)

    def close_store(self, spec: NamespaceSpec) -> None:
        pair = (spec.plugin_id, spec.namespace)
        with self._lock:
            if (held := self._specs.pop(pair))[1] > 1:
                self._specs[pair] = (held[0], held[1] - 1)
        self.release()


# The one registry: location -> its open Location. A forked child finds its parent's entries stale (the pid
# check below), keeps them referenced (closing a connection inherited across fork can disturb the parent's
# locks) and opens its own.
_registry_lock = threading.Lock()
_locations: dict[str, Location] = {}
_inherited: list[Location] = []


def acquire(path: PathArg, url: str | None, settings: StoreSettings) -> Location:
    """The open Location of a database (opened now if no one holds it), held once for the caller."""
    global _registry_lock
    how: tuple[Any, ...] = ()
    if url is not None:  # one Location per database however its URL is spelled
        from ._redis import RedisBackend  # imported here: SQLite users never load redis-py

        ident, how = database_of(url)
        opener: Callable[[], Backend] = functools.partial(RedisBackend, url, settings)
    else:  # abspath also folds "x/../": one file has one Location however the path is spelled
        ident = os.path.abspath(resolve_path(path))
        opener = functools.partial(_sqlite.SQLiteBackend, Path(ident), settings)
    if _locations and next(iter(_locations.values())).pid != os.getpid():
        _inherited.extend(_locations.values())  # forked: nothing here is ours
        _locations.clear()
        _registry_lock = threading.Lock()
    with _registry_lock:
        shared = _locations.get(ident)
        if shared is None or not shared.hold():
            shared = _locations[ident] = Location(opener(), settings, how)
            return shared
    if (shared.settings, shared.how) != (settings, how):
        shared.release()
        message = "this database is already open in this process with different settings"
        raise StateStoreError("INVALID_INPUT", "open", message, path=shared.location)
    return shared


def check_where(path: object, url: object, settings: object) -> None:
    """The types of `path` (never blank: that would be the current folder), `url` and `settings`; else INVALID_INPUT."""
    if url is not None and not isinstance(url, str):
        raise StateStoreError("INVALID_INPUT", "open", "url must be a string: redis://...")
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if path is not None and not (isinstance(text, str) and text.strip()):
        raise StateStoreError("INVALID_INPUT", "open", "path must be a non-empty str or os.PathLike of str")
    if settings is not None and not isinstance(settings, StoreSettings):
        raise StateStoreError("INVALID_INPUT", "open", "settings must be a StoreSettings")


def open_keyed_store(
    plugin_id: str,
    namespace: str,
    *,
    max_entries: int,
    default_ttl_ms: int | None = None,
    overflow: str = "evict-oldest",
    max_value_bytes: int = MAX_VALUE_BYTES,
    path: PathArg = None,
    url: str | None = None,
    settings: StoreSettings | None = None,
    clock: Clock | None = None,
    core: bool = False,
) -> KeyedStore:
    """Open a store bound to (plugin_id, namespace) on SQLite (default) or `url` (redis://); the arguments and
    errors are docs/state.md's "Opening". A pair reopened in this process with other options is INVALID_INPUT."""
    if path is not None and url is not None:
        raise StateStoreError("INVALID_INPUT", "open", "give either path or url, not both")
    check_where(path, url, settings)
    options = {"default_ttl_ms": default_ttl_ms, "overflow": overflow, "max_value_bytes": max_value_bytes}
    spec = NamespaceSpec.checked(plugin_id, namespace, max_entries=max_entries, core=core, **options)
    return acquire(path, url, settings or StoreSettings()).open_store(spec, clock)


def _arguments_of(
    sync: Callable[P, Any],
) -> Callable[[Callable[..., Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Declare an async opener's arguments once: `sync`'s, for mypy and `inspect.signature`."""
    return lambda opener: functools.update_wrapper(opener, sync, assigned=(), updated=())


@_arguments_of(open_keyed_store)
async def open_async_keyed_store(*args: Any, **kwargs: Any) -> AsyncKeyedStore:
    """Open an `AsyncKeyedStore` off the loop; arguments and errors as `open_keyed_store`."""
    return await open_async(lambda: open_keyed_store(*args, **kwargs))


class Database(AbstractContextManager["Database"]):
    """One database (SQLite file or Redis URL) held for as long as its owner needs it: opened on first use (a
    failed open is tried again by the next call), held until `close`; its stores close on their own.
    Thread-safe; the methods block (call them off the loop)."""

    def __init__(self, path: PathArg = None, *, url: str | None = None, settings: StoreSettings | None = None) -> None:
        check_where(path, url, settings)
        self._path, self.url, self.settings = path, url, settings or StoreSettings()  # path is ignored with a url
        # what probe reports as database_path: a URL's password is never part of it
        self.location = shown_url(url) if url is not None else str(resolve_path(path))
        self.is_file = url is None  # SQLite: a file and its directory to check
        self._lock, self._closed = threading.Lock(), False
        self._held: Location | None = None
        self.opens = 0  # how many times this object opened its database (0 or 1 once it works)

    def __repr__(self) -> str:
        return f"<Database {self.location}>"

    def _open(self, op: str = "open", *, recheck: bool = False) -> Location:
        """The open database, opened now on first use (raises as `open_keyed_store`); `recheck`: one open already
        has its paths checked and modes re-applied, as opening one more store does."""
        with self._lock:
            if self._closed:
                raise StateStoreError("UNAVAILABLE", op, "the database is closed", path=self.location)
            if self._held is None:
                self._held = self._acquire()
                self.opens += 1
            elif recheck:
                self._held.backend.reopened()
            return self._held

    def _acquire(self) -> Location:
        return acquire(self._path, self.url, self.settings)

    def open_keyed_store(
        self, plugin_id: str, namespace: str, *, clock: Clock | None = None, **options: Any
    ) -> KeyedStore:
        """`state.open_keyed_store` on this database: its options but path, url and settings; its errors."""
        spec = NamespaceSpec.checked(plugin_id, namespace, **options)
        shared = self._open()
        if not shared.hold():
            raise StateStoreError("UNAVAILABLE", "open", "the database is closed", path=self.location)
        return shared.open_store(spec, clock)

    async def open_async_keyed_store(self, plugin_id: str, namespace: str, **options: Any) -> AsyncKeyedStore:
        """`state.open_async_keyed_store` on this database, opened off the loop."""
        return await open_async(lambda: self.open_keyed_store(plugin_id, namespace, **options))

    def sweep_expired(self, *, now_ms: int | None = None) -> int:
        """Delete expired rows of every plugin in batches of <= 1,024; how many went (errors: operation "sweep")."""
        return self._open("sweep").backend.sweep(wall_clock_ms() if now_ms is None else now_ms)

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (for Redis: a PING); errors: operation "close"."""
        self._open("close").backend.checkpoint()

    def probe(self) -> dict[str, Any]:
        """Check the store end to end, step by step (docs/state.md, "probe and the CLI"); never raises, never shows
        values."""
        steps: list[dict[str, Any]] = []

        def step(name: str, fn: Callable[[], T]) -> T:
            try:
                result = fn()
            except StateStoreError as exc:
                steps.append({"name": name, "ok": False, "code": str(exc.code), "message": str(exc)})
                raise
            except OSError as exc:
                steps.append({"name": name, "ok": False, "code": "OPEN_FAILED", "message": exc.strerror or str(exc)})
                raise StateStoreError("OPEN_FAILED", "probe", str(exc.strerror)) from None
            steps.append({"name": name, "ok": True})
            return result

        try:
            if self.is_file:
                step("state-dir", lambda: _files.check_dir(Path(self.location).parent))
            backend = step("open", lambda: self._open(recheck=True).backend)
            step("schema", backend.probe_schema)
            step("write-read-delete", backend.probe_round_trip)
            step("checkpoint", backend.checkpoint)
            if self.is_file:  # file modes: SQLite only
                fault = {"ok": False, "code": "WRITE_FAILED", "message": f} if (f := backend.fault()) else {"ok": True}
                steps.append({"name": "permissions", **fault})
        except StateStoreError:
            pass
        return {"ok": all(s["ok"] for s in steps) and len(steps) >= 4, "database_path": self.location, "steps": steps}

    def close(self) -> None:
        """Let go of the database; later calls raise UNAVAILABLE. Its stores stay usable."""
        with self._lock:
            held, self._held, self._closed = self._held, None, True
        if held is not None:
            held.release()

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep_expired(
    path: PathArg = None, *, url: str | None = None, settings: StoreSettings | None = None, now_ms: int | None = None
) -> int:
    """`Database.sweep_expired` on a Database opened for this one call (scripts, the CLI)."""
    with Database(path, url=url, settings=settings) as database:
        return database.sweep_expired(now_ms=now_ms)


def checkpoint(path: PathArg = None, *, url: str | None = None, settings: StoreSettings | None = None) -> None:
    """`Database.checkpoint` on a Database opened for this one call (scripts, the CLI)."""
    with Database(path, url=url, settings=settings) as database:
        database.checkpoint()


def probe(path: PathArg = None, *, url: str | None = None, settings: StoreSettings | None = None) -> dict[str, Any]:
    """`Database.probe` on a Database opened for this one call; arguments no Database takes are a failed `open` step."""
    try:
        database = Database(path, url=url, settings=settings)
    except StateStoreError as exc:
        step = {"name": "open", "ok": False, "code": str(exc.code), "message": str(exc)}
        return {"ok": False, "database_path": "(not a location)", "steps": [step]}
    with database:
        return database.probe()
