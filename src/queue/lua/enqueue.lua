-- Queues one delivery unless its GUID was seen, its body was already queued
-- under another GUID (a replay), or the queue is full: the deliveries queued
-- and those waiting for a retry together, or the dead letters alone, reach
-- the queue limit (each stays bounded by it; nothing is dropped: GitHub is
-- told 503, and the operator's recovery brings the delivery back later).
-- Every key is in the policy's hash slot.
-- KEYS[1] the policy's events stream, KEYS[2] its activity log, KEYS[3] its
-- tap, KEYS[4] its switch (a queued delivery is copied to the tap while the
-- switch exists: someone follows it; the tap keeps the last ARGV[3] to
-- ARGV[3] + 99), KEYS[5] its retry set, KEYS[6] its dead-letter stream,
-- KEYS[7..10] the GUID's set in the current bucket and the three before,
-- KEYS[11..14] the body's, likewise; KEYS[15..18] and KEYS[19..22] the same
-- in the layout before (strings of records), passed only while they can
-- hold a record within the window (see queue/seen.rs).
-- ARGV[1] queue limit, ARGV[2] activity length, ARGV[3] the tap's length,
-- ARGV[4] the GUID's member, ARGV[5] when its current set expires (Unix s),
-- ARGV[6] the body's member ('' : not checked), ARGV[7] when its set
-- expires, ARGV[8] and ARGV[9] the GUID's and the body's record of the
-- layout before ('' without its keys), ARGV[10..] the entry's field/value pairs (guid, event,
-- hook, and repository when set, are copied into the activity log).
-- Returns the entry id, 'dup', 'replay', 'full' or 'dead_full'. A replay is not logged
-- here: the receiver keeps it with its other rejections.
local FIELDS = 10
local LEGACY_RECORD = 12
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
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(record))
end
-- The layout before's strings and the tap's switch, in one command:
-- KEYS[15..22] as old[1..8], KEYS[4] as old[9]; the switch alone once
-- the strings are no longer read.
local old = {}
if #KEYS > 14 then
  old = redis.call('MGET', KEYS[15], KEYS[16], KEYS[17], KEYS[18], KEYS[19], KEYS[20], KEYS[21], KEYS[22], KEYS[4])
else
  old[9] = redis.call('GET', KEYS[4])
end
-- Whether `member` is in one of the sets KEYS[first..first+3], or `record`
-- in one of old[legacy..legacy+3] (at a record's boundary: a match across
-- two records is not one).
local function seen(first, member, legacy, record)
  for k = first, first + 3 do
    if redis.call('SISMEMBER', KEYS[k], member) == 1 then return true end
  end
  for k = legacy, legacy + 3 do
    local shard = old[k]
    if shard then
      local from = 1
      while true do
        local at = string.find(shard, record, from, true)
        if not at then break end
        if (at - 1) % LEGACY_RECORD == 0 then return true end
        from = at + 1
      end
    end
  end
  return false
end
-- NB: EXPIREAT NX: the set's expiry is set once, when it is made.
local function remember(key, member, expires)
  redis.call('SADD', key, member)
  redis.call('EXPIREAT', key, expires, 'NX')
end
if seen(7, ARGV[4], 1, ARGV[8]) then log('duplicate'); return 'dup' end
local body = ARGV[6]
if body ~= '' and seen(11, body, 5, ARGV[9]) then return 'replay' end
local limit = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[5]) >= limit then
  log('rejected', 'queue_full'); return 'full'
end
if redis.call('XLEN', KEYS[6]) >= limit then log('rejected', 'dead_letters_full'); return 'dead_full' end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, FIELDS))
remember(KEYS[7], ARGV[4], ARGV[5])
if body ~= '' then remember(KEYS[11], body, ARGV[7]) end
if old[9] then
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, FIELDS))
  -- Trimmed with XDEL, a hundred or more at a time, not with MAXLEN: XDEL
  -- records the newest entry it removed (XINFO's max-deleted-entry-id), what
  -- tells a follower back too late that it missed some; trimming does not.
  local excess = redis.call('XLEN', KEYS[3]) - tonumber(ARGV[3])
  if excess >= 100 then
    local ids = {}
    for i, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', excess)) do ids[i] = entry[1] end
    redis.call('XDEL', KEYS[3], unpack(ids))
  end
end
log('queued')
return id
