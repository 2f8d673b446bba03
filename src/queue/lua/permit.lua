-- May one call to an agent start now, across every receiver replica?
-- KEYS[1] the agent's calls in flight (sorted set: holder -> end of lease, ms)
-- KEYS[2] the agent's rate state (GCRA's theoretical arrival time, µs)
-- KEYS[3] the agent's pause (exists while a Retry-After holds)
-- ARGV: holder, lease_ms, concurrency (0: unbounded), interval_us (0: no
-- rate), burst, now_ms (0: Redis' clock, the one clock all replicas share)
-- Returns {0, 0}: granted (the holder has a slot until its lease ends);
-- {1, ms}: paused that long; {2, ms}: every slot taken, the first lease ends
-- in ms; {3, ms}: over the rate, the next call may start in ms.
-- Nothing is written unless the call is granted.
local now = tonumber(ARGV[6])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then
  return {1, paused}
end
local lease, concurrency = tonumber(ARGV[2]), tonumber(ARGV[3])
if concurrency > 0 then
  -- A replica that died mid-call frees its slot when the lease ends.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {2, math.max(1, tonumber(first[2]) - now)}
  end
end
local interval = tonumber(ARGV[4])
if interval > 0 then
  -- GCRA: a call may start while the theoretical arrival time is at most
  -- (burst - 1) intervals ahead of now; each call moves it one interval on.
  local now_us = now * 1000
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or 0), now_us)
  local ahead = tat - now_us - (tonumber(ARGV[5]) - 1) * interval
  if ahead > 0 then
    return {3, math.ceil(ahead / 1000)}
  end
  tat = tat + interval
  -- NB: %.0f, as tostring would round a 16-digit number to 14.
  redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000) + 1000)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
end
return {0, 0}
