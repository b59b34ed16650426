-- The slot layout of Keygate's exact sliding window in Redis (see src/limiter/window.rs),
-- shared by the decision script (sliding_window.lua) and the settlement of reservations
-- (settle.lua), each of which is sent as this file followed by its own.
--
-- Per limit, two keys. The hash: u (the cost all its slots hold), w (window ms), g (slot
-- ms), the newest ("open") slot's cost bc and last admitted ms bl, and e (when the oldest
-- slot leaves). The list: the older slots, oldest first, each "<cost>:<last admitted ms>".
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

-- Spends cost at now on a loaded limit (and writes it back).
local function spend(s, now, cost)
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
end

-- Writes back a loaded limit whose expiry dropped slots.
local function store(s)
  if s.u > 0 then
    redis.call('HSET', s.h, 'u', fmt(s.u), 'e', fmt(s.e), 'w', fmt(s.w), 'g', fmt(s.g))
  else
    redis.call('DEL', s.h, s.l)
  end
end

