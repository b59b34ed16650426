
-- Settles a reservation on every limit it spent on, each on its own (see Window::give_back
-- and Window::charge_up_to in src/limiter/window.rs, which this mirrors): less than
-- reserved, the difference is taken back out of the slot the reserved units went into
-- (the first slot whose last call is at or after the reservation), if that slot still
-- counts; more, up to the difference is spent now, as far as the limit plus the overdraft
-- allows. Never refuses.
-- KEYS     two per limit, as for sliding_window.lua.
-- ARGV     n (limits), now_ms, reserved_at_ms, give_back, extra, overdraft, then limit_i,
--          window_ms_i, slot_ms_i per limit.
local n = tonumber(ARGV[1])
local now, at = tonumber(ARGV[2]), tonumber(ARGV[3])
local back, extra, over = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 1, n do
  local limit = tonumber(ARGV[4 + 3 * i])
  local w, g = tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  local s = load(KEYS[2 * i - 1], KEYS[2 * i], w, g, now)
  if back > 0 then
    if now < at + w and s.bc ~= nil then
      local older = redis.call('LRANGE', s.l, 0, -1)
      local found = false
      for j = 1, #older do
        local c, last = parse(older[j])
        if c ~= nil and last >= at then
          local take = math.min(back, c)
          redis.call('LSET', s.l, j - 1, fmt(c - take) .. ':' .. fmt(last))
          s.u = s.u - take
          found = true
          break
        end
      end
      if not found and s.bl >= at then
        local take = math.min(back, s.bc)
        s.bc = s.bc - take
        s.u = s.u - take
        redis.call('HSET', s.h, 'bc', fmt(s.bc))
      end
      store(s)
    elseif s.dirty then
      store(s)
    end
  elseif extra > 0 then
    local take = math.min(extra, limit + over - s.u)
    if take > 0 then
      spend(s, now, take)
    elseif s.dirty then
      store(s)
    end
  end
end
return 1
