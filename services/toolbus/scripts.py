"""The Lua scripts executors run: steps that must happen together or not at all.

Redis runs a script atomically, so no other client sees a state in between. redis-py's
``register_script`` sends EVALSHA and loads the script again after a restart (NOSCRIPT).
"""

from __future__ import annotations

from typing import Final

COMPLETE_CALL: Final = """
-- Complete one tool call, at most once per call id, and acknowledge its entry.
-- KEYS: 1 the call's done key, 2 the requesting host's result stream, 3 the call stream.
-- ARGV: 1 entry id, 2 group, 3 done-key ttl (s), 4 result stream maxlen,
--       5 result stream ttl (ms), 6 executor name, 7.. the reply's field/value pairs.
-- The reply is written only by the delivery that sets the done key: a call re-run after its
-- entry was reclaimed, or delivered twice, is answered once. The entry is acknowledged in the
-- same step, and so never before its reply exists: if we die before this script, the entry
-- stays pending and another executor reclaims it; if we die after, the work is complete.
local first = redis.call('SET', KEYS[1], ARGV[6], 'NX', 'EX', ARGV[3])
if first then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 7))
  -- A result stream whose host died is never read again; let it expire.
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
if first then
  return 1
end
return 0
"""

FORGET_CONSUMER: Final = """
-- Delete consumer ARGV[2] of group ARGV[1] on stream KEYS[1] if it still holds no entries and
-- has been idle for at least ARGV[3] ms. Checked and deleted in one step because XGROUP
-- DELCONSUMER drops the consumer's pending entries: an entry it read between a separate check
-- and the delete would be lost, never reclaimed.
-- Returns 1 if deleted, 0 if not.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local name, pending, idle
  for i = 1, #consumer, 2 do
    local key = consumer[i]
    if key == 'name' then
      name = consumer[i + 1]
    elseif key == 'pending' then
      pending = consumer[i + 1]
    elseif key == 'idle' then
      idle = consumer[i + 1]
    end
  end
  if name == ARGV[2] then
    if pending == 0 and idle >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""
