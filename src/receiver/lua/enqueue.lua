-- Queues one delivery unless its GUID was seen or the queue is full.
-- KEYS[1] the policy's events stream, KEYS[2] the GUID's de-duplication key,
-- KEYS[3] the activity log.
-- ARGV[1] queue limit, ARGV[2] de-duplication TTL (s), ARGV[3] activity
-- length, ARGV[4..6] the activity records for queued, duplicate and full,
-- ARGV[7..] the entry's field/value pairs.
-- Returns the entry id, 'dup' or 'full'.
local function log(record)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'json', record)
end
if redis.call('EXISTS', KEYS[2]) == 1 then log(ARGV[5]); return 'dup' end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then log(ARGV[6]); return 'full' end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 7))
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
log(ARGV[4])
return id
