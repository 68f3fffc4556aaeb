"""The Lua scripts behind `state.redis`: one script, one round trip, per decision.

Strategy: Redis runs a script atomically, so reading a counter, deciding
and writing it back cannot interleave with another node doing the same.
Each script takes the current time as `ARGV[1]` in milliseconds, or an
empty string to use the Redis server's own clock (`TIME`): every node then
agrees on one clock, whatever their own say. Tests pass a fake clock.

The arithmetic is that of the in-process store (kittiwake/state/memory.py),
in whole milliseconds, so both behave alike (docs/state.md, "Key layout"):

- a rate bucket is a hash `t` (tokens left), `r` (last refill-to-full),
  `b` (the burst it was last asked with: a changed limit applies at once,
  what was used this period staying used, `t` below zero if that is more
  than the new size); refills come on a fixed beat
  from the bucket's creation; the key expires after max(1 minute, period)
  unused, when it would be full again anyway;
- a concurrency counter is a sorted set of leases, scored by the time each
  expires. Expired leases (of a node that died) are dropped before
  counting; the holder renews its leases while it holds them; the key
  expires with its last lease;
- a failed-login counter is a hash `n` (count), `w` (window end),
  `l` (locked until), `g` (the counted guesses, 8 bytes each) that expires
  when both the window and the lockout are over;
- a known address is a plain key with an expiry (`SET ... PX`, no script).

Lua numbers are doubles: milliseconds since 1970 (13 digits) are exact.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "FAILURE", "LOCKED", "RELEASE", "RENEW"]

#: The time in milliseconds: ARGV[1], or the server's clock.
_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: Make a key live at least `ttl` ms more (never shorten it: a node with a
#: longer lease may hold a slot in the same set).
_EXTEND = """
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
"""

#: Take a token or a slot of each request in order, until one is refused.
#: KEYS[i]: the counter of request i. ARGV: now, lease ttl (ms), idle ttl
#: (ms), then three per request: `r`, burst, period (ms) for a rate; `s`,
#: limit, lease id for a slot. Returns {refused index (0-based; -1: none),
#: wait (ms)}; a full slot's wait is 0 (the caller polls).
ACQUIRE = (
    _NOW
    + _EXTEND
    + """
local lease_ttl = tonumber(ARGV[2])
local idle = tonumber(ARGV[3])
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = ARGV[3 * i + 1]
  local size = tonumber(ARGV[3 * i + 2])
  if kind == 'r' then
    local period = tonumber(ARGV[3 * i + 3])
    local bucket = redis.call('HMGET', key, 't', 'r', 'b')
    local tokens = tonumber(bucket[1])
    local refilled = tonumber(bucket[2])
    local burst = tonumber(bucket[3]) or size
    if tokens == nil or refilled == nil then
      tokens, refilled = size, now
    elseif now - refilled >= period then
      refilled = refilled + math.floor((now - refilled) / period) * period
      tokens = size
    elseif burst ~= size then
      tokens = tokens + size - burst
    end
    if tokens <= 0 then
      if burst ~= size then
        redis.call('HSET', key, 't', tokens, 'r', refilled, 'b', size)
      end
      return {i - 1, math.max(refilled + period - now, 1)}
    end
    redis.call('HSET', key, 't', tokens - 1, 'r', refilled, 'b', size)
    redis.call('PEXPIRE', key, math.max(idle, period))
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= size then
      return {i - 1, 0}
    end
    redis.call('ZADD', key, now + lease_ttl, ARGV[3 * i + 3])
    extend(key, lease_ttl)
  end
end
return {-1, 0}
"""
)

#: Give slots back. KEYS[i]: a concurrency counter; ARGV[i + 1]: its lease
#: (ARGV[1] is the unused time, for a uniform calling convention). Redis
#: deletes a sorted set with its last member.
RELEASE = """
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i + 1])
end
return #KEYS
"""

#: Renew leases that are still held. KEYS[i]: a concurrency counter;
#: ARGV: now, lease ttl (ms), then the lease of each key. A lease that has
#: expired meanwhile (the store was unreachable for longer than the ttl) is
#: not brought back: its slot may have gone to another node. Returns the
#: (1-based) positions of such lost leases.
RENEW = (
    _NOW
    + _EXTEND
    + """
local ttl = tonumber(ARGV[2])
local lost = {}
for i = 1, #KEYS do
  local lease = ARGV[i + 2]
  local score = tonumber(redis.call('ZSCORE', KEYS[i], lease))
  if score and score > now then
    redis.call('ZADD', KEYS[i], now + ttl, lease)
    extend(KEYS[i], ttl)
  else
    if score then
      redis.call('ZREM', KEYS[i], lease)
    end
    lost[#lost + 1] = i
  end
end
return lost
"""
)

#: The lockouts of failed-login counters, and whether a key is known.
#: KEYS: the counters asked, then the known key. ARGV: now. Returns the ms
#: of lockout left for each counter, then 1 or 0 for the known key.
LOCKED = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS - 1 do
  local locked = tonumber(redis.call('HGET', KEYS[i], 'l')) or 0
  out[i] = math.max(locked - now, 0)
end
out[#KEYS] = redis.call('EXISTS', KEYS[#KEYS])
return out
"""
)

#: Count one failed login against each counter. KEYS[i]: a counter.
#: ARGV: now, the guess (8 bytes), the most guess bytes kept, then three
#: per counter: window (ms), limit, lockout (ms). Returns each count: 0
#: while locked, the limit when this failure starts the lockout.
FAILURE = (
    _NOW
    + """
local guess = ARGV[2]
local keep = tonumber(ARGV[3])
local function counted(guesses)
  for j = 1, #guesses, #guess do
    if string.sub(guesses, j, j + #guess - 1) == guess then
      return true
    end
  end
  return false
end
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local window = tonumber(ARGV[3 * i + 1])
  local limit = tonumber(ARGV[3 * i + 2])
  local lockout = tonumber(ARGV[3 * i + 3])
  local entry = redis.call('HMGET', key, 'n', 'w', 'l', 'g')
  local n, ends, locked = tonumber(entry[1]), tonumber(entry[2]), tonumber(entry[3])
  local guesses = entry[4] or ''
  if n == nil or ends == nil or locked == nil or math.max(ends, locked) <= now then
    n, ends, locked, guesses = 0, now + window, 0, ''
  end
  if now < locked then
    out[i] = 0
  else
    if now >= ends then
      n, guesses, ends = 0, '', now + window
    end
    if counted(guesses) then
      out[i] = n
    else
      n = n + 1
      if #guesses < keep then
        guesses = guesses .. guess
      end
      out[i] = n
      if n >= limit then
        locked = now + lockout
        n, guesses, ends = 0, '', now
      end
    end
    redis.call('HSET', key, 'n', n, 'w', ends, 'l', locked, 'g', guesses)
    redis.call('PEXPIREAT', key, math.max(ends, locked))
  end
end
return out
"""
)
