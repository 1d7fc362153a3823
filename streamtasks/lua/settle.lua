-- Apply the outcomes of finished runs, each only if this consumer still owns its entry.
-- KEYS: stream, dlq, delayed zset, wake stream, this minute's count of ended runs (kept 10
--   minutes, for `streamtasks status`), then the result and idempotency keys the records point at
-- ARGV: group, consumer, n, then n entry ids to ack plainly (no result, no key: the fast path),
--   then records of 9:
--   entry id | action | task id | result key index | result ttl ms | status | data |
--   idem key index | extra
-- action: 'a' ack; the status says how the run ended: a SUCCESS marks the idempotency key done
--             (extra = its ttl ms), a FAILURE frees it (see idempotency_ended in lib.lua)
--         'r' retry later (extra = "due ms:netstring of the new entry's fields")
--         'd' dead-letter (extra = netstring of the fields of the dead-letter entry); frees the
--             idempotency key as a FAILURE does
--         'e' ack on receipt (acks_late=False): XACK and XDEL; the worker keeps the fields
--         'A', 'R', 'D': as above for an entry acked on receipt, so not fenced and only deleted
-- Returns one integer per entry, plain ids first: 1 applied; 0 refused because another consumer
-- owns the entry now (or the same id came earlier in this batch: an entry is settled once);
-- 2 an ack whose entry is gone (see below): its result and key were recorded, nothing acked.
local stream, group, me = KEYS[1], ARGV[1], ARGV[2]
local plain = tonumber(ARGV[3])
local out, acks, dels, seen = {}, {}, {}, {}
local ended = 0  -- runs that ended here: acks and dead letters, not retries or acks on receipt
-- The batch's XACK comes at the end, so the fence alone would pass an id twice in one call.
local function first(id)
  if seen[id] then return false end
  seen[id] = true
  return true
end
for i = 4, 3 + plain do
  if first(ARGV[i]) and owner(stream, group, ARGV[i]) == me then
    acks[#acks + 1] = ARGV[i]
    ended = ended + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
-- A finished run's result, and what it means for its idempotency key.
local function record(task, rkey, ttl, status, data, ikey, ikey_ttl)
  if ikey > 0 then idempotency_ended(KEYS[ikey], task, status == 'SUCCESS', ikey_ttl) end
  if rkey > 0 then
    redis.call('XADD', KEYS[rkey], '*', 'status', status, 'data', data)
    redis.call('PEXPIRE', KEYS[rkey], ttl)
  end
end
for i = 4 + plain, #ARGV, 9 do
  local id, action, task = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local rkey, ttl = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local status, data = ARGV[i + 5], ARGV[i + 6]
  local ikey, extra = tonumber(ARGV[i + 7]), ARGV[i + 8]
  local acked = action == 'A' or action == 'R' or action == 'D'
  local act = string.lower(action)
  local holder = me
  if not acked then holder = owner(stream, group, id) end
  if not first(id) then
    out[#out + 1] = 0
  elseif holder ~= me then
    -- Pending nowhere and gone from the stream: Redis lost it, or another worker finished it.
    -- A successful run still records its result; a retry or dead letter could add a run, so not.
    if holder == false and act == 'a' and redis.call('XRANGE', stream, id, id)[1] == nil then
      record(task, rkey, ttl, status, data, ikey, tonumber(extra))
      ended = ended + 1
      out[#out + 1] = 2
    else
      out[#out + 1] = 0
    end
  else
    if act == 'e' then
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
    else
      if act == 'r' then
        local colon = string.find(extra, ':', 1, true)
        schedule(KEYS[3], KEYS[4], string.sub(extra, 1, colon - 1), string.sub(extra, colon + 1))
      elseif act == 'd' then
        redis.call('XADD', KEYS[2], '*', unpack(unnet(extra)))
      end
      if acked then dels[#dels + 1] = id else acks[#acks + 1] = id end
      if act == 'a' then
        record(task, rkey, ttl, status, data, ikey, tonumber(extra))
        ended = ended + 1
      elseif act == 'd' then
        record(task, rkey, ttl, status, data, ikey, 0)
        ended = ended + 1
      else
        record(task, rkey, ttl, status, data, 0, 0)
      end
    end
    out[#out + 1] = 1
  end
end
-- Acked entries are deleted: each queue has one consumer group, so they are never read again
-- and would otherwise pile up. One XACK and one XDEL for the batch, not one per entry.
if #acks > 0 then
  redis.call('XACK', stream, group, unpack(acks))
  redis.call('XDEL', stream, unpack(acks))
end
if #dels > 0 then redis.call('XDEL', stream, unpack(dels)) end
if ended > 0 then
  redis.call('INCRBY', KEYS[5], ended)
  redis.call('PEXPIRE', KEYS[5], 600000)
end
return out
