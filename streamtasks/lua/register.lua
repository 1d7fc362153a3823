-- One worker's record in the app's registry (keys.WorkerKeys), kept alive by its heartbeat.
-- KEYS: the worker's hash, the index (names scored by when their record was last written)
-- ARGV: mode, instance (a token of this worker process), name, now ms, ttl ms, the instance a
--       'take' takes the name from, then the record's field, value, ...
-- mode 'start': write the record unless another instance's live record holds the name;
--      'take': write it if the name is free or held by that instance (known to be dead): two
--              workers that saw the same dead holder cannot both take its name;
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
if holder and holder ~= me and not (mode == 'take' and holder == ARGV[6]) then
  local record = redis.call('HGETALL', key)
  table.insert(record, 1, 0)
  return record
end
if holder ~= me then redis.call('DEL', key) end
local fields = {'instance', me, 'last_seen', ARGV[4]}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ttl)
-- Scored by when the record lapses: a name whose record lapsed a minute ago leaves the index.
redis.call('ZADD', index, now + ttl, name)
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - 60000)
return {1}
