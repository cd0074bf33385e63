"""Which redis-py client a state URL makes, and what that client's errors mean to a caller.

    redis://[user:pass@]host:6379/0?prefix=p                one server (also unix:///path.sock)
    rediss://host:6380/0?ssl_ca_certs=ca.pem&ssl_certfile=client.pem&ssl_keyfile=client.key
    redis+sentinel://[user:pass@]s1:26379,s2:26379/mymaster?db=0   a Sentinel-managed primary
    redis+cluster://[user:pass@]n1:6379,n2:6379                     Redis Cluster

Failover and slot routing are redis-py's (`Sentinel.master_for`, `RedisCluster`), never ours:
a Sentinel-managed connection that meets `READONLY` (its server was demoted) drops itself and
asks the sentinels again, and the retry policy sends the call to the new primary; READONLY means
the script did not run, and the scripts' nonces make any replay answer like the first run.
Errors are translated here, where their meaning is known: a refused certificate, a refused
command (NOPERM), a replica (READONLY), an unknown Sentinel service, a migrating slot.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field, fields
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis import exceptions as errors
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ._errors import StateStoreError
from ._spec import shown_url

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
ACL_HINT = "grant the user the commands in docs/state.md (Redis ACL)"


@dataclass(frozen=True)
class RedisOptions:
    """Redis-only knobs, read from the URL query (`?prefix=...&retries=...`)."""

    prefix: str = "chatstate"  # every key starts with "{prefix}:"; one prefix per project
    retries: int = 3  # extra attempts after a connection error, then UNAVAILABLE
    backoff_base_s: float = 0.05  # first retry waits this long, doubling each time ...
    backoff_cap_s: float = 0.5  # ... up to this
    socket_connect_timeout_s: float = 1.0
    socket_timeout_s: float = 5.0
    expiry_grace_ms: int = 60_000  # server-side cleanup runs this long after client-side expiry
    op_result_ttl_ms: int = 60_000  # how long a claim/take result is kept for a retried call
    min_replicas_acked: int = 0  # > 0: each write waits (WAIT) until this many replicas have it
    replica_ack_timeout_ms: int = 1_000  # ... for at most this long, else UNAVAILABLE
    sentinel_username: str = ""  # the sentinels' own credentials, when they have any
    sentinel_password: str = ""

    @classmethod
    def from_query(cls, query: dict[str, str]) -> RedisOptions:
        """Raises INVALID_INPUT for an unknown option or a malformed number."""
        kinds = {name: type(value) for name, value in cls().__dict__.items()}
        values: dict[str, object] = {}
        for name, text in query.items():
            try:
                values[name] = kinds[name](text)
            except ValueError:
                raise StateStoreError("INVALID_INPUT", "open", f"Redis URL option {name!r} is malformed") from None
        options = cls(**values)  # type: ignore[arg-type]
        if not options.prefix or any(c in options.prefix for c in "{} \n"):
            raise StateStoreError(
                "INVALID_INPUT",
                "open",
                "Redis URL option 'prefix' must be a non-empty word without braces "
                "(keys carry their own hash tag, one per plugin, for Redis Cluster)",
            )
        numbers = (options.retries, options.expiry_grace_ms, options.min_replicas_acked)
        if min(numbers) < 0 or options.op_result_ttl_ms < 1 or options.replica_ack_timeout_ms < 1:
            raise StateStoreError("INVALID_INPUT", "open", "Redis URL options must not be negative")
        return options


@dataclass(frozen=True)
class Connection:
    """A client for one state URL; `sentinel`/`service` are set for a Sentinel URL."""

    client: Any  # redis.Redis, or redis.cluster.RedisCluster
    options: RedisOptions
    location: str
    cluster: bool = False
    sentinel: Sentinel | None = None
    service: str = ""
    scripts: dict[str, str] = field(default_factory=dict)  # sha1 -> source, to name refusals


def connect(url: str) -> Connection:
    """Build the client for `url` (no I/O yet). Raises INVALID_INPUT for an unknown scheme or
    option, or a malformed URL, naming what to write instead."""
    location = shown_url(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise StateStoreError(
            "INVALID_INPUT",
            "open",
            f"unsupported state URL scheme {scheme!r}; use redis://, rediss:// (TLS), unix://, "
            "redis+sentinel:// or redis+cluster://",
            path=location,
        )
    parts = urlsplit(url)
    known = {f.name for f in fields(RedisOptions)}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = RedisOptions.from_query({k: v for k, v in query if k in known})
    theirs = urlencode([(k, v) for k, v in query if k not in known])
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": options.socket_connect_timeout_s,
        "socket_timeout": options.socket_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=options.backoff_cap_s, base=options.backoff_base_s), options.retries),
    }
    try:
        if scheme in ("redis", "rediss", "unix"):
            client = redis.Redis.from_url(urlunsplit(parts._replace(query=theirs)), **common)
            return Connection(client, options, location)
        # Several hosts: redis-py's own parser reads the credentials and options of one.
        creds, at, hosts_text = parts.netloc.rpartition("@")
        hosts = [_host_port(h, location) for h in hosts_text.split(",")]
        service, _, db = parts.path.strip("/").partition("/")
        kwargs = parse_url(f"redis://{creds}{at}localhost/{db if scheme == 'redis+sentinel' else ''}?{theirs}")
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        if scheme == "redis+cluster":
            if options.min_replicas_acked:
                raise StateStoreError(
                    "INVALID_INPUT",
                    "open",
                    "min_replicas_acked is for redis:// and redis+sentinel:// URLs; on a cluster "
                    "run each shard's replicas with min-replicas-to-write instead",
                    path=location,
                )
            kwargs.pop("db", None)
            nodes = [ClusterNode(h, p) for h, p in hosts]
            try:  # RedisCluster asks a node for the slot map at once
                cluster = RedisCluster(startup_nodes=nodes, **kwargs, **common)
            except (redis.RedisError, errors.RedisClusterException) as exc:
                raise translate(Connection(None, options, location, cluster=True), "open", exc) from None
            return Connection(cluster, options, location, cluster=True)
        if not service:
            raise StateStoreError(
                "INVALID_INPUT",
                "open",
                "a redis+sentinel:// URL names the service after the hosts: redis+sentinel://host:26379/mymaster",
                path=location,
            )
        sentinel = Sentinel(
            hosts,
            sentinel_kwargs={
                "username": options.sentinel_username or None,
                "password": options.sentinel_password or None,
                "socket_connect_timeout": options.socket_connect_timeout_s,
                "socket_timeout": options.socket_timeout_s,
            },
        )
        client = sentinel.master_for(service, **kwargs, **common)
        return Connection(client, options, location, sentinel=sentinel, service=service)
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise StateStoreError("INVALID_INPUT", "open", f"bad Redis URL ({exc})", path=location) from None


def _host_port(text: str, location: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise StateStoreError("INVALID_INPUT", "open", f"host {text!r} needs a port (host:port)", path=location)
    return host.strip("[]"), int(port)


def translate(conn: Connection, op: str, exc: BaseException) -> StateStoreError:
    """The StateStoreError for a redis-py error (retries are already behind us)."""
    where = conn.location
    if isinstance(exc, redis.AuthenticationError) or _reply(exc).startswith(("WRONGPASS", "NOAUTH")):
        return StateStoreError(
            "OPEN_FAILED", op, "Redis refused the credentials: check the user and password in the URL", path=where
        )
    if isinstance(exc, MasterNotFoundError):
        return _no_master(conn, op)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        failed = _tls_failure(exc)
        if failed is not None:
            return StateStoreError("OPEN_FAILED", op, failed, path=where)
        if isinstance(exc, redis.ConnectionError) and "previous master is now a slave" in str(exc):
            return StateStoreError(
                "UNAVAILABLE", op, "the primary was demoted (failover) and no new one answered yet", path=where
            )
        return StateStoreError(
            "UNAVAILABLE",
            op,
            f"Redis unreachable after {conn.options.retries} retries ({type(exc).__name__})",
            path=where,
        )
    text = _reply(exc)
    failed_op = "OPEN_FAILED" if op == "open" else "READ_FAILED" if op in ("lookup", "entries") else "WRITE_FAILED"
    refused = _refused_in_script(conn, text)
    if isinstance(exc, errors.NoPermissionError) or "NOPERM" in text or refused:
        # redis-py strips the NOPERM code from a top-level refusal; put it back for the reader
        said = refused or (text if "NOPERM" in text else f"NOPERM {text}")
        return StateStoreError(failed_op, op, f"Redis refused a command ({said}): {ACL_HINT}", path=where)
    if isinstance(exc, errors.ReadOnlyError) or "READONLY" in text:  # also inside a Redis 6 script
        return StateStoreError(
            "WRITE_FAILED",
            op,
            "Redis answered READONLY twice: the sentinels still name a replica"
            if conn.sentinel is not None
            else "Redis answered READONLY: the URL names a replica; name the primary, or use redis+sentinel://",
            path=where,
        )
    if isinstance(exc, (errors.TryAgainError, errors.ClusterError, errors.AskError)):
        return StateStoreError(
            "UNAVAILABLE",
            op,
            f"the cluster is moving or missing this plugin's slot ({type(exc).__name__}: {str(exc)[:200]}); try again",
            path=where,
        )
    if isinstance(exc, redis.ResponseError):
        if text.startswith("WRONGTYPE"):
            return StateStoreError("CORRUPT", op, f"Redis said: {text}", path=where)
        return StateStoreError(failed_op, op, f"Redis said: {text}", path=where)
    if isinstance(exc, errors.RedisClusterException):  # e.g. no node answered
        said = str(exc)[:300]
        if "Cluster mode is not enabled" in said:  # what redis-py says when CLUSTER SLOTS is refused too
            said += f" (or the user may not run CLUSTER SLOTS: {ACL_HINT})"
        return StateStoreError("UNAVAILABLE", op, f"Redis Cluster: {said}", path=where)
    return StateStoreError("UNAVAILABLE", op, f"Redis client failed ({type(exc).__name__})", path=where)


def _refused_in_script(conn: Connection, text: str) -> str:
    """Redis 6 reports a command a script may not run by script line only ("@user_script: 82:
    The user executing the script can't run this command"); name the command from our script."""
    found = re.search(r"f_([0-9a-f]{40}).*@user_script: ?(\d+): The user executing the script can't run", text)
    if not found or found[1] not in conn.scripts:
        return ""
    lines = conn.scripts[found[1]].splitlines()
    line = lines[int(found[2]) - 1] if int(found[2]) <= len(lines) else ""
    command = re.search(r"redis\.call\('(\w+)'", line)
    return f"NOPERM: the user may not run {command[1].lower() if command else 'a command'!r} in a script"


def _reply(exc: BaseException) -> str:
    """The server's error reply, first line, bounded (a script error wraps it: NOPERM inside)."""
    if not isinstance(exc, (redis.ResponseError, errors.RedisClusterException)):
        return ""
    return (str(exc).splitlines() or [""])[0][:300]


def _tls_failure(exc: BaseException) -> str | None:
    """What failed in the TLS handshake, with host and port, or None when it was not TLS."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: the server's certificate failed verification: {seen.verify_message or seen.reason}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "SSL" in text or "certificate" in text.lower():
        return f"TLS handshake failed: {text[:300]}"
    return None


def _no_master(conn: Connection, op: str) -> StateStoreError:
    """No primary from the sentinels: all of them down, or a service they do not monitor."""
    assert conn.sentinel is not None
    known: set[str] = set()
    answered = 0
    for s in conn.sentinel.sentinels:
        try:
            known |= set(cast("dict[str, Any]", s.sentinel_masters()))
            answered += 1
        except redis.RedisError:
            continue
    hosts = ", ".join(
        f"{s.connection_pool.connection_kwargs['host']}:{s.connection_pool.connection_kwargs['port']}"
        for s in conn.sentinel.sentinels
    )
    if not answered:
        return StateStoreError(
            "UNAVAILABLE", op, f"no Sentinel answered ({hosts}): start them, or fix the addresses", path=conn.location
        )
    if conn.service not in known:
        return StateStoreError(
            "OPEN_FAILED",
            op,
            f"no Sentinel monitors a service named {conn.service!r} (they monitor {sorted(known)}): fix the URL's path",
            path=conn.location,
        )
    return StateStoreError(
        "UNAVAILABLE",
        op,
        f"the Sentinels know no healthy primary for {conn.service!r} (failover in progress)",
        path=conn.location,
    )
