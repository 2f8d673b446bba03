-- Moves one dead letter back into the queue, its attempts reset.
-- KEYS[1] dead-letter stream, KEYS[2] events stream.
-- ARGV[1] the dead letter's id.
-- Returns 1 when moved, 0 when there was no such dead letter.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f = e[1][2]
local out = {}
for j = 1, #f, 2 do
  local k = f[j]
  if k ~= 'error' and k ~= 'failed' and k ~= 'attempt' then
    out[#out + 1] = k; out[#out + 1] = f[j + 1]
  end
end
out[#out + 1] = 'attempt'; out[#out + 1] = '0'
redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
