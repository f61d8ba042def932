"""Leases: no stale fills, no thundering herds (Facebook, "Scaling Memcache at Facebook", §3.2.1).

Theory of operation
-------------------
Each cache key ``k`` has three Redis keys (see :class:`~dbscale.cache.keys.RedisKeys`): the value
``v``, the lease ``l`` and a stale copy ``s``. All state changes are Lua scripts, so each is atomic.

1. **Read.** ``GET v``. A value whose logical expiry (in its header) is in the future is a hit.
2. **Miss ⇒ lease.** :data:`LEASE_SCRIPT` re-checks ``v``; if there is still no fresh value and
   nobody holds ``l``, it stores the caller's random token in ``l`` (with a TTL, so a crashed holder
   cannot block the key forever; a lease that is not one of ours — wrong type, no TTL, not a
   32-hex-digit token — is cleared first, as is a value, stale or tag key of the wrong type), adds ``k`` to each of its tag sets, and answers GRANTED. If someone
   else holds the lease it answers HELD. Both answers carry the stale value, if any (an expired
   ``v`` kept for ``stale_ttl``, or the ``s`` copy an invalidation left behind).
3. **Fill.** Only the holder calls the loader. :data:`FILL_SCRIPT` writes ``v`` only if ``l`` still
   holds the caller's token, then deletes ``l`` and ``s``. Otherwise the fill is *dropped*.
4. **Invalidate.** :data:`INVALIDATE_SCRIPT` moves ``v`` to ``s`` and deletes ``l``. Deleting the lease
   is what makes the protocol correct: a reader that loaded from the database *before* the writer
   committed took its lease *before* the writer's invalidation (which runs after COMMIT), so that
   invalidation revoked its lease and its old value is dropped instead of overwriting the cache.
   Tags: the key joined its tag sets when the lease was granted, i.e. before the database read, so
   an invalidation by tag (``SPOP`` batches of the set, then step 4 per member) finds every key whose
   fill could be stale. Pattern invalidation finds ``v``, ``l`` and ``s`` keys by ``SCAN`` batches.
5. **Waiters.** A caller told HELD either takes the stale value (``serve_stale=True``) or polls
   with short back-off, holding no connection while it sleeps, for at most ``lease_wait``; after
   that it calls the loader itself and does not fill (:func:`wait_decision`). In-process
   single-flight sits on top, so one process sends one lease request per key at a time.

6. **Lag-aware fills** (§4.3 "remote markers", with LSNs). An invalidation issued after a write
   records the write's causal token in a short-lived marker, in the same script that deletes ``v``
   (:data:`INVALIDATE_SCRIPT`, marker ``m`` of the key), or before it starts (:data:`MARK_SCRIPT`: one
   marker per tag, one per namespace for patterns). :data:`LEASE_SCRIPT` returns every marker of the
   key (its own, its tags', the namespace's) with GRANTED or HELD, in the same round trip, and the
   loader then runs under that token, so it reads from a replica that has replayed the write or from
   the primary. A filler that missed after the delete sees the marker; one that took its lease
   before is fenced by step 4.

Times in the scripts come from the caller's clock (``now_ms`` argument), the same clock that writes
the logical expiry in the entry header. On Redis Cluster the keys of ``k`` share a hash slot; tag
sets and the pattern marker live in other slots, so there :data:`LEASE_SCRIPT` runs on ``k``'s slot
only and :data:`TAG_JOIN_SCRIPT` joins each tag afterwards, before the loader runs; a tag
invalidation is :data:`TAG_INVALIDATE_SCRIPT` on the tag's slot (docs/redis-cluster.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbscale.cache.keys import RedisKeys

__all__ = [
    "FILL_SCRIPT",
    "INVALIDATE_SCRIPT",
    "LEASE_SCRIPT",
    "MARK_SCRIPT",
    "RELEASE_SCRIPT",
    "SET_SCRIPT",
    "TAG_INVALIDATE_SCRIPT",
    "TAG_JOIN_SCRIPT",
    "LeaseReply",
    "LeaseStatus",
    "WaitAction",
    "lease_request",
    "parse_lease_reply",
    "wait_decision",
]

# A key holding a Redis type this cache never writes there is somebody else's garbage: deleting it
# is the only way the key can heal (SET would overwrite it, but GET, SADD and SPOP fail on it).
_CLEAR_FOREIGN = """
local function clear_foreign(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    redis.call('DEL', key)
    return 1
  end
  return 0
end
"""

# A marker (see "Lag-aware fills" above) holds causal tokens joined by commas (equal groups merge
# when parsed): an invalidation appends its token unless the marker holds it already; past 2000 bytes
# the newest token replaces the chain. Either way the marker lives ``px`` from its last write.
_MARK = """
local function mark(key, tok, px)
  local cur = redis.pcall('GET', key)
  if type(cur) == 'string' and #cur + #tok < 2000 then
    if string.find(',' .. cur .. ',', ',' .. tok .. ',', 1, true) then tok = cur else tok = cur .. ',' .. tok end
  end
  redis.call('SET', key, tok, 'PX', px)
end
"""

#: KEYS: v, l, s, m, pm, tag sets (n), tag markers (n); on Redis Cluster only v, l, s, m (n = 0: the
#: pattern marker and the tags live in other slots, see :data:`TAG_JOIN_SCRIPT`).  ARGV: now_ms, token, lease_ms, tag_ttl_s, cache key,
#: force ("1" = ignore a fresh v), n, markers ("1" = read them).
#: Replies {status, entry, holder's PTTL, number of foreign keys it cleared, markers or false}. A lease this
#: cache did not write (wrong type, no TTL, or not a 32-hex-digit token) would never be filled or released,
#: so it is cleared at once and the caller gets the lease. A fresh value (HIT) reads no marker.
LEASE_SCRIPT = (
    _CLEAR_FOREIGN
    + """
local fenced = clear_foreign(KEYS[1], 'string') + clear_foreign(KEYS[3], 'string')
local v = redis.call('GET', KEYS[1])
if v and ARGV[6] ~= '1' then
  local exp = tonumber(string.sub(v, 2, 14))
  if exp and exp > tonumber(ARGV[1]) then return {1, v, 0, fenced} end
end
local n = tonumber(ARGV[7])
local found = {}
if ARGV[8] == '1' then
  local function add(key)
    local m = redis.pcall('GET', key)
    if type(m) == 'string' then found[#found + 1] = m end
  end
  add(KEYS[4])
  if KEYS[5] then add(KEYS[5]) end
  for i = 6 + n, 5 + 2 * n do add(KEYS[i]) end
end
local markers = #found > 0 and table.concat(found, ',')
local stale = v or redis.call('GET', KEYS[3])
local lt = redis.call('TYPE', KEYS[2])['ok']
if lt ~= 'none' then
  local cur = lt == 'string' and redis.call('GET', KEYS[2])
  if not cur or #cur ~= 32 or not string.find(cur, '^%x+$') or redis.call('PTTL', KEYS[2]) < 0 then
    redis.call('DEL', KEYS[2])
    fenced = fenced + 1
  end
end
if redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'NX') then
  local tag_ttl = tonumber(ARGV[4])
  for i = 6, 5 + n do
    fenced = fenced + clear_foreign(KEYS[i], 'set')
    redis.call('SADD', KEYS[i], ARGV[5])
    if redis.call('TTL', KEYS[i]) < tag_ttl then redis.call('EXPIRE', KEYS[i], tag_ttl) end
  end
  return {2, stale or false, 0, fenced, markers}
end
return {3, stale or false, redis.call('PTTL', KEYS[2]), fenced, markers}
"""
)

#: KEYS: v, l, s  ARGV: token, entry, px.  Returns 1 if stored, 0 if the lease was revoked (dropped fill).
FILL_SCRIPT = """
if redis.call('TYPE', KEYS[2])['ok'] == 'string' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
return 0
"""

#: KEYS: v, l, s, tag sets...  ARGV: entry, px, tag_ttl_s, cache key.  An unconditional write that revokes leases.
SET_SCRIPT = (
    _CLEAR_FOREIGN
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
local tag_ttl = tonumber(ARGV[3])
for i = 4, #KEYS do
  clear_foreign(KEYS[i], 'set')
  redis.call('SADD', KEYS[i], ARGV[4])
  if redis.call('TTL', KEYS[i]) < tag_ttl then redis.call('EXPIRE', KEYS[i], tag_ttl) end
end
return 1
"""
)

#: KEYS: v, l, s, m  ARGV: stale_px (0 = keep no stale copy), marker token ("" = none), marker_px.
#: Records the marker, then revokes the lease; returns 1 if a value existed.
INVALIDATE_SCRIPT = (
    _MARK
    + """
if ARGV[2] ~= '' then mark(KEYS[4], ARGV[2], ARGV[3]) end
local v = redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1])
if v and tonumber(ARGV[1]) > 0 then redis.call('SET', KEYS[3], v, 'PX', ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2])
if v then return 1 end
return 0
"""
)

#: KEYS: markers  ARGV: token, marker_px.  Records a tag or pattern marker before the invalidation runs.
MARK_SCRIPT = (
    _MARK
    + """
for i = 1, #KEYS do mark(KEYS[i], ARGV[1], ARGV[2]) end
return 1
"""
)

#: Redis Cluster (docs/redis-cluster.md): KEYS: tag set t, tag marker tm (one slot).  ARGV: cache key, tag_ttl_s,
#: join ("1" = add the key to the set: its lease was granted), markers ("1" = return tm).  Runs after a
#: granted lease and before the loader, so a tag invalidation after it finds the key (and revokes its lease).
#: Returns {foreign keys cleared, the tag's marker or false}.
TAG_JOIN_SCRIPT = (
    _CLEAR_FOREIGN
    + """
local fenced = 0
if ARGV[3] == '1' then
  fenced = clear_foreign(KEYS[1], 'set')
  redis.call('SADD', KEYS[1], ARGV[1])
  local tag_ttl = tonumber(ARGV[2])
  if redis.call('TTL', KEYS[1]) < tag_ttl then redis.call('EXPIRE', KEYS[1], tag_ttl) end
end
local m = ARGV[4] == '1' and redis.pcall('GET', KEYS[2])
if type(m) ~= 'string' then m = false end
return {fenced, m}
"""
)

#: Redis Cluster: KEYS: tag set t, tag marker tm (one slot).  ARGV: marker token ("" = none), marker_px, count.
#: Records the tag's marker, then SPOPs up to ``count`` members (a set of the wrong type is deleted).
TAG_INVALIDATE_SCRIPT = (
    _MARK
    + _CLEAR_FOREIGN
    + """
if ARGV[1] ~= '' then mark(KEYS[2], ARGV[1], ARGV[2]) end
if clear_foreign(KEYS[1], 'set') == 1 then return {} end
return redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))
"""
)

#: KEYS: l  ARGV: token.  Give a lease back early (the load failed or was interrupted).
RELEASE_SCRIPT = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseStatus(Enum):
    """What :data:`LEASE_SCRIPT` answered."""

    HIT = 1  # a fresh value appeared meanwhile
    GRANTED = 2  # the caller holds the lease and must load and fill
    HELD = 3  # someone else holds the lease


@dataclass(frozen=True, slots=True)
class LeaseReply:
    """A decoded lease reply: the status, the fresh entry (HIT) or stale entry (if any), the holder's lease
    TTL, how many keys holding something this cache did not write (``foreign``) the script cleared, and the
    causal tokens of the markers found (GRANTED and HELD only), joined by commas."""

    status: LeaseStatus
    entry: bytes | None
    holder_ttl_ms: int = 0
    foreign: int = 0
    marker: str | None = None


def lease_request(
    keys: RedisKeys,
    key: str,
    tags: Sequence[str],
    now_ms: int,
    token: str,
    lease_ms: int,
    tag_ttl: int,
    force: bool,
    markers: bool,
) -> tuple[list[str], list[str | int]]:
    """The KEYS and ARGV of one :data:`LEASE_SCRIPT` call, laid out once for the sync and the asyncio client."""
    names = [
        *keys.triple(key),
        keys.marker(key),
        keys.pattern_marker,
        *map(keys.tag, tags),
        *map(keys.tag_marker, tags),
    ]
    argv: list[str | int] = [
        now_ms,
        token,
        lease_ms,
        tag_ttl,
        key,
        "1" if force else "0",
        len(tags),
        "1" if markers else "0",
    ]
    return names, argv


def parse_lease_reply(reply: Any) -> LeaseReply:
    """Decode the raw list :data:`LEASE_SCRIPT` returns."""
    status = LeaseStatus(int(reply[0]))
    entry = reply[1] if len(reply) > 1 else None
    ttl = int(reply[2]) if len(reply) > 2 and reply[2] is not None else 0
    foreign = int(reply[3]) if len(reply) > 3 and reply[3] is not None else 0
    marker = reply[4] if len(reply) > 4 and reply[4] else None
    if isinstance(marker, bytes):
        marker = marker.decode("ascii", "replace")
    return LeaseReply(status, entry if entry else None, ttl, foreign, marker)


class WaitAction(Enum):
    """What a caller told HELD does next."""

    SERVE_STALE = "serve_stale"
    SLEEP = "sleep"  # then ask for the lease again
    LOAD_WITHOUT_FILL = "load"  # waited long enough: call the loader, do not fill


@dataclass(frozen=True, slots=True)
class WaitDecision:
    """A :class:`WaitAction` and, for SLEEP, how long."""

    action: WaitAction
    sleep: float = 0.0


def wait_decision(
    *, elapsed: float, attempt: int, lease_wait: float, serve_stale: bool, has_stale: bool, holder_ttl: float
) -> WaitDecision:
    """Decide what a caller whose lease request was answered HELD does next.

    Stale values are served at once when allowed. Otherwise poll with exponential back-off (2 ms
    doubling to 50 ms, never past ``lease_wait`` or the holder's remaining lease) until ``lease_wait``
    has elapsed, then load without filling.
    """
    if serve_stale and has_stale:
        return WaitDecision(WaitAction.SERVE_STALE)
    remaining = lease_wait - elapsed
    if remaining <= 0:
        return WaitDecision(WaitAction.LOAD_WITHOUT_FILL)
    step = min(0.002 * (2 ** min(attempt, 10)), 0.05, remaining)
    if holder_ttl > 0:
        step = min(step, max(holder_ttl, 0.001))
    return WaitDecision(WaitAction.SLEEP, step)
