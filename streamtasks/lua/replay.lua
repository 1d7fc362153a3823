-- Move dead-lettered entries back to their queue's stream with attempts reset, recording the replay.
-- The task's old result is deleted, so its AsyncResult waits for the new run. Result keys are built
-- from ARGV[2] (the queue's result key prefix), sharing the hash tag of KEYS.
-- KEYS: dlq, stream.  ARGV: now ms, result key prefix, id, ...  Returns the ids replayed.
local dropped = {error_type = 1, error = 1, traceback = 1, attempts = 1, worker = 1,
                 failed_at = 1, origin_stream = 1, origin_id = 1, attempt = 1,
                 replayed_from = 1, replayed_at = 1}
local done = {}
for i = 3, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry ~= nil then
    local fields, kept = entry[2], {}
    for j = 1, #fields, 2 do
      if fields[j] == 'id' then redis.call('DEL', ARGV[2] .. fields[j + 1]) end
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
return done
