-- Move dead-lettered entries back to their queue's stream with attempts reset, recording the replay.
-- The task's old result is deleted, so its AsyncResult waits for the new run. A keyed entry takes
-- its idempotency key back (its failure released it), so its success marks the key done again; an
-- entry whose key names another live task now stays where it is: running it could repeat that
-- task's work. Result and key names are built from the prefixes in ARGV, sharing the hash tag of
-- KEYS.
-- KEYS: dlq, stream.  ARGV: now ms, result key prefix, idempotency key prefix, idempotency ttl ms,
--   id, ...  Returns {ids replayed, ids left because their key names another task}.
local dropped = {error_type = 1, error = 1, traceback = 1, attempts = 1, deliveries = 1,
                 worker = 1, failed_at = 1, origin_stream = 1, origin_id = 1, attempt = 1,
                 replayed_from = 1, replayed_at = 1}

-- Whether the task may have `key` again: the key is free, released, or names the task already.
local function take_key(key, task)
  local ikey = ARGV[3] .. key
  local found = redis.call('HMGET', ikey, 'id', 'released')
  if found[1] and found[1] ~= task and found[2] ~= '1' then return false end
  if found[1] ~= task then
    redis.call('DEL', ikey)
    redis.call('HSET', ikey, 'id', task)
    redis.call('PEXPIRE', ikey, ARGV[4])
  else
    redis.call('HDEL', ikey, 'released')
  end
  return true
end

local done, left = {}, {}
for i = 5, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry ~= nil then
    local fields, kept, f = entry[2], {}, {}
    for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
    if f.idempotency_key and f.id and not take_key(f.idempotency_key, f.id) then
      left[#left + 1] = ARGV[i]
    else
      if f.id then redis.call('DEL', ARGV[2] .. f.id) end
      for j = 1, #fields, 2 do
        if not dropped[fields[j]] then
          kept[#kept + 1] = fields[j]
          kept[#kept + 1] = fields[j + 1]
        end
      end
      if #kept == 0 then kept = {'raw', ''} end
      kept[#kept + 1] = 'replayed_from'
      kept[#kept + 1] = ARGV[i]
      kept[#kept + 1] = 'replayed_at'
      kept[#kept + 1] = ARGV[1]
      redis.call('XADD', KEYS[2], '*', unpack(kept))
      redis.call('XDEL', KEYS[1], ARGV[i])
      done[#done + 1] = ARGV[i]
    end
  end
end
return {done, left}
