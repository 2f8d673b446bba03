-- Queues a batch of deliveries for one policy, in order, each unless its
-- GUID was seen (by an earlier one of the batch too), its body was already
-- queued under another GUID (a replay), or the queue is full: the
-- deliveries queued and those waiting for a retry together, or the dead
-- letters alone, reach the delivery's queue limit (each stays bounded by
-- it; nothing is dropped: GitHub is told 503, and the operator's recovery
-- brings the delivery back later). Every key is in the policy's hash slot.
-- KEYS[1] the policy's events stream, KEYS[2] its activity log, KEYS[3] its
-- tap, KEYS[4] its switch (a queued delivery is copied to the tap while the
-- switch exists: someone follows it; the tap keeps the last ARGV[2] to
-- ARGV[2] + 99), KEYS[5] its retry set, KEYS[6] its dead-letter stream;
-- then each delivery's lookup keys: the GUID's set in the current bucket
-- and the three before, the body's likewise, then the same in the layout
-- before (strings of records), passed only while they can hold a record
-- within the window (see queue/seen.rs): 8 or 16 keys.
-- ARGV[1] activity length, ARGV[2] the tap's length; then each delivery:
-- its queue limit, its number of lookup keys, the GUID's member, when its
-- current set expires (Unix s), the body's member ('' : not checked), when
-- its set expires, the GUID's and the body's record of the layout before
-- ('' without their keys), the number N of the entry's arguments, and the
-- entry's N/2 field/value pairs (guid, event, hook, and repository when
-- set, are copied into the activity log).
-- Returns one reply per delivery: the entry id, 'dup', 'replay', 'full' or
-- 'dead_full'. A replay is not logged here: the receiver keeps it with its
-- other rejections.
local HEADER = 9
local LEGACY_RECORD = 12
-- The entry's arguments of the delivery at hand: ARGV[first..last].
local first, last
local function log(status, detail)
  local record = {'status', status}
  for i = first, last, 2 do
    local name = ARGV[i]
    if name == 'guid' or name == 'event' or name == 'hook' or name == 'repository' then
      record[#record + 1] = name
      record[#record + 1] = ARGV[i + 1]
    end
  end
  if detail then record[#record + 1] = 'detail'; record[#record + 1] = detail end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(record))
end
-- Whether `member` is in one of the sets KEYS[set..set+3], or `record` in
-- one of `strings` (the layout before's, at a record's boundary: a match
-- across two records is not one).
local function seen(set, member, strings, record)
  for k = set, set + 3 do
    if redis.call('SISMEMBER', KEYS[k], member) == 1 then return true end
  end
  for _, shard in ipairs(strings) do
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
local tapped = redis.call('GET', KEYS[4])
local queued = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[5])
local dead = redis.call('XLEN', KEYS[6])
local replies = {}
local key, at = 7, 3
while at <= #ARGV do
  local limit, keys = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local guid, guid_expires, body, body_expires = ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  first = at + HEADER
  last = first + tonumber(ARGV[at + 8]) - 1
  -- The layout before's strings: the GUID's four, the body's four.
  local guid_strings, body_strings = {}, {}
  if keys > 8 then
    local old = redis.call('MGET', unpack(KEYS, key + 8, key + 15))
    guid_strings = {old[1], old[2], old[3], old[4]}
    body_strings = {old[5], old[6], old[7], old[8]}
  end
  local reply
  if seen(key, guid, guid_strings, ARGV[at + 6]) then
    log('duplicate'); reply = 'dup'
  elseif body ~= '' and seen(key + 4, body, body_strings, ARGV[at + 7]) then
    reply = 'replay'
  elseif queued >= limit then
    log('rejected', 'queue_full'); reply = 'full'
  elseif dead >= limit then
    log('rejected', 'dead_letters_full'); reply = 'dead_full'
  else
    reply = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, last))
    queued = queued + 1
    remember(KEYS[key], guid, guid_expires)
    if body ~= '' then remember(KEYS[key + 4], body, body_expires) end
    if tapped then redis.call('XADD', KEYS[3], '*', unpack(ARGV, first, last)) end
    log('queued')
  end
  replies[#replies + 1] = reply
  key = key + keys
  at = last + 1
end
if tapped then
  -- Trimmed with XDEL, a hundred or more at a time, not with MAXLEN: XDEL
  -- records the newest entry it removed (XINFO's max-deleted-entry-id), what
  -- tells a follower back too late that it missed some; trimming does not.
  local excess = redis.call('XLEN', KEYS[3]) - tonumber(ARGV[2])
  if excess >= 100 then
    local ids = {}
    for i, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', excess)) do ids[i] = entry[1] end
    redis.call('XDEL', KEYS[3], unpack(ids))
  end
end
return replies
