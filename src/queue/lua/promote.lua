-- Moves due retries into the stream.
-- KEYS[1] retry set, KEYS[2] events stream.
-- ARGV[1] now (Unix ms), ARGV[2] at most this many.
-- Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(m)))
  redis.call('ZREM', KEYS[1], m)
end
return #due
