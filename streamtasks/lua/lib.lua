-- Shared helpers, prepended to every script when it is loaded.

-- Redis runs Lua 5.1, where unpack is global; Lua 5.4 (fakeredis via lupa) keeps it in table.
local unpack = unpack or table.unpack

-- Split a netstring blob ("3:abc2:de") into a Lua array of strings.
local function unnet(blob)
  local out, pos = {}, 1
  while pos <= #blob do
    local colon = string.find(blob, ':', pos, true)
    local n = tonumber(string.sub(blob, pos, colon - 1))
    out[#out + 1] = string.sub(blob, colon + 1, colon + n)
    pos = colon + n + 1
  end
  return out
end

local function net(values)
  local parts = {}
  for i, v in ipairs(values) do parts[i] = #v .. ':' .. v end
  return table.concat(parts)
end

-- Add a message to the delayed set. When it comes due sooner than any other, say so on the wake
-- stream: workers wait on it with a blocking XREAD, so they promote on time without polling.
-- MAXLEN 1: a worker only needs the latest announcement, then asks promote for the next due time.
-- pcall: the announcement only hastens a promotion (workers still look every promote_interval),
-- so a wake key spoiled by someone else must not fail the step half-applied.
local function schedule(delayed, wake, due, blob)
  redis.call('ZADD', delayed, due, blob)
  if redis.call('ZRANGE', delayed, 0, 0)[1] == blob then
    redis.pcall('XADD', wake, 'MAXLEN', 1, '*', 'due', due)
  end
end

-- The consumer that holds entry `id` in the group's pending list, or false if nobody does.
-- Every step that finishes an entry checks this first: that is the fence that stops a worker
-- whose entry was reclaimed by another from acking, retrying or dead-lettering it.
local function owner(stream, group, id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] == nil then return false end
  return p[1][2]
end

-- A run of task `id` under idempotency hash `ikey` ended. A success marks the key done; a failure
-- or dead letter marks it released (a new call may take it; a replay of this task takes it back)
-- unless its task keeps failed keys. Only while the key still names this task: one released
-- early may name another task by now.
local function idempotency_ended(ikey, id, succeeded, ttl)
  if redis.call('HGET', ikey, 'id') ~= id then return end
  if succeeded then
    redis.call('HSET', ikey, 'done', '1')
    if redis.call('PTTL', ikey) < 0 then redis.call('PEXPIRE', ikey, ttl) end
  elseif redis.call('HGET', ikey, 'keep') ~= '1' then
    redis.call('HSET', ikey, 'released', '1')
  end
end
