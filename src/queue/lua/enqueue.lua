-- Queues one delivery unless its GUID was seen, its body was already queued
-- under another GUID (a replay), or the queue is full: the deliveries queued
-- and those waiting for a retry together, or the dead letters alone, reach
-- the queue limit (each stays bounded by it; nothing is dropped: GitHub is
-- told 503, and the operator's recovery brings the delivery back later).
-- Every key is in the policy's hash slot.
-- KEYS[1] the policy's events stream, KEYS[2] the GUID's de-duplication key,
-- KEYS[3] the policy's activity log, KEYS[4] the body's key (its MAC),
-- KEYS[5] the policy's tap, KEYS[6] its switch (a queued delivery is copied
-- to the tap while the switch exists: someone follows it; the tap keeps the
-- last ARGV[5] to ARGV[5] + 99), KEYS[7] its retry set, KEYS[8] its
-- dead-letter stream.
-- ARGV[1] queue limit, ARGV[2] de-duplication TTL (s), ARGV[3] activity
-- length, ARGV[4] how long a body is remembered (s; 0: not checked),
-- ARGV[5] the tap's length, ARGV[6..] the entry's field/value pairs (guid,
-- event, hook, and repository when set, are copied into the activity log).
-- Returns the entry id, 'dup', 'replay', 'full' or 'dead_full'. A replay is not logged
-- here: the receiver keeps it with its other rejections.
local FIELDS = 6
local function log(status, detail)
  local record = {'status', status}
  for i = FIELDS, #ARGV, 2 do
    local name = ARGV[i]
    if name == 'guid' or name == 'event' or name == 'hook' or name == 'repository' then
      record[#record + 1] = name
      record[#record + 1] = ARGV[i + 1]
    end
  end
  if detail then record[#record + 1] = 'detail'; record[#record + 1] = detail end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(record))
end
if redis.call('EXISTS', KEYS[2]) == 1 then log('duplicate'); return 'dup' end
local replay_ttl = tonumber(ARGV[4])
if replay_ttl > 0 and redis.call('EXISTS', KEYS[4]) == 1 then return 'replay' end
local limit = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[7]) >= limit then
  log('rejected', 'queue_full'); return 'full'
end
if redis.call('XLEN', KEYS[8]) >= limit then log('rejected', 'dead_letters_full'); return 'dead_full' end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, FIELDS))
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
if replay_ttl > 0 then redis.call('SET', KEYS[4], id, 'EX', replay_ttl) end
if redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('XADD', KEYS[5], '*', unpack(ARGV, FIELDS))
  -- Trimmed with XDEL, a hundred or more at a time, not with MAXLEN: XDEL
  -- records the newest entry it removed (XINFO's max-deleted-entry-id), what
  -- tells a follower back too late that it missed some; trimming does not.
  local excess = redis.call('XLEN', KEYS[5]) - tonumber(ARGV[5])
  if excess >= 100 then
    local ids = {}
    for i, entry in ipairs(redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', excess)) do ids[i] = entry[1] end
    redis.call('XDEL', KEYS[5], unpack(ids))
  end
end
log('queued')
return id
