-- Renew (idle 0) or hand back (idle huge) entries this consumer still owns, without raising their
-- delivery count (JUSTID). Renewing is the heartbeat that keeps a long task from being reclaimed;
-- handing back lets another worker's next reclaim pass take the entry at once.
-- KEYS: stream.  ARGV: group, consumer, idle ms, id, ...
-- Returns the ids this consumer no longer owns.
local group, me, idle = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV do
  if owner(KEYS[1], group, ARGV[i]) == me then
    redis.call('XCLAIM', KEYS[1], group, me, 0, ARGV[i], 'IDLE', idle, 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
