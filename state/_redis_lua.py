"""The Lua scripts of the Redis backend: every write, claim, take, clear and sweep is one script.

Why scripts: Redis runs a script atomically, so "claim only if no live row", "read and delete",
and "write, then evict the oldest live rows or refuse" cannot interleave with another gateway's
call, exactly as one SQLite transaction cannot. Layout of one (plugin, namespace) under the
namespace prefix `P` = `{prefix}:p:{quoted plugin}:n:`:

    P{ns}:r:{key}   hash  v = JSON text, c = created_at, e = expires_at ("" = never)
    P{ns}:order     zset  score created_at, member key  -> (created_at, key) order, row count
    P{ns}:exp       zset  score expires_at, member key  -> expired rows, oldest first

Numbers cross the Lua boundary as strings only: Lua 5.1 prints large numbers as `1.7e+12`, so a
number the script computed would lose digits on its way back into Redis or Python.

Mutating scripts that must not be applied twice (claim, take, clear) take a per-call nonce
key: a retried call after a lost reply returns the cached first result instead of re-running
(a claim would otherwise answer "taken" to its own winner, a consume would lose the value).
"""

from __future__ import annotations

# Helpers shared by the scripts below (prepended to each one; Redis caches a script by hash).
_HELPERS = """
local function live_row(rowkey, now)
  local e = redis.call('HGET', rowkey, 'e')
  if not e then return false end
  return e == '' or tonumber(e) > now
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
# ARGV: key, value, now, expires ("" = never), pexpire_ms ("" = never), max_entries,
#       overflow, ceiling, if_absent ("1"/"0"), nsprefix, namespace, quoted plugin, op ttl ms
# Returns "1" written, "0" claim refused, "NS_FULL", or "PLUGIN_FULL:<rows it would hold>".
WRITE = _HELPERS + """
local row, order, exp, pns, plugins, opkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local key, value, now_s, expires, pexpire = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local maxn, reject, ceiling = tonumber(ARGV[6]), ARGV[7] == 'reject-new', tonumber(ARGV[8])
local if_absent, nsprefix, ns, plugin, opttl = ARGV[9] == '1', ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local now = tonumber(now_s)

local prior = cached(opkey)
if prior then return prior end
if if_absent and live_row(row, now) then return '0' end

local function namespaces()
  local list = redis.call('SMEMBERS', pns)
  for _, n in ipairs(list) do if n == ns then return list end end
  list[#list + 1] = ns
  return list
end

-- Rows of this namespace and of the whole plugin as if the write had happened.
local function counts()
  local add = (redis.call('ZSCORE', order, key) == false) and 1 or 0
  local total = add
  for _, n in ipairs(namespaces()) do total = total + redis.call('ZCARD', nsprefix .. n .. ':order') end
  return redis.call('ZCARD', order) + add, total
end

local ns_rows, total = counts()
if ns_rows > maxn then  -- expired rows never count: drop them before deciding
  drop_expired(nsprefix, ns, now_s, nil)
  ns_rows, total = counts()
end
if total > ceiling then
  for _, n in ipairs(namespaces()) do drop_expired(nsprefix, n, now_s, nil) end
  ns_rows, total = counts()
end

local evict = 0
if ns_rows > maxn then
  if reject then return 'NS_FULL' end
  evict = ns_rows - maxn
end
local over = total - evict - ceiling
local want = evict
if over > 0 and not reject then want = evict + over end  -- make room here before giving up

-- Oldest live rows by (created_at, key), never the key being written.
local victims, start = {}, 0
while #victims < want do
  local batch = redis.call('ZRANGE', order, start, start + want)
  if #batch == 0 then break end
  for _, k in ipairs(batch) do
    if k ~= key and live_row(nsprefix .. ns .. ':r:' .. k, now) then
      victims[#victims + 1] = k
      if #victims == want then break end
    end
  end
  start = start + #batch
end
if over > 0 and total - #victims - ceiling > 0 then
  return 'PLUGIN_FULL:' .. (total - #victims)
end

redis.call('DEL', row)  -- drops an old server-side expiry along with the old fields
redis.call('HSET', row, 'v', value, 'c', now_s, 'e', expires)
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

# KEYS: row, order, exp, op key.  ARGV: key, op ttl ms.
# Returns "" (no row) or "created_at:expires_at:json"; the caller decides liveness.
TAKE = _HELPERS + """
local row, order, exp, opkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prior = cached(opkey)
if prior then return prior end
local f = redis.call('HMGET', row, 'v', 'c', 'e')
redis.call('DEL', row)
redis.call('ZREM', order, ARGV[1])
redis.call('ZREM', exp, ARGV[1])
local result = ''
if f[1] then result = f[2] .. ':' .. f[3] .. ':' .. f[1] end
return finish(opkey, ARGV[2], result)
"""

# KEYS: order, exp, plugin-namespaces set, op key.  ARGV: now, nsprefix, namespace, op ttl ms.
# Returns the number of live rows removed, as a string.
CLEAR = _HELPERS + """
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

# KEYS: order.  ARGV: now, row prefix.  Returns flat [key, json, created_at, expires_at, ...]
# of live rows in (created_at, key) order: one script, so one consistent snapshot.
SCAN = _HELPERS + """
local now, out = tonumber(ARGV[1]), {}
for _, k in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[2] .. k, 'v', 'c', 'e')
  if f[1] and (f[3] == '' or tonumber(f[3]) > now) then
    out[#out + 1] = k; out[#out + 1] = f[1]; out[#out + 1] = f[2]; out[#out + 1] = f[3]
  end
end
return out
"""

# KEYS: order, plugin-namespaces set, plugins set.
# ARGV: now, nsprefix, namespace, batch, quoted plugin.  Returns rows removed (<= batch).
# An emptied namespace leaves the registry, so sweeps and ceiling counts stay small.
SWEEP = _HELPERS + """
local n = drop_expired(ARGV[2], ARGV[3], ARGV[1], tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[3])
  if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[5]) end
end
return n
"""
