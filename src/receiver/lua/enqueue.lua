-- Queues one delivery unless its GUID was seen, its body was already queued
-- under another GUID (a replay), or the queue is full.
-- KEYS[1] the policy's events stream, KEYS[2] the GUID's de-duplication key,
-- KEYS[3] the activity log, KEYS[4] the body's key (its MAC; same hash slot
-- as KEYS[2]).
-- ARGV[1] queue limit, ARGV[2] de-duplication TTL (s), ARGV[3] activity
-- length, ARGV[4..6] the activity records for queued, duplicate and full,
-- ARGV[7] how long a body is remembered (s; 0: not checked),
-- ARGV[8..] the entry's field/value pairs.
-- Returns the entry id, 'dup', 'replay' or 'full'. A replay is not logged
-- here: the receiver keeps it with its other rejections.
local function log(record)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'json', record)
end
if redis.call('EXISTS', KEYS[2]) == 1 then log(ARGV[5]); return 'dup' end
local replay_ttl = tonumber(ARGV[7])
if replay_ttl > 0 and redis.call('EXISTS', KEYS[4]) == 1 then return 'replay' end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then log(ARGV[6]); return 'full' end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 8))
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
if replay_ttl > 0 then redis.call('SET', KEYS[4], id, 'EX', replay_ttl) end
log(ARGV[4])
return id
