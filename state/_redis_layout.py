"""What needs no connection to Redis: the options and database a URL names, the key layout (docs/state.md, "Key
layout"), the Lua scripts that keep it and the rows they return. A script is one operation, atomic as a SQLite
transaction, on the caller's clock (`now_ms`); a plugin's keys share its hash tag, so each script runs in one Cluster
slot."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from functools import lru_cache, partial
from itertools import chain
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

from ._spec import Mode, NamespaceSpec, Row, StateStoreError, Write

ENCODE_HINT = (
    "percent-encode '/', '?', '#', '@' and '[' in the user name and password, and an '@' anywhere after the host "
    "(%2F, %3F, %23, %40, %5B)"
)
REDIS_SCHEMA = 3  # 1: rows without versions; 2: versions; 3: keys tagged by plugin (Cluster)
MODE_FLAGS = {Mode.UPSERT: "u", Mode.CLAIM: "c", Mode.MATCH: "m", Mode.DELETE: "d"}
ACKED = ("write", "take", "clear")  # the scripts whose changes wait for replicas (min_replicas_acked)
ONCE = ("take", "clear")  # ... and those that keep their result for a retried call (`write`: if conditional)
quoted = lru_cache(4096)(partial(quote, safe=""))  # ':' and '{' escaped in key names, so they stay unambiguous


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


def split_url(url: str, path: str) -> tuple[SplitResult, RedisOptions, str, list[tuple[str, int]], str, str]:
    """A Redis URL's parts, our options, redis-py's (the rest of its query), and hosts, service and db for Sentinel or
    Cluster (redis-py reads one host only). Raises INVALID_INPUT (at `path`) saying what to write."""
    bad = partial(StateStoreError, "INVALID_INPUT", "open", path=path or None)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        forms = "redis://, rediss:// (TLS), unix://, redis+sentinel:// or redis+cluster://"
        raise bad(f"unsupported state URL scheme {scheme!r}; use {forms}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced '[': the URL's own text may be a password
        raise bad(f"bad Redis URL ({exc}); {ENCODE_HINT}") from None
    if "@" in parts.path + parts.query + parts.fragment:  # a '/', '?' or '#' in the password ended the
        raise bad(f"the URL has an '@' after its host part; {ENCODE_HINT}")  # host: redis-py would quote it
    kinds = {k: type(v) for k, v in vars(RedisOptions()).items()}
    pairs, values = parse_qsl(parts.query, keep_blank_values=True), {}
    for name, text in ((k, v) for k, v in pairs if k in kinds):
        try:
            values[name] = kinds[name](text)
        except ValueError:
            what = "a whole number" if kinds[name] is int else "a number"
            raise bad(f"Redis URL option {name!r} is malformed: it takes {what}") from None
    o = RedisOptions(**values)
    if not o.prefix or any(c in o.prefix for c in "{} \n"):
        why = "a non-empty word without braces (keys carry their own hash tag, one per plugin, for Redis Cluster)"
        raise bad(f"Redis URL option 'prefix' must be {why}")
    floors = dict(retries=0, expiry_grace_ms=0, min_replicas_acked=0, op_result_ttl_ms=1, replica_ack_timeout_ms=1)
    if low := [f"{k} must be >= {m}" for k, m in floors.items() if getattr(o, k) < m]:
        raise bad(f"Redis URL options out of range: {'; '.join(low)}")
    hosts, service, db = [], "", parts.path.strip("/")
    if scheme in ("redis+sentinel", "redis+cluster"):
        for text in parts.netloc.rpartition("@")[2].split(","):
            host, colon, port = text.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise bad(f"host {text!r} needs a port (host:port)")
            hosts.append((host.strip("[]"), int(port)))
        service, _, db = db.partition("/")
    return parts, o, urlencode([(k, v) for k, v in pairs if k not in kinds]), hosts, service, db


def unknown_options(unknown: list[str], known: set[str], tls: bool, path: str) -> StateStoreError:
    ours = vars(RedisOptions())
    like = "".join(f"did you mean {m}? " for m in get_close_matches(unknown[0], [*ours, *known], 1))
    like += "TLS options need rediss:// (or ssl=true); " if not tls and any("ssl" in n for n in unknown) else ""
    why = f"{like}ours are {', '.join(ours)}; redis-py's here are {', '.join(sorted(known))}"
    message = f"the Redis URL has an option neither we nor redis-py know: {', '.join(unknown)}; {why}"
    return StateStoreError("INVALID_INPUT", "open", message, path=path or None)


def plugin_key(prefix: str, plugin_id: str, name: str, *, tagged: bool = True) -> str:
    """A key of one plugin (its namespaces set, a namespace's base, an op key), under its hash tag."""
    return f"{prefix}p:{{{quoted(plugin_id)}}}:{name}" if tagged else f"{prefix}p:{quoted(plugin_id)}:{name}"


def block(prefix: str, spec: NamespaceSpec, now_ms: int, *args: Any, rows: Iterable[str] = ()) -> tuple[list, list]:
    """One namespace's KEYS and ARGV in a script call, as _CORE reads them."""
    base = plugin_key(prefix, spec.plugin_id, f"n:{spec.namespace}")
    keys = [f"{base}:order", f"{base}:exp", plugin_key(prefix, spec.plugin_id, "namespaces")]
    return keys + [f"{base}:r:{k}" for k in rows], [now_ms, base, spec.namespace, *args]


# ARGV: op result ttl and grace ms, "1" if the last KEY is an op key (a retried call gets the first run's answer from
# it), then a block per namespace (one, but in `write`): KEYS order, exp, the namespaces set, then the rows named; ARGV
# now, base, namespace, then the script's own. Numbers stay strings (Lua 5.1 prints 1.7e+12). Redis runs a script's
# whole text on every call, so each takes only the pieces it calls: _CORE, then _ONCE, _ROWS or _LIST as needed.
def write_blocks(prefix: str, writes: Sequence[Write]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the `write` script: one block a write, in order."""
    blocks = []
    for w in writes:
        expires, expect = ("" if v is None else v for v in (w.expires_at, w.expect))
        fields = (MODE_FLAGS[w.mode], w.key, w.value or "", expires, w.spec.max_entries, w.spec.overflow)
        blocks.append(block(prefix, w.spec, w.now_ms, *fields, w.version, expect, rows=[w.key]))
    keys, args = (list(chain.from_iterable(part)) for part in zip(*blocks))
    return keys, args


_CORE = """
local A = ARGV
local ttl, grace, now, base, ns, clock = A[1], tonumber(A[2]), A[4], A[5], A[6], tonumber(A[4])
local order, exp, pns = KEYS[1], KEYS[2], KEYS[3]
local function is_live(e, t) return e == '' or tonumber(e) > t end
local function live_count(z, e, t) return redis.call('ZCARD', z) - redis.call('ZCOUNT', e, '-inf', t) end
"""
_ONCE = """
local opkey = A[3] == '1' and KEYS[#KEYS]
local prior = opkey and redis.call('GET', opkey)
if prior then return prior end
local function finish(r)  -- keep an applied result for a retry (a refusal or a no-op is harmless to re-run)
  if opkey and r ~= '' and r ~= '0' then redis.call('SET', opkey, r, 'PX', ttl) end
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
local function emit(out, key, row)  -- a live row as key, created, expires, version, json
  local f = redis.call('HMGET', row, 'c', 'e', 'n', 'v')
  if not (f[4] and is_live(f[2], clock)) then return false end
  for _, x in ipairs({key, f[1], f[2], f[3] or '0', f[4]}) do out[#out + 1] = x end
  return true
end
"""
_OWN = {  # each operation's script, after _CORE
    # Writes in order, all or none: a register, claim or compare-and-set, or a staged commit; a
    # block (with its row) per write. Returns "1" ("1n": a namespace was (re)registered, so its
    # plugin goes on the sweep list) or, nothing written, "0" (a condition failed) or "NS_FULL:<i>"
    # (write i met a full reject-new namespace).
    "write": """
-- A row and its index entries. Redis drops it `grace` after its expiry, as a PEXPIRE of the TTL
-- left at `t` (a PEXPIREAT of a skewed caller's clock could drop a live row; PTTL needs an ACL grant).
local function put(b, k, v, c, e, n, t)
  local row = b .. ':r:' .. k
  redis.call('DEL', row)  -- drops an old server-side expiry along with the old fields
  redis.call('HSET', row, 'v', v, 'c', c, 'e', e, 'n', n)
  redis.call('ZADD', b .. ':order', c, k)
  if e == '' then return redis.call('ZREM', b .. ':exp', k) end
  redis.call('PEXPIRE', row, string.format('%d', math.max(e - t, 1) + grace))
  redis.call('ZADD', b .. ':exp', e, k)
end
-- A commit that fails half-way undoes what it did: each row (or set member) is remembered before
-- it changes, and `rollback` puts them back newest first (what it logs itself comes after them).
local undo = {}
save = function(b, k)
  undo[#undo + 1] = {b, k, clock, redis.call('HMGET', b .. ':r:' .. k, 'v', 'c', 'e', 'n')}
end
local function rollback()
  for i = #undo, 1, -1 do
    local b, k, t, f = unpack(undo[i])
    if t == 'member' then redis.call('SREM', b, k) else remove(b, k) end
    if f and f[1] then put(b, k, f[1], f[2], f[3], f[4] or '0', t) end
  end
end
-- Room for `key` among `maxn` live rows: expired rows go first, then the oldest live rows by (created_at, key),
-- never `key` itself (`live`: it has a live row). False, with nothing changed, when reject-new and full.
local function make_room(b, key, t, maxn, reject, live)
  local z = b .. ':order'
  local function rows() return redis.call('ZCARD', z) + (redis.call('ZSCORE', z, key) and 0 or 1) end
  if rows() <= maxn then return true end
  if reject and live_count(z, b .. ':exp', t) + (live and 0 or 1) > maxn then return false end
  drop_expired(b, t, nil)
  local want = rows() - maxn
  for _, k in ipairs(want > 0 and redis.call('ZRANGE', z, 0, want) or {}) do  -- want + 1: one may be `key`
    if k ~= key and want > 0 then remove(b, k) want = want - 1 end
  end
  return true
end
local n, fresh = (#A - 3) / 11, false
local function apply(i)  -- nil when write i is applied, else the script's answer
  local pns, row = KEYS[i * 4 - 1], KEYS[i * 4]
  local now, base, ns, mode, key, value, expires, maxn, overflow, version, expect = unpack(A, i * 11 - 7, i * 11 + 3)
  clock = tonumber(now)
  if mode == 'd' then return remove(base, key) end  -- modes: u upsert, c claim, m match `expect`, d delete
  local f = redis.call('HMGET', row, 'e', 'n')
  local live = f[1] and is_live(f[1], clock)
  if mode == 'c' and live or mode == 'm' and not (live and f[2] == expect) then return '0' end
  if not make_room(base, key, now, tonumber(maxn), overflow == 'reject-new', live) then return 'NS_FULL:' .. i end
  save(base, key)
  put(base, key, value, now, expires, version, clock)
  if redis.call('SADD', pns, ns) == 1 then
    fresh = true
    undo[#undo + 1] = {pns, ns, 'member'}
  end
end
for i = 1, n do
  local failed = apply(i)
  if failed then return rollback() or failed end
end
return finish(fresh and '1n' or '1')
""",
    # ARGV + key, check ("1": keep a live row whose JSON cjson cannot read), the expected version
    # ("" = any). Returns "" (none deleted), "D<created>:<expires>:<version>:<json>" (deleted) or
    # "K..." (kept: the caller raises CORRUPT).
    "take": """
local f = redis.call('HMGET', KEYS[4], 'v', 'c', 'e', 'n')
if not f[1] then return '' end
local body, live = f[2] .. ':' .. f[3] .. ':' .. (f[4] or '0') .. ':' .. f[1], is_live(f[3], clock)
if A[9] ~= '' and (not live or f[4] ~= A[9]) then return '' end
if A[8] == '1' and live and not pcall(cjson.decode, f[1]) then return 'K' .. body end
remove(base, A[7])
return finish('D' .. body)
""",
    # Returns the number of live rows removed.
    "clear": """
local live = live_count(order, exp, now)
for _, k in ipairs(redis.call('ZRANGE', order, 0, -1)) do redis.call('DEL', base .. ':r:' .. k) end
redis.call('DEL', order, exp)
redis.call('SREM', pns, ns)
return finish(tostring(live))
""",
    # ARGV + limit ("" = all), cursor created_at and key ("" = from the start): live rows after the
    # cursor in (created_at, key) order (a zset orders equal scores by member bytes, as SQLite keys).
    "scan": """
local function bytes_after(a, b)  -- a > b byte by byte (Lua's < would use the locale)
  for i = 1, math.min(#a, #b) do if a:byte(i) ~= b:byte(i) then return a:byte(i) > b:byte(i) end end
  return #a > #b
end
local limit, ac, ak, out = tonumber(A[7]), A[8], A[9], {}
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
""",
    "read_many": "local out = {}\nfor i = 4, #KEYS do emit(out, KEYS[i]:sub(#base + 4), KEYS[i]) end\nreturn out",
    "count": "return live_count(order, exp, now)",
    # ARGV + batch. Returns rows removed (<= batch); an emptied namespace leaves the registry.
    "sweep": """
local n = drop_expired(base, now, tonumber(A[7]))
if redis.call('ZCARD', order) == 0 then redis.call('SREM', pns, ns) end
return n
""",
}
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
_NEEDS = dict(write=_ONCE + _ROWS, take=_ONCE + _ROWS, clear=_ONCE, sweep=_ROWS, scan=_LIST, read_many=_LIST)
SCRIPTS = {name: _CORE + _NEEDS.get(name, "") + text for name, text in _OWN.items()} | {"migrate": _MIGRATE}
_SOURCES = {hashlib.sha1(text.encode()).hexdigest(): text for text in SCRIPTS.values()}


def refused_in_script(text: str) -> str:
    """The command an ACL refused in one of our scripts, or "": Redis 6 names it only by line."""
    found = re.search(r"f_([0-9a-f]{40}).*@user_script: ?(\d+): The user executing the script can't run", text)
    if not found or found[1] not in _SOURCES:
        return ""
    line = (_SOURCES[found[1]].splitlines() + [""] * int(found[2]))[int(found[2]) - 1]
    command = re.search(r"redis\.call\('(\w+)'", line)
    return f"NOPERM: the user may not run {command[1].lower() if command else 'a command'!r} in a script"


def row(key: str, fields: Sequence[str | None], now_ms: int) -> Row | None:
    """The live row of `fields` (created_at, expires_at, version, json as Redis keeps them), or None."""
    created, expires, version, value = fields
    expires_at = int(expires) if expires else None
    if value is None or created is None or (expires_at is not None and expires_at <= now_ms):
        return None
    return Row(key, value, int(created), expires_at, int(version or 0))


def rows(flat: list[str], now_ms: int) -> list[Row]:
    """The rows of a script's flat list."""
    return [r for i in range(0, len(flat), 5) if (r := row(flat[i], flat[i + 1 : i + 5], now_ms))]
