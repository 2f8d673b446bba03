-- Settles one entry atomically: copies it into the lanes of the agents it
-- goes to, schedules its retries, writes its dead letters, acknowledges and
-- deletes it, logs what happened. Every key is in the policy's hash slot.
--
-- A routed delivery's payload stays once, in the policy's stream: its entry
-- is acknowledged but kept while lanes refer to it (KEYS[7] counts them per
-- entry), and each lane's copy carries the fields without the payload and
-- `payload_at`, the entry's id. The last lane to settle its copy deletes it.
--
-- KEYS[1] the stream settled (the policy's events, or an agent's lane),
-- KEYS[2] retry set, KEYS[3] dead-letter stream, KEYS[4] activity log,
-- KEYS[5] recent deliveries (samples for filter tests), KEYS[6] the set of
-- lanes, KEYS[7] the lanes' references to events entries (hash: id -> n),
-- KEYS[8] the history (deliveries kept for replays), KEYS[9] the policy's
-- events stream, KEYS[10..] the lanes it is routed to.
-- ARGV[1] consumer group, ARGV[2] entry id, ARGV[3] activity length,
-- ARGV[4..7] the delivery's guid, event, hook, repository ('' when none),
-- ARGV[8] its payload as text (once, for every retry; '' when none),
-- ARGV[9] LZ4-compressed (once, for every dead letter; '' when none),
-- ARGV[10] n_retries, then (due, member) pairs, then n_dead, member*, then
-- n_log, (status, agent ('' when none), detail ('' when none))*, then
-- the recent stream's length ('0': no sample of this delivery) and, for a
-- sample, its member, then the events entry a lane's entry refers to ('':
-- none), then how long to keep it in the history (ms, '0': not), then
-- n_routes and the agent of each lane in KEYS[10..]. Members are flat JSON
-- field lists without the payload, which is added here; a sample, like a
-- dead letter, needs ARGV[9].
local function with_payload(member, name, payload)
  local fields = cjson.decode(member)
  fields[#fields + 1] = name
  fields[#fields + 1] = payload
  return fields
end
local i = 10
local function take()
  i = i + 1
  return ARGV[i - 1]
end
local retries, dead, log = {}, {}, {}
for _ = 1, tonumber(take()) do retries[#retries + 1] = {take(), take()} end
for _ = 1, tonumber(take()) do dead[#dead + 1] = take() end
for _ = 1, tonumber(take()) do log[#log + 1] = {take(), take(), take()} end
local recent_len = take()
local sample = nil
if recent_len ~= '0' then sample = take() end
local origin = take()
local history_ms = tonumber(take())
local routes = {}
for _ = 1, tonumber(take()) do routes[#routes + 1] = take() end

-- Into each lane (without the payload) and the history (with it), from the
-- entry as stored. NB: an entry routed already (settled twice after a
-- reclaim) is not routed again.
local is_lane = origin ~= ''
local keep = false
if not is_lane and (#routes > 0 or history_ms > 0) and redis.call('HEXISTS', KEYS[7], ARGV[2]) == 0 then
  local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
  if entry then
    local fields = entry[2]
    local copy = {'payload_at', ARGV[2]}
    for j = 1, #fields, 2 do
      if fields[j] ~= 'payload' and fields[j] ~= 'payload_lz4' then
        copy[#copy + 1] = fields[j]; copy[#copy + 1] = fields[j + 1]
      end
    end
    for n, agent in ipairs(routes) do
      redis.call('XADD', KEYS[9 + n], '*', unpack(copy))
      redis.call('SADD', KEYS[6], agent)
    end
    if #routes > 0 then
      redis.call('HSET', KEYS[7], ARGV[2], #routes)
      keep = true
    end
    if history_ms > 0 then
      -- Trimmed by age, on Redis' clock: the ids are its milliseconds.
      local t = redis.call('TIME')
      local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - history_ms
      redis.call('XADD', KEYS[8], 'MINID', '~', string.format('%.0f', oldest), '*', unpack(fields))
    end
  end
end
for _, r in ipairs(retries) do
  redis.call('ZADD', KEYS[2], r[1], cjson.encode(with_payload(r[2], 'payload', ARGV[8])))
end
for _, member in ipairs(dead) do
  redis.call('XADD', KEYS[3], '*', unpack(with_payload(member, 'payload_lz4', ARGV[9])))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if is_lane then
  -- NB: only a copy still there lets go of its payload (settled twice: once).
  if redis.call('XDEL', KEYS[1], ARGV[2]) == 1 and redis.call('HINCRBY', KEYS[7], origin, -1) <= 0 then
    redis.call('HDEL', KEYS[7], origin)
    redis.call('XDEL', KEYS[9], origin)
  end
elseif not keep and redis.call('HEXISTS', KEYS[7], ARGV[2]) == 0 then
  redis.call('XDEL', KEYS[1], ARGV[2])
end
for _, l in ipairs(log) do
  local record = {'status', l[1], 'guid', ARGV[4], 'event', ARGV[5], 'hook', ARGV[6]}
  if l[2] ~= '' then record[#record + 1] = 'agent'; record[#record + 1] = l[2] end
  if ARGV[7] ~= '' then record[#record + 1] = 'repository'; record[#record + 1] = ARGV[7] end
  if l[3] ~= '' then record[#record + 1] = 'detail'; record[#record + 1] = l[3] end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(record))
end
if sample then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', recent_len, '*', unpack(with_payload(sample, 'payload_lz4', ARGV[9])))
end
return 1
