-- Keygate's exact sliding window in sub-window slots (see src/limiter/window.rs), for every
-- limit of one call, decided and spent atomically: either every limit has room for the
-- cost and all are charged, or none is (a refused call spends nothing; it may drop slots
-- that have already left the window).
--
-- KEYS     two per limit: KEYS[2i-1] a hash with u (the cost its slots hold), w (window
--          ms) and g (slot ms); KEYS[2i] a list of its slots, oldest first, each
--          "<cost>:<last admitted ms>". All keys of a call share one {hash tag}, so one
--          Redis Cluster slot. Amortised O(1) per call: slots leave from the front, and
--          a call adds to the back.
-- ARGV     now_ms, cost, dry_run (1/0), then limit_i, window_ms_i, slot_ms_i per limit.
-- Returns  {allowed (1/0), then per limit: n, cost_1, last_1, ..., cost_n, last_n}: the
--          state at now before this call's spend. For a limit that refuses, its slots;
--          otherwise one summary slot (the cost that counts, and the newest slot's last),
--          which is all the figures need.
-- Exact while costs and instants stay below 2^53 (Lua numbers are doubles).
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local dry = ARGV[3] == '1'
local function parse(s)
  local c, last = string.match(s, '^(%d+):(%-?%d+)$')
  return tonumber(c), tonumber(last)
end
local function fmt(n)
  return string.format('%.0f', n)
end
local allowed = 1
local st = {}
for i = 1, #KEYS / 2 do
  local h, l = KEYS[2 * i - 1], KEYS[2 * i]
  local limit = tonumber(ARGV[1 + 3 * i])
  local w = tonumber(ARGV[2 + 3 * i])
  local g = tonumber(ARGV[3 + 3 * i])
  local m = redis.call('HMGET', h, 'u', 'w', 'g')
  local used = tonumber(m[1]) or 0
  local dirty = false
  if tonumber(m[2]) ~= w or tonumber(m[3]) ~= g then
    -- New, or another window or slot length (a changed limit): start afresh.
    redis.call('DEL', l)
    used, dirty = 0, true
  end
  while used > 0 do
    local front = redis.call('LINDEX', l, 0)
    if not front then
      used = 0
      break
    end
    local c, last = parse(front)
    if c ~= nil and last + w > now then
      break
    end
    redis.call('LPOP', l)
    used, dirty = used - (c or 0), true
  end
  if used <= 0 then
    used = 0
  end
  local refuses = used + cost > limit
  if refuses then
    allowed = 0
  end
  st[i] = {h, l, w, g, used, dirty, refuses}
end
local out = {allowed}
for i = 1, #st do
  local h, l, w, g, used, dirty, refuses = unpack(st[i])
  local back = nil
  if used > 0 then
    back = redis.call('LINDEX', l, -1)
  end
  if refuses then
    local slots = redis.call('LRANGE', l, 0, -1)
    out[#out + 1] = #slots
    for j = 1, #slots do
      local c, last = parse(slots[j])
      out[#out + 1] = c or 0
      out[#out + 1] = last or 0
    end
  elseif back then
    local _, last = parse(back)
    out[#out + 1] = 1
    out[#out + 1] = used
    out[#out + 1] = last or now
  else
    out[#out + 1] = 0
  end
  if allowed == 1 and not dry then
    local slot, newest = math.floor(now / g), now
    local bc, blast = nil, nil
    if back then
      bc, blast = parse(back)
    end
    -- The same slot, or a clock that stepped back: fold into the newest slot.
    if blast ~= nil and math.floor(blast / g) >= slot then
      newest = math.max(blast, now)
      redis.call('LSET', l, -1, fmt(bc + cost) .. ':' .. fmt(newest))
    else
      redis.call('RPUSH', l, fmt(cost) .. ':' .. fmt(now))
    end
    redis.call('HSET', h, 'u', fmt(used + cost), 'w', fmt(w), 'g', fmt(g))
    -- Every slot is gone one window after the newest.
    local ttl = fmt(newest - now + w + 1000)
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', l, ttl)
  elseif dirty and used > 0 then
    redis.call('HSET', h, 'u', fmt(used), 'w', fmt(w), 'g', fmt(g))
  elseif dirty then
    redis.call('DEL', h, l)
  end
end
return out
