"""The Redis backend: the SQLite contract for several gateways sharing one Redis.

    redis://[user:pass@]host:6379/0?prefix=p                      one server (also unix:///path.sock)
    rediss://host:6380/0?ssl_ca_certs=ca.pem&ssl_certfile=c.pem&ssl_keyfile=c.key   TLS
    redis+sentinel://[user:pass@]s1:26379,s2:26379/mymaster?db=0  a Sentinel-managed primary
    redis+cluster://[user:pass@]n1:6379,n2:6379                   Redis Cluster

Whatever changes data or reads several keys is one Lua script call, atomic as a SQLite
transaction; the caller's clock (`now_ms`) decides what is live, as on SQLite. Failover, slot
routing and retries are redis-py's; a conditional write, take or clear carries a nonce, so a
call retried after a lost reply (or READONLY from a demoted primary) gets the first run's answer.
No KEYS, no SCAN: each namespace has two sorted sets, and a registry of plugins and their
namespaces lets `sweep` reach them; a plugin's keys share its hash tag (one Cluster slot).
Under a namespace's base `B` = `{prefix}:p:{{quoted plugin}}:n:{namespace}`, beside the layout's
version `{prefix}:schema` (an older layout is migrated in place on open):

    B:r:{key}   hash  v = JSON text, c = created_at, e = expires_at ("" = never), n = version
    B:order     zset  created_at -> key: (created_at, key) order and the row count
    B:exp       zset  expires_at -> key: expired rows, oldest first
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis import exceptions as errors
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ._spec import Decode, Mode, NamespaceSpec, Row, StateStoreError, StoreSettings, Write, new_version, shown_url

REDIS_SCHEMA = 3  # 1: rows without versions; 2: versions; 3: keys tagged by plugin (Cluster)
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
MODE_FLAGS = {Mode.UPSERT: "u", Mode.CLAIM: "c", Mode.MATCH: "m", Mode.DELETE: "d"}
ACKED = ("write", "take", "clear")  # the scripts whose changes wait for replicas (min_replicas_acked)
READONLY_HINT = "name the primary, or use redis+sentinel://"
ACL_HINT = "grant the user the commands in docs/state.md (Redis ACL)"
CLOSED_HINTS = {  # what a first connection closed before any reply most often means, by the URL's TLS
    False: ": closed at once; if that port speaks TLS, use rediss://",
    True: ": closed at once; if the TLS server wants a client certificate, give one (ssl_certfile, ssl_keyfile)",
}
ENCODE_HINT = (
    "percent-encode '/', '?', '#', '@' and '[' in the user name and password, and an '@' anywhere after the "
    "host (%2F, %3F, %23, %40, %5B)"
)
Block = tuple[list[str], list[Any]]  # one namespace's KEYS and ARGV in a script call
_quoted = lru_cache(4096)(partial(quote, safe=""))  # ':' and '{' escaped in key names, so they stay unambiguous
T = TypeVar("T")


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
    def from_query(cls, query: str) -> tuple[RedisOptions, str]:
        """Ours of a URL query's options, and the others (redis-py's) as a query again. Raises
        INVALID_INPUT for a malformed or negative number, or a prefix with braces."""
        kinds = {name: type(value) for name, value in cls().__dict__.items()}
        pairs, values = parse_qsl(query, keep_blank_values=True), {}
        for name, text in ((k, v) for k, v in pairs if k in kinds):
            try:
                values[name] = kinds[name](text)
            except ValueError:
                raise StateStoreError("INVALID_INPUT", "open", f"Redis URL option {name!r} is malformed") from None
        o = cls(**values)
        if not o.prefix or any(c in o.prefix for c in "{} \n"):
            why = "a non-empty word without braces (keys carry their own hash tag, one per plugin, for Redis Cluster)"
            raise StateStoreError("INVALID_INPUT", "open", f"Redis URL option 'prefix' must be {why}")
        numbers = (o.retries, o.expiry_grace_ms, o.min_replicas_acked)
        if min(numbers) < 0 or o.op_result_ttl_ms < 1 or o.replica_ack_timeout_ms < 1:
            raise StateStoreError("INVALID_INPUT", "open", "Redis URL options must not be negative")
        return o, urlencode([(k, v) for k, v in pairs if k not in kinds])


def database_of(url: str) -> tuple[str, tuple[Any, ...]]:
    """Which database `url` names as whom, and its other options: one spelling per database
    whatever the URL says (scheme and host case, port 6379 and db 0 left out or written, `?db=`
    or the path, option order, options at their defaults, Sentinels and Cluster seeds in any
    order), so the process keeps one `Location` (and one reopen check) per database, prefix and
    credentials (other credentials: another connection, with the rights of that user). The other
    options must agree when two opens share it. A URL this cannot read is its own database
    (opening it names what is wrong)."""
    try:
        parts = urlsplit(url)
        options, theirs = RedisOptions.from_query(parts.query)
        scheme, pairs = parts.scheme.lower(), parse_qsl(theirs, keep_blank_values=True)
        creds, _, hosts_text = parts.netloc.rpartition("@")
        service, db = "", parts.path.strip("/")
        if scheme == "unix":
            hosts, db = [parts.path], ""
        elif scheme in ("redis", "rediss"):
            hosts = [f"{parts.hostname or ''}:{parts.port or 6379}"]
        else:  # Sentinels or Cluster seeds: host:port each, in any order
            hosts = [
                f"{h.strip('[]').lower()}:{int(p)}" for h, _, p in (t.rpartition(":") for t in hosts_text.split(","))
            ]
            service, _, db = db.partition("/")
        db = "0" if scheme == "redis+cluster" else str(int(dict(pairs).get("db", db) or 0))
    except (ValueError, StateStoreError):
        return f"url:{url}", ()
    who = hashlib.sha256(creds.encode()).hexdigest()[:32]  # the password is never part of a name
    named = f"url:{scheme}://{who}@{','.join(sorted(set(hosts)))}/{service}/{db}?prefix={options.prefix}"
    return named, (options, sorted(p for p in pairs if p[0] != "db"))


# Lua pieces, one script per operation (SCRIPTS): Redis runs a script's whole text on every call,
# so each holds only the helpers it calls. ARGV: op result ttl and grace ms, then a block per
# namespace (one, but in `write`): KEYS order, exp, the plugin's namespaces set, then rows named;
# ARGV now, base, namespace, then the script's own. Numbers stay strings (Lua 5.1 prints 1.7e+12).
_CORE = """
local A = ARGV
local ttl, grace, now, base, ns, clock = A[1], tonumber(A[2]), A[3], A[4], A[5], tonumber(A[3])
local order, exp, pns = KEYS[1], KEYS[2], KEYS[3]
local function is_live(e, t) return e == '' or tonumber(e) > t end
local function live_count(z, e, t) return redis.call('ZCARD', z) - redis.call('ZCOUNT', e, '-inf', t) end
local function cached(opkey) return opkey ~= '' and redis.call('GET', opkey) end
local function finish(opkey, r)  -- keep an applied result for a retry (a refusal or a no-op is harmless to re-run)
  if opkey ~= '' and r ~= '' and r ~= '0' then redis.call('SET', opkey, r, 'PX', ttl) end
  return r
end
"""
_ROWS = """
local save = function(b, k) end  -- the write script's undo log replaces it
local function remove(b, k)
  save(b, k)
  redis.call('DEL', b .. ':r:' .. k)
  redis.call('ZREM', b .. ':order', k) redis.call('ZREM', b .. ':exp', k)
end
local function drop_expired(b, t, limit)
  local gone = redis.call('ZRANGEBYSCORE', b .. ':exp', '-inf', t, 'LIMIT', 0, limit or -1)
  for _, k in ipairs(gone) do remove(b, k) end
  return #gone
end
"""
_LIST = """
local function emit(out, key, row)  -- a live row as key, json, created, expires, version
  local f = redis.call('HMGET', row, 'v', 'c', 'e', 'n')
  if not (f[1] and is_live(f[3], clock)) then return false end
  for _, x in ipairs({key, f[1], f[2], f[3], f[4] or '0'}) do out[#out + 1] = x end
  return true
end
"""
# Writes in order, all or none: a register, claim or compare-and-set, or a staged commit. A block
# (with its row) per write, then an op key if a write has a condition. Returns "1" ("1n": a namespace
# was (re)registered, so its plugin goes on the sweep list) or, with nothing written, "0" (a
# condition failed) or "NS_FULL:<i>" (write i met a full reject-new namespace).
_WRITE = """
-- A row and its index entries. Redis drops it `grace` after its expiry, as a PEXPIRE of the TTL
-- left at `t` (a PEXPIREAT of a skewed caller's clock could drop a live row; PTTL needs an ACL grant).
local function put(b, k, v, c, e, n, t)
  local row = b .. ':r:' .. k
  redis.call('DEL', row)  -- drops an old server-side expiry along with the old fields
  redis.call('HSET', row, 'v', v, 'c', c, 'e', e, 'n', n)
  if e ~= '' then redis.call('PEXPIRE', row, string.format('%d', math.max(e - t, 1) + grace)) end
  redis.call('ZADD', b .. ':order', c, k)
  if e ~= '' then redis.call('ZADD', b .. ':exp', e, k) else redis.call('ZREM', b .. ':exp', k) end
end
-- A commit that fails half-way undoes what it did: while `saving`, each row is remembered before
-- it changes, and `rollback` puts them back newest first.
local saving, undo = false, {}
save = function(b, k)
  if saving then undo[#undo + 1] = {b, k, clock, redis.call('HMGET', b .. ':r:' .. k, 'v', 'c', 'e', 'n')} end
end
local function rollback()
  saving = false
  for i = #undo, 1, -1 do
    local b, k, t, f = unpack(undo[i])
    if t == 'member' then redis.call('SREM', b, k) else remove(b, k) end
    if f and f[1] then put(b, k, f[1], f[2], f[3], f[4] or '0', t) end
  end
end

local function live_row(row) local e = redis.call('HGET', row, 'e') return e ~= false and is_live(e, clock) end
-- Room for `key` among `maxn` live rows: expired rows go first, then the oldest live rows by
-- (created_at, key), never `key` itself. False, with nothing changed, when reject-new and full.
local function make_room(b, key, t, maxn, reject)
  local z = b .. ':order'
  local function rows() return redis.call('ZCARD', z) + (redis.call('ZSCORE', z, key) and 0 or 1) end
  if rows() <= maxn then return true end
  local adds = reject and (live_row(b .. ':r:' .. key) and 0 or 1)
  if adds and live_count(z, b .. ':exp', t) + adds > maxn then return false end
  drop_expired(b, t, nil)
  local want = rows() - maxn
  for _, k in ipairs(want > 0 and redis.call('ZRANGE', z, 0, want) or {}) do  -- want + 1: one may be `key`
    if k ~= key and want > 0 then remove(b, k) want = want - 1 end
  end
  return true
end

local n, fresh = (#A - 2) / 11, false
local opkey = KEYS[n * 4 + 1] or ''
local prior = cached(opkey) if prior then return prior end
local function apply(i)  -- nil when write i is applied, else the script's answer
  local pns, row = KEYS[i * 4 - 1], KEYS[i * 4]
  local now, base, ns, mode, key, value, expires, maxn, overflow, version, expect = unpack(A, i * 11 - 8, i * 11 + 2)
  clock = tonumber(now)
  if mode == 'd' then return remove(base, key) end  -- modes: u upsert, c claim, m match `expect`, d delete
  if mode == 'c' and live_row(row) then return '0' end
  local f = mode == 'm' and redis.call('HMGET', row, 'e', 'n')
  if f and not (f[1] and is_live(f[1], clock) and f[2] == expect) then return '0' end
  if not make_room(base, key, now, tonumber(maxn), overflow == 'reject-new') then return 'NS_FULL:' .. i end
  save(base, key)
  put(base, key, value, now, expires, version, clock)
  if redis.call('SADD', pns, ns) == 1 then
    fresh = true
    if saving then undo[#undo + 1] = {pns, ns, 'member'} end
  end
end
for i = 1, n do
  saving = i < n  -- a write that fails changes nothing itself: only the ones before it need undoing
  local failed = apply(i)
  if failed then return rollback() or failed end
end
return finish(opkey, fresh and '1n' or '1')
"""
# KEYS + row, op key; ARGV + key, check ("1": keep a live row whose JSON cjson cannot read), the
# expected version ("" = any). Returns "" (none deleted), "D<created>:<expires>:<version>:<json>"
# (deleted) or "K..." (kept: the caller raises CORRUPT).
_TAKE = """
local prior = cached(KEYS[5]) if prior then return prior end
local f = redis.call('HMGET', KEYS[4], 'v', 'c', 'e', 'n')
if not f[1] then return '' end
local body, live = f[2] .. ':' .. f[3] .. ':' .. (f[4] or '0') .. ':' .. f[1], is_live(f[3], clock)
if A[8] ~= '' and (not live or f[4] ~= A[8]) then return '' end
if A[7] == '1' and live and not pcall(cjson.decode, f[1]) then return 'K' .. body end
remove(base, A[6])
return finish(KEYS[5], 'D' .. body)
"""
# KEYS + op key. Returns the number of live rows removed.
_CLEAR = """
local prior = cached(KEYS[4]) if prior then return prior end
local live = live_count(order, exp, now)
for _, k in ipairs(redis.call('ZRANGE', order, 0, -1)) do redis.call('DEL', base .. ':r:' .. k) end
redis.call('DEL', order, exp)
redis.call('SREM', pns, ns)
return finish(KEYS[4], tostring(live))
"""
# ARGV + limit ("" = all), cursor created_at and key ("" = from the start). Live rows in
# (created_at, key) order after the cursor, as `emit` lays them out (a zset orders equal scores
# by member bytes, as SQLite orders keys).
_SCAN = """
local function bytes_after(a, b)  -- a > b byte by byte (Lua's < would use the locale)
  for i = 1, math.min(#a, #b) do if a:byte(i) ~= b:byte(i) then return a:byte(i) > b:byte(i) end end
  return #a > #b
end
local limit, ac, ak, out = tonumber(A[6]), A[7], A[8], {}
local index = ac == '' and 0 or redis.call('ZCOUNT', order, '-inf', '(' .. ac)
while not limit or #out / 5 < limit do
  local batch = redis.call('ZRANGE', order, index, index + 255, 'WITHSCORES')
  if #batch == 0 then break end
  index = index + #batch / 2
  for i = 1, #batch, 2 do
    local k, s = batch[i], batch[i + 1]
    if (ac == '' or s ~= ac or bytes_after(k, ak)) and emit(out, k, base .. ':r:' .. k) and #out / 5 == limit then break end
  end
end
return out
"""
# KEYS + rows: the live ones, as `emit` lays them out.
_READ_MANY = "local out = {}\nfor i = 4, #KEYS do emit(out, KEYS[i]:sub(#base + 4), KEYS[i]) end\nreturn out"
# ARGV + batch. Returns rows removed (<= batch); an emptied namespace leaves the registry, so
# sweeps stay small.
_SWEEP = """
local n = drop_expired(base, now, tonumber(A[6]))
if redis.call('ZCARD', order) == 0 then redis.call('SREM', pns, ns) end
return n
"""
# Schema 1 or 2 -> 3, one namespace, on one server (a cluster never held older keys). ARGV: its
# old base, its tagged base, then a fresh version per row in order, set where a row has none
# (HSETNX). What still exists is renamed: a second migrator finds nothing to do.
_MIGRATE = """
for i, k in ipairs(redis.call('ZRANGE', ARGV[1] .. ':order', 0, -1)) do
  local row = ARGV[1] .. ':r:' .. k
  if ARGV[i + 2] and redis.call('EXISTS', row) == 1 then redis.call('HSETNX', row, 'n', ARGV[i + 2]) end
  if redis.call('EXISTS', row) == 1 then redis.call('RENAME', row, ARGV[2] .. ':r:' .. k) end
end
for _, z in ipairs({':order', ':exp'}) do
  if redis.call('EXISTS', ARGV[1] .. z) == 1 then redis.call('RENAME', ARGV[1] .. z, ARGV[2] .. z) end
end
"""
SCRIPTS = {
    "write": _CORE + _ROWS + _WRITE,
    "take": _CORE + _ROWS + _TAKE,
    "clear": _CORE + _CLEAR,
    "scan": _CORE + _LIST + _SCAN,
    "read_many": _CORE + _LIST + _READ_MANY,
    "count": _CORE + "return live_count(order, exp, now)",
    "sweep": _CORE + _ROWS + _SWEEP,
    "migrate": _MIGRATE,
}
SOURCES = {hashlib.sha1(text.encode()).hexdigest(): text for text in SCRIPTS.values()}  # to name refusals


class RedisBackend:
    """One Redis database as seen by this process, for the `Database` that owns it."""

    kind = "redis"
    one_writer = False  # Redis takes writes from many connections: the async pool runs them

    def __init__(self, url: str, settings: StoreSettings) -> None:
        self.location, self.settings = shown_url(url), settings
        self._sentinel, self._service, self._tls = cast("Sentinel | None", None), "", False
        self._client: Any = self._connect(url)  # redis.Redis, or redis.cluster.RedisCluster
        self._prefix = f"{self.options.prefix}:"
        self._plugins = f"{self._prefix}plugins"  # the set `sweep` walks (percent-encoded plugin ids)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # close() waits for the calls in flight
        self._active, self._closed, self._pid = 0, False, os.getpid()  # sockets: this process's only
        self._scripts = {name: self._client.register_script(text) for name, text in SCRIPTS.items()}
        try:  # the first connection: redis-py reads its URL options here
            if (version := self.schema_version("open")) > REDIS_SCHEMA:
                why = f"this code reads versions up to {REDIS_SCHEMA}: upgrade chatstate"
                raise self._fail("SCHEMA_UNSUPPORTED", "open", f"the Redis prefix has schema version {version}; {why}")
            if version < REDIS_SCHEMA:  # migrated in place
                self._call("open", self._migrate)
        except TypeError:
            self._client.close()
            unknown = "the Redis URL has an option neither we nor redis-py know"
            raise self._fail("INVALID_INPUT", "open", unknown) from None
        except BaseException:
            self._client.close()  # a failed open leaves no pool behind
            raise

    def __repr__(self) -> str:
        return f"<RedisBackend {self.location}>"

    def _connect(self, url: str) -> Any:
        """The client for `url` (a cluster reads its slot map). Raises INVALID_INPUT for an
        unknown scheme or option, or a malformed URL, naming what to write instead."""
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in SCHEMES:
            forms = "redis://, rediss:// (TLS), unix://, redis+sentinel:// or redis+cluster://"
            raise self._fail("INVALID_INPUT", "open", f"unsupported state URL scheme {scheme!r}; use {forms}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unbalanced '[': the URL's own text may be a password
            raise self._fail("INVALID_INPUT", "open", f"bad Redis URL ({exc}); {ENCODE_HINT}") from None
        if "@" in parts.path + parts.query + parts.fragment:
            # A '/', '?' or '#' in the password ended the host part early: redis-py would take a
            # piece of the password for the host or port, and quote it in its error.
            raise self._fail("INVALID_INPUT", "open", f"the URL has an '@' after its host part; {ENCODE_HINT}")
        self.options, theirs = RedisOptions.from_query(parts.query)
        o, cluster = self.options, scheme == "redis+cluster"
        ssl_option = dict(parse_qsl(theirs)).get("ssl", "").lower() in ("1", "true", "yes", "on")
        self._tls = scheme == "rediss" or ssl_option  # redis-py's `ssl=true` for Sentinel or Cluster
        timeouts = {"socket_connect_timeout": o.socket_connect_timeout_s, "socket_timeout": o.socket_timeout_s}
        retry = Retry(ExponentialBackoff(cap=o.backoff_cap_s, base=o.backoff_base_s), o.retries)
        common: dict[str, Any] = {"decode_responses": True, "retry": retry, **timeouts}
        try:
            if scheme in ("redis", "rediss", "unix"):
                return redis.Redis.from_url(urlunsplit(parts._replace(query=theirs)), **common)
            # Several hosts: redis-py's own parser reads the credentials and options of one.
            creds, at, hosts_text = parts.netloc.rpartition("@")
            hosts = [self._host_port(h) for h in hosts_text.split(",")]
            service, _, db = parts.path.strip("/").partition("/")
            kwargs = parse_url(f"redis://{creds}{at}localhost/{'' if cluster else db}?{theirs}")
            for name in ("host", "port", "db") if cluster else ("host", "port"):
                kwargs.pop(name, None)
            if cluster and o.min_replicas_acked:
                why = "is for redis:// and redis+sentinel:// URLs; on a cluster run each shard's replicas with"
                raise self._fail("INVALID_INPUT", "open", f"min_replicas_acked {why} min-replicas-to-write instead")
            if cluster:
                try:  # RedisCluster asks a node for the slot map at once
                    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts], **kwargs, **common)
                except (redis.RedisError, errors.RedisClusterException) as exc:
                    raise self._fail(*self._explain("open", exc)) from None
            if not service:
                how = "names the service after the hosts: redis+sentinel://host:26379/mymaster"
                raise self._fail("INVALID_INPUT", "open", f"a redis+sentinel:// URL {how}")
            creds_kw = {"username": o.sentinel_username or None, "password": o.sentinel_password or None}
            self._sentinel, self._service = Sentinel(hosts, sentinel_kwargs={**creds_kw, **timeouts}), service
            return self._sentinel.master_for(service, **kwargs, **common)
        except (ValueError, TypeError, redis.RedisError) as exc:
            raise self._fail("INVALID_INPUT", "open", f"bad Redis URL ({exc})") from None

    def _host_port(self, text: str) -> tuple[str, int]:
        host, colon, port = text.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise self._fail("INVALID_INPUT", "open", f"host {text!r} needs a port (host:port)")
        return host.strip("[]"), int(port)

    # -- what redis-py's errors mean ----------------------------------------------------
    def _fail(self, code: str, op: str, message: str) -> StateStoreError:
        return StateStoreError(code, op, message, path=self.location)

    def _explain(self, op: str, exc: BaseException) -> tuple[str, str, str]:
        """Code, operation and message for a redis-py error, its retries behind us (`text`: the
        server's reply, first line, bounded; a script error wraps it, NOPERM inside)."""
        replied = isinstance(exc, (redis.ResponseError, errors.RedisClusterException))
        text, name = (str(exc).splitlines() or [""])[0][:300] if replied else "", type(exc).__name__
        if isinstance(exc, redis.AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH")):
            return "OPEN_FAILED", op, "Redis refused the credentials: check the user and password in the URL"
        if isinstance(exc, MasterNotFoundError):
            return self._no_master(op)
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            if (tls := _tls_failure(exc, self._tls)) is not None:
                return tls[0], op, tls[1]
            if "previous master is now a slave" in str(exc):
                return "UNAVAILABLE", op, "the primary was demoted (failover) and no new one answered yet"
            why = name
            if op == "open" and str(exc).startswith("Connection closed by server"):  # before any reply
                why += CLOSED_HINTS[self._tls]  # later, the same words are a dropped link, nothing more
            return "UNAVAILABLE", op, f"Redis unreachable after {self.options.retries} retries ({why})"
        failed = "OPEN_FAILED" if op == "open" else "READ_FAILED" if op in ("lookup", "entries") else "WRITE_FAILED"
        refused = _refused_in_script(text)
        if isinstance(exc, errors.NoPermissionError) or "NOPERM" in text or refused:
            # redis-py strips the NOPERM code from a top-level refusal; put it back for the reader
            said = refused or (text if "NOPERM" in text else f"NOPERM {text}")
            if "key" in said and not refused:  # every command allowed, but not this prefix's keys
                fix = f"allow the user this store's keys (~{self.options.prefix}:*), or use the prefix it is allowed"
                return failed, op, f"Redis refused a key ({said}): {fix}"
            return failed, op, f"Redis refused a command ({said}): {ACL_HINT}"
        if isinstance(exc, errors.ReadOnlyError) or "READONLY" in text:  # also inside a Redis 6 script
            if self._sentinel is not None:
                return "WRITE_FAILED", op, "Redis answered READONLY twice: the sentinels still name a replica"
            return "WRITE_FAILED", op, f"Redis answered READONLY: the URL names a replica; {READONLY_HINT}"
        if isinstance(exc, (errors.TryAgainError, errors.ClusterError, errors.AskError)):
            said = f"({name}: {str(exc)[:200]}); try again"
            return "UNAVAILABLE", op, f"the cluster is moving or missing this plugin's slot {said}"
        if isinstance(exc, redis.ResponseError):
            return "CORRUPT" if text.startswith("WRONGTYPE") else failed, op, f"Redis said: {text}"
        if isinstance(exc, errors.RedisClusterException):  # e.g. no node answered
            said = str(exc)[:300]
            if "Cluster mode is not enabled" in said:  # what redis-py says when CLUSTER SLOTS is refused too
                said += f" (or the user may not run CLUSTER SLOTS: {ACL_HINT})"
            return "UNAVAILABLE", op, f"Redis Cluster: {said}"
        return "UNAVAILABLE", op, f"Redis client failed ({name})"

    def _no_master(self, op: str) -> tuple[str, str, str]:
        """No primary from the sentinels: all of them down, or a service they do not monitor."""
        sentinels, answers = self._sentinel.sentinels if self._sentinel is not None else [], []
        for s in sentinels:
            with suppress(redis.RedisError):
                answers.append(set(cast("dict[str, Any]", s.sentinel_masters())))
        if not answers:
            hosts = ", ".join("{host}:{port}".format(**s.connection_pool.connection_kwargs) for s in sentinels)
            return "UNAVAILABLE", op, f"no Sentinel answered ({hosts}): start them, or fix the addresses"
        known, service = set().union(*answers), repr(self._service)
        if self._service not in known:
            they = f"(they monitor {sorted(known)}): fix the URL's path"
            return "OPEN_FAILED", op, f"no Sentinel monitors a service named {service} {they}"
        return "UNAVAILABLE", op, f"the Sentinels know no healthy primary for {service} (failover in progress)"

    # -- running scripts ----------------------------------------------------------------
    def _key(self, plugin_id: str, name: str, *, tagged: bool = True) -> str:
        """A key of one plugin (its namespaces set, a namespace's base, an op key) under its hash tag."""
        quoted = _quoted(plugin_id)
        return f"{self._prefix}p:{{{quoted}}}:{name}" if tagged else f"{self._prefix}p:{quoted}:{name}"

    def _block(self, spec: NamespaceSpec, now_ms: int, *args: Any, rows: Iterable[str] = ()) -> Block:
        """One namespace's KEYS and ARGV in a script call, as _CORE reads them."""
        base = self._key(spec.plugin_id, f"n:{spec.namespace}")
        keys = [f"{base}:order", f"{base}:exp", self._key(spec.plugin_id, "namespaces")]
        return keys + [f"{base}:r:{k}" for k in rows], [now_ms, base, spec.namespace, *args]

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        """Run `fn` on the client; redis-py's errors become StateStoreError here."""
        with self._lock:
            if self._closed or self._pid != os.getpid():
                raise self._fail("UNAVAILABLE", op, "the store is closed")
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
        except (redis.RedisError, errors.RedisClusterException) as exc:
            raise self._fail(*self._explain(op, exc)) from None
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._idle.notify_all()

    def _run(self, op: str, entry: str, keys: list[str], args: list[Any], once: str | None = None) -> Any:
        """Call the script `entry`. `once`: the plugin whose op key, one per call (its retries share
        it), keeps the result. A change (ACKED) with `min_replicas_acked` WAITs on the same
        connection for that many replicas, so an acknowledged write outlives a failover."""
        keys = [*keys, self._key(once, f"op:{uuid.uuid4().hex}")] if once else keys
        args = [self.options.op_result_ttl_ms, self.options.expiry_grace_ms, *args]
        script, want = self._scripts[entry], self.options.min_replicas_acked if entry in ACKED else 0
        if not want:
            return self._call(op, lambda: script(keys=keys, args=args))

        def run() -> Any:
            with self._client.pipeline(transaction=False) as pipe:
                script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", want, self.options.replica_ack_timeout_ms)
                return pipe.execute()

        result, got = self._call(op, run)
        if int(got) < want:  # applied on the primary, survival unknown
            late = f"{got} of {want} replicas acknowledged it within {self.options.replica_ack_timeout_ms} ms"
            raise self._fail("UNAVAILABLE", op, f"applied on the primary, but {late}: it may not survive a failover")
        return result

    # -- the schema marker ----------------------------------------------------------------
    def _migrate(self) -> None:
        """Every key moves under its plugin's hash tag, and a row without a version (schema 1)
        gets a fresh one. Two gateways may migrate together: the second finds nothing to do."""
        client = self._client
        for plugin_id in map(unquote, cast("set[str]", client.smembers(self._plugins))):
            old_set, new_set = (self._key(plugin_id, "namespaces", tagged=t) for t in (False, True))
            for namespace in cast("set[str]", client.smembers(old_set)):
                old, new = (self._key(plugin_id, f"n:{namespace}", tagged=t) for t in (False, True))
                versions = [new_version() for _ in range(client.zcard(f"{old}:order"))]
                self._scripts["migrate"](keys=[], args=[old, new, *versions])
            client.sunionstore(new_set, [old_set, new_set])
            client.delete(old_set)
        client.set(f"{self._prefix}schema", REDIS_SCHEMA)

    def schema_version(self, op: str = "probe") -> int:
        """The prefix's schema version; an empty prefix (a new one, or a Redis without persistence
        that restarted empty) is stamped with the latest first."""
        key = f"{self._prefix}schema"
        if not self._call(op, lambda: self._client.exists(self._plugins)):
            self._call(op, lambda: self._client.set(key, REDIS_SCHEMA, nx=True))
        try:  # rows but no marker: v1 (which always wrote one)
            return int(self._call(op, lambda: self._client.get(key)) or 1)
        except ValueError:
            raise self._fail("CORRUPT", op, "the schema marker is not a number") from None

    def reopened(self) -> None:
        """Nothing to re-check: Redis has no files."""

    def fault(self) -> str | None:
        return None

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]] | None:
        """No group commit on Redis: each script is its own transaction already."""
        return None

    # -- operations ---------------------------------------------------------------------
    def write(self, w: Write) -> bool:
        return self._write(w.mode.value, [w])

    def commit(self, writes: Sequence[Write]) -> bool:
        """All writes applied in one script call, or none when a condition fails (False). A script
        runs on one Cluster node, so there the writes must be one plugin's (one hash slot)."""
        plugins = sorted({w.spec.plugin_id for w in writes})
        if isinstance(self._client, RedisCluster) and len(plugins) > 1:
            why = "each plugin's keys live in their own hash slot; commit each plugin's writes apart"
            several = f"a staged commit over several plugins ({', '.join(plugins)})"
            raise self._fail("INVALID_INPUT", "commit", f"{several} cannot be one transaction on Redis Cluster: {why}")
        return self._write("commit", writes) if writes else True

    def _write(self, op: str, writes: Sequence[Write]) -> bool:
        """Run the `write` script; raises LIMIT_EXCEEDED for a full reject-new namespace."""
        blocks = []
        for w in writes:
            expires, expect = ("" if v is None else v for v in (w.expires_at, w.expect))
            fields = (MODE_FLAGS[w.mode], w.key, w.value or "", expires, w.spec.max_entries, w.spec.overflow)
            blocks.append(self._block(w.spec, w.now_ms, *fields, w.version, expect, rows=[w.key]))
        conditional = any(w.mode in (Mode.CLAIM, Mode.MATCH) for w in writes)  # upserts, deletes: idempotent
        keys, args = (list(chain.from_iterable(part)) for part in zip(*blocks))  # blocks in order
        result = self._run(op, "write", keys, args, writes[0].spec.plugin_id if conditional else None)
        if result == "1n":  # the plugins set lives in another cluster slot: not in the script
            plugins = {_quoted(w.spec.plugin_id) for w in writes}
            self._call(op, lambda: self._client.sadd(self._plugins, *plugins))
        if result.startswith("NS_FULL"):
            full = writes[int(result.split(":")[1]) - 1].spec.max_entries
            raise self._fail("LIMIT_EXCEEDED", op, f"namespace is full: max_entries is {full} live rows")
        return result != "0"

    def read(self, spec: NamespaceSpec, key: str, now_ms: int) -> Row | None:
        row = f"{self._key(spec.plugin_id, f'n:{spec.namespace}')}:r:{key}"
        reply = self._call("lookup", lambda: self._client.hmget(row, "v", "c", "e", "n"))
        return _row(key, cast("list[str | None]", reply), now_ms)  # decode_responses: str, whatever the stubs say

    def read_many(self, spec: NamespaceSpec, keys: Sequence[str], now_ms: int) -> list[Row]:
        return _rows(self._run("lookup_many", "read_many", *self._block(spec, now_ms, rows=keys)), now_ms)

    def _take(self, op: str, spec: NamespaceSpec, key: str, now_ms: int, *, check: bool, expect: int | None) -> Any:
        """Run the `take` script: (deleted, the row if one was live)."""
        block = self._block(spec, now_ms, key, int(check), "" if expect is None else expect, rows=[key])
        if not (text := self._run(op, "take", *block, spec.plugin_id)):
            return False, None
        created, expires, version, value = text[1:].split(":", 3)
        return text[0] == "D", _row(key, [value, created, expires, version], now_ms)

    def take(self, spec: NamespaceSpec, key: str, now_ms: int, decode: Decode) -> Any:
        _, row = self._take("consume", spec, key, now_ms, check=True, expect=None)
        return None if row is None else decode(row)  # a kept (unreadable) row raises CORRUPT here

    def remove(self, spec: NamespaceSpec, key: str, now_ms: int, expect: int | None = None) -> bool:
        op = "delete" if expect is None else "delete_if"
        deleted, row = self._take(op, spec, key, now_ms, check=False, expect=expect)
        return deleted and row is not None

    def remove_all(self, spec: NamespaceSpec, now_ms: int) -> int:
        return int(self._run("clear", "clear", *self._block(spec, now_ms), spec.plugin_id))

    def scan(self, spec: NamespaceSpec, now_ms: int, limit: int | None, after: tuple[int, str] | None) -> list[Row]:
        block = self._block(spec, now_ms, "" if limit is None else limit, *(after or ("", "")))
        return _rows(self._run("entries", "scan", *block), now_ms)

    def count(self, spec: NamespaceSpec, now_ms: int) -> int:
        return int(self._run("count", "count", *self._block(spec, now_ms)))

    def sweep(self, now_ms: int) -> int:
        """Drop expired rows and their index entries, namespace by namespace, in batches."""
        batch, removed = self.settings.sweep_batch_rows, 0
        # decode_responses=True: the members are str, whatever redis-py's stubs say
        plugins = self._call("sweep", lambda: self._client.smembers(self._plugins))
        for plugin_id in map(unquote, cast("set[str]", plugins)):
            ns_key = self._key(plugin_id, "namespaces")
            for namespace in cast("set[str]", self._call("sweep", lambda: self._client.smembers(ns_key))):  # noqa: B023 -- called at once
                block, n = self._block(NamespaceSpec(plugin_id, namespace, batch), now_ms, batch), batch
                while n == batch:
                    n = int(self._run("sweep", "sweep", *block))
                    removed += n
        return removed

    def checkpoint(self, op: str = "close") -> None:
        """Nothing to fold back (Redis persists on its own); a PING proves the server answers."""
        self._call(op, self._client.ping)

    def close(self) -> None:
        """Calls already running finish on an open pool first; later calls raise UNAVAILABLE."""
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: not self._active)
        self._client.close()


def _row(key: str, fields: Sequence[str | None], now_ms: int) -> Row | None:
    """The live row of `fields` (json, created_at, expires_at, version as Redis keeps them), or None."""
    value, created, expires, version = fields
    expires_at = int(expires) if expires else None
    if value is None or created is None or (expires_at is not None and expires_at <= now_ms):
        return None
    return Row(key, value, int(created), expires_at, int(version or 0))


def _rows(flat: list[str], now_ms: int) -> list[Row]:
    """The rows of a script's flat list (key, then the fields of `_row`, for each row)."""
    return [row for i in range(0, len(flat), 5) if (row := _row(flat[i], flat[i + 1 : i + 5], now_ms))]


def _refused_in_script(text: str) -> str:
    """Redis 6 names a command a script may not run only by script line ("@user_script: 82:
    The user executing the script can't run this command"); name it from our script."""
    found = re.search(r"f_([0-9a-f]{40}).*@user_script: ?(\d+): The user executing the script can't run", text)
    if not found or found[1] not in SOURCES:
        return ""
    line = (SOURCES[found[1]].splitlines() + [""] * int(found[2]))[int(found[2]) - 1]
    command = re.search(r"redis\.call\('(\w+)'", line)
    return f"NOPERM: the user may not run {command[1].lower() if command else 'a command'!r} in a script"


def _tls_failure(exc: BaseException, tls: bool) -> tuple[str, str] | None:
    """Code and message for what failed in TLS (the location names host and port), or None:
    not TLS. `tls`: the URL asks for it, so an unreadable file is one of its own."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (
                "OPEN_FAILED",
                f"TLS: the server's certificate failed verification: {seen.verify_message or seen.reason}",
            )
        if isinstance(seen, ssl.SSLError):
            return "OPEN_FAILED", f"TLS handshake failed ({seen.reason or seen})"
        if tls and isinstance(seen, (FileNotFoundError, PermissionError, IsADirectoryError)):
            what = "ssl_ca_certs, ssl_certfile or ssl_keyfile names a file that cannot be read"
            return "OPEN_FAILED", f"TLS: {what} ({seen.strerror}): fix the path in the URL"
        if tls and isinstance(seen, TimeoutError) and "handshake" in str(seen):  # a plain server waits for a command
            why = "the server may not speak TLS (a plain port takes redis://), or answered too slowly"
            return "UNAVAILABLE", f"TLS handshake got no answer within socket_connect_timeout_s: {why}"
        seen = seen.__cause__ or seen.__context__
    if "SSL" in str(exc) or "certificate" in str(exc).lower():
        return "OPEN_FAILED", f"TLS handshake failed: {str(exc)[:300]}"
    return None
