-- One worker's record in the app's registry (keys.WorkerKeys), kept alive by its heartbeat.
-- KEYS: the worker's hash, the index (names scored by when their record was last written)
-- ARGV: mode, instance (a token of this worker process), name, now ms, ttl ms, then the record's
--       field, value, ...
-- mode 'start': write the record unless another instance's live record holds the name;
--      'take': write it whatever holds the name (its holder is known to be dead);
--      'beat': refresh it unless another instance took the name meanwhile;
--      'stop': delete it if it is this instance's.
-- Returns {1} when done, or {0, field, value, ...} of the record that holds the name.
local key, index = KEYS[1], KEYS[2]
local mode, me, name = ARGV[1], ARGV[2], ARGV[3]
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local holder = redis.call('HGET', key, 'instance')
if mode == 'stop' then
  if holder == me then
    redis.call('DEL', key)
    redis.call('ZREM', index, name)
  end
  return {1}
end
if holder and holder ~= me and mode ~= 'take' then
  local record = redis.call('HGETALL', key)
  table.insert(record, 1, 0)
  return record
end
if holder ~= me then redis.call('DEL', key) end
local fields = {'instance', me, 'last_seen', ARGV[4]}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ttl)
redis.call('ZADD', index, now, name)
-- A name whose record lapsed a day ago leaves the index.
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - 86400000)
return {1}
