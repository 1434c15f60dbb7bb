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

# Every router writes its own share of a target's load under its own id (see RedisState);
# this sums the others' shares. KEYS: usage hash (router -> tokens), reservations hash
# (router -> "tokens expires"), usage-window hash ("second:router" -> tokens), health hash.
# ARGV: now, usage_window, this router's id.
# -> {windowed usage, reserved, total usage, the health hash as a flat list}
LOADS = """
local now, window, me = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local total, reserved, used = 0, 0, 0
local u = redis.call('HGETALL', KEYS[1])
for i = 1, #u, 2 do
  if u[i] ~= me then total = total + tonumber(u[i + 1]) end
end
local r = redis.call('HGETALL', KEYS[2])
for i = 1, #r, 2 do
  local tokens, expires = string.match(r[i + 1], '^(%S+) (%S+)$')
  if tonumber(expires) <= now then redis.call('HDEL', KEYS[2], r[i])
  elseif r[i] ~= me then reserved = reserved + tonumber(tokens) end
end
if window > 0 then
  local b = redis.call('HGETALL', KEYS[3])
  for i = 1, #b, 2 do
    local second, owner = string.match(b[i], '^([^:]+):?(.*)$')
    if tonumber(second) <= now - window then redis.call('HDEL', KEYS[3], b[i])
    elseif owner ~= me then used = used + tonumber(b[i + 1]) end
  end
else
  used = total
end
return {tostring(used), tostring(reserved), tostring(total), redis.call('HGETALL', KEYS[4])}
"""

# This router's share of a target's load, as absolute values, in one command.
# KEYS: the three hashes LOADS reads. ARGV: this router's id, its total usage, its
# reservations ("" for none), when they expire, then TTLs of the three keys, then
# (second, tokens) pairs of usage-window buckets that changed.
SHARE = """
local me = ARGV[1]
redis.call('HSET', KEYS[1], me, ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], me, ARGV[3] .. ' ' .. ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
else
  redis.call('HDEL', KEYS[2], me)
end
if #ARGV > 7 then
  for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i] .. ':' .. me, ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
return 1
"""

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

# KEYS: window zset. ARGV: entry id, its time, amount, span. Sets the entry's amount in
# place (0 removes it), keeping its time; idempotent, so a write can be sent again.
PUT = """
local prefix = ARGV[1] .. ':'
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[2])) do
  if string.sub(m, 1, #prefix) == prefix then redis.call('ZREM', KEYS[1], m) end
end
if tonumber(ARGV[3]) ~= 0 then
  redis.call('ZADD', KEYS[1], ARGV[2], prefix .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000) + 1000)
end
return 1
"""

# KEYS: period-total hash (router -> amount), holds zset ("<id>:<amount>", by expiry).
# ARGV: this router's id, its own total, amount, limit, now, hold id, hold expires at.
# 1 when held.
HOLD = (
    _SUM
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local total = tonumber(ARGV[2]) + sum(KEYS[2])
local s = redis.call('HGETALL', KEYS[1])
for i = 1, #s, 2 do
  if s[i] ~= ARGV[1] then total = total + tonumber(s[i + 1]) end
end
if total >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6] .. ':' .. ARGV[3])
redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(ARGV[7])) + 60)
return 1
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
redis.call('HSET', KEYS[1], 'breaker', 'half-open', 'until', string.format('%.17g', now + cooldown))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
# ARGV: now, the `until` our probe set. Frees the probe slot if it is still ours.
FREE = (
    _HEALTH
    + """
if state == 'half-open' and math.abs(get('until', '0') - tonumber(ARGV[2])) < 0.001 then
  redis.call('HSET', KEYS[1], 'until', ARGV[1])
end
return 1
"""
)
# ARGV: ok, now, threshold, cooldown, ttl, when the call started. -> the health hash
RECORD = (
    _HEALTH
    + """
local ok, now, threshold, cooldown = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if state == 'open' or tonumber(ARGV[6]) < get('opened', '0') then
  return redis.call('HGETALL', KEYS[1])  -- a call from before it opened: stale
end
if ok then
  if state ~= 'closed' or get('failures', '0') ~= 0 then
    redis.call('HSET', KEYS[1], 'breaker', 'closed', 'failures', '0', 'until', '0')
    redis.call('EXPIRE', KEYS[1], ARGV[5])
  end
else
  local failures = get('failures', '0') + 1
  if state == 'half-open' or failures >= threshold then
    redis.call('HSET', KEYS[1], 'breaker', 'open', 'failures', tostring(failures),
               'until', string.format('%.17g', now + cooldown), 'opened', ARGV[2])
  else
    redis.call('HSET', KEYS[1], 'failures', tostring(failures))
  end
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
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
