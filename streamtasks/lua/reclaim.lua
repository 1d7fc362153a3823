-- Claim entries abandoned by other consumers (crashed, killed, or that handed them back), once
-- idle past their task's visibility timeout; dead-letter those delivered max_deliveries times.
-- XPENDING + XCLAIM rather than XAUTOCLAIM because the timeout is per task, so each entry's idle
-- time must be compared with its own task's timeout before it is taken.
-- KEYS: stream, dlq, this minute's count of ended runs (as settle.lua keeps it)
-- ARGV: group, consumer, cursor, count, max deliveries, default timeout ms, own (1: also take
--       this consumer's own entries, whatever their idle time), now ms, result key prefix,
--       result ttl ms, DEAD result data, most entries to claim, idempotency key prefix, then
--       task name, timeout ms, ...
-- A dead-lettered entry's DEAD result goes to prefix .. task id, and its idempotency key is freed
-- as a settled dead letter's is: keys the script builds, which share the queue's hash tag with
-- KEYS and so live on the same cluster slot.
-- Returns {next cursor ('-' when the scan wrapped), {id, fields, ...},
--          {task id, task name, attempt, deliveries, ...} of each entry dead-lettered}.
-- Copy entry `id` of `stream` to `dlq` with the failure fields appended.
local function bury(stream, dlq, id, extra)
  local fields = {}
  local found = redis.call('XRANGE', stream, id, id)
  if found[1] ~= nil then fields = found[1][2] end
  for _, v in ipairs(extra) do fields[#fields + 1] = v end
  redis.call('XADD', dlq, '*', unpack(fields))
end

-- Ack, then delete: acked entries are never read again (one consumer group per queue).
local function finish(stream, group, id)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end

local group, me, cursor, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local max_deliveries, default_timeout, own = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local timeouts = {}
local limit = tonumber(ARGV[12])
for i = 14, #ARGV, 2 do timeouts[ARGV[i]] = tonumber(ARGV[i + 1]) end
local pending = redis.call('XPENDING', KEYS[1], group, cursor, '+', count)
local claimed, dead, last = {}, {}, nil
for _, p in ipairs(pending) do
  if #claimed >= 2 * limit then break end
  local id, holder, idle, deliveries = p[1], p[2], p[3], p[4]
  last = id
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  if entry == nil then
    -- Trimmed away while pending: there is nothing left to run.
    redis.call('XACK', KEYS[1], group, id)
  else
    local timeout = default_timeout
    local fields = entry[2]
    local f = {}
    for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
    if f.task and timeouts[f.task] then timeout = timeouts[f.task] end
    local mine = holder == me
    if (own and mine) or (not mine and idle >= timeout) then
      if deliveries >= max_deliveries then
        -- Deliveries of this entry are runs of one attempt: a worker died in each.
        local attempt = tonumber(f.attempt)
        if f.schema_version == '1' then attempt = (attempt or 0) + 1 end  -- counted from 0
        attempt = attempt or 1
        bury(KEYS[1], KEYS[2], id, {
          'error_type', 'MaxDeliveriesExceeded',
          'error', 'delivered ' .. deliveries .. ' times without finishing; a worker died on each',
          'traceback', '', 'attempts', tostring(attempt), 'deliveries', tostring(deliveries),
          'worker', holder, 'failed_at', ARGV[8], 'origin_stream', KEYS[1], 'origin_id', id})
        finish(KEYS[1], group, id)
        redis.call('INCR', KEYS[3])
        redis.call('PEXPIRE', KEYS[3], 600000)
        if f.id then
          local rkey = ARGV[9] .. f.id
          redis.call('XADD', rkey, '*', 'status', 'DEAD', 'data', ARGV[11])
          redis.call('PEXPIRE', rkey, ARGV[10])
          if f.idempotency_key then
            idempotency_ended(ARGV[13] .. f.idempotency_key, f.id, false, 0)
          end
        end
        for _, v in ipairs({f.id or id, f.task or '?', tostring(attempt), tostring(deliveries)}) do
          dead[#dead + 1] = v
        end
      else
        redis.call('XCLAIM', KEYS[1], group, me, 0, id)
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = fields
      end
    end
  end
end
-- Resume after the last entry looked at, or start over once the whole list was seen.
local nxt = '-'
if last ~= nil and (last ~= pending[#pending][1] or #pending == count) then nxt = '(' .. last end
return {nxt, claimed, dead}
