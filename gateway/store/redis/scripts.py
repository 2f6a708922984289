"""Herald's Lua scripts. Each touches the keys of one shard (one cluster slot), declares
every key it touches, and is safe to run twice (the client retries a pipeline once
after a connection fault): a commit is guarded by the user's version and the request's
answer, a finish by the state it settles and by the entry it removes.
"""

from __future__ import annotations

from gateway.store.keys import DEAD_LETTERS_KEEP, DELIVERY_GROUP
from gateway.store.redis.connection import Script

# One user's part of a commit.
# KEYS: 1 user hash, 2 due zset, 3 the user's message index, then 3 per new message
#       (record, answer, stream), then 3 per update (events, current, stream). Unused
#       slots repeat KEYS[1].
# ARGV: 1 expected version ('' = no state write), 2 state, 3 due ms ('' = none),
#       4 answer ttl ms, 5 message ttl ms, 6 new count, 7 update count, 8 user id,
#       9 how many ids the message index keeps ('' = no trim to that length this time:
#       the store asks for it one commit in 16, reads never list past it), 10 the
#       index's entries created before this (epoch ms) are trimmed ('' = no new message),
#       then 5 per new message (record, answer or '', job or '', created ms, id),
#       then 3 per update (events or '', current or '', job or ''),
#       then, when funnel keys follow the updates' keys, their ttl ms and one counter
#       field a key (each gets one added).
# Returns 'ok', 'conflict' (the user changed, or has no profile) or 'duplicate' (a
# request of the change was answered meanwhile); nothing is written unless 'ok'.
COMMIT = Script(
    "commit",
    """
local n, u = tonumber(ARGV[6]), tonumber(ARGV[7])
if ARGV[1] ~= '' then
  local cur = redis.call('HMGET', KEYS[1], 'v', 'updated_at')
  if not cur[2] or tonumber(cur[1] or '0') ~= tonumber(ARGV[1]) then return 'conflict' end
end
-- One new message with an answer (a Push, most of a batch): its answer written first,
-- only if absent, is the duplicate check; several: each answer's key checked first.
local claimed = n == 1 and ARGV[12] ~= ''
if claimed then
  if not redis.call('SET', KEYS[5], ARGV[12], 'NX', 'PX', ARGV[4]) then return 'duplicate' end
else
  for i = 0, n - 1 do
    if ARGV[11 + i * 5 + 1] ~= '' and redis.call('EXISTS', KEYS[4 + i * 3 + 1]) == 1 then return 'duplicate' end
  end
end
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[1]) + 1, 'st', ARGV[2])
end
for i = 0, n - 1 do
  local k, a = 4 + i * 3, 11 + i * 5
  redis.call('SET', KEYS[k], ARGV[a], 'PX', ARGV[5])
  if ARGV[a + 1] ~= '' and not claimed then redis.call('SET', KEYS[k + 1], ARGV[a + 1], 'PX', ARGV[4]) end
  if ARGV[a + 2] ~= '' then redis.call('XADD', KEYS[k + 2], '*', 'j', ARGV[a + 2]) end
  redis.call('ZADD', KEYS[3], ARGV[a + 3], ARGV[a + 4])
end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[10])
  if ARGV[9] ~= '' then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -1 - tonumber(ARGV[9])) end
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
for i = 0, u - 1 do
  local k, a = 4 + n * 3 + i * 3, 11 + n * 5 + i * 3
  if ARGV[a] ~= '' then
    redis.call('APPEND', KEYS[k], ARGV[a])
    redis.call('PEXPIRE', KEYS[k], ARGV[5])
  end
  if ARGV[a + 1] ~= '' then redis.call('SET', KEYS[k + 1], ARGV[a + 1], 'PX', ARGV[5]) end
  if ARGV[a + 2] ~= '' then redis.call('XADD', KEYS[k + 2], '*', 'j', ARGV[a + 2]) end
end
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], 'LT', ARGV[3], ARGV[8]) end
local base, a0 = 3 + 3 * n + 3 * u, 11 + 5 * n + 3 * u
for i = base + 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[a0 + i - base], 1)
  redis.call('PEXPIRE', KEYS[i], ARGV[a0])
end
return 'ok'
""",
)

# The end of one delivery attempt.
# KEYS: 1 user hash, 2 events, 3 current, 4 the lease's stream, 5 dead letters,
#       6 waiting zset, 7 parked zset, 8 the job's lane stream, 9 the campaign's funnel
#       hash (or KEYS[1]).
# ARGV: 1 settle ('' | 'commit' | 'release'), 2 message id, 3 channel, 4 events or '',
#       5 current or '', 6 retention ms, 7 entry id or '', 8 then ('done' | 'dead' |
#       'wait' | 'park' | 'resume'), 9 payload (dead letter, waiting or parked member,
#       job), 10 score ms, 11 the parked member this takes out, or '', 12 the funnel
#       counter to add one to, or '', 13 the funnel's ttl ms. The counter counts only
#       when this call acks the entry (a replay acks nothing).
# Returns 0 when the parked member was already taken (nothing written), else 1.
FINISH = Script(
    "finish",
    f"""
if ARGV[11] ~= '' and redis.call('ZREM', KEYS[7], ARGV[11]) == 0 then return 0 end
if ARGV[1] ~= '' then
  local cur = redis.call('HMGET', KEYS[1], 'v', 'st')
  if cur[2] then
    local st = cjson.decode(cur[2])
    local found = false
    if type(st.r) == 'table' then
      for i, e in ipairs(st.r) do
        if e[1] == ARGV[2] then
          found = true
          if ARGV[1] == 'release' then table.remove(st.r, i) else e[4] = ARGV[3]; e[6] = true end
          break
        end
      end
      if #st.r == 0 then st.r = nil end
    end
    if found then redis.call('HSET', KEYS[1], 'v', (tonumber(cur[1]) or 0) + 1, 'st', cjson.encode(st)) end
  end
end
if ARGV[4] ~= '' then
  redis.call('APPEND', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6]) end
local acked = 1
if ARGV[7] ~= '' then
  acked = redis.call('XACK', KEYS[4], '{DELIVERY_GROUP}', ARGV[7])
  redis.call('XDEL', KEYS[4], ARGV[7])
end
if ARGV[12] ~= '' and acked == 1 then
  redis.call('HINCRBY', KEYS[9], ARGV[12], 1)
  redis.call('PEXPIRE', KEYS[9], ARGV[13])
end
local t = ARGV[8]
if t == 'dead' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', '{DEAD_LETTERS_KEEP}', '*', 'd', ARGV[9])
elseif t == 'wait' then
  redis.call('ZADD', KEYS[6], ARGV[10], ARGV[9])
elseif t == 'park' then
  redis.call('ZADD', KEYS[7], ARGV[10], ARGV[9])
elseif t == 'resume' then
  redis.call('XADD', KEYS[8], '*', 'j', ARGV[9])
end
return 1
""",
)

# A later step of a message (a receipt, a job report): only for a message we keep.
# KEYS: 1 record, 2 events, 3 current; ARGV: 1 events or '', 2 current or '', 3 retention ms.
ADD_EVENTS = Script(
    "add_events",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  redis.call('APPEND', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3]) end
return 1
""",
)

# Waiting jobs whose time has come, back into their lane's stream.
# KEYS: 1 waiting zset, 2-4 the streams of lanes b(asic), r(eminder), m(arketing).
# ARGV: 1 now ms, 2 limit. A member is the lane's letter and the job.
WAKE = Script(
    "wake",
    """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(items) do
  local lane = string.sub(m, 1, 1)
  local key = KEYS[4]
  if lane == 'b' then key = KEYS[2] elseif lane == 'r' then key = KEYS[3] end
  redis.call('XADD', key, '*', 'j', string.sub(m, 2))
  redis.call('ZREM', KEYS[1], m)
end
return #items
""",
)

# KEYS[1] due zset; ARGV[1] now ms; ARGV[2] limit; ARGV[3] lease end ms. Taking a user
# moves its score to the lease end, so nobody else takes it meanwhile.
TAKE_DUE = Script(
    "take_due",
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
""",
)

# KEYS[1] due zset; ARGV[1] user; ARGV[2] lease end ms; ARGV[3] next due ms or ''.
FINISH_DUE = Script(
    "finish_due",
    """
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and tonumber(cur) == tonumber(ARGV[2]) then
  if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1])
end
return 1
""",
)

# KEYS[1] user hash; ARGV[1] ttl ms; ARGV[2] 'set' | 'del'; ARGV[3] field; ARGV[4] value.
OPT_OUT = Script(
    "opt_out",
    """
if redis.call('HEXISTS', KEYS[1], 'updated_at') == 0 then return 0 end
if ARGV[2] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""",
)

# KEYS[1] user hash; ARGV[1] the interaction (JSON), ARGV[2] how many to keep.
INTERACTION = Script(
    "interaction",
    """
if redis.call('HEXISTS', KEYS[1], 'updated_at') == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'ix')
local items = {cjson.decode(ARGV[1])}
if old then
  for _, e in ipairs(cjson.decode(old)) do
    if #items >= tonumber(ARGV[2]) then break end
    items[#items + 1] = e
  end
end
redis.call('HSET', KEYS[1], 'ix', cjson.encode(items))
return 1
""",
)

# KEYS[1] user hash, KEYS[2] the shard's users, then the tag index of each tag added.
# ARGV[1] the tags expected (JSON, as written), ARGV[2] the new tags, ARGV[3] updated_at,
# ARGV[4] ttl ms, ARGV[5] user id. Returns 1 (set), 0 (no profile), -1 (tags changed
# meanwhile: nothing written). Run twice, the second run finds the new tags: -1.
REPLACE_TAGS = Script(
    "replace_tags",
    """
if redis.call('HEXISTS', KEYS[1], 'updated_at') == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'tags') or '[]') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'tags', ARGV[2], 'updated_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
for i = 2, #KEYS do redis.call('SADD', KEYS[i], ARGV[5]) end
return 1
""",
)

# KEYS[1] lock or value; ARGV[1] the value it must still hold. Compare and delete.
DELETE_IF = Script(
    "delete_if",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

# KEYS[1] bucket hash; ARGV: 1 rate a second, 2 burst, 3 now ms, 4 tokens wanted.
# Returns {tokens granted (the whole ones there, up to the wanted), milliseconds until one
# is there (when none was granted)}.
TAKE_TOKEN = Script(
    "take_token",
    """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
local wait = 0
if granted == 0 then wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.max(1000, math.ceil(2000 * burst / rate)))
return {granted, wait}
""",
)

# KEYS[1] the window's counters (hash: last, pos, n, bad), KEYS[2] its ring of the last
# ``last`` outcomes (a string of '0'/'1', one byte each); ARGV: 1 the new outcome, 2 the
# window size, 3 ttl ms. Returns the window's size and how many bad. O(1) a send: the
# byte that leaves the window is read and overwritten, the counts kept as it goes.
OUTCOME = Script(
    "outcome",
    """
local last = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'last', 'pos', 'n', 'bad')
local pos, n, bad = tonumber(state[2]) or 0, tonumber(state[3]) or 0, tonumber(state[4]) or 0
if tonumber(state[1]) ~= last then
  -- A new window (or its size changed in policy): start it again.
  pos, n, bad = 0, 0, 0
  redis.call('DEL', KEYS[2])
end
if n == last then
  if redis.call('GETRANGE', KEYS[2], pos, pos) == '1' then bad = bad - 1 end
else
  n = n + 1
end
redis.call('SETRANGE', KEYS[2], pos, ARGV[1])
if ARGV[1] == '1' then bad = bad + 1 end
pos = (pos + 1) % last
redis.call('HSET', KEYS[1], 'last', last, 'pos', pos, 'n', n, 'bad', bad)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {n, bad}
""",
)


# A campaign's definition written only if its version is the expected one.
# KEYS: 1 campaign hash, 2 its unit's zset, 3 the running set.
# ARGV: 1 expected version ('' = must not exist), 2 encoded campaign, 3 ttl ms,
#       4 created ms (score), 5 campaign id, 6 '1' running / '0' not, 7 trim before ms.
# Returns 1 when written, 0 when the version did not match.
PUT_CAMPAIGN = Script(
    "put_campaign",
    """
local v = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if v then return 0 end
elseif tonumber(v or '-1') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', (tonumber(v or '-1')) + 1, 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[7])
if ARGV[6] == '1' then redis.call('SADD', KEYS[3], ARGV[5]) else redis.call('SREM', KEYS[3], ARGV[5]) end
return 1
""",
)

# Take or renew a shard's campaign lease. KEYS: 1 the shard's campaign hash.
# ARGV: 1 owner, 2 now ms, 3 lease ms, 4 ttl ms. Returns the progress ('' at the start)
# or false when another owner's lease runs.
LEASE_CAMPAIGN = Script(
    "lease_campaign",
    """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'until', 'p')
if cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[2] or '0') > tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return cur[3] or ''
""",
)

# Save a shard's progress while the lease is the caller's. KEYS: 1 the shard's campaign
# hash. ARGV: 1 owner, 2 now ms, 3 lease ms, 4 ttl ms, 5 progress. Returns 1, or 0 when
# the lease was lost (nothing written).
SAVE_CAMPAIGN = Script(
    "save_campaign",
    """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[5], 'until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
""",
)

# Count one funnel step once. KEYS: 1 the funnel hash, 2 its once-set.
# ARGV: 1 field, 2 the once name, 3 ttl ms, 4 how much to add. Returns 1 when counted,
# 0 when seen before.
FUNNEL_ONCE = Script(
    "funnel_once",
    """
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
""",
)

# A stream's entries read by a consumer that stops before handing them out, given
# back: each one still pending to that consumer and handed out only that once (not
# one it took over from a dead worker) is added again at the stream's end (for whoever
# reads next) and acked and removed under its old id.
# KEYS[1] the stream; ARGV: 1 the group, 2 the consumer, then pairs (entry id, job).
GIVE_BACK = Script(
    "give_back",
    """
local given = 0
for i = 3, #ARGV, 2 do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine == 1 and tonumber(mine[1][4]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'j', ARGV[i + 1])
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    given = given + 1
  end
end
return given
""",
)

ALL = (
    COMMIT, FINISH, ADD_EVENTS, WAKE, TAKE_DUE, FINISH_DUE, OPT_OUT, INTERACTION, REPLACE_TAGS, DELETE_IF,
    TAKE_TOKEN, OUTCOME, PUT_CAMPAIGN, LEASE_CAMPAIGN, SAVE_CAMPAIGN, FUNNEL_ONCE, GIVE_BACK,
)  # fmt: skip
