-- Enqueue one message now or later, at most once per idempotency key.
-- KEYS: stream, delayed zset, idempotency hash (unused when no key), wake stream
-- ARGV: task id, due ms (0 = now), idempotency ttl ms (0 = no key), field, value, ...
-- Returns {task id, 1 if enqueued / 0 if the key already named a task}.
local id, due, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if ttl > 0 then
  local existing = redis.call('HGET', KEYS[3], 'id')
  if existing then return {existing, 0} end
  redis.call('HSET', KEYS[3], 'id', id)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
if due > 0 then
  schedule(KEYS[2], KEYS[4], due, net(fields))
else
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return {id, 1}
