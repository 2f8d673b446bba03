-- Settles one entry atomically: schedules its retries, writes its dead
-- letters, acknowledges and deletes it, logs what happened.
-- KEYS[1] events stream, KEYS[2] retry set, KEYS[3] dead-letter stream,
-- KEYS[4] activity log.
-- ARGV[1] consumer group, ARGV[2] entry id, ARGV[3] activity length,
-- ARGV[4] n_retries, then (due, member) pairs, then n_dead, member*, then
-- n_log, record*. Members are flat JSON field lists; records activity JSON.
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local n_dead = tonumber(ARGV[i]); i = i + 1
for _ = 1, n_dead do
  redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(ARGV[i])))
  i = i + 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local n_log = tonumber(ARGV[i]); i = i + 1
for _ = 1, n_log do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'json', ARGV[i])
  i = i + 1
end
return 1
