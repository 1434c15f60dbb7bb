"""The Lua scripts that make RedisState's read-modify-writes atomic."""

# Sum of the amounts in members named "<id>:<amount>" of a sorted set.
_SUM = """
local function sum(key)
  local total, oldest = 0, nil
  local m = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #m, 2 do
    total = total + tonumber(string.match(m[i], ':([^:]+)$'))
    if oldest == nil then oldest = m[i + 1] end
  end
  return total, oldest, #m
end
"""

# KEYS: usage hash, reservations zset, window-buckets hash. ARGV: now, usage_window.
LOADS = (
    _SUM
    + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local reserved = sum(KEYS[2])
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local used = total
if window > 0 then
  used = 0
  local b = redis.call('HGETALL', KEYS[3])
  for i = 1, #b, 2 do
    if tonumber(b[i]) <= now - window then redis.call('HDEL', KEYS[3], b[i])
    else used = used + tonumber(b[i + 1]) end
  end
end
return {tostring(used), tostring(reserved), tostring(total)}
"""
)

# KEYS: window zset. ARGV: now, amount, limit, span, member id. Nil when taken.
TAKE = (
    _SUM
    + """
local now, amount, limit, span = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local total, oldest, n = sum(KEYS[1])
if n > 0 and total + amount > limit then return tostring(tonumber(oldest) + span) end
redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(span * 1000) + 1000)
return false
"""
)

# KEYS: window zset. ARGV: now, span. -> {total, oldest}
WINDOWS = (
    _SUM
    + """
local now, span = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local total, oldest = sum(KEYS[1])
return {tostring(total), tostring(oldest or now)}
"""
)

# The breaker (router/breaker.py) in Lua. KEYS: health hash.
_HEALTH = """
local function get(k, d) return tonumber(redis.call('HGET', KEYS[1], k) or d) end
local state = redis.call('HGET', KEYS[1], 'breaker') or 'closed'
"""
PROBE = (
    _HEALTH
    + """
local now, cooldown = tonumber(ARGV[1]), tonumber(ARGV[2])
if state == 'closed' then return 1 end
if get('until', '0') > now then return 0 end
redis.call('HSET', KEYS[1], 'breaker', 'half-open', 'until', tostring(now + cooldown))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
RECORD = (
    _HEALTH
    + """
local ok, now, threshold, cooldown = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ok then
  if state ~= 'closed' or get('failures', '0') ~= 0 then
    redis.call('HSET', KEYS[1], 'breaker', 'closed', 'failures', '0', 'until', '0')
  end
else
  local failures = get('failures', '0') + 1
  if state == 'half-open' or failures >= threshold then
    redis.call('HSET', KEYS[1], 'breaker', 'open', 'failures', tostring(failures), 'until', tostring(now + cooldown))
  else
    redis.call('HSET', KEYS[1], 'failures', tostring(failures))
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return redis.call('HGETALL', KEYS[1])
"""
)
COOL = (
    _HEALTH
    + """
if tonumber(ARGV[1]) > get('cooldown_until', '0') then
  redis.call('HSET', KEYS[1], 'cooldown_until', ARGV[1], 'rate_limited', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)

# KEYS: window zset. ARGV: now, window span, recent span. -> {total, recent, oldest recent}
RECENT = (
    _SUM
    + """
local now, span, last = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local total = sum(KEYS[1])
local recent, oldest = 0, now
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - last), '+inf', 'WITHSCORES')
for i = 1, #m, 2 do
  recent = recent + tonumber(string.match(m[i], ':([^:]+)$'))
  if i == 1 then oldest = tonumber(m[i + 1]) end
end
return {tostring(total), tostring(recent), tostring(oldest)}
"""
)

# KEYS: an EMA. ARGV: sample, alpha, ttl.
EMA = """
local v = redis.call('GET', KEYS[1])
local x, a = tonumber(ARGV[1]), tonumber(ARGV[2])
if v then v = tonumber(v) + a * (x - tonumber(v)) else v = x end
redis.call('SET', KEYS[1], tostring(v), 'EX', ARGV[3])
return 1
"""
