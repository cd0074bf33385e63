"""The Lua scripts of the Redis backend: every write, claim, take, clear and sweep is one script.

Why scripts: Redis runs a script atomically, so "claim only if no live row", "write only if the
version is still N", "read and delete", and "write, then evict the oldest live rows or refuse"
cannot interleave with another gateway's call, exactly as one SQLite transaction cannot. Layout
of one (plugin, namespace) under the namespace prefix `P` = `{prefix}:p:{quoted plugin}:n:`:

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
"""

from __future__ import annotations

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

local function drop_expired(nsprefix, ns, now, limit)
  local base = nsprefix .. ns
  local gone
  if limit then
    gone = redis.call('ZRANGEBYSCORE', base .. ':exp', '-inf', now, 'LIMIT', 0, limit)
  else
    gone = redis.call('ZRANGEBYSCORE', base .. ':exp', '-inf', now)
  end
  for _, k in ipairs(gone) do
    redis.call('DEL', base .. ':r:' .. k)
    redis.call('ZREM', base .. ':order', k)
    redis.call('ZREM', base .. ':exp', k)
  end
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

# KEYS: row, order, exp, plugin-namespaces set, plugins set, op key ("" = no retry cache)
# ARGV: key, value, now, expires ("" = never), pexpire_ms ("" = never), max_entries, overflow,
#       mode ("u" upsert, "c" claim, "m" match), nsprefix, namespace, quoted plugin, op ttl ms,
#       new version, expected version (mode "m")
# Returns "1" written, "0" not applied (claim refused, version changed), or "NS_FULL".
WRITE = (
    _HELPERS
    + """
local row, order, exp, pns, plugins, opkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local key, value, now_s, expires, pexpire = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local maxn, reject, mode = tonumber(ARGV[6]), ARGV[7] == 'reject-new', ARGV[8]
local nsprefix, ns, plugin, opttl, version, expect = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local now = tonumber(now_s)

local prior = cached(opkey)
if prior then return prior end
if mode == 'c' and live_row(row, now) then return '0' end
if mode == 'm' then
  local f = redis.call('HMGET', row, 'e', 'n')
  if not f[1] or not is_live(f[1], now) or f[2] ~= expect then return '0' end
end

local victims = {}
local add = (redis.call('ZSCORE', order, key) == false) and 1 or 0
local ns_rows = redis.call('ZCARD', order) + add
if ns_rows > maxn then  -- expired rows never count: drop them before deciding
  drop_expired(nsprefix, ns, now_s, nil)
  add = (redis.call('ZSCORE', order, key) == false) and 1 or 0
  ns_rows = redis.call('ZCARD', order) + add
  if ns_rows > maxn then
    if reject then return 'NS_FULL' end
    -- Oldest live rows by (created_at, key), never the key being written.
    local want, start = ns_rows - maxn, 0
    while #victims < want do
      local batch = redis.call('ZRANGE', order, start, start + want)
      if #batch == 0 then break end
      for _, k in ipairs(batch) do
        if k ~= key then
          victims[#victims + 1] = k
          if #victims == want then break end
        end
      end
      start = start + #batch
    end
  end
end

redis.call('DEL', row)  -- drops an old server-side expiry along with the old fields
redis.call('HSET', row, 'v', value, 'c', now_s, 'e', expires, 'n', version)
if pexpire ~= '' then redis.call('PEXPIRE', row, pexpire) end
redis.call('ZADD', order, now_s, key)
if expires ~= '' then redis.call('ZADD', exp, expires, key) else redis.call('ZREM', exp, key) end
redis.call('SADD', pns, ns)
redis.call('SADD', plugins, plugin)
for _, k in ipairs(victims) do
  redis.call('DEL', nsprefix .. ns .. ':r:' .. k)
  redis.call('ZREM', order, k)
  redis.call('ZREM', exp, k)
end
return finish(opkey, opttl, '1')
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

# KEYS: order, plugin-namespaces set, plugins set.
# ARGV: now, nsprefix, namespace, batch, quoted plugin.  Returns rows removed (<= batch).
# An emptied namespace leaves the registry, so sweeps stay small.
SWEEP = (
    _HELPERS
    + """
local n = drop_expired(ARGV[2], ARGV[3], ARGV[1], tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[3])
  if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[5]) end
end
return n
"""
)
