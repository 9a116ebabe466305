"""The server-side scripts: each decision that several replicas race for is one atomic step
in Redis. Times are Redis's own (``TIME``), in milliseconds, so replicas need no common clock
for leases and send slots."""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: record, lease, fence. ARGV: owner, lease ms, rejected token hash (or ''), margin ms,
# '1' to lead even over a usable record (one this replica cannot open).
# -> {'adopt', blob} | {'wait', lease ms left} | {'lead', blob or '', fence}
BEGIN = _NOW + """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'th') == ARGV[3] then
  -- compare-and-set: drop the token only if it is still the one the upstream refused
  redis.call('HSET', KEYS[1], 'th', '', 'exp', '0')
end
local rec = redis.call('HMGET', KEYS[1], 'blob', 'th', 'exp', 'renew')
local exp = tonumber(rec[3]) or 0
local renew = tonumber(rec[4]) or 0
if ARGV[5] ~= '1' and rec[2] and rec[2] ~= '' and exp - tonumber(ARGV[4]) > now
    and renew > now then
  return {'adopt', rec[1]}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'wait', redis.call('PTTL', KEYS[2])}
end
local fence = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return {'lead', rec[1] or '', fence}
"""

# KEYS: lease. ARGV: lease value, lease ms. -> 1 while the lease is still ours.
KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: record, lease, channel. ARGV: lease value, fence, blob (or '' to only let go), token
# hash, expiry ms, renew ms, record ttl ms.
# A holder whose lease passed to another (it stalled past expiry) is fenced out: 0.
FINISH = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver')) or 0
if ver > tonumber(ARGV[2]) then return 0 end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'blob', ARGV[3], 'th', ARGV[4], 'exp', ARGV[5],
             'renew', ARGV[6], 'ver', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
if holder then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', KEYS[3], ARGV[2])
return 1
"""

# KEYS: record, lease, fence, channel. ARGV: blob, token hash, expiry ms, renew ms, ttl ms.
# After an outage: share this replica's token unless the shared one lives as long (a replica
# that renewed alone meanwhile holds the newer one) or a login is under way. -> 1 if offered.
OFFER = """
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp')) or 0
if exp >= tonumber(ARGV[3]) or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'th', ARGV[2], 'exp', ARGV[3],
           'renew', ARGV[4], 'ver', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', KEYS[4], fence)
return 1
"""

# KEYS: theoretical arrival time, pause-until. ARGV: interval ms, burst, max wait ms.
# GCRA with reservation: the slot this request may leave at, as ms from now; -1 and the wait
# when that is past max_wait (nothing reserved).
SLOT = _NOW + """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
local pause = tonumber(redis.call('GET', KEYS[2])) or 0
local base = math.max(tat, now)
local slot = math.max(now, pause, base - (burst - 1) * interval)
if slot - now > tonumber(ARGV[3]) then return {-1, slot - now} end
local new_tat = math.max(base, slot) + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return {slot - now, 0}
"""

# KEYS: tat, pause-until, channel. ARGV: pause ms, interval ms, burst.
# The upstream said 429: nothing leaves before then, and then one request, then the rate.
PAUSE = _NOW + """
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[2])) or 0
if untl <= cur then return 0 end
redis.call('SET', KEYS[2], untl, 'PX', tonumber(ARGV[1]) + 1000)
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
local floor = untl + (tonumber(ARGV[3]) - 1) * tonumber(ARGV[2])
if floor > tat then redis.call('SET', KEYS[1], floor, 'PX', floor - now + 1000) end
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
