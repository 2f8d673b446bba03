-- Settles one entry atomically: schedules its retries, writes its dead
-- letters, acknowledges and deletes it, logs what happened. Every key is in
-- the policy's hash slot.
-- KEYS[1] events stream, KEYS[2] retry set, KEYS[3] dead-letter stream,
-- KEYS[4] activity log, KEYS[5] recent deliveries (samples for filter tests).
-- ARGV[1] consumer group, ARGV[2] entry id, ARGV[3] activity length,
-- ARGV[4..7] the delivery's guid, event, hook, repository ('' when none),
-- ARGV[8] its payload as text (once, for every retry; '' when none),
-- ARGV[9] LZ4-compressed (once, for every dead letter; '' when none),
-- ARGV[10] n_retries, then (due, member) pairs, then n_dead, member*, then
-- n_log, (status, agent ('' when none), detail ('' when none))*, then
-- the recent stream's length ('0': no sample of this delivery) and, for a
-- sample, its member. Members are flat JSON field lists without the
-- payload, which is added here; a sample, like a dead letter, needs ARGV[9].
local function with_payload(member, name, payload)
  local fields = cjson.decode(member)
  fields[#fields + 1] = name
  fields[#fields + 1] = payload
  return fields
end
local i = 11
for _ = 1, tonumber(ARGV[10]) do
  redis.call('ZADD', KEYS[2], ARGV[i], cjson.encode(with_payload(ARGV[i + 1], 'payload', ARGV[8])))
  i = i + 2
end
local n_dead = tonumber(ARGV[i]); i = i + 1
for _ = 1, n_dead do
  redis.call('XADD', KEYS[3], '*', unpack(with_payload(ARGV[i], 'payload_lz4', ARGV[9])))
  i = i + 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local n_log = tonumber(ARGV[i]); i = i + 1
for _ = 1, n_log do
  local record = {'status', ARGV[i], 'guid', ARGV[4], 'event', ARGV[5], 'hook', ARGV[6]}
  if ARGV[i + 1] ~= '' then record[#record + 1] = 'agent'; record[#record + 1] = ARGV[i + 1] end
  if ARGV[7] ~= '' then record[#record + 1] = 'repository'; record[#record + 1] = ARGV[7] end
  if ARGV[i + 2] ~= '' then record[#record + 1] = 'detail'; record[#record + 1] = ARGV[i + 2] end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(record))
  i = i + 3
end
if ARGV[i] ~= '0' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[i], '*', unpack(with_payload(ARGV[i + 1], 'payload_lz4', ARGV[9])))
end
return 1
