-- Keygate's exact sliding window in sub-window slots (see src/limiter/window.rs), for every
-- limit of one call, decided and spent atomically: either every limit has room for the
-- cost and all are charged, or none is (a refused call writes nothing).
--
-- KEYS[i]  one hash per limit: fields w (window ms) and g (slot ms), and one field per
--          slot holding cost, named by the slot's index (now // g), valued
--          "<cost>:<last admitted ms>". All keys of a call share one {hash tag}, so one
--          Redis Cluster slot.
-- ARGV     now_ms, cost, dry_run (1/0), then limit_i, window_ms_i, slot_ms_i per KEYS[i].
-- Returns  {allowed (1/0), then per limit: n, cost_1, last_1, ..., cost_n, last_n}: the
--          slots that count at now, before this call's spend.
-- Exact while costs and instants stay below 2^53 (Lua numbers are doubles).
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local dry = ARGV[3] == '1'
local out = {1}
local todo = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 3 * i])
  local w = tonumber(ARGV[2 + 3 * i])
  local g = tonumber(ARGV[3 + 3 * i])
  local h = redis.call('HGETALL', KEYS[i])
  local hw, hg = nil, nil
  for j = 1, #h, 2 do
    if h[j] == 'w' then hw = tonumber(h[j + 1]) elseif h[j] == 'g' then hg = tonumber(h[j + 1]) end
  end
  -- Another window or slot length (a changed limit): every slot is stale.
  local stale = hw ~= w or hg ~= g
  local used, dead, live = 0, {}, {}
  local newest, newest_c, newest_last = nil, 0, nil
  for j = 1, #h, 2 do
    local f = h[j]
    if f ~= 'w' and f ~= 'g' then
      local c, last = string.match(h[j + 1], '^(%d+):(%-?%d+)$')
      c, last = tonumber(c), tonumber(last)
      if stale or c == nil or last + w <= now then
        dead[#dead + 1] = f
      else
        used = used + c
        live[#live + 1] = c
        live[#live + 1] = last
        if newest_last == nil or last > newest_last then
          newest, newest_c, newest_last = f, c, last
        end
      end
    end
  end
  if used + cost > limit then
    out[1] = 0
  end
  out[#out + 1] = #live / 2
  for j = 1, #live do
    out[#out + 1] = live[j]
  end
  todo[i] = {w, g, dead, newest, newest_c, newest_last}
end
if out[1] == 1 and not dry then
  for i = 1, #KEYS do
    local t = todo[i]
    local w, g, dead = t[1], t[2], t[3]
    if #dead > 0 then
      redis.call('HDEL', KEYS[i], unpack(dead))
    end
    local slot = math.floor(now / g)
    local field, c, last = string.format('%.0f', slot), cost, now
    -- The same slot, or a clock that stepped back: fold into the newest slot.
    if t[4] ~= nil and math.floor(t[6] / g) >= slot then
      field, c, last = t[4], t[5] + cost, math.max(t[6], now)
    end
    redis.call('HSET', KEYS[i], 'w', string.format('%.0f', w), 'g', string.format('%.0f', g),
      field, string.format('%.0f:%.0f', c, last))
    -- Every slot is gone one window after the newest.
    redis.call('PEXPIRE', KEYS[i], string.format('%.0f', last - now + w + 1000))
  end
end
return out
