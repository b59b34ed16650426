-- Keygate's exact sliding window in sub-window slots (see src/limiter/window.rs), for every
-- limit of one call, decided and spent atomically: either every limit has room for the
-- cost and all are charged, or none is (a refused call spends nothing; it may drop slots
-- that have already left the window).
--
-- KEYS     two per limit. KEYS[2i-1], a hash: u (the cost all its slots hold), w (window
--          ms), g (slot ms), the newest ("open") slot's cost bc and last admitted ms bl,
--          and e (when the oldest slot leaves). KEYS[2i], a list of the older slots,
--          oldest first, each "<cost>:<last admitted ms>". All keys of a call share one
--          {hash tag}, so one Redis Cluster slot. A call in the open slot with nothing
--          leaving costs two commands (HMGET, HSET); a new slot pushes the open one onto
--          the list; slots leave from the list's front.
-- Calls are batched: one script run decides several calls one after the other, each
-- atomic (a script runs alone), so concurrent checks share one round trip.
-- ARGV     the number of calls; then per call: its number of limits, now_ms, cost,
--          dry_run (1/0), then limit_i, window_ms_i, slot_ms_i per limit. KEYS: every
--          call's keys, in order.
-- Returns  per call: the length of its reply, then {-1} if it failed, else {allowed (1/0), then per limit: n,
--          cost_1, last_1, ..., cost_n, last_n}: the state at now before this call's
--          spend. For a limit that refuses, its slots; otherwise one summary slot (the cost
--          that counts, and the newest slot's last), which is all the figures need.
-- The functions it uses are in window_slots.lua, sent before this file.

-- One call: its limits' keys start after KEYS[ko], its arguments after ARGV[ao].
local function call(ko, ao)
  local n = tonumber(ARGV[ao + 1])
  local now = tonumber(ARGV[ao + 2])
  local cost = tonumber(ARGV[ao + 3])
  local dry = ARGV[ao + 4] == '1'
  local allowed = 1
  local st = {}
  for i = 1, n do
    local limit = tonumber(ARGV[ao + 2 + 3 * i])
    local s = load(KEYS[ko + 2 * i - 1], KEYS[ko + 2 * i], tonumber(ARGV[ao + 3 + 3 * i]),
      tonumber(ARGV[ao + 4 + 3 * i]), now)
    s.refuses = s.u + cost > limit
    if s.refuses then
      allowed = 0
    end
    st[i] = s
  end
  local out = {allowed}
  for i = 1, n do
    local s = st[i]
    if s.refuses then
      local older = redis.call('LRANGE', s.l, 0, -1)
      out[#out + 1] = #older + (s.bc and 1 or 0)
      for j = 1, #older do
        local c, last = parse(older[j])
        out[#out + 1] = c or 0
        out[#out + 1] = last or 0
      end
      if s.bc then
        out[#out + 1] = s.bc
        out[#out + 1] = s.bl
      end
    elseif s.u > 0 then
      out[#out + 1] = 1
      out[#out + 1] = s.u
      out[#out + 1] = s.bl
    else
      out[#out + 1] = 0
    end
    if allowed == 1 and not dry and cost > 0 then
      spend(s, now, cost)
    elseif s.dirty then
      store(s)
    end
  end
  return out
end

-- A call that fails (a key of another type, written by someone else) answers {-1} and
-- leaves the other calls of the batch decided.
local replies = {}
local ko, ao = 0, 1
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[ao + 1])
  local ok, out = pcall(call, ko, ao)
  if not ok then
    out = {-1}
  end
  replies[#replies + 1] = #out
  for j = 1, #out do
    replies[#replies + 1] = out[j]
  end
  ko, ao = ko + 2 * n, ao + 4 + 3 * n
end
return replies
