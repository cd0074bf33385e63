"""The Redis backend: the SQLite contract for several gateways sharing one Redis, through redis-py (one server, TLS, a
unix socket, Sentinel or Cluster: the URL forms in docs/state.md).

Failover, slot routing and retries are redis-py's; a conditional write, take or clear carries a nonce, so a call retried
after a lost reply (or READONLY from a demoted primary) gets the first run's answer. No KEYS, no SCAN: `sweep` walks a
registry of plugins and their namespaces."""

from __future__ import annotations

import os
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from inspect import signature
from typing import Any, cast
from urllib.parse import unquote

import redis
from redis import exceptions as errors
from redis.backoff import ExponentialBackoff
from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, RedisCluster
from redis.connection import Connection, ConnectionPool, SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from . import _redis_layout as layout
from ._database import shown_url
from ._spec import Backend, Decode, Mode, NamespaceSpec, Row, StateStoreError, StoreSettings, Write, new_version

ACL_HINT = "grant the user the commands in docs/state.md (Redis ACL)"
CLIENT_ERRORS = (redis.RedisError, errors.RedisClusterException)  # what redis-py raises


def check_url(url: str, path: str = "") -> tuple[Any, ...]:
    """split_url's parts, the one-host URL redis-py reads, TLS or not; redis-py's options checked offline as its first
    connection would: names (a cluster drops unknown ones silently), values (one connection built, not connected)."""
    split = parts, options, theirs, hosts, service, db = layout.split_url(url, path)
    cluster = parts.scheme == "redis+cluster"
    bad = partial(StateStoreError, "INVALID_INPUT", "open", path=path or None)
    if parts.scheme == "redis+sentinel" and not service:
        raise bad("a redis+sentinel:// URL names the service after the hosts: redis+sentinel://host:26379/mymaster")
    if cluster and options.min_replicas_acked:
        why = "is for redis:// and redis+sentinel:// URLs; on a cluster run each shard's replicas with"
        raise bad(f"min_replicas_acked {why} min-replicas-to-write instead")
    if hosts:
        creds, at, _ = parts.netloc.rpartition("@")
        one = f"redis://{creds}{at}localhost/{'' if cluster else db}?{theirs}"
    else:
        one = f"{parts.scheme}://{parts.netloc}{parts.path}?{theirs}"  # urlunsplit drops unix:///'s '//'
    try:  # a value of the wrong type is a ValueError naming its option
        kwargs = parse_url(one)
        if cluster and {service or "0", db or "0", str(kwargs.get("db", 0))} != {"0"}:  # else dropped silently
            raise bad("a Redis Cluster has one database (0): drop the /db from the URL")
        ssl_option = bool(hosts) and str(kwargs.pop("ssl", "")).lower() in ("1", "true", "yes", "on")
        tls = parts.scheme == "rediss" or ssl_option  # Sentinel and Cluster: redis-py's `ssl=true`
        kind: Any = SSLConnection if tls else kwargs.pop("connection_class", Connection)
        takes = set().union(*(signature(c.__init__).parameters for c in kind.__mro__))
        inits: list[Any] = [ConnectionPool.__init__, *([RedisCluster.__init__] if cluster else [])]
        known = takes.union(*(signature(f).parameters for f in inits), REDIS_ALLOWED_KEYS if cluster else ())
        known -= {"self", "args", "kwargs", "connection_kwargs"}
        if unknown := sorted(set(kwargs) - known):
            raise layout.unknown_options(unknown, known, tls, path)
        kind(**{k: v for k, v in kwargs.items() if k in takes})  # refuses a bad value: ssl_cert_reqs=requierd
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise bad(f"bad Redis URL option ({exc})") from None
    return split, one, tls


class RedisBackend(Backend):
    """One Redis database as seen by this process, for the `Database` that owns it."""

    kind = "redis"

    def __init__(self, url: str, settings: StoreSettings) -> None:
        self.location, self.settings = shown_url(url), settings
        self._sentinel, self._service, self._tls = cast("Sentinel | None", None), "", False
        self._idle = threading.Condition()  # close() waits for the calls in flight
        self._active, self._closed, self._pid = 0, False, os.getpid()  # sockets: this process's only
        self._client: Any = self._connect(url)  # redis.Redis, or redis.cluster.RedisCluster
        self._prefix = f"{self.options.prefix}:"
        self._plugins = f"{self._prefix}plugins"  # the set `sweep` walks (percent-encoded plugin ids)
        self._scripts = {name: self._client.register_script(text) for name, text in layout.SCRIPTS.items()}
        try:  # the first connection: redis-py reads its URL options here
            if (version := self.schema_version("open")) > layout.REDIS_SCHEMA:
                why = f"this code reads versions up to {layout.REDIS_SCHEMA}: upgrade chatstate"
                raise self._fail("SCHEMA_UNSUPPORTED", "open", f"the Redis prefix has schema version {version}; {why}")
            if version < layout.REDIS_SCHEMA:  # migrated in place
                self._call("open", self._migrate)
        except BaseException:
            self._client.close()  # a failed open leaves no pool behind
            raise

    def _connect(self, url: str) -> Any:
        """The client for `url` (a cluster reads its slot map). Raises INVALID_INPUT (see split_url)."""
        (parts, o, _, hosts, service, _), one, self._tls = check_url(url, self.location)
        self.options, cluster = o, parts.scheme == "redis+cluster"
        timeouts = {"socket_connect_timeout": o.socket_connect_timeout_s, "socket_timeout": o.socket_timeout_s}
        retry = Retry(ExponentialBackoff(cap=o.backoff_cap_s, base=o.backoff_base_s), o.retries)
        common: dict[str, Any] = {"decode_responses": True, "retry": retry, **timeouts}
        bad = partial(self._fail, "INVALID_INPUT", "open")
        try:
            if not hosts:
                return redis.Redis.from_url(one, **common)
            # redis-py reads the URL's `ssl` as text ("false" is true): it gets the one check_url decided
            skip = ("host", "port", "db", "ssl")
            kwargs = {name: value for name, value in parse_url(one).items() if name not in skip} | {"ssl": self._tls}
            if not cluster:
                creds_kw = {"username": o.sentinel_username or None, "password": o.sentinel_password or None}
                self._sentinel, self._service = Sentinel(hosts, sentinel_kwargs={**creds_kw, **timeouts}), service
                return self._sentinel.master_for(service, **kwargs, **common)
            nodes = [ClusterNode(h, p) for h, p in hosts]  # RedisCluster asks one for the slot map at once
            return self._call("open", lambda: RedisCluster(startup_nodes=nodes, **kwargs, **common))
        except (ValueError, TypeError, redis.RedisError) as exc:
            raise bad(f"bad Redis URL ({exc})") from None

    def _explain(self, op: str, exc: BaseException) -> tuple[str, str, str]:
        """Code, operation and message for a redis-py error, its retries behind us."""
        replied = isinstance(exc, (redis.ResponseError, errors.RedisClusterException))  # text: the server's reply
        text, name = (str(exc).splitlines() or [""])[0][:300] if replied else "", type(exc).__name__
        failed = self._failed(op)
        refused = layout.refused_in_script(text)  # a script's error wraps the server's reply, NOPERM inside
        if isinstance(exc, redis.AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH")):
            return "OPEN_FAILED", op, "Redis refused the credentials: check the user and password in the URL"
        if isinstance(exc, MasterNotFoundError):
            return self._no_master(op)
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return self._unreachable(op, exc)
        if isinstance(exc, errors.NoPermissionError) or "NOPERM" in text or refused:
            said = refused or (text if "NOPERM" in text else f"NOPERM {text}")  # redis-py strips a top-level NOPERM
            if "key" in said and not refused:  # every command allowed, but not this prefix's keys
                fix = f"allow the user this store's keys (~{self.options.prefix}:*), or use the prefix it is allowed"
                return failed, op, f"Redis refused a key ({said}): {fix}"
            return failed, op, f"Redis refused a command ({said}): {ACL_HINT}"
        if isinstance(exc, errors.ReadOnlyError) or "READONLY" in text:  # also inside a Redis 6 script
            if self._sentinel is not None:
                return "WRITE_FAILED", op, "Redis answered READONLY twice: the sentinels still name a replica"
            fix = "the URL names a replica; name the primary, or use redis+sentinel://"
            return "WRITE_FAILED", op, f"Redis answered READONLY: {fix}"
        if isinstance(exc, (errors.TryAgainError, errors.ClusterError, errors.AskError)):
            said = f"({name}: {str(exc)[:200]}); try again"
            return "UNAVAILABLE", op, f"the cluster is moving or missing this plugin's slot {said}"
        if isinstance(exc, redis.ResponseError):
            return "CORRUPT" if text.startswith("WRONGTYPE") else failed, op, f"Redis said: {text}"
        if isinstance(exc, errors.RedisClusterException):  # e.g. no node answered
            said = str(exc)[:300]
            if "Cluster mode is not enabled" in said:  # also what redis-py says when CLUSTER SLOTS is refused
                said += f" (or the user may not run CLUSTER SLOTS: {ACL_HINT})"
            return "UNAVAILABLE", op, f"Redis Cluster: {said}"
        return "UNAVAILABLE", op, f"Redis client failed ({name})"

    def _unreachable(self, op: str, exc: BaseException) -> tuple[str, str, str]:
        """Code, operation and message for a connection error, saying what failed in TLS if anything did."""
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, ssl.SSLCertVerificationError):
                why = seen.verify_message or seen.reason
                return "OPEN_FAILED", op, f"TLS: the server's certificate failed verification: {why}"
            if isinstance(seen, ssl.SSLError):
                return "OPEN_FAILED", op, f"TLS handshake failed ({seen.reason or seen})"
            if self._tls and isinstance(seen, (FileNotFoundError, PermissionError, IsADirectoryError)):
                what = "ssl_ca_certs, ssl_certfile or ssl_keyfile names a file that cannot be read"
                return "OPEN_FAILED", op, f"TLS: {what} ({seen.strerror}): fix the path in the URL"
            if self._tls and isinstance(seen, TimeoutError) and "handshake" in str(seen):  # a plain server waits
                why = "the server may not speak TLS (a plain port takes redis://), or answered too slowly"
                return "UNAVAILABLE", op, f"TLS handshake got no answer within socket_connect_timeout_s: {why}"
            seen = seen.__cause__ or seen.__context__
        if "SSL" in str(exc) or "certificate" in str(exc).lower():
            return "OPEN_FAILED", op, f"TLS handshake failed: {str(exc)[:300]}"
        if "previous master is now a slave" in str(exc):
            return "UNAVAILABLE", op, "the primary was demoted (failover) and no new one answered yet"
        why, fix = type(exc).__name__, ": start it, or fix the address in the URL"
        if op == "open" and str(exc).startswith("Connection closed by server"):  # before any reply (later: a lost link)
            tls = "the TLS server wants a client certificate, give one (ssl_certfile, ssl_keyfile)"
            why, fix = f"{why}: closed at once; if {tls if self._tls else 'that port speaks TLS, use rediss://'}", ""
        return "UNAVAILABLE", op, f"Redis unreachable after {self.options.retries} retries ({why}){fix}"

    def _no_master(self, op: str) -> tuple[str, str, str]:
        """No primary from the sentinels: all of them down, or a service they do not monitor."""
        sentinels, answers, refused = self._sentinel.sentinels if self._sentinel is not None else [], [], False
        for s in sentinels:
            try:
                answers.append(set(cast("dict[str, Any]", s.sentinel_masters())))
            except redis.RedisError as exc:
                refused |= isinstance(exc, redis.AuthenticationError)  # it answered: wants other credentials
        if not answers and refused:
            fix = "check sentinel_password (and sentinel_username) in the URL; its own password is the primary's"
            return "OPEN_FAILED", op, f"the Sentinels refused the credentials: {fix}"
        if not answers:
            hosts = ", ".join("{host}:{port}".format(**s.connection_pool.connection_kwargs) for s in sentinels)
            return "UNAVAILABLE", op, f"no Sentinel answered ({hosts}): start them, or fix the addresses"
        if self._service not in (known := set().union(*answers)):
            they = f"(they monitor {sorted(known)}): fix the URL's path"
            return "OPEN_FAILED", op, f"no Sentinel monitors a service named {self._service!r} {they}"
        return "UNAVAILABLE", op, f"the Sentinels know no healthy primary for {self._service!r} (failover in progress)"

    def _call(self, op: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the client; redis-py's errors become StateStoreError here."""
        with self._idle:
            if self._closed or self._pid != os.getpid():
                raise self._fail("UNAVAILABLE", op)
            self._active += 1
        try:
            try:
                return fn()
            except redis.ResponseError as exc:
                if self._sentinel is None or "READONLY" not in str(exc):
                    raise
                # A script reached a demoted primary (Redis 6 runs it there and fails its first
                # write: nothing applied). Drop the pool so the next connection asks the sentinels.
                self._client.connection_pool.disconnect()
                return fn()
        except CLIENT_ERRORS as exc:
            raise self._fail(*self._explain(op, exc)) from None
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _run(self, op: str, name: str, spec: NamespaceSpec, now_ms: int, *args: Any, rows: Sequence[str] = ()) -> Any:
        """Call the script `name` on one namespace (KEYS and ARGV as layout.block lays them out)."""
        keys, argv = layout.block(self._prefix, spec, now_ms, *args, rows=rows)
        return self._script(op, name, keys, argv, spec.plugin_id if name in layout.ONCE else None)

    def _script(self, op: str, name: str, keys: list[str], args: list[Any], once: str | None) -> Any:
        """Call the script `name`. `once`: the plugin whose op key (one per call, shared by its
        retries) keeps the result. A change with `min_replicas_acked` WAITs on the same connection
        for that many replicas, so an acknowledged write outlives a failover."""
        keys = [*keys, layout.plugin_key(self._prefix, once, f"op:{uuid.uuid4().hex}")] if once else keys
        args = [self.options.op_result_ttl_ms, self.options.expiry_grace_ms, "1" if once else "", *args]
        script, want = self._scripts[name], self.options.min_replicas_acked if name in layout.ACKED else 0
        if not want:
            return self._call(op, lambda: script(keys=keys, args=args))

        def run() -> Any:
            with self._client.pipeline(transaction=False) as pipe:
                script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", want, self.options.replica_ack_timeout_ms)
                return pipe.execute()

        result, got = self._call(op, run)
        # a condition that failed ("0": a claim lost, a version moved) wrote nothing: its "no" stands
        if int(got) < want and not (name == "write" and result == "0"):  # applied on the primary, survival unknown
            late = f"{got} of {want} replicas acknowledged it within {self.options.replica_ack_timeout_ms} ms"
            raise self._fail("UNAVAILABLE", op, f"applied on the primary, but {late}: it may not survive a failover")
        return result

    def _migrate(self) -> None:
        """Move every key under its plugin's hash tag, and version unversioned (schema 1) rows. Two
        gateways may migrate together: the second finds nothing to do."""
        client, key = self._client, partial(layout.plugin_key, self._prefix)
        for plugin_id in map(unquote, client.smembers(self._plugins)):
            old_set, new_set = (key(plugin_id, "namespaces", tagged=t) for t in (False, True))
            for namespace in client.smembers(old_set):
                old, new = (key(plugin_id, f"n:{namespace}", tagged=t) for t in (False, True))
                versions = [new_version() for _ in range(client.zcard(f"{old}:order"))]
                self._scripts["migrate"](keys=[], args=[old, new, *versions])
            client.sunionstore(new_set, [old_set, new_set])
            client.delete(old_set)
        client.set(f"{self._prefix}schema", layout.REDIS_SCHEMA)

    def schema_version(self, op: str = "probe") -> int:
        """The prefix's schema version; an empty prefix (a new one, or a Redis without persistence
        that restarted empty) is stamped with the latest first."""
        key = f"{self._prefix}schema"
        if not self._call(op, lambda: self._client.exists(self._plugins)):
            self._call(op, lambda: self._client.set(key, layout.REDIS_SCHEMA, nx=True))
        try:  # rows but no marker: v1 (which always wrote one)
            return int(self._call(op, lambda: self._client.get(key)) or 1)
        except ValueError:
            raise self._fail("CORRUPT", op, "the schema marker is not a number") from None

    def write(self, w: Write) -> bool:
        return self.commit([w], w.mode.value)

    def commit(self, writes: Sequence[Write], op: str = "commit") -> bool:
        """Apply all writes in one script call, or none when a condition fails (False). Raises
        LIMIT_EXCEEDED for a full reject-new namespace. A script runs on one Cluster node, so
        there the writes must be one plugin's (one hash slot)."""
        if isinstance(self._client, RedisCluster) and len(plugins := sorted({w.spec.plugin_id for w in writes})) > 1:
            why = "each plugin's keys live in their own hash slot; commit each plugin's writes apart"
            several = f"a staged commit over several plugins ({', '.join(plugins)})"
            raise self._fail("INVALID_INPUT", "commit", f"{several} cannot be one transaction on Redis Cluster: {why}")
        if not writes:
            return True
        conditional = any(w.mode in (Mode.CLAIM, Mode.MATCH) for w in writes)  # upserts, deletes: idempotent
        keys, args = layout.write_blocks(self._prefix, writes)
        result = self._script(op, "write", keys, args, writes[0].spec.plugin_id if conditional else None)
        if result == "1n":  # the plugins set lives in another cluster slot: not in the script
            members = {layout.quoted(w.spec.plugin_id) for w in writes}
            self._call(op, lambda: self._client.sadd(self._plugins, *members))
        if result.startswith("NS_FULL"):
            full = writes[int(result.split(":")[1]) - 1].spec.max_entries
            raise self._fail("LIMIT_EXCEEDED", op, f"namespace is full: max_entries is {full} live rows")
        return result != "0"

    def read(self, spec: NamespaceSpec, key: str, now_ms: int) -> Row | None:
        name = f"{layout.plugin_key(self._prefix, spec.plugin_id, f'n:{spec.namespace}')}:r:{key}"
        return layout.row(key, self._call("lookup", lambda: self._client.hmget(name, "c", "e", "n", "v")), now_ms)

    def read_many(self, spec: NamespaceSpec, keys: Sequence[str], now_ms: int) -> list[Row]:
        return layout.rows(self._run("lookup_many", "read_many", spec, now_ms, rows=keys), now_ms)

    def _take(self, op: str, spec: NamespaceSpec, key: str, now_ms: int, check: bool, expect: int | None) -> Any:
        """Run the `take` script: the row it deleted (or kept, unreadable: `check`) if that row was live, else None."""
        text = self._run(op, "take", spec, now_ms, key, int(check), "" if expect is None else expect, rows=[key])
        return layout.row(key, text[1:].split(":", 3) if text else [None] * 4, now_ms)

    def take(self, spec: NamespaceSpec, key: str, now_ms: int, decode: Decode) -> Any:
        found = self._take("consume", spec, key, now_ms, True, None)
        return None if found is None else decode(found)  # a kept (unreadable) row raises CORRUPT here

    def remove(self, spec: NamespaceSpec, key: str, now_ms: int, expect: int | None = None) -> bool:
        return self._take("delete" if expect is None else "delete_if", spec, key, now_ms, False, expect) is not None

    def remove_all(self, spec: NamespaceSpec, now_ms: int) -> int:
        return int(self._run("clear", "clear", spec, now_ms))

    def scan(self, spec: NamespaceSpec, now_ms: int, limit: int | None, after: tuple[int, str] | None) -> list[Row]:
        cursor = after or ("", "")
        return layout.rows(self._run("entries", "scan", spec, now_ms, "" if limit is None else limit, *cursor), now_ms)

    def count(self, spec: NamespaceSpec, now_ms: int) -> int:
        return int(self._run("count", "count", spec, now_ms))

    def sweep(self, now_ms: int) -> int:
        """Drop expired rows and their index entries, namespace by namespace, in batches."""
        batch, removed = self.settings.sweep_batch_rows, 0
        for plugin_id in map(unquote, self._call("sweep", lambda: self._client.smembers(self._plugins))):
            ns_key = layout.plugin_key(self._prefix, plugin_id, "namespaces")
            for namespace in self._call("sweep", lambda: self._client.smembers(ns_key)):  # noqa: B023 -- called at once
                n = batch
                while n == batch:
                    n = int(self._run("sweep", "sweep", NamespaceSpec(plugin_id, namespace, batch), now_ms, batch))
                    removed += n
        return removed

    def checkpoint(self, op: str = "close") -> None:
        """Nothing to fold back (Redis persists on its own); a PING proves the server answers."""
        self._call(op, self._client.ping)

    def close(self) -> None:
        """Calls already running finish on an open pool first; later calls raise UNAVAILABLE."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: not self._active)
        self._client.close()
