-- Keygate's two-window weighted sliding counter (see src/limiter/mod.rs), for every limit
-- of one key, decided and spent atomically: either every limit has room for the cost and
-- all are charged, or none is.
--
-- KEYS[i]  one hash per limit, fields w (window ms), s (window start), c (current count),
--          p (previous count); all keys of a call share one {hash tag}, so one Redis
--          Cluster slot.
-- ARGV     now_ms, cost, dry_run (1/0), then limit_i, window_ms_i for each KEYS[i].
-- Returns  {allowed (1/0), s_1, c_1, p_1, s_2, c_2, p_2, ...}: each window rolled to now,
--          before this call's spend.
-- Exact while limit * window_ms < 2^53 (Lua numbers are doubles).
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local dry = ARGV[3] == '1'
local out = {1}
local state = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * i])
  local w = tonumber(ARGV[3 + 2 * i])
  local h = redis.call('HMGET', KEYS[i], 'w', 's', 'c', 'p')
  local s, c, p = tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
  local aligned = now - (now % w)
  if tonumber(h[1]) ~= w or aligned >= s + 2 * w then
    s, c, p = aligned, 0, 0
  elseif aligned > s then
    s, c, p = aligned, 0, c
  end
  if p * (w - (now - s)) + (c + cost) * w > limit * w then
    out[1] = 0
  end
  state[i] = {s, c, p, w}
  out[#out + 1] = s
  out[#out + 1] = c
  out[#out + 1] = p
end
if out[1] == 1 and not dry then
  for i = 1, #KEYS do
    local st = state[i]
    redis.call('HSET', KEYS[i], 'w', st[4], 's', st[1], 'c', st[2] + cost, 'p', st[3])
    redis.call('PEXPIRE', KEYS[i], 2 * st[4] + 1000)
  end
end
return out
