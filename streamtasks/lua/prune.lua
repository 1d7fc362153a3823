-- Remove consumers that own no entries and have been idle longer than ARGV[2] ms. Checked and
-- deleted in one step, so a consumer that just took an entry is never removed.
-- KEYS: stream.  ARGV: group, idle ms, this consumer.  Returns the number removed.
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
