-- Moves due retries into the stream.
-- KEYS[1] retry set, KEYS[2] events stream (the policy's hash slot).
-- ARGV[1] now (Unix ms), ARGV[2] at most this many.
-- Returns {how many moved, when the next one left is due (Unix ms; -1: none)}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(m)))
  redis.call('ZREM', KEYS[1], m)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, next[2] and math.floor(tonumber(next[2])) or -1}
