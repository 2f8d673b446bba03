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
-- KEYS[7..10] the GUID record's shard in the current bucket and the three
-- before, KEYS[11..14] the body record's, likewise (see queue/seen.rs).
-- ARGV[1] queue limit, ARGV[2] activity length, ARGV[3] the tap's length,
-- ARGV[4] the GUID record, ARGV[5] when its current shard expires (Unix s),
-- ARGV[6] the body record ('' : not checked), ARGV[7] when its shard
-- expires, ARGV[8..] the entry's field/value pairs (guid, event, hook, and
-- repository when set, are copied into the activity log).
-- Returns the entry id, 'dup', 'replay', 'full' or 'dead_full'. A replay is not logged
-- here: the receiver keeps it with its other rejections.
local FIELDS = 8
local RECORD = 12
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
-- Whether one of the shards KEYS[first..first+3] holds `record` (at a
-- record's boundary: a match across two records is not one).
local function seen(first, record)
  for k = first, first + 3 do
    local shard = redis.call('GET', KEYS[k])
    if shard then
      local from = 1
      while true do
        local at = string.find(shard, record, from, true)
        if not at then break end
        if (at - 1) % RECORD == 0 then return true end
        from = at + 1
      end
    end
  end
  return false
end
local function remember(key, record, expires)
  if redis.call('APPEND', key, record) == RECORD then redis.call('EXPIREAT', key, expires) end
end
if seen(7, ARGV[4]) then log('duplicate'); return 'dup' end
local body = ARGV[6]
if body ~= '' and seen(11, body) then return 'replay' end
local limit = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[5]) >= limit then
  log('rejected', 'queue_full'); return 'full'
end
if redis.call('XLEN', KEYS[6]) >= limit then log('rejected', 'dead_letters_full'); return 'dead_full' end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, FIELDS))
remember(KEYS[7], ARGV[4], ARGV[5])
if body ~= '' then remember(KEYS[11], body, ARGV[7]) end
if redis.call('EXISTS', KEYS[4]) == 1 then
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
