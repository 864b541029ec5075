//! The Lua scripts: every change of state is one script, so it is atomic (and replicated and
//! written to the AOF as one unit). `ARGV[1]` is always the key prefix `{<key_prefix>}`.
//!
//! Keys (P = the prefix):
//! - `P:meta` hash: `instance` (random, the first half of every delivery id).
//! - `P:seq` counter: event ids, increasing in append order across replicas.
//! - `P:ev` hash: event id -> record (protobuf `store::Record`) of every pending event.
//! - `P:idx` sorted set: pending event ids (score = id), for listing and chunks in order.
//! - `P:bytes` counter: bytes of the pending and dead records (+8 each), against `max_bytes`.
//! - `P:q` stream, consumer group `spool.redis.group`: delivery tokens, field `t`:
//!   `i:<id>` (an unordered event) or `k:<order key>` (the oldest pending event of that key).
//! - `P:ok` hash: event id -> order key, `P:k:<order key>` list: the key's pending ids in
//!   append order, `P:tok` hash: order key -> 1 while the key's single token exists.
//! - `P:due` sorted set: tokens waiting for a retry (score = due time in ms).
//! - `P:dead` stream: dead letters, fields `i` (event id) and `r` (record).
//!
//! Ordering: an ordered key has at most one token (created by the append that finds no
//! `P:tok` entry, passed on by the finish of its head, dropped when the key's list is empty), so
//! at most one consumer delivers the key's events, one after another, wherever it runs.
//! Finishing starts with `XACK`: only the consumer whose `XACK` removed the token from the
//! pending entries list moves the state on; a consumer that lost its token (it was reclaimed) changes
//! nothing.
//!
//! Each script is a [`Script`] made once: `Script::new` hashes the text (SHA-1, for `EVALSHA`), and
//! `APPEND`, `RESOLVE` and `FINISH` run for every event.

use std::sync::LazyLock;

use redis::Script;

/// Appends an event. ARGV: P, record, ordered ("1"/"0"), order key, max_events, max_bytes,
/// drop_oldest ("1"/"0"). Returns `{id, pending, bytes, dropped}`: id 0 = refused (full);
/// `dropped` = id, record pairs deleted by `drop_oldest`.
const APPEND_LUA: &str = r"
local P = ARGV[1]
local rec = ARGV[2]
local ordered = ARGV[3] == '1'
local key = ARGV[4]
local maxe = tonumber(ARGV[5])
local maxb = tonumber(ARGV[6])
local drop = ARGV[7] == '1'
local pending = redis.call('ZCARD', P..':idx')
local bytes = tonumber(redis.call('GET', P..':bytes') or '0')
local dropped = {}
local function full() return pending >= maxe or bytes >= maxb end
if full() and drop then
  while full() and pending > 0 do
    local oldest = redis.call('ZRANGE', P..':idx', 0, 0)[1]
    local r = redis.call('HGET', P..':ev', oldest)
    local k = redis.call('HGET', P..':ok', oldest)
    redis.call('HDEL', P..':ev', oldest)
    redis.call('ZREM', P..':idx', oldest)
    if k then
      redis.call('HDEL', P..':ok', oldest)
      redis.call('LREM', P..':k:'..k, 1, oldest)
    end
    local len = 0
    if r then len = #r + 8 end
    bytes = bytes - len
    redis.call('DECRBY', P..':bytes', len)
    pending = pending - 1
    table.insert(dropped, oldest)
    table.insert(dropped, r or '')
  end
end
if full() then return {0, pending, bytes, dropped} end
local id = redis.call('INCR', P..':seq')
redis.call('HSET', P..':ev', id, rec)
redis.call('ZADD', P..':idx', id, id)
redis.call('INCRBY', P..':bytes', #rec + 8)
if ordered then
  redis.call('HSET', P..':ok', id, key)
  redis.call('RPUSH', P..':k:'..key, id)
  if redis.call('HSETNX', P..':tok', key, '1') == 1 then
    redis.call('XADD', P..':q', '*', 't', 'k:'..key)
  end
else
  redis.call('XADD', P..':q', '*', 't', 'i:'..id)
end
return {id, pending + 1, bytes + #rec + 8, dropped}
";

/// Resolves tokens to their events. ARGV: P, token…. Returns one `{id, record}` per token, in
/// order: `{'', false}` when the key's list is empty; `{id, false}` when the event is gone.
const RESOLVE_LUA: &str = r"
local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local t = ARGV[i]
  local id
  if string.sub(t, 1, 2) == 'k:' then
    id = redis.call('LINDEX', P..':k:'..string.sub(t, 3), 0)
  else
    id = string.sub(t, 3)
  end
  if id then
    out[#out + 1] = {id, redis.call('HGET', P..':ev', id)}
  else
    out[#out + 1] = {'', false}
  end
end
return out
";

/// Finishes tokens. ARGV: P, group, then six per token: stream entry id, token, event id,
/// outcome (`done`, `dead`, `retry`, `defer`), new record (dead, retry), due time in ms (retry,
/// defer). Returns one number per token, in order: 1, or 0 when this consumer no longer held the
/// token (nothing changed for it).
const FINISH_LUA: &str = r"
local P = ARGV[1]
local group = ARGV[2]
local function remove(id)
  local r = redis.call('HGET', P..':ev', id)
  if not r then return nil end
  redis.call('HDEL', P..':ev', id)
  redis.call('ZREM', P..':idx', id)
  redis.call('HDEL', P..':ok', id)
  redis.call('DECRBY', P..':bytes', #r + 8)
  return r
end
local function pass_on(key, token, id)
  if not key then return end
  local list = P..':k:'..key
  if id ~= '' and redis.call('LINDEX', list, 0) == id then redis.call('LPOP', list) end
  if redis.call('LLEN', list) > 0 then
    redis.call('XADD', P..':q', '*', 't', token)
  else
    redis.call('HDEL', P..':tok', key)
  end
end
local function finish(entry, token, id, outcome, newrec, due)
  local acked = redis.call('XACK', P..':q', group, entry)
  redis.call('XDEL', P..':q', entry)
  if acked == 0 then return 0 end
  local key = nil
  if string.sub(token, 1, 2) == 'k:' then key = string.sub(token, 3) end
  if outcome == 'done' then
    remove(id)
    pass_on(key, token, id)
  elseif outcome == 'dead' then
    if remove(id) then
      redis.call('XADD', P..':dead', '*', 'i', id, 'r', newrec)
      redis.call('INCRBY', P..':bytes', #newrec + 8)
    end
    pass_on(key, token, id)
  else
    local old = redis.call('HGET', P..':ev', id)
    if old then
      if outcome == 'retry' then
        redis.call('HSET', P..':ev', id, newrec)
        redis.call('INCRBY', P..':bytes', #newrec - #old)
      end
      redis.call('ZADD', P..':due', due, token)
    else
      pass_on(key, token, id)
    end
  end
  return 1
end
local out = {}
for i = 3, #ARGV, 6 do
  out[#out + 1] = finish(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
end
return out
";

/// Moves tokens whose retry is due back to the stream. ARGV: P, now (ms), most to move.
/// Returns `{moved, next due (ms) or false}`.
const DUE_LUA: &str = r"
local P = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', P..':due', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, t in ipairs(due) do
  redis.call('XADD', P..':q', '*', 't', t)
  redis.call('ZREM', P..':due', t)
end
local nxt = redis.call('ZRANGE', P..':due', 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
";

/// Replays one dead letter. ARGV: P, dead stream entry id, event id, new record, ordered
/// ("1"/"0"), order key. Returns 1, or 0 when the dead letter was gone.
const REPLAY_LUA: &str = r"
local P = ARGV[1]
local entry = ARGV[2]
local id = ARGV[3]
local rec = ARGV[4]
local key = ARGV[6]
local old = redis.call('XRANGE', P..':dead', entry, entry)[1]
if not old then return 0 end
local oldrec = ''
for i = 1, #old[2], 2 do if old[2][i] == 'r' then oldrec = old[2][i + 1] end end
redis.call('XDEL', P..':dead', entry)
redis.call('HSET', P..':ev', id, rec)
redis.call('ZADD', P..':idx', id, id)
redis.call('INCRBY', P..':bytes', #rec - #oldrec)
if ARGV[5] == '1' then
  redis.call('HSET', P..':ok', id, key)
  redis.call('RPUSH', P..':k:'..key, id)
  if redis.call('HSETNX', P..':tok', key, '1') == 1 then
    redis.call('XADD', P..':q', '*', 't', 'k:'..key)
  end
else
  redis.call('XADD', P..':q', '*', 't', 'i:'..id)
end
return 1
";

/// Deletes one pending event (its token, if any, is skipped when it comes up). ARGV: P, id.
/// Returns 1, or 0 when it was gone.
const PURGE_PENDING_LUA: &str = r"
local P = ARGV[1]
local id = ARGV[2]
local r = redis.call('HGET', P..':ev', id)
if not r then return 0 end
local k = redis.call('HGET', P..':ok', id)
redis.call('HDEL', P..':ev', id)
redis.call('ZREM', P..':idx', id)
if k then
  redis.call('HDEL', P..':ok', id)
  redis.call('LREM', P..':k:'..k, 1, id)
end
redis.call('DECRBY', P..':bytes', #r + 8)
return 1
";

/// Deletes one dead letter. ARGV: P, dead stream entry id. Returns 1, or 0 when it was gone.
const PURGE_DEAD_LUA: &str = r"
local P = ARGV[1]
local entry = ARGV[2]
local old = redis.call('XRANGE', P..':dead', entry, entry)[1]
if not old then return 0 end
local len = 0
for i = 1, #old[2], 2 do if old[2][i] == 'r' then len = #old[2][i + 1] + 8 end end
redis.call('XDEL', P..':dead', entry)
redis.call('DECRBY', P..':bytes', len)
return 1
";

/// Forgets consumers (stopped replicas) that hold no token and were idle longer than ARGV[3] ms,
/// so that the group does not collect one consumer per pod ever started. Atomic: a consumer's
/// pending entries are checked and the consumer deleted in one step, so no token is ever lost (a
/// live consumer that was forgotten is made again by its next read). ARGV: P, group, idle ms.
/// Returns how many were forgotten.
const FORGET_CONSUMERS_LUA: &str = r"
local P = ARGV[1]
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', P..':q', ARGV[2])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name and pending == 0 and idle and idle > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', P..':q', ARGV[2], name)
    n = n + 1
  end
end
return n
";

pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_LUA));
pub(crate) static RESOLVE: LazyLock<Script> = LazyLock::new(|| Script::new(RESOLVE_LUA));
pub(crate) static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(FINISH_LUA));
pub(crate) static DUE: LazyLock<Script> = LazyLock::new(|| Script::new(DUE_LUA));
pub(crate) static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(REPLAY_LUA));
pub(crate) static PURGE_PENDING: LazyLock<Script> =
    LazyLock::new(|| Script::new(PURGE_PENDING_LUA));
pub(crate) static PURGE_DEAD: LazyLock<Script> = LazyLock::new(|| Script::new(PURGE_DEAD_LUA));
pub(crate) static FORGET_CONSUMERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(FORGET_CONSUMERS_LUA));
