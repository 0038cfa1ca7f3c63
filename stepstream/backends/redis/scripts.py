"""The Lua scripts: one commit that applies a change with its events atomically, and the reads
that must see one seq (a job with its manager and steps; the managers a stream starts with).

Keys are built from a prefix inside the scripts, so this needs one Redis server (or Valkey), not
a cluster.
"""

COMMIT = r"""
-- ARGV[1]: key prefix; ARGV[2]: the change (JSON); ARGV[3..]: each event's data, stored as is.
local p = ARGV[1]
local c = cjson.decode(ARGV[2])
-- 0. Once: a change resent after a lost reply is not applied twice (and not refused by guards
--    that its own first commit moved). Each try of a change has its own token, kept ten minutes.
local once = p .. 'once:' .. c.once
if not redis.call('SET', once, '1', 'NX', 'EX', 600) then return {'done'} end
-- 1. Guards: every field the change was computed from, as it was read, by job. Any difference:
--    nothing is written and the caller reads again.
for _, g in ipairs(c.guards) do
  local now = redis.call('HMGET', p .. 'j:' .. g[1], unpack(g[2]))
  for k = 1, #g[2] do
    if now[k] ~= g[3][k] then
      redis.call('DEL', once)
      return {'conflict', g[1] .. ' ' .. g[2][k]}
    end
  end
end
-- 3. The jobs: fields set, counters moved (commutative, so concurrent changes need no guard).
for _, s in ipairs(c.set) do redis.call('HSET', p .. 'j:' .. s[1], unpack(s[2])) end
for _, s in ipairs(c.incr) do redis.call('HINCRBY', p .. 'j:' .. s[1], s[2], s[3]) end
for _, s in ipairs(c.kids) do
  local n = redis.call('RPUSH', p .. 'kids:' .. s[1], s[2])
  redis.call('HSET', p .. 'j:' .. s[2], 'position', n - 1)
end
for _, s in ipairs(c.zadd) do redis.call('ZADD', p .. s[1], s[2], s[3]) end
for _, s in ipairs(c.zrem) do redis.call('ZREM', p .. s[1], s[2]) end
for _, s in ipairs(c.del) do redis.call('DEL', p .. s) end
for _, s in ipairs(c.counters) do redis.call('HINCRBY', p .. s[1], s[2], s[3]) end
-- 4. The events, numbered by the one seq: seq order is commit order. Counters an event shows are
--    read now (as committed) less what this change moved them after that event.
local n = #c.events
local base = redis.call('INCRBY', p .. 'seq', n) - n
for i, e in ipairs(c.events) do
  local fill = {}
  for _, f in ipairs(e[4]) do
    local v = redis.call('HMGET', p .. 'j:' .. f[1], 'total', 'c0', 'c1', 'c2', 'c3', 'c4', 'log_count')
    for k = 1, 7 do fill[#fill + 1] = string.format('%d', (tonumber(v[k]) or 0) - f[k + 1]) end
  end
  local id = string.format('%d-0', base + i)
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', c.keep, id,
             't', e[1], 'm', e[2], 'k', e[3], 'd', ARGV[2 + i], 'f', table.concat(fill, ','))
  if e[5] then redis.call('XADD', p .. 'logs:' .. e[5], 'MAXLEN', '~', c.logs, id, 'd', ARGV[2 + i]) end
  if e[1] == 'end' or e[1] == 'job_deleted' then
    redis.call('XADD', p .. 'ends', 'MAXLEN', '~', 1000, id, 'm', e[2])  -- what `wait` blocks on
  end
end
for _, s in ipairs(c.seqset) do redis.call('HSET', p .. 'j:' .. s[1], s[2], string.format('%d', base + s[3])) end
-- 5. Work this change made runnable (a step's handler, a child's attempt), for any worker.
for _, w in ipairs(c.work) do redis.call('XADD', p .. 'work', '*', unpack(w)) end
-- 6. The work entries this change ends are done: acknowledged with it.
if c.ack then
  redis.call('XACK', p .. 'work', 'workers', unpack(c.ack))
  redis.call('XDEL', p .. 'work', unpack(c.ack))
end
local probe = {}
if c.probe then
  probe = redis.call('HMGET', p .. 'j:' .. c.probe, 'status', 'handler_returned', 'c0', 'c1')
end
return {'ok', string.format('%d', base + n), probe}
"""

_GRAPH = r"""
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
-- Appends to `out` the manager of job `id` (a hash as a flat list), its steps, then `id` and each of
-- `extra` that is a child of it. Nothing if `id` does not exist.
local function graph(p, id, extra, out)
  local first = redis.call('HGETALL', p .. 'j:' .. id)
  if #first == 0 then return end
  local manager_id = cjson.decode(field(first, 'manager'))
  local manager = first
  if manager_id ~= id then manager = redis.call('HGETALL', p .. 'j:' .. manager_id) end
  if #manager == 0 then return end
  out[#out + 1] = manager
  for _, step_id in ipairs(cjson.decode(field(manager, 'steps'))) do
    out[#out + 1] = redis.call('HGETALL', p .. 'j:' .. step_id)
  end
  if field(first, 'kind') == '"child"' then out[#out + 1] = first end
  for _, child_id in ipairs(extra) do
    if child_id ~= id then
      local job = redis.call('HGETALL', p .. 'j:' .. child_id)
      if #job > 0 and field(job, 'kind') == '"child"' then out[#out + 1] = job end
    end
  end
end
"""

LOAD = _GRAPH + r"""
-- ARGV[1]: key prefix; ARGV[2]: a job id; ARGV[3..]: ids of children of the same manager.
-- Returns {seq, manager, step 1 … step N, then each child asked for (ARGV[2] too, if a child)}.
local out = {redis.call('GET', ARGV[1] .. 'seq') or '0'}
graph(ARGV[1], ARGV[2], {unpack(ARGV, 3)}, out)
return out
"""

TAKE = _GRAPH + r"""
-- ARGV[1]: key prefix; ARGV[2]: the consumer group; ARGV[3]: this consumer; ARGV[4]: how many;
-- ARGV[5]: a manager whose jobs the caller holds ('' if none).
-- New work entries for this consumer (XREADGROUP, not blocking), each read with its job:
-- {{entry id, entry fields, manager, step 1 … step N, the job if a child}, …}, or for a child of
-- the manager ARGV[5], {entry id, entry fields, the child}.
local p = ARGV[1]
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', p .. 'work', '>')
local out = {}
if not reply then return out end
for _, entry in ipairs(reply[1][2]) do
  local one = {entry[1], entry[2]}
  local id = field(entry[2], 'j')
  if id then
    local job = redis.call('HGETALL', p .. 'j:' .. id)
    if ARGV[5] ~= '' and #job > 0 and field(job, 'kind') == '"child"'
        and field(job, 'manager') == cjson.encode(ARGV[5]) then
      one[3] = job
    else
      graph(p, id, {}, one)
    end
  end
  out[#out + 1] = one
end
return out
"""

LOAD_MANAGERS = r"""
-- ARGV[1]: key prefix; ARGV[2]: how many recently finished managers (-1: the ids ARGV[3..]).
-- Returns {seq, {manager, its steps…}, …}: the running managers and the recent finished ones.
local p = ARGV[1]
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
local out = {redis.call('GET', p .. 'seq') or '0'}
local ids = {}
local recent = tonumber(ARGV[2])
if recent >= 0 then
  for _, id in ipairs(redis.call('ZRANGE', p .. 'running', 0, -1)) do ids[#ids + 1] = id end
  if recent > 0 then
    for _, id in ipairs(redis.call('ZREVRANGE', p .. 'finished', 0, recent - 1)) do ids[#ids + 1] = id end
  end
else
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
for _, id in ipairs(ids) do
  local manager = redis.call('HGETALL', p .. 'j:' .. id)
  if #manager > 0 then
    local one = {manager}
    for _, step_id in ipairs(cjson.decode(field(manager, 'steps'))) do
      one[#one + 1] = redis.call('HGETALL', p .. 'j:' .. step_id)
    end
    out[#out + 1] = one
  end
end
return out
"""

PRUNE = r"""
-- ARGV[1]: key prefix; ARGV[2]: finished managers to keep (-1: any number); ARGV[3]: drop those
-- that ended before this time (-1: none). Takes them out of the indexes, all at once (so two
-- processes never both count the same excess), and notes each, with its steps, in the `dropping`
-- hash until its data is deleted. Returns that hash (id, steps, …): the ones taken out now, and any
-- that a process stopped before it had deleted.
local p = ARGV[1]
local gone = {}
local keep = tonumber(ARGV[2])
if keep >= 0 then
  local excess = redis.call('ZCARD', p .. 'finished') - keep
  if excess > 0 then gone = redis.call('ZRANGE', p .. 'finished', 0, excess - 1) end
end
if tonumber(ARGV[3]) >= 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'ended', '-inf', '(' .. ARGV[3])) do gone[#gone + 1] = id end
end
for _, id in ipairs(gone) do
  if redis.call('ZREM', p .. 'finished', id) == 1 then
    redis.call('ZREM', p .. 'managers', id)
    redis.call('ZREM', p .. 'ended', id)
    local status = redis.call('HGET', p .. 'j:' .. id, 'status')
    if status then redis.call('HINCRBY', p .. 'statuses', cjson.decode(status), -1) end
    redis.call('HSET', p .. 'dropping', id, redis.call('HGET', p .. 'j:' .. id, 'steps') or '[]')
  end
end
return redis.call('HGETALL', p .. 'dropping')
"""
