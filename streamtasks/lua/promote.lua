-- Move delayed messages that are due into the stream; atomic, so however many workers call it,
-- each message is moved exactly once.
-- KEYS: delayed zset, stream.  ARGV: now ms, most to move.
-- Returns {moved, ms of the next due message or -1}.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, blob in ipairs(due) do
  local ok, fields = pcall(unnet, blob)
  if not ok or #fields == 0 or #fields % 2 ~= 0 then fields = {'raw', blob} end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], blob)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] == nil then return {#due, -1} end
return {#due, tonumber(nxt[2])}
