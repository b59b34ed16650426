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
-- Exact while costs and instants stay below 2^53 (Lua numbers are doubles).
local function parse(s)
  local c, last = string.match(s, '^(%d+):(%-?%d+)$')
  return tonumber(c), tonumber(last)
end
local function fmt(n)
  return string.format('%.0f', n)
end

-- One limit's state at now: older slots that have left the window are dropped.
local function load(h, l, w, g, now)
  local m = redis.call('HMGET', h, 'u', 'w', 'g', 'bc', 'bl', 'e')
  local s = {h = h, l = l, w = w, g = g, u = tonumber(m[1]) or 0,
             bc = tonumber(m[4]), bl = tonumber(m[5]), e = tonumber(m[6]) or 0, dirty = false}
  if s.bc == nil or s.bl == nil then
    -- New (or not ours): start afresh.
    redis.call('DEL', h, l)
    s.u, s.bc, s.bl, s.e = 0, nil, nil, 0
    return s
  end
  if tonumber(m[2]) ~= w or tonumber(m[3]) ~= g then
    -- Another window or slot length (a changed limit, or replicas that have not all seen
    -- the change yet): a slot's last call is as true under any window, so the slots stay;
    -- they are rescanned against this window now.
    s.e, s.dirty = 0, true
  end
  if s.u > 0 and now >= s.e then
    s.dirty = true
    while true do
      local front = redis.call('LINDEX', l, 0)
      if not front then
        -- Only the open slot is left (its cost is then all of u, even had the list been
        -- lost).
        s.u = s.bc
        if s.bl + w <= now then
          s.u, s.bc, s.bl, s.e = 0, nil, nil, 0
        else
          s.e = s.bl + w
        end
        break
      end
      local c, last = parse(front)
      if c ~= nil and last + w > now then
        s.e = last + w
        break
      end
      redis.call('LPOP', l)
      s.u = s.u - (c or 0)
    end
  end
  return s
end

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
      local slot = math.floor(now / s.g)
      if s.bc ~= nil and math.floor(s.bl / s.g) >= slot then
        -- The open slot (or a clock that stepped back): add to it.
        redis.call('HSET', s.h, 'u', fmt(s.u + cost), 'bc', fmt(s.bc + cost),
          'bl', fmt(math.max(s.bl, now)), 'e', fmt(s.e), 'w', fmt(s.w), 'g', fmt(s.g))
      else
        if s.bc ~= nil then
          redis.call('RPUSH', s.l, fmt(s.bc) .. ':' .. fmt(s.bl))
        else
          s.e = now + s.w
        end
        redis.call('HSET', s.h, 'u', fmt(s.u + cost), 'w', fmt(s.w), 'g', fmt(s.g),
          'bc', fmt(cost), 'bl', fmt(now), 'e', fmt(s.e))
        -- Every slot is gone one window after the newest, whose calls end within g.
        local ttl = fmt(s.w + s.g + 1000)
        redis.call('PEXPIRE', s.h, ttl)
        redis.call('PEXPIRE', s.l, ttl)
      end
    elseif s.dirty then
      if s.u > 0 then
        redis.call('HSET', s.h, 'u', fmt(s.u), 'e', fmt(s.e), 'w', fmt(s.w), 'g', fmt(s.g))
      else
        redis.call('DEL', s.h, s.l)
      end
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
