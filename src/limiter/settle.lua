
-- Settles a reservation on every limit it spent on, each on its own, mirroring
-- Window::give_back and Window::charge_up_to (src/limiter/window.rs): less than reserved,
-- the difference is taken back out of the slot the reserved units went into (the slot of
-- the reservation's own slot index, else the first whose last call is at or after the
-- reservation), if that slot still counts, and a slot left empty is removed; more, up to
-- the difference is spent now, as far as the limit plus the overdraft allows. A limit
-- whose stored window or slot length differs from the reservation's (the limit was
-- changed since) is left alone. Never refuses.
-- KEYS     two per limit, as for sliding_window.lua.
-- ARGV     n (limits), now_ms, reserved_at_ms, give_back, extra, overdraft, then limit_i,
--          window_ms_i, slot_ms_i per limit.
-- Returns  the extra units every limit took (the least any took; 0 when giving back).
local n = tonumber(ARGV[1])
local now, at = tonumber(ARGV[2]), tonumber(ARGV[3])
local back, extra, over = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local took = extra
for i = 1, n do
  local limit = tonumber(ARGV[4 + 3 * i])
  local w, g = tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  local h, l = KEYS[2 * i - 1], KEYS[2 * i]
  local shape = redis.call('HMGET', h, 'w', 'g')
  local changed = shape[1] and (tonumber(shape[1]) ~= w or tonumber(shape[2]) ~= g)
  if not changed then
    local s = load(h, l, w, g, now)
    if back > 0 then
      if now < at + w and s.bc ~= nil then
        local older = redis.call('LRANGE', s.l, 0, -1)
        local own = math.floor(at / g)
        -- Candidates in order: list entries, then the open slot (index #older + 1).
        local pick, first
        for j = 1, #older + 1 do
          local c, last
          if j <= #older then
            c, last = parse(older[j])
          else
            c, last = s.bc, s.bl
          end
          if c ~= nil and last >= at then
            first = first or j
            if math.floor(last / g) == own then
              pick = j
              break
            end
          end
        end
        pick = pick or first
        if pick ~= nil and pick <= #older then
          local c, last = parse(older[pick])
          local take = math.min(back, c)
          s.u = s.u - take
          if c - take > 0 then
            redis.call('LSET', s.l, pick - 1, fmt(c - take) .. ':' .. fmt(last))
          else
            redis.call('LSET', s.l, pick - 1, 'gone')
            redis.call('LREM', s.l, 1, 'gone')
          end
        elseif pick ~= nil then
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
      local take = math.max(0, math.min(extra, limit + over - s.u))
      took = math.min(took, take)
      if take > 0 then
        spend(s, now, take)
      elseif s.dirty then
        store(s)
      end
    end
  end
end
return took
