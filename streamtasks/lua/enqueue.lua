-- Enqueue one message now or later, at most once per idempotency key.
-- KEYS: stream, delayed zset, idempotency hash (unused when no key), wake stream
-- ARGV: task id, due ms (0 = now), idempotency ttl ms (0 = no key), fingerprint of the call,
--       keep ('1': a failed run keeps the key for its whole ttl), field, value, ...
-- Returns {task id, 1 if enqueued / 0 if the key already names this call / 2 if the key already
-- names a different call}; with 0 or 2, the task id is the one the key names.
local id, due, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if ttl > 0 then
  local found = redis.call('HMGET', KEYS[3], 'id', 'call', 'released')
  if found[1] and found[3] ~= '1' then
    -- A record written before calls were fingerprinted has none to compare: not a conflict.
    if found[2] and found[2] ~= ARGV[4] then return {found[1], 2} end
    return {found[1], 0}
  end
  -- Free, or released by a task that failed: this call takes the key.
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'id', id, 'call', ARGV[4], 'keep', ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
if due > 0 then
  schedule(KEYS[2], KEYS[4], due, net(fields))
else
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return {id, 1}
