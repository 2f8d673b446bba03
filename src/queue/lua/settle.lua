-- Settles one entry atomically: copies it into the lanes of the agents it
-- goes to, schedules its retries, writes its dead letters, acknowledges and
-- deletes it, logs what happened. Every key is in the policy's hash slot.
-- KEYS[1] the stream settled (the policy's events, or an agent's lane),
-- KEYS[2] retry set, KEYS[3] dead-letter stream, KEYS[4] activity log,
-- KEYS[5] recent deliveries (samples for filter tests), KEYS[6] the set of
-- lanes, KEYS[7] the lanes' backlog (entries in every lane), KEYS[8] the
-- history (deliveries kept for replays), KEYS[9..] the lanes it is routed to.
-- ARGV[1] consumer group, ARGV[2] entry id, ARGV[3] activity length,
-- ARGV[4..7] the delivery's guid, event, hook, repository ('' when none),
-- ARGV[8] its payload as text (once, for every retry; '' when none),
-- ARGV[9] LZ4-compressed (once, for every dead letter; '' when none),
-- ARGV[10] n_retries, then (due, member) pairs, then n_dead, member*, then
-- n_log, (status, agent ('' when none), detail ('' when none))*, then
-- the recent stream's length ('0': no sample of this delivery) and, for a
-- sample, its member, then '1' when KEYS[1] is a lane, then how long to keep
-- it in the history (ms, '0': not), then n_routes and the agent of each
-- lane in KEYS[9..]. Members are flat JSON field lists
-- without the payload, which is added here; a sample, like a dead letter,
-- needs ARGV[9].
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
local is_lane = take() == '1'
local history_ms = tonumber(take())
local routes = {}
for _ = 1, tonumber(take()) do routes[#routes + 1] = take() end

-- Into each lane, and the history, as it is stored (a delivery is read
-- once, from here).
if #routes > 0 or history_ms > 0 then
  local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
  if entry then
    for n, agent in ipairs(routes) do
      redis.call('XADD', KEYS[8 + n], '*', unpack(entry[2]))
      redis.call('SADD', KEYS[6], agent)
    end
    redis.call('INCRBY', KEYS[7], #routes)
    if history_ms > 0 then
      -- Trimmed by age, on Redis' clock: the ids are its milliseconds.
      local t = redis.call('TIME')
      local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - history_ms
      redis.call('XADD', KEYS[8], 'MINID', '~', string.format('%.0f', oldest), '*', unpack(entry[2]))
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
-- NB: only an entry still there counts down (settled twice after a reclaim: once).
if redis.call('XDEL', KEYS[1], ARGV[2]) == 1 and is_lane then
  if redis.call('DECR', KEYS[7]) < 0 then redis.call('SET', KEYS[7], 0) end
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
