"""The Redis backend: the same contract as SQLite for several gateways sharing one Redis.

    open_keyed_store("discord", "discord.components", max_entries=500,
                     url="redis://127.0.0.1:6379/0?prefix=myproject")

Why this shape:
- The sync redis-py client, not `redis.asyncio`: the store's rules live once in the sync core and
  the async twin runs that core on worker threads (state/_aio.py), so the loop never waits on
  Redis either, and there is no second copy of the logic to drift.
- Every multi-step operation is one Lua script (below), Redis's transaction.
- Visibility is decided by the caller's clock (`now_ms`), exactly like SQLite, so a fake clock in
  the contract tests means the same thing on both backends. Redis still cleans up by itself:
  each row key gets a server-side expiry of its remaining TTL plus `expiry_grace_ms`, measured
  from the write (PEXPIRE, i.e. PEXPIREAT on the server's clock). Absolute PEXPIREAT of the
  client's expires_at would let a skewed or fake client clock delete a row the contract says
  is still live; the grace keeps server cleanup strictly after client-side expiry.
- Connection failures are retried a bounded number of times with exponential backoff (redis-py
  `Retry`), then raise UNAVAILABLE. Claims, takes and clears carry a nonce, so a retry after a
  lost reply returns the first result instead of applying the operation twice. Which client a
  URL makes (one server, Sentinel, Cluster, TLS) and what its errors mean: state/_redis_client.py.
- No KEYS and no SCAN: each namespace has its own sorted sets, and a small registry of
  plugins and their namespaces lets `sweep` reach every namespace.
- Every key of one plugin carries the plugin as its hash tag (`{prefix}:p:{plugin}:...`), so all
  of a plugin's namespaces live in one Redis Cluster slot: a script may touch any of them, and
  so may one transaction over several namespaces of a plugin.

The scripts. The Lua scripts of the Redis backend: every write, claim, take, clear and sweep is one script.

Why scripts: Redis runs a script atomically, so "claim only if no live row", "write only if the
version is still N", "read and delete", and "write, then evict the oldest live rows or refuse"
cannot interleave with another gateway's call, exactly as one SQLite transaction cannot. Layout
of one (plugin, namespace) under the namespace prefix `P` = `{prefix}:p:{{quoted plugin}}:n:`
(the braces are the plugin's hash tag; `quote` escapes any brace in the plugin id itself):

    P{ns}:r:{key}   hash  v = JSON text, c = created_at, e = expires_at ("" = never), n = version
    P{ns}:order     zset  score created_at, member key  -> (created_at, key) order, row count
    P{ns}:exp       zset  score expires_at, member key  -> expired rows, oldest first

Numbers cross the Lua boundary as strings only: Lua 5.1 prints large numbers as `1.7e+12`, so a
number the script computed would lose digits on its way back into Redis or Python; versions
(63-bit) are only ever compared as strings.

Mutating scripts whose answer a retry must not change (claim, compare-and-set, take, delete-if,
clear) take a per-call nonce key: a retried call after a lost reply returns the cached first
result instead of re-running (a claim would otherwise answer "taken" to its own winner, a
consume would lose the value).

The schema marker `{prefix}:schema`: Redis prefixes count their own versions (REDIS_SCHEMA). A
new prefix is stamped with the latest; an older one is migrated in place (v1 rows get a version;
v2 keys are renamed under their plugin's hash tag); a newer one is refused.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import redis

from ._errors import StateStoreError
from ._redis_client import connect, translate
from ._spec import Decode, Mode, NamespaceSpec, Row, StoreSettings, Write, new_version

# -- the scripts ----------------------------------------------------------------------
# Helpers shared by the scripts below (prepended to each one; Redis caches a script by hash).
_HELPERS = """
local function is_live(e, now)
  return e == '' or tonumber(e) > now
end

local function live_row(rowkey, now)
  local e = redis.call('HGET', rowkey, 'e')
  if not e then return false end
  return is_live(e, now)
end

-- A script that stops half-way keeps what it did, so a staged commit that may still fail keeps
-- an undo log: while `saving`, each row is remembered before it changes, and `rollback` puts
-- every one back, newest first.
local saving, undo = false, {}

local function save(base, k)
  if not saving then return end
  local row = base .. ':r:' .. k
  undo[#undo + 1] = {base = base, k = k, f = redis.call('HMGET', row, 'v', 'c', 'e', 'n'),
    ttl = redis.call('PTTL', row), o = redis.call('ZSCORE', base .. ':order', k),
    x = redis.call('ZSCORE', base .. ':exp', k)}
end

local function rollback()
  for i = #undo, 1, -1 do
    local u = undo[i]
    if u.set then
      redis.call('SREM', u.set, u.member)
    else
      local row, f = u.base .. ':r:' .. u.k, u.f
      redis.call('DEL', row)
      if f[1] then redis.call('HSET', row, 'v', f[1], 'c', f[2], 'e', f[3], 'n', f[4] or '0') end
      if u.ttl > 0 then redis.call('PEXPIRE', row, u.ttl) end
      for part, score in pairs({[':order'] = u.o, [':exp'] = u.x}) do
        if score then redis.call('ZADD', u.base .. part, score, u.k) else redis.call('ZREM', u.base .. part, u.k) end
      end
    end
  end
end

local function remove(base, k)
  save(base, k)
  redis.call('DEL', base .. ':r:' .. k)
  redis.call('ZREM', base .. ':order', k)
  redis.call('ZREM', base .. ':exp', k)
end

local function drop_expired(base, now, limit)
  local gone
  if limit then
    gone = redis.call('ZRANGEBYSCORE', base .. ':exp', '-inf', now, 'LIMIT', 0, limit)
  else
    gone = redis.call('ZRANGEBYSCORE', base .. ':exp', '-inf', now)
  end
  for _, k in ipairs(gone) do remove(base, k) end
  return #gone
end

local function cached(opkey)
  if opkey == '' then return false end
  return redis.call('GET', opkey)
end

-- Only an applied change is remembered: re-running a refusal or a no-op on retry is harmless,
-- and refusals then leave no trace in Redis.
local function finish(opkey, ttl, result)
  if opkey ~= '' and result ~= '' and result ~= '0' then redis.call('SET', opkey, result, 'PX', ttl) end
  return result
end
"""

# Every write: one register, claim, compare-and-set, or a staged commit of several over the
# namespaces of one prefix, applied in order, all or nothing.
# KEYS: per write: row, order, exp, plugin-namespaces set; then an op key when a write has a
#       condition (no empty key name: an ACL limited to the prefix, or a cluster slot check,
#       would refuse it).
# ARGV: op ttl ms, then per write: mode ("u" upsert, "c" claim: no live row, "m" match: a live
#       row of version `expect`, "d" delete), key, value, now, expires ("" = never), pexpire_ms
#       ("" = never), max_entries, overflow, namespace base (its prefix and name), namespace,
#       new version, expect.
# Returns "1" all applied ("1n" when that also (re)registered a namespace with its plugin: the
# caller then lists the plugins for sweep), "0" a condition failed, or "NS_FULL:<i>" (1-based
# write); after "0" or "NS_FULL" nothing is written.
WRITE = (
    _HELPERS
    + """
local F = 12
local n = (#ARGV - 1) / F
local opkey = KEYS[n * 4 + 1] or ''
local prior = cached(opkey)
if prior then return prior end

-- Room for `key` among `maxn` live rows: expired rows go first, then the oldest live rows by
-- (created_at, key), never `key` itself. False, with nothing changed, when reject-new and full.
local function make_room(base, key, now_s, maxn, reject)
  local order = base .. ':order'
  local function rows() return redis.call('ZCARD', order) + (redis.call('ZSCORE', order, key) and 0 or 1) end
  if rows() <= maxn then return true end
  if reject then
    local live = redis.call('ZCARD', order) - redis.call('ZCOUNT', base .. ':exp', '-inf', now_s)
    if live + (live_row(base .. ':r:' .. key, tonumber(now_s)) and 0 or 1) > maxn then return false end
  end
  drop_expired(base, now_s, nil)
  local want, evicted = rows() - maxn, 0
  if want <= 0 then return true end
  for _, k in ipairs(redis.call('ZRANGE', order, 0, want)) do  -- want + 1: one may be `key`
    if k ~= key and evicted < want then
      remove(base, k)
      evicted = evicted + 1
    end
  end
  return true
end

local fresh = false
-- Write i; nil when applied, else what the script answers.
local function apply(i)
  local a, k = (i - 1) * F + 1, (i - 1) * 4
  local row, order, exp, pns = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local mode, key, value, now_s, expires, pexpire = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local maxn, reject, base, ns = tonumber(ARGV[a + 7]), ARGV[a + 8] == 'reject-new', ARGV[a + 9], ARGV[a + 10]
  local now = tonumber(now_s)
  if mode == 'd' then
    remove(base, key)
    return nil
  end
  if mode == 'c' and live_row(row, now) then return '0' end
  if mode == 'm' then
    local f = redis.call('HMGET', row, 'e', 'n')
    if not f[1] or not is_live(f[1], now) or f[2] ~= ARGV[a + 12] then return '0' end
  end
  if not make_room(base, key, now_s, maxn, reject) then return 'NS_FULL:' .. i end
  save(base, key)
  redis.call('DEL', row)  -- drops an old server-side expiry along with the old fields
  redis.call('HSET', row, 'v', value, 'c', now_s, 'e', expires, 'n', ARGV[a + 11])
  if pexpire ~= '' then redis.call('PEXPIRE', row, pexpire) end
  redis.call('ZADD', order, now_s, key)
  if expires ~= '' then redis.call('ZADD', exp, expires, key) else redis.call('ZREM', exp, key) end
  if redis.call('SADD', pns, ns) == 1 then
    fresh = true
    if saving then undo[#undo + 1] = {set = pns, member = ns} end
  end
  return nil
end

-- Only the writes before the last one that can fail need remembering.
local last = 0
for i = 1, n do
  local a = (i - 1) * F + 1
  local mode = ARGV[a + 1]
  if mode == 'c' or mode == 'm' or (mode == 'u' and ARGV[a + 8] == 'reject-new') then last = i end
end
for i = 1, n do
  saving = i < last
  local failed = apply(i)
  if failed then
    rollback()
    return failed
  end
end
return finish(opkey, ARGV[1], fresh and '1n' or '1')
"""
)

# KEYS: row, order, exp, op key.  ARGV: key, op ttl ms, now, check ("1": keep a live row whose
# JSON cjson cannot read, and answer "K..." instead of deleting it), expected version ("" = any).
# Returns "" (nothing deleted), "D<created>:<expires>:<version>:<json>" for a deleted row, or
# "K..." for a live row kept because its JSON is unreadable (the caller raises CORRUPT).
TAKE = (
    _HELPERS
    + """
local row, order, exp, opkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prior = cached(opkey)
if prior then return prior end
local f = redis.call('HMGET', row, 'v', 'c', 'e', 'n')
if not f[1] then return '' end
local body = f[2] .. ':' .. f[3] .. ':' .. (f[4] or '0') .. ':' .. f[1]
local live = is_live(f[3], tonumber(ARGV[3]))
if ARGV[5] ~= '' and (not live or f[4] ~= ARGV[5]) then return '' end
if ARGV[4] == '1' and live and not pcall(cjson.decode, f[1]) then return 'K' .. body end
redis.call('DEL', row)
redis.call('ZREM', order, ARGV[1])
redis.call('ZREM', exp, ARGV[1])
return finish(opkey, ARGV[2], 'D' .. body)
"""
)

# KEYS: order, exp, plugin-namespaces set, op key.  ARGV: now, nsprefix, namespace, op ttl ms.
# Returns the number of live rows removed, as a string.
CLEAR = (
    _HELPERS
    + """
local order, exp, pns, opkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prior = cached(opkey)
if prior then return prior end
local live = redis.call('ZCARD', order) - redis.call('ZCOUNT', exp, '-inf', ARGV[1])
for _, k in ipairs(redis.call('ZRANGE', order, 0, -1)) do
  redis.call('DEL', ARGV[2] .. ARGV[3] .. ':r:' .. k)
end
redis.call('DEL', order, exp)
redis.call('SREM', pns, ARGV[3])
return finish(opkey, ARGV[4], tostring(live))
"""
)

# KEYS: order.  ARGV: now, row prefix, limit ("" = all), cursor created_at ("" = from the
# start), cursor key. Returns flat [key, json, created_at, expires_at, version, ...] of live
# rows in (created_at, key) order after the cursor: one script, so one consistent snapshot.
# Equal scores are ordered by member bytes in a zset, as SQLite orders keys (BINARY).
SCAN = (
    _HELPERS
    + """
local function bytes_after(a, b)  -- a > b byte by byte (Lua's < would use the locale)
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return la > lb
end
local now, prefix, out, n = tonumber(ARGV[1]), ARGV[2], {}, 0
local limit = tonumber(ARGV[3])
local ac, ak = ARGV[4], ARGV[5]
local index = 0
if ac ~= '' then index = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ac) end
while not limit or n < limit do
  local batch = redis.call('ZRANGE', KEYS[1], index, index + 255, 'WITHSCORES')
  if #batch == 0 then break end
  index = index + #batch / 2
  for i = 1, #batch, 2 do
    local k, s = batch[i], batch[i + 1]
    if ac == '' or s ~= ac or bytes_after(k, ak) then
      local f = redis.call('HMGET', prefix .. k, 'v', 'c', 'e', 'n')
      if f[1] and is_live(f[3], now) then
        out[#out + 1] = k; out[#out + 1] = f[1]; out[#out + 1] = f[2]; out[#out + 1] = f[3]
        out[#out + 1] = f[4] or '0'
        n = n + 1
        if limit and n >= limit then break end
      end
    end
  end
end
return out
"""
)

# KEYS: the rows.  ARGV: now.  Returns flat [index, json, created_at, expires_at, version, ...]
# of the live ones (index into KEYS, 1-based), one consistent snapshot.
READ_MANY = (
    _HELPERS
    + """
local now, out = tonumber(ARGV[1]), {}
for i, row in ipairs(KEYS) do
  local f = redis.call('HMGET', row, 'v', 'c', 'e', 'n')
  if f[1] and is_live(f[3], now) then
    out[#out + 1] = tostring(i); out[#out + 1] = f[1]; out[#out + 1] = f[2]; out[#out + 1] = f[3]
    out[#out + 1] = f[4] or '0'
  end
end
return out
"""
)

# KEYS: order, exp.  ARGV: now.  Live rows = all rows - rows whose expiry has passed.
COUNT = """
return redis.call('ZCARD', KEYS[1]) - redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[1])
"""

# KEYS: rows of one namespace.  ARGV: one fresh version per row.  Schema v1 -> v2: give every
# row that still exists and has none a version (HSETNX: a second migrator changes nothing).
MIGRATE_V1 = """
for i, row in ipairs(KEYS) do
  if redis.call('EXISTS', row) == 1 then redis.call('HSETNX', row, 'n', ARGV[i]) end
end
return #KEYS
"""

# KEYS: order, plugin-namespaces set.  ARGV: now, nsprefix, namespace, batch.
# Returns rows removed (<= batch). An emptied namespace leaves its plugin's registry, so sweeps
# stay small; the plugin stays in the plugins set (another slot: no script touches it).
SWEEP = (
    _HELPERS
    + """
local n = drop_expired(ARGV[2] .. ARGV[3], ARGV[1], tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return n
"""
)

# ARGV: a namespace's v2 base name, its tagged base name.  Schema v2 -> v3 on one server (a
# cluster never held v2 keys: the scripts could not run there): rename its rows and indexes.
MIGRATE_TAGS = """
local old, new = ARGV[1], ARGV[2]
for _, k in ipairs(redis.call('ZRANGE', old .. ':order', 0, -1)) do
  if redis.call('EXISTS', old .. ':r:' .. k) == 1 then redis.call('RENAME', old .. ':r:' .. k, new .. ':r:' .. k) end
end
for _, part in ipairs({':order', ':exp'}) do
  if redis.call('EXISTS', old .. part) == 1 then redis.call('RENAME', old .. part, new .. part) end
end
return 1
"""

REDIS_SCHEMA = 3  # 1: rows without versions; 2: versions; 3: keys tagged by plugin (Cluster)
MIGRATE_BATCH = 500  # rows one v1 -> v2 migration script call versions
MODE_FLAGS = {Mode.UPSERT: "u", Mode.CLAIM: "c", Mode.MATCH: "m", Mode.DELETE: "d"}

T = TypeVar("T")


class RedisBackend:
    """One Redis database as seen by this process, for the `Database` that owns it."""

    kind = "redis"
    one_writer = False  # Redis takes writes from many connections: the async pool runs them

    def __init__(self, url: str, settings: StoreSettings) -> None:
        self._conn = connect(url)
        self._client = self._conn.client
        self.options, self.location = self._conn.options, self._conn.location
        self.settings = settings
        self._prefix = f"{self.options.prefix}:"
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0  # calls in flight: close() waits for them before closing the pool
        self._closed = False
        self._pid = os.getpid()  # the client's sockets are used only by the process that opened them
        self._write = self._client.register_script(WRITE)
        self._take = self._client.register_script(TAKE)
        self._clear = self._client.register_script(CLEAR)
        self._scan = self._client.register_script(SCAN)
        self._sweep = self._client.register_script(SWEEP)
        self._read_many = self._client.register_script(READ_MANY)
        self._count = self._client.register_script(COUNT)
        self._migrate_v1 = self._client.register_script(MIGRATE_V1)
        self._migrate_tags = self._client.register_script(MIGRATE_TAGS)
        for script in (
            self._write,
            self._take,
            self._clear,
            self._scan,
            self._sweep,
            self._read_many,
            self._count,
        ):
            self._conn.scripts[script.sha] = script.script
        try:
            self._open_schema()  # also the first connection: redis-py reads its URL options here
        except TypeError:
            self._client.close()
            raise StateStoreError(
                "INVALID_INPUT", "open", "the Redis URL has an option neither we nor redis-py know", path=self.location
            ) from None
        except BaseException:
            self._client.close()  # a failed open leaves no pool behind
            raise

    def __repr__(self) -> str:
        return f"<RedisBackend {self.location}>"

    # -- key names ----------------------------------------------------------------------
    def _plugin(self, plugin_id: str, *, tagged: bool = True) -> str:
        quoted = quote(plugin_id, safe="")  # ':' and '{' escaped: names stay unambiguous
        return f"{{{quoted}}}" if tagged else quoted

    def _ns_prefix(self, plugin_id: str, *, tagged: bool = True) -> str:
        return f"{self._prefix}p:{self._plugin(plugin_id, tagged=tagged)}:n:"

    def _ns(self, plugin_id: str, namespace: str, *, tagged: bool = True) -> tuple[str, str, str]:
        """(row key prefix, order zset, expiry zset) of one namespace."""
        base = self._ns_prefix(plugin_id, tagged=tagged) + namespace
        return f"{base}:r:", f"{base}:order", f"{base}:exp"

    def _namespaces_key(self, plugin_id: str, *, tagged: bool = True) -> str:
        return f"{self._prefix}p:{self._plugin(plugin_id, tagged=tagged)}:namespaces"

    @property
    def _plugins_key(self) -> str:
        return f"{self._prefix}plugins"

    def _op_key(self, plugin_id: str) -> str:
        return f"{self._prefix}p:{self._plugin(plugin_id)}:op:{uuid.uuid4().hex}"

    def _list_plugin(self, op: str, plugin_id: str) -> None:
        """Put the plugin in the plugins set that `sweep` walks. Not in the write script: that
        set lives in another cluster slot than the plugin's keys. Called when a write
        (re)registered a namespace, so a Redis that lost its data gets the entry back."""
        self._call(op, lambda: self._client.sadd(self._plugins_key, self._plugin(plugin_id, tagged=False)))

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
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise translate(self._conn, op, exc) from None

    def _mutate(self, op: str, script: Any, keys: list[str], args: list[str | int]) -> Any:
        """Run a changing script; with `min_replicas_acked`, on the same connection, WAIT for
        that many replicas to have it, so an acknowledged write outlives a failover. Fewer acks
        in time: UNAVAILABLE (applied on the primary, but its survival is not known)."""
        want = self.options.min_replicas_acked
        if not want:
            return self._call(op, lambda: script(keys=keys, args=args))

        def run() -> Any:
            with self._client.pipeline(transaction=False) as pipe:
                script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", want, self.options.replica_ack_timeout_ms)
                return pipe.execute()

        result, acked = self._call(op, run)
        if int(acked) < want:
            raise StateStoreError(
                "UNAVAILABLE",
                op,
                f"applied on the primary, but {acked} of {want} replicas acknowledged it within "
                f"{self.options.replica_ack_timeout_ms} ms: it may not survive a failover",
                path=self.location,
            )
        return result

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._closed or self._pid != os.getpid():
                raise StateStoreError("UNAVAILABLE", op, "the store is closed", path=self.location)
            self._active += 1
        try:
            with self._translate(op):
                try:
                    return fn()
                except redis.ResponseError as exc:
                    if self._conn.sentinel is None or "READONLY" not in str(exc):
                        raise
                    # A script reached a server that was demoted to a replica (Redis 6 runs the
                    # script there and fails its first write: nothing was applied). Drop the
                    # pool's connections so the next one asks the sentinels, and run it again.
                    self._client.connection_pool.disconnect()
                    return fn()
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._idle.notify_all()

    # -- the schema marker (once per open) ----------------------------------------------
    def _open_schema(self) -> None:
        """Mark this prefix with our schema version, migrating an older prefix in place; refuse
        a newer one (SCHEMA_UNSUPPORTED naming both versions)."""
        version = self._schema_marker("open", create=True)
        if version > REDIS_SCHEMA:
            raise StateStoreError(
                "SCHEMA_UNSUPPORTED",
                "open",
                f"the Redis prefix has schema version {version}; this code reads versions up to "
                f"{REDIS_SCHEMA}: upgrade chatstate",
                path=self.location,
            )
        if version < REDIS_SCHEMA:
            self._call("open", lambda: self._migrate(version))

    def _migrate(self, version: int) -> None:
        """v1 rows had no version: each gets a fresh random one (HSETNX, so two gateways
        migrating together agree); v2 keys then move under their plugin's hash tag (renamed only
        while the old name exists, so a second migrator changes nothing). Then the marker."""
        client = self._client
        for plugin in cast("set[str]", client.smembers(self._plugins_key)):
            plugin_id = unquote(plugin)
            old_set = self._namespaces_key(plugin_id, tagged=False)
            for namespace in cast("set[str]", client.smembers(old_set)):
                if version == 1:
                    rows, order, _ = self._ns(plugin_id, namespace, tagged=False)
                    members = cast("list[str]", client.zrange(order, 0, -1))
                    for i in range(0, len(members), MIGRATE_BATCH):
                        chunk = members[i : i + MIGRATE_BATCH]
                        self._migrate_v1(keys=[rows + k for k in chunk], args=[str(new_version()) for _ in chunk])
                old, new = (self._ns_prefix(plugin_id, tagged=t) + namespace for t in (False, True))
                self._migrate_tags(keys=[], args=[old, new])
            if client.exists(old_set):
                client.sunionstore(self._namespaces_key(plugin_id), [old_set, self._namespaces_key(plugin_id)])
                client.delete(old_set)
        client.set(f"{self._prefix}schema", REDIS_SCHEMA)

    def _schema_marker(self, op: str, *, create: bool = False) -> int:
        """The prefix's schema version (0 when unmarked); `create` stamps an empty prefix."""
        client = self._client
        key = f"{self._prefix}schema"

        def run() -> int:
            if create and not client.exists(self._plugins_key):
                client.set(key, REDIS_SCHEMA, nx=True)  # an empty prefix starts at the latest
            text = client.get(key)
            if text is None and create:  # rows but no marker cannot happen: v1 always wrote one
                client.set(key, 1, nx=True)
                text = client.get(key)
            return int(text) if text is not None else 0

        try:
            return self._call(op, run)
        except ValueError:
            raise StateStoreError("CORRUPT", op, "the schema marker is not a number", path=self.location) from None

    def schema_version(self) -> int:
        """The marker, stamped again if a Redis without persistence restarted empty (probe)."""
        return self._schema_marker("probe", create=True)

    def reopened(self) -> None:
        """Nothing to re-check: Redis has no files."""

    def fault(self) -> str | None:
        return None

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]] | None:
        """No group commit on Redis: each script is its own transaction already."""
        return None

    # -- operations ---------------------------------------------------------------------
    def write(self, w: Write) -> bool:
        return self._apply(w.mode.value, [w])

    def commit(self, writes: Sequence[Write]) -> bool:
        """Every write in one WRITE script, in order: all applied (True), or a condition failed
        and none is (False); idempotent if redis-py retries it.

        On Redis Cluster a script runs on one node, so the writes must be one plugin's (its
        namespaces share a hash slot); several plugins' are INVALID_INPUT, naming them."""
        plugins = sorted({w.spec.plugin_id for w in writes})
        if self._conn.cluster and len(plugins) > 1:
            raise StateStoreError(
                "INVALID_INPUT",
                "commit",
                f"a staged commit over several plugins ({', '.join(plugins)}) cannot be one transaction on "
                "Redis Cluster: each plugin's keys live in their own hash slot; commit each plugin's writes apart",
                path=self.location,
            )
        return self._apply("commit", writes) if writes else True

    def _apply(self, op: str, writes: Sequence[Write]) -> bool:
        """Run WRITE over `writes`; raises LIMIT_EXCEEDED for a full reject-new namespace."""
        keys: list[str] = []
        args: list[str | int] = [self.options.op_result_ttl_ms]
        for w in writes:
            spec = w.spec
            rows, order, exp = self._ns(spec.plugin_id, spec.namespace)
            keys += [rows + w.key, order, exp, self._namespaces_key(spec.plugin_id)]
            grace = self.options.expiry_grace_ms
            pexpire = "" if w.expires_at is None else str(max(w.expires_at - w.now_ms, 1) + grace)
            args += [
                MODE_FLAGS[w.mode],
                w.key,
                w.value or "",
                w.now_ms,
                "" if w.expires_at is None else w.expires_at,
                pexpire,
                spec.max_entries,
                spec.overflow,
                self._ns_prefix(spec.plugin_id) + spec.namespace,
                spec.namespace,
                str(w.version),
                "" if w.expect is None else str(w.expect),
            ]
        if any(w.mode in (Mode.CLAIM, Mode.MATCH) for w in writes):  # upserts, deletes: idempotent
            keys.append(self._op_key(writes[0].spec.plugin_id))
        result = self._mutate(op, self._write, keys, args)
        if result == "1n":
            for plugin_id in sorted({w.spec.plugin_id for w in writes}):
                self._list_plugin(op, plugin_id)
        if result.startswith("NS_FULL"):
            full = writes[int(result.split(":")[1]) - 1].spec
            raise StateStoreError(
                "LIMIT_EXCEEDED",
                op,
                f"namespace is full: max_entries is {full.max_entries} live rows",
                path=self.location,
            )
        return result != "0"

    def read(self, spec: NamespaceSpec, key: str, now_ms: int) -> Row | None:
        rows, _, _ = self._ns(spec.plugin_id, spec.namespace)
        # decode_responses=True: redis-py's stubs say bytes | str, the replies are str
        reply = self._call("lookup", lambda: self._client.hmget(rows + key, "v", "c", "e", "n"))
        value, created, expires, version = cast("list[str | None]", reply)
        return _live_row(key, value, created, expires, version, now_ms)

    def read_many(self, spec: NamespaceSpec, keys: Sequence[str], now_ms: int) -> list[Row]:
        rows, _, _ = self._ns(spec.plugin_id, spec.namespace)
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
        self, op: str, spec: NamespaceSpec, key: str, now_ms: int, *, check: bool, expect: int | None
    ) -> tuple[bool, Row | None]:
        """Run TAKE; (deleted, the row if one was live)."""
        rows, order, exp = self._ns(spec.plugin_id, spec.namespace)
        keys = [rows + key, order, exp, self._op_key(spec.plugin_id)]
        args: list[str | int] = [
            key,
            self.options.op_result_ttl_ms,
            now_ms,
            "1" if check else "0",
            "" if expect is None else str(expect),
        ]
        text = self._mutate(op, self._take, keys, args)
        if not text:
            return False, None
        created, expires, version, value = text[1:].split(":", 3)
        return text[0] == "D", _live_row(key, value, created, expires, version, now_ms)

    def take(self, spec: NamespaceSpec, key: str, now_ms: int, decode: Decode) -> Any:
        _, row = self._take_row("consume", spec, key, now_ms, check=True, expect=None)
        return None if row is None else decode(row)  # a kept (unreadable) row raises CORRUPT here

    def remove(self, spec: NamespaceSpec, key: str, now_ms: int, expect: int | None = None) -> bool:
        op = "delete" if expect is None else "delete_if"
        deleted, row = self._take_row(op, spec, key, now_ms, check=False, expect=expect)
        return deleted and row is not None

    def remove_all(self, spec: NamespaceSpec, now_ms: int) -> int:
        plugin_id, namespace = spec.plugin_id, spec.namespace
        _, order, exp = self._ns(plugin_id, namespace)
        keys = [order, exp, self._namespaces_key(plugin_id), self._op_key(plugin_id)]
        args: list[str | int] = [now_ms, self._ns_prefix(plugin_id), namespace, self.options.op_result_ttl_ms]
        return int(self._mutate("clear", self._clear, keys, args))

    def scan(self, spec: NamespaceSpec, now_ms: int, limit: int | None, after: tuple[int, str] | None) -> list[Row]:
        rows, order, _ = self._ns(spec.plugin_id, spec.namespace)
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

    def count(self, spec: NamespaceSpec, now_ms: int) -> int:
        _, order, exp = self._ns(spec.plugin_id, spec.namespace)
        return int(self._call("count", lambda: self._count(keys=[order, exp], args=[now_ms])))

    def sweep(self, now_ms: int) -> int:
        """Drop expired rows and their index entries, namespace by namespace, in batches."""
        batch = self.settings.sweep_batch_rows
        removed = 0
        # decode_responses=True: the members are str, whatever redis-py's stubs say
        for plugin in cast("set[str]", self._call("sweep", lambda: self._client.smembers(self._plugins_key))):
            plugin_id = unquote(plugin)
            ns_key = self._namespaces_key(plugin_id)
            for namespace in cast("set[str]", self._call("sweep", lambda: self._client.smembers(ns_key))):  # noqa: B023 -- called at once
                _, order, _ = self._ns(plugin_id, namespace)
                keys = [order, ns_key]
                args: list[str | int] = [now_ms, self._ns_prefix(plugin_id), namespace, batch]
                while True:
                    n = int(self._call("sweep", lambda: self._sweep(keys=keys, args=args)))  # noqa: B023 -- called at once
                    removed += n
                    if n < batch:
                        break
        return removed

    def checkpoint(self, op: str = "close") -> None:
        """Nothing to fold back (Redis persists on its own); a PING proves the server answers."""
        self._call(op, self._client.ping)

    def close(self) -> None:
        """Calls already running finish on an open pool first; later calls raise UNAVAILABLE."""
        with self._lock:
            self._closed = True
            while self._active:
                self._idle.wait()
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
