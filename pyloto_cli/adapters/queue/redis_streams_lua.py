"""The Lua scripts behind `RedisStreamsQueue`: every queue operation is one atomic script.

Every script gets the key prefix as ARGV[1] and builds its key names from it (so the queue
needs one Redis, or a Sentinel-managed primary; not Redis Cluster). Keys, for prefix P:

    P..'stream'        stream of leasable conversation heads, field `id`; consumer group `workers`
    P..'t:'..id        hash per live task: payload, conv, enq, att, tok, exp, err, fail, eid
    P..'c:'..conv      list of the conversation's live task ids, oldest first (its FIFO)
    P..'lock:'..conv   the conversation's lease: the holder's token, SET NX-style with PX
    P..'live'          zset id -> enqueued_at       P..'leased'   zset id -> lease expiry
    P..'delayed'       zset id -> retry due time    P..'tried'    set of ids leased at least once
    P..'dead'          stream of dead letters       P..'deadidx'  hash id -> dead entry id
    P..'hb:'..consumer a live consumer's heartbeat (PX: its owner TTL, renewed while it runs)
    P..'owners'        set of consumers that keep a heartbeat (one without is never judged)

Invariant: only a conversation's head (first in its list) is ever in the stream, so the stream
never offers two tasks of one conversation. `delayed` holds heads waiting for a retry and may
also hold followers (see FOLLOW) nacked behind their head; LEASE publishes only heads from it.
Times (`now`, expiries) come from the adapter's clock as decimal strings and are stored as
given, so they round-trip exactly; the lock's PX and XAUTOCLAIM's min-idle use the server's clock.
"""

from __future__ import annotations

from pyloto_cli.adapters.redis_db import LuaScript

_PRELUDE = """
local P = ARGV[1]
local STREAM = P .. 'stream'
local GROUP = 'workers'
local function tkey(id) return P .. 't:' .. id end
local function ckey(conv) return P .. 'c:' .. conv end
local function lkey(conv) return P .. 'lock:' .. conv end
local function hbkey(consumer) return P .. 'hb:' .. consumer end

-- a consumer that keeps a heartbeat and whose heartbeat has lapsed: its process is gone
local function gone(consumer)
  return redis.call('SISMEMBER', P .. 'owners', consumer) == 1
      and redis.call('EXISTS', hbkey(consumer)) == 0
end

local function publish(id)
  local eid = redis.call('XADD', STREAM, '*', 'id', id)
  redis.call('HSET', tkey(id), 'eid', eid)
end

local function drop_entry(eid)
  redis.call('XACK', STREAM, GROUP, eid)
  redis.call('XDEL', STREAM, eid)
end

local function unstream(t)
  local eid = redis.call('HGET', t, 'eid')
  if eid then
    drop_entry(eid)
    redis.call('HDEL', t, 'eid')
  end
end

local function owned(id, token)
  local t = tkey(id)
  if redis.call('HGET', t, 'tok') == token then return t end
  return nil
end

local function unlock(t, token)
  local lk = lkey(redis.call('HGET', t, 'conv'))
  if redis.call('GET', lk) == token then redis.call('DEL', lk) end
end

local function insert(id, conv, payload, now, err)
  local t = tkey(id)
  if redis.call('EXISTS', t) == 1 or redis.call('HEXISTS', P .. 'deadidx', id) == 1 then
    return 0
  end
  redis.call('HSET', t, 'payload', payload, 'conv', conv, 'enq', now, 'att', 0)
  if err then redis.call('HSET', t, 'err', err) end
  redis.call('ZADD', P .. 'live', now, id)
  if redis.call('RPUSH', ckey(conv), id) == 1 then publish(id) end
  return 1
end

local function remove(id, t, token)
  local conv = redis.call('HGET', t, 'conv')
  unlock(t, token)
  unstream(t)
  redis.call('LREM', ckey(conv), 1, id)
  redis.call('DEL', t)
  redis.call('ZREM', P .. 'live', id)
  redis.call('ZREM', P .. 'leased', id)
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('SREM', P .. 'tried', id)
  local nxt = redis.call('LINDEX', ckey(conv), 0)
  if nxt and redis.call('HEXISTS', tkey(nxt), 'eid') == 0
      and not redis.call('ZSCORE', P .. 'delayed', nxt) then
    publish(nxt)
  end
end
"""

# ARGV: prefix, now, then (id, conversation, payload) per task -> 1 (stored) or 0 per task
ENQUEUE = LuaScript(
    _PRELUDE
    + """
local out = {}
for i = 3, #ARGV, 3 do
  out[#out + 1] = insert(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[2])
end
return out
"""
)

# ARGV: prefix, consumer, now, expires_at, lease_ms, min_idle_ms, max_items, owner_ttl_ms,
#       cursor, tokens...
# -> {next_cursor, {id, payload, attempt, token, previous_failure, how}...}
# how: 0 a new lease, 1 taken over from an expired lease, 2 from a consumer that is gone
# (its pending entries are claimed first, whatever their lease time says)
LEASE = LuaScript(
    _PRELUDE
    + """
local consumer, now, exp, lease_ms = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_items = tonumber(ARGV[7])
local nnow = tonumber(now)
local function is_head(id)
  local conv = redis.call('HGET', tkey(id), 'conv')
  return not conv or redis.call('LINDEX', ckey(conv), 0) == id
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 1000)) do
  if is_head(id) then  -- a nacked follower waits until it is its conversation's head
    redis.call('ZREM', P .. 'delayed', id)
    publish(id)
  end
end

redis.call('SET', hbkey(consumer), '1', 'PX', ARGV[8])
redis.call('SADD', P .. 'owners', consumer)

local out = {}
local function grant(eid, fields, orphaned)
  local id = fields and fields[2]
  local t = id and tkey(id)
  if not t or redis.call('HGET', t, 'eid') ~= eid then
    drop_entry(eid)
    return
  end
  local tok = redis.call('HGET', t, 'tok')
  if tok and not orphaned and tonumber(redis.call('HGET', t, 'exp')) > nnow then return end
  local lk = lkey(redis.call('HGET', t, 'conv'))
  local holder = redis.call('GET', lk)
  if holder and holder ~= tok then return end
  local token = ARGV[9 + #out + 1]
  redis.call('SET', lk, token, 'PX', lease_ms)
  local att = redis.call('HINCRBY', t, 'att', 1)
  redis.call('HSET', t, 'tok', token, 'exp', exp, 'own', consumer)
  redis.call('ZADD', P .. 'leased', exp, id)
  redis.call('SADD', P .. 'tried', id)
  local fail = redis.call('HGET', t, 'fail')
  local how = 0
  if orphaned then how = 2 elseif tok then how = 1 end
  out[#out + 1] = {id, redis.call('HGET', t, 'payload'), att, token, fail or '', how}
end

-- the pending entries of consumers that are gone, before anything else
local summary = redis.call('XPENDING', STREAM, GROUP)
if type(summary[4]) == 'table' then
  for _, pair in ipairs(summary[4]) do
    local who = pair[1]
    if #out < max_items and who ~= consumer and gone(who) then
      local entries = redis.call('XPENDING', STREAM, GROUP, '-', '+', max_items - #out, who)
      for _, entry in ipairs(entries) do
        for _, got in ipairs(redis.call('XCLAIM', STREAM, GROUP, consumer, 0, entry[1])) do
          if got then grant(got[1], got[2], true) end
        end
      end
      if #redis.call('XPENDING', STREAM, GROUP, '-', '+', 1, who) == 0 then
        redis.call('SREM', P .. 'owners', who)
        redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, who)
      end
    end
  end
end

local claimed = redis.call('XAUTOCLAIM', STREAM, GROUP, consumer, ARGV[6], ARGV[9],
                           'COUNT', max_items)
for _, entry in ipairs(claimed[2]) do
  if #out < max_items then grant(entry[1], entry[2]) end
end
if #out < max_items then
  local read = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', max_items - #out,
                          'STREAMS', STREAM, '>')
  if read then
    for _, entry in ipairs(read[1][2]) do grant(entry[1], entry[2]) end
  end
end
return {claimed[1], out}
"""
)

# ARGV: prefix, id, token, now, expires_at, last_received_at, max_items, tokens...
# -> 0 if the lease is stale, else {1, {{id, payload, attempt, token, previous_failure}...}}
# Followers are never in the stream: they wait in the list behind the head, leased.
FOLLOW = LuaScript(
    _PRELUDE
    + """
local t = owned(ARGV[2], ARGV[3])
if not t then return 0 end
local now, exp, last = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local line = ckey(redis.call('HGET', t, 'conv'))
local pos = redis.call('LPOS', line, ARGV[2])
local out = {}
if not pos or tonumber(ARGV[7]) < 1 then return {1, out} end
for _, id in ipairs(redis.call('LRANGE', line, pos + 1, pos + tonumber(ARGV[7]))) do
  local f = tkey(id)
  local fexp = redis.call('HGET', f, 'exp')
  local due = redis.call('ZSCORE', P .. 'delayed', id)
  local payload = redis.call('HGET', f, 'payload')
  local own = redis.call('HGET', f, 'own')  -- set by this version, which keeps heartbeats
  local alive = not own or own == '' or redis.call('EXISTS', hbkey(own)) == 1
  local held = fexp and tonumber(fexp) > now and alive
  if held or (due and tonumber(due) > now)
      or tonumber(cjson.decode(payload).received_at) > last then
    break
  end
  local token = ARGV[7 + #out + 1]
  local att = redis.call('HINCRBY', f, 'att', 1)
  redis.call('HSET', f, 'tok', token, 'exp', exp, 'own', redis.call('HGET', t, 'own') or '')
  redis.call('ZADD', P .. 'leased', exp, id)
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('SADD', P .. 'tried', id)
  local fail = redis.call('HGET', f, 'fail')
  out[#out + 1] = {id, payload, att, token, fail or ''}
end
return {1, out}
"""
)

# ARGV: prefix, consumer, id, token, expires_at, lease_ms -> 1, or 0 if stale
RENEW = LuaScript(
    _PRELUDE
    + """
local t = owned(ARGV[3], ARGV[4])
if not t then return 0 end
redis.call('HSET', t, 'exp', ARGV[5])
redis.call('ZADD', P .. 'leased', ARGV[5], ARGV[3])
local lk = lkey(redis.call('HGET', t, 'conv'))
local holder = redis.call('GET', lk)
if not holder or holder == ARGV[4] then redis.call('SET', lk, ARGV[4], 'PX', ARGV[6]) end
local eid = redis.call('HGET', t, 'eid')
if eid then redis.call('XCLAIM', STREAM, GROUP, ARGV[2], 0, eid, 'JUSTID') end
return 1
"""
)

# ARGV: prefix, id, token -> 1, or 0 if stale
ACK = LuaScript(
    _PRELUDE
    + """
local t = owned(ARGV[2], ARGV[3])
if not t then return 0 end
remove(ARGV[2], t, ARGV[3])
return 1
"""
)

# ARGV: prefix, id, token, error, due, uncount, failure -> 1, or 0 if stale
# uncount = '1' (defer): the attempt is given back, never below 0, and the failure kind kept;
# else the failure kind (a FailureKind value, '' for none) is stored for the next lease
RETRY = LuaScript(
    _PRELUDE
    + """
local id, token = ARGV[2], ARGV[3]
local t = owned(id, token)
if not t then return 0 end
if ARGV[6] == '1' then
  if tonumber(redis.call('HGET', t, 'att')) > 0 then redis.call('HINCRBY', t, 'att', -1) end
elseif ARGV[7] ~= '' then
  redis.call('HSET', t, 'fail', ARGV[7])
else
  redis.call('HDEL', t, 'fail')
end
unlock(t, token)
unstream(t)
redis.call('HDEL', t, 'tok', 'exp', 'own')
redis.call('HSET', t, 'err', ARGV[4])
redis.call('ZREM', P .. 'leased', id)
redis.call('ZADD', P .. 'delayed', ARGV[5], id)
return 1
"""
)

# ARGV: prefix, id, token, error, now -> 1, or 0 if stale
BURY = LuaScript(
    _PRELUDE
    + """
local id, token = ARGV[2], ARGV[3]
local t = owned(id, token)
if not t then return 0 end
local fields = redis.call('HMGET', t, 'conv', 'payload', 'att')
remove(id, t, token)
local eid = redis.call('XADD', P .. 'dead', '*', 'id', id, 'conv', fields[1],
                       'payload', fields[2], 'err', ARGV[4], 'att', fields[3], 'at', ARGV[5])
redis.call('HSET', P .. 'deadidx', id, eid)
return 1
"""
)

# ARGV: prefix, now, ids... (none: every dead letter) -> how many were queued again
REQUEUE = LuaScript(
    _PRELUDE
    + """
local wanted = nil
if #ARGV > 2 then
  wanted = {}
  for i = 3, #ARGV do wanted[ARGV[i]] = true end
end
local count = 0
for _, entry in ipairs(redis.call('XRANGE', P .. 'dead', '-', '+')) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  if not wanted or wanted[f.id] then
    redis.call('HDEL', P .. 'deadidx', f.id)
    if insert(f.id, f.conv, f.payload, ARGV[2], f.err) == 1 then
      redis.call('XDEL', P .. 'dead', entry[1])
      count = count + 1
    else
      redis.call('HSET', P .. 'deadidx', f.id, entry[1])
    end
  end
end
return count
"""
)

# ARGV: prefix -> how many dead letters were deleted
PURGE = LuaScript(
    _PRELUDE
    + """
local n = redis.call('XLEN', P .. 'dead')
redis.call('DEL', P .. 'dead', P .. 'deadidx')
return n
"""
)

# ARGV: prefix, now -> {live, tried, leased, oldest enqueued_at or '', dead}
STATS = LuaScript(
    _PRELUDE
    + """
local oldest = redis.call('ZRANGE', P .. 'live', 0, 0)[1]
local enq = oldest and redis.call('HGET', tkey(oldest), 'enq') or ''
return {redis.call('ZCARD', P .. 'live'), redis.call('SCARD', P .. 'tried'),
        redis.call('ZCOUNT', P .. 'leased', '(' .. ARGV[2], '+inf'),
        enq, redis.call('XLEN', P .. 'dead')}
"""
)

# ARGV: prefix, consumer -> 1 if the consumer had nothing pending and was deleted
# Its heartbeat ends either way: what it still holds is taken back at once by the next lease.
RETIRE = LuaScript(
    _PRELUDE
    + """
redis.call('DEL', hbkey(ARGV[2]))
if #redis.call('XPENDING', STREAM, GROUP, '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('SREM', P .. 'owners', ARGV[2])
redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, ARGV[2])
return 1
"""
)

# ARGV: prefix, consumer, owner_ttl_ms -> 1: the consumer is alive for owner_ttl_ms more
BEAT = LuaScript(
    _PRELUDE
    + """
redis.call('SET', hbkey(ARGV[2]), '1', 'PX', ARGV[3])
redis.call('SADD', P .. 'owners', ARGV[2])
return 1
"""
)
