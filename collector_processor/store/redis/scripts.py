"""The Redis store's server-side operations: a Lua function library, one function per operation.

Redis runs a function to completion before it serves any other command, so each one below is one
atomic step however many budgets, reservations and alerts it touches (the text calls them scripts).
Every key of a ledger carries the same ``{namespace}`` hash tag, so a function never leaves its hash
slot on a Redis Cluster. Functions (Redis 7) are loaded once and kept by Redis with its data, so the
shared helpers are not re-run on every call as an ``EVAL`` script's would be.

Every key a function touches is declared in its KEYS, as the Redis Functions contract asks (``KEYS[1]``
is always the ledger's ``{namespace}:meta``, from which the others' prefix is taken). The library holds
itself to it: every command goes through ``R``, which refuses a key that was not declared. Most keys
follow from what the caller sends: the fixed ones (``due``, ``idem``, the usage and alert log keys),
and for each budget it sends, that budget's state, window and entity keys and its alert index
(``codec.state_keys``); a reservation's key follows from its id. Three kinds depend on data the
function reads, and each is handled without reaching past KEYS:

- *The holds of a stored reservation* (commit, release, a downgrade re-send). The caller declares the
  state keys of the budgets the reservation's scopes match now, which are its holds unless a budget
  was deleted or re-created since. The function compares the stored holds with what was declared
  before its first write, and when one is missing answers ``KEYS`` with the holds; the caller declares
  them and calls again.
- *Overdue reservations.* An operation must not count a hold whose TTL has passed, but which
  reservations are due, and which budgets they hold on, is known only inside Redis. An operation
  therefore answers ``RECLAIM`` (before anything else) when any reservation is overdue; the caller
  reads the due reservations and their holds, releases them with ``expire`` (which declares every one
  of those keys and skips a reservation whose holds changed meanwhile), and calls again. The sweeper
  releases them through the same function between requests, so this is rare on the request path.
- *Housekeeping* of settled reservations and fired alerts: the caller reads which are past their
  retention (and which budgets' alert indexes the alerts are in) and names them; the function forgets
  only those it was handed. The alert log is one hash keyed by sequence (``P:alert``), so firing an
  alert writes only keys known beforehand.

Money is integer micro-dollars. Redis adds them exactly (``HINCRBY`` is 64-bit integer arithmetic);
the scripts only *compare* and *multiply* amounts, and do it on exact pairs ``hi * 1e9 + lo`` because
Lua numbers are doubles, exact only up to 2^53. Amounts are passed and returned as strings, never as
Lua numbers. A total that would pass 2^63 - 1 is refused (``OVERFLOW``) before anything is written.
A script refuses (returns an error word) before its first write; past that point nothing can fail,
so no script ever leaves half an operation behind.

The decision rule in ``verdict`` is ``collector_processor.domain.decisions`` restated: the store re-runs
``decisions.plan_reservation`` on the exact standing the script decided on, builds every word of the
answer from it, and refuses to answer if the two ever disagree.
"""

from __future__ import annotations

import hashlib

from collector_processor.domain.requests import MAX_SERVICES, OTHER_SERVICES

__all__ = ["FUNCTIONS", "LIBRARY", "LIBRARY_NAME", "SPEC_FIELDS"]

SPEC_FIELDS = 14
"""Strings per budget in a script's argument list (see ``codec.spec``)."""

_COMMON = r"""
-- Set by each function as it starts: the ledger's key prefix, its decoded arguments, and the set of
-- keys its caller declared.
local P, ARGV, DECLARED

-- Every command goes through R, which refuses a key the caller did not declare: a function touches
-- only its KEYS. Functions check the keys that depend on what they read before their first write
-- (see ``holds_declared``), so this never fires half-way through an operation; it catches a bug.
local function R(cmd, key, ...)
  if not DECLARED[key] then error('paymaster: ' .. cmd .. ' on the undeclared key ' .. tostring(key)) end
  return redis.call(cmd, key, ...)
end
local B = 1000000000
local MAXV = '9223372036854775807'

local function pair(s)
  s = s or '0'
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = #s
  local hi, lo = 0, tonumber(s)
  if n > 9 then
    hi = tonumber(string.sub(s, 1, n - 9))
    lo = tonumber(string.sub(s, n - 8))
  end
  if neg then
    if lo > 0 then hi = -hi - 1; lo = B - lo else hi = -hi end
  end
  return {hi, lo}
end

local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then lo = lo - B; hi = hi + 1 end
  return {hi, lo}
end

local function mul(a, m)
  local lo = a[2] * m
  local carry = math.floor(lo / B)
  return {a[1] * m + carry, lo - carry * B}
end

local function cmp(a, b)
  if a[1] ~= b[1] then if a[1] < b[1] then return -1 end return 1 end
  if a[2] ~= b[2] then if a[2] < b[2] then return -1 end return 1 end
  return 0
end

local function neg(v)
  if v == '0' then return '0' end
  if string.sub(v, 1, 1) == '-' then return string.sub(v, 2) end
  return '-' .. v
end

local function str(a)
  if a[1] < 0 then
    if a[2] > 0 then return '-' .. str({-a[1] - 1, B - a[2]}) end
    return '-' .. str({-a[1], 0})
  end
  if a[1] == 0 then return string.format('%d', a[2]) end
  return string.format('%d', a[1]) .. string.format('%09d', a[2])
end

-- Amounts of up to 15 digits are below 2^53, where Lua's doubles are exact, and so are sums of three
-- of them: those take the fast path; longer ones are compared as exact pairs.
local function fits(v, amt)
  if #v <= 17 and #amt <= 17 then return true end
  return cmp(add(pair(v), pair(amt)), pair(MAXV)) <= 0
end

local function stale(version)
  return (R('HGET', P .. ':meta', 'version') or '0') ~= version
end

local F = 14
local function specs(from)
  local n = tonumber(ARGV[from])
  local out = {}
  for k = 0, n - 1 do
    local j = from + 1 + k * F
    out[#out + 1] = {
      key = ARGV[j], bid = ARGV[j + 1], entity = ARGV[j + 2], limit = ARGV[j + 3], action = ARGV[j + 4],
      enabled = ARGV[j + 5] == '1', rolling = ARGV[j + 6] == '1', rb = ARGV[j + 7], cb = ARGV[j + 8],
      th = ARGV[j + 9], pk = ARGV[j + 10], ws = ARGV[j + 11], we = ARGV[j + 12], meta = ARGV[j + 13],
      request = ARGV[j + 6] == 'q',
    }
  end
  return out
end

local function skey(s) return P .. ':s:' .. s.key end
local function ents(s) return P .. ':ents:' .. string.match(s.key, '^([^/]*)/') end

-- Request budgets (codec.request_spec). A request budget's spec has the key ~rq@<created>/<id> (one
-- incarnation of the id), one bucket (u:0), pk = its idle TTL, ws = when it was opened, meta = the
-- service being charged. Its state hash also holds e (when it expires unless renewed) and v:<service>
-- (spend per service, vn of them). It is open while e is in the future; a missing key was forgotten.
local QMAX, QOTHER = @QMAX@, '@QOTHER@'
local function q_open(s, now)
  local e = R('HGET', skey(s), 'e')
  return e and tonumber(e) > tonumber(now)
end

-- The id of a request spec whose incarnation is not the id's current one (reopened since the replica
-- read it): the replica reads it again. Checked before anything is read or written.
local function q_stale(sp)
  for _, s in ipairs(sp) do
    if s.request then
      local c = R('HGET', P .. ':rqc', s.bid)
      if c and c ~= s.ws then return s.bid end
    end
  end
  return nil
end

-- domain.requests.renewed_expiry: activity keeps a request budget open for its idle TTL from now,
-- and a hold keeps it open until the hold runs out.
local function q_touch(s, now, hold_until)
  local S = skey(s)
  local want = tonumber(now) + tonumber(s.pk)
  if hold_until and tonumber(hold_until) > want then want = tonumber(hold_until) end
  if want > tonumber(R('HGET', S, 'e') or '0') then
    local v = string.format('%d', want)
    R('HSET', S, 'e', v)
    R('ZADD', P .. ':qdue', v, s.bid .. '@' .. s.ws)
  end
end

local function q_service(S, svc, amt)
  local f = 'v:' .. svc
  if R('HEXISTS', S, f) == 0 then
    if tonumber(R('HGET', S, 'vn') or '0') >= QMAX then f = 'v:' .. QOTHER
    else R('HINCRBY', S, 'vn', 1) end
  end
  R('HINCRBY', S, f, amt)
end

-- Committed spend in the period (calendar: one bucket) or window (rolling: buckets at or after rb,
-- whose running total is kept in 't'; buckets that left the window are retired here first).
local function used_of(s)
  local S = skey(s)
  if not s.rolling then return R('HGET', S, 'u:' .. s.rb) or '0' end
  local Z = P .. ':z:' .. s.key
  local old = R('ZRANGEBYSCORE', Z, '-inf', '(' .. s.rb)
  for _, b in ipairs(old) do
    local v = R('HGET', S, 'u:' .. b)
    if v then
      R('HDEL', S, 'u:' .. b)
      R('HINCRBY', S, 't', neg(v))
    end
  end
  if #old > 0 then R('ZREMRANGEBYSCORE', Z, '-inf', '(' .. s.rb) end
  return R('HGET', S, 't') or '0'
end

local function reserved_of(s) return R('HGET', skey(s), 'r') or '0' end

local function exceeds(st, est, ezero)
  local c
  if #st.u <= 15 and #st.r <= 15 and #st.l <= 15 and #est <= 15 then
    local projected, limit = tonumber(st.u) + tonumber(st.r) + tonumber(est), tonumber(st.l)
    if projected > limit then c = 1 elseif projected == limit then c = 0 else c = -1 end
  else
    c = cmp(add(add(pair(st.u), pair(st.r)), pair(est)), pair(st.l))
  end
  return c > 0 or (ezero and c >= 0)
end

-- decisions.reached_tier, for one tier: (used + reserved + estimate) * 100 > at * limit, or >= for a
-- zero estimate (at is at most 1000).
local function past(st, est, ezero, at)
  local c
  if #st.u <= 13 and #st.r <= 13 and #st.l <= 12 and #est <= 13 then
    local lhs, rhs = (tonumber(st.u) + tonumber(st.r) + tonumber(est)) * 100, at * tonumber(st.l)
    if lhs > rhs then c = 1 elseif lhs == rhs then c = 0 else c = -1 end
  else
    c = cmp(mul(add(add(pair(st.u), pair(st.r)), pair(est)), 100), mul(pair(st.l), at))
  end
  return c > 0 or (ezero and c >= 0)
end

-- The action letter of the highest tier the estimate reaches, or nil. A budget's tiers come as
-- '50w,80d,100b' (ascending); a single letter is one tier at 100%, which is exactly ``exceeds``.
local function tier_action(st, est, ezero)
  local a = st.action
  if #a == 1 then
    if exceeds(st, est, ezero) then return a end
    return nil
  end
  local found = nil
  for at, letter in string.gmatch(a, '(%d+)(%a)') do
    if not past(st, est, ezero, tonumber(at)) then break end
    found = letter
  end
  return found
end

-- decisions.crossed_thresholds: used * 100 >= threshold * limit (thresholds are at most 1000).
local function reached(used, limit, t)
  if #used <= 13 and #limit <= 12 then return tonumber(used) * 100 >= t * tonumber(limit) end
  return cmp(mul(pair(used), 100), mul(pair(limit), t)) >= 0
end

-- decisions.evaluate: any budget whose reached tier blocks denies, else any whose tier downgrades
-- downgrades.
local function verdict(states, est)
  local ezero = est == '0'
  local blocker, downgrader = nil, nil
  for i, st in ipairs(states) do
    local act = tier_action(st, est, ezero)
    if act == 'b' then blocker = blocker or i
    elseif act == 'd' then downgrader = downgrader or i end
  end
  if blocker then return 'deny' end
  if downgrader then return 'downgrade' end
  return 'allow'
end

local function drop_holds(Rk, held)
  if held == '0' then return end
  local holds = R('HGET', Rk, 'holds') or ''
  for h in string.gmatch(holds, '[^\n]+') do
    local S = P .. ':s:' .. h
    -- A missing state key belongs to a deleted budget whose state was collected already.
    if R('EXISTS', S) == 1 then R('HINCRBY', S, 'r', neg(held)) end
  end
end

-- Settle a held reservation (released: 3, expired: 4): its hold leaves every budget it was on.
local function settle(rid, state, now)
  local Rk = P .. ':r:' .. rid
  R('ZREM', P .. ':due', rid)
  if R('EXISTS', Rk) == 0 then return '0' end
  local held = R('HGET', Rk, 'held') or '0'
  drop_holds(Rk, held)
  R('HSET', Rk, 'st', state, 'set', now, 'rel', held)
  R('ZADD', P .. ':settled', now, rid)
  return held
end

-- A reservation whose TTL has passed must not count. Operations do not release such reservations
-- themselves (their keys are not known in advance): they answer RECLAIM before anything else, the
-- caller releases them through the expire function and tries again.
local function overdue(now)
  return #R('ZRANGEBYSCORE', P .. ':due', '-inf', now, 'LIMIT', 0, 1) > 0
end

-- The holds of reservation R when one of their state keys was not declared (nil when all were):
-- the caller declares them and tries again.
local function holds_declared(Rk)
  local holds = R('HGET', Rk, 'holds') or ''
  for h in string.gmatch(holds, '[^\n]+') do
    if not DECLARED[P .. ':s:' .. h] then return holds end
  end
  return nil
end

-- The standing of every spec (a request budget that is not open: '-', '-', and gone is set).
local function read_states(sp, out, now)
  local states, gone = {}, false
  for _, s in ipairs(sp) do
    if s.request and not q_open(s, now) then
      gone = true
      out[#out + 1] = '-'
      out[#out + 1] = '-'
    else
      local u, r = used_of(s), reserved_of(s)
      states[#states + 1] = {u = u, r = r, l = s.limit, action = s.action}
      out[#out + 1] = u
      out[#out + 1] = r
    end
  end
  return states, gone
end

local function standing(sp, out, now)
  for _, s in ipairs(sp) do
    if s.request and not q_open(s, now) then
      out[#out + 1] = '-'
      out[#out + 1] = '-'
    elseif s.enabled then
      out[#out + 1] = used_of(s)
      out[#out + 1] = reserved_of(s)
    end
  end
end

local function insert_usage(id, ts, scopes, cost, total, prov, model, tin, tout, tcr, tcc, treas, rid, fp)
  if R('HSETNX', P .. ':u', id, table.concat({ts, scopes[1], scopes[2], scopes[3], scopes[4],
      scopes[5], prov, model, cost, tin, tout, tcr, tcc, treas, total, rid, fp or ''}, '\31')) == 1 then
    R('ZADD', P .. ':ut', ts, id)
  end
end

local function fire(s, S, used, now, fired)
  local ths = {}
  for t in string.gmatch(s.th, '[^,]+') do ths[#ths + 1] = t end
  if s.rolling then  -- a rolling window re-arms a threshold once its spend falls back below it
    for _, t in ipairs(ths) do
      if not reached(used, s.limit, tonumber(t)) then R('HDEL', S, 'a:0:' .. t) end
    end
  end
  for _, t in ipairs(ths) do
    if reached(used, s.limit, tonumber(t)) and R('HSETNX', S, 'a:' .. s.pk .. ':' .. t, now) == 1 then
      local seq = R('INCR', P .. ':alerts:seq')
      local occurrence = s.pk
      if s.rolling then occurrence = 'rolling@' .. now end
      R('HSET', P .. ':alert', seq, cjson.encode({id = s.bid .. '/' .. s.entity .. '/' .. occurrence .. '/' .. t,
        b = s.bid, e = s.entity, th = t, u = used, l = s.limit, ps = s.ws, pe = s.we, f = now, m = s.meta}))
      R('ZADD', P .. ':alerts', seq, seq)
      R('ZADD', P .. ':alerts:pending', seq, seq)
      R('ZADD', P .. ':alerts:fired', now, seq)
      R('ZADD', P .. ':alerts:b:' .. s.bid, seq, seq)
      fired[#fired + 1] = seq
    end
  end
end

-- The charged bucket of every budget must stay within a signed 64-bit integer; checked before writing.
local function charge_fits(sp, amt)
  for _, s in ipairs(sp) do
    local S = skey(s)
    if not fits(R('HGET', S, 'u:' .. s.cb) or '0', amt) then return s.bid end
    if s.rolling and not fits(R('HGET', S, 't') or '0', amt) then return s.bid end
  end
  return nil
end

-- Charge amt spent in bucket cb to every budget (disabled ones too: they keep counting), then fire
-- the thresholds the enabled ones reached. Appends used/reserved of each enabled budget, then the
-- sequences of the alerts fired.
local function charge(sp, amt, now, out)
  local fired = {}
  for _, s in ipairs(sp) do
    local S = skey(s)
    if s.request then
      -- Charged while open (a request budget that expired is over: its spend counts elsewhere only).
      if q_open(s, now) then
        R('HINCRBY', S, 'u:0', amt)
        q_service(S, s.meta, amt)
        q_touch(s, now)
        out[#out + 1] = R('HGET', S, 'u:0')
        out[#out + 1] = reserved_of(s)
      else
        out[#out + 1] = '-'
        out[#out + 1] = '-'
      end
    else
    R('SADD', ents(s), s.entity)
    local used
    if s.rolling then
      if tonumber(s.cb) >= tonumber(s.rb) then
        R('HINCRBY', S, 'u:' .. s.cb, amt)
        R('HINCRBY', S, 't', amt)
        R('ZADD', P .. ':z:' .. s.key, s.cb, s.cb)
      end
      used = used_of(s)
    else
      R('HINCRBY', S, 'u:' .. s.cb, amt)
      used = R('HGET', S, 'u:' .. s.cb)
    end
    if s.enabled then
      out[#out + 1] = used
      out[#out + 1] = reserved_of(s)
      if s.th ~= '' then fire(s, S, used, now, fired) end
    end
    end
  end
  for _, q in ipairs(fired) do out[#out + 1] = q end
end

local function snapshot(out, sp, from)
  local parts = {}
  for i, s in ipairs(sp) do
    parts[#parts + 1] = out[from + 2 * i - 1] .. ' ' .. out[from + 2 * i] .. ' ' .. s.limit
  end
  return table.concat(parts, ' ')
end

local function keys_of(sp)
  local parts = {}
  for _, s in ipairs(sp) do parts[#parts + 1] = s.key end
  return table.concat(parts, '\n')
end

-- Hold on every spec; a request budget is also kept open at least until the hold runs out.
local function add_holds(sp, hold, now, hold_until)
  for _, s in ipairs(sp) do
    if s.request then
      if hold ~= '0' then R('HINCRBY', skey(s), 'r', hold) end
      q_touch(s, now, hold_until)
    elseif hold ~= '0' then
      R('HINCRBY', skey(s), 'r', hold)
      R('SADD', ents(s), s.entity)
    end
  end
end

-- out holds each budget's used and reserved from position from + 1 on, as read_states left them.
local function holds_fit(sp, hold, out, from)
  for i, s in ipairs(sp) do
    if not fits(out[from + 2 * i], hold) then return s.bid end
  end
  return nil
end
"""

# ARGV: version, now, rid, expires, estimate, downgrade estimate ('' for none), idempotency key,
# organization, team, agent, workflow, user, provider, model, estimate tokens, owner, fingerprint,
# service, specs (the matching budgets', then the request budgets', innermost first)...
_RESERVE = r"""
if stale(ARGV[1]) then return {'STALE'} end
local now, rid, idem = ARGV[2], ARGV[3], ARGV[7]
if overdue(now) then return {'RECLAIM'} end
if idem ~= '' then
  local earlier = R('HGET', P .. ':idem', idem)
  if earlier then return {'REPLAY', earlier} end
end
local sp = specs(19)
local moved = q_stale(sp)
if moved then return {'REQUEST', moved} end
local out = {'OK', '', '', '0'}
local states, gone = read_states(sp, out, now)
if gone then
  out[2], out[3] = 'deny', '0'
  return out
end
local est, dest = ARGV[5], ARGV[6]
local decision, hold, awaiting = 'deny', '0', '0'
local first = verdict(states, est)
if first == 'allow' then decision, hold = 'allow', est
elseif first == 'downgrade' then
  if dest == '' then decision, hold, awaiting = 'downgrade', est, '1'
  elseif verdict(states, dest) ~= 'deny' then decision, hold = 'downgrade', dest end
end
out[2], out[3], out[4] = decision, hold, awaiting
if decision == 'deny' then return out end
local full = holds_fit(sp, hold, out, 4)
if full then return {'OVERFLOW', full, 'holds'} end
R('HSET', P .. ':r:' .. rid, 'st', '1', 'sc', table.concat(ARGV, '\30', 8, 12), 'held', hold,
  'holds', keys_of(sp), 'dec', decision, 'aw', awaiting, 'exp', ARGV[4],
  'x', table.concat({ARGV[13], ARGV[14], ARGV[15], idem}, '\30'), 'ow', ARGV[16], 'fp', ARGV[17],
  'svc', ARGV[18], 'snap', table.concat({now, est, dest, '0', snapshot(out, sp, 4)}, '\30'))
R('ZADD', P .. ':due', ARGV[4], rid)
if idem ~= '' then R('HSET', P .. ':idem', idem, rid) end
add_holds(sp, hold, now, ARGV[4])
return out
"""

# ARGV: version, now, rid (downgrade_of), expires, estimate, scopes differ ('1'/'0'), owner, specs...
_RESEND = r"""
if stale(ARGV[1]) then return {'STALE'} end
local now, rid, est = ARGV[2], ARGV[3], ARGV[5]
if overdue(now) then return {'RECLAIM'} end
local Rk = P .. ':r:' .. rid
if R('EXISTS', Rk) == 0 then return {'NOTFOUND'} end
local row = R('HMGET', Rk, 'st', 'aw', 'dec', 'held', 'ow')
if (row[5] or '') ~= ARGV[7] then return {'OWNER'} end
if row[1] ~= '1' then return {'STATE', row[1]} end
if ARGV[6] == '1' then return {'SCOPES'} end
if row[2] ~= '1' then
  if row[3] == 'downgrade' and row[4] == est then return {'REPLAY', rid} end
  return {'NOTAWAITING'}
end
local held = row[4]
local missing = holds_declared(Rk)
if missing then return {'KEYS', missing} end
local own = {}
for h in string.gmatch(R('HGET', Rk, 'holds') or '', '[^\n]+') do own[h] = true end
local sp = specs(8)
local out = {'OK', '', '', '0'}
local states, gone = {}, false
for _, s in ipairs(sp) do
  if s.request and not q_open(s, now) then
    gone = true
    out[#out + 1] = '-'
    out[#out + 1] = '-'
  else
    local u, r = used_of(s), reserved_of(s)
    if own[s.key] then r = str(add(pair(r), pair(neg(held)))) end
    states[#states + 1] = {u = u, r = r, l = s.limit, action = s.action}
    out[#out + 1] = u
    out[#out + 1] = r
  end
end
if gone or verdict(states, est) == 'deny' then
  settle(rid, '3', now)
  out[2], out[3] = 'deny', '0'
  return out
end
local full = holds_fit(sp, est, out, 4)
if full then return {'OVERFLOW', full, 'holds'} end
drop_holds(Rk, held)
R('HSET', Rk, 'held', est, 'holds', keys_of(sp), 'dec', 'downgrade', 'aw', '0', 'exp', ARGV[4],
  'snap', table.concat({now, est, '', '1', snapshot(out, sp, 4)}, '\30'))
R('ZADD', P .. ':due', ARGV[4], rid)
add_holds(sp, est, now, ARGV[4])
out[2], out[3] = 'downgrade', est
return out
"""

# ARGV: version, now, rid, actual, total tokens, provider, model, input, output, cache read,
# cache creation, reasoning, organization, team, agent, workflow, user, owner, request holds (the
# reservation's ~rq@... keys, as the caller believes them), specs (the matching budgets', then the
# reservation's request budgets')...
_COMMIT = r"""
if stale(ARGV[1]) then return {'STALE'} end
local now, rid, actual = ARGV[2], ARGV[3], ARGV[4]
if overdue(now) then return {'RECLAIM'} end
local Rk = P .. ':r:' .. rid
local row = R('HMGET', Rk, 'st', 'sc', 'held', 'x', 'charged', 'rel', 'late', 'ow', 'holds')
if not row[1] then return {'NOTFOUND'} end
if (row[8] or '') ~= ARGV[18] then return {'OWNER'} end
if row[2] ~= table.concat(ARGV, '\30', 13, 17) then return {'SCOPES'} end
local rq = {}
for h in string.gmatch(row[9] or '', '[^\n]+') do
  if string.sub(h, 1, 4) == '~rq@' then rq[#rq + 1] = h end
end
if table.concat(rq, '\n') ~= ARGV[19] then return {'SCOPES'} end
local sp = specs(20)
if row[1] == '2' then
  local out = {'DUP', row[5], row[6], row[7]}
  standing(sp, out, now)
  return out
end
local full = charge_fits(sp, actual)
if full then return {'OVERFLOW', full, 'spend'} end
if row[1] == '1' and row[3] ~= '0' then
  local missing = holds_declared(Rk)
  if missing then return {'KEYS', missing} end
end
local released, late = '0', '1'
if row[1] == '1' then
  released, late = row[3], '0'
  drop_holds(Rk, released)
  R('ZREM', P .. ':due', rid)
end
R('HSET', Rk, 'st', '2', 'set', now, 'charged', actual, 'rel', released, 'late', late)
R('ZADD', P .. ':settled', now, rid)
local prov, model = ARGV[6], ARGV[7]
local rprov, rmodel = string.match(row[4] or '', '^([^\30]*)\30([^\30]*)')
if prov == '' then prov = rprov or '' end
if model == '' then model = rmodel or '' end
insert_usage('reservation:' .. rid, now, {ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17]}, actual, ARGV[5],
  prov, model, ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], rid)
local out = {'OK', released, late, prov, model}
charge(sp, actual, now, out)
return out
"""

# ARGV: version, now, usage id, occurred, cost, total tokens, provider, model, input, output,
# cache read, cache creation, reasoning, organization, team, agent, workflow, user, reservation id,
# fingerprint, specs (the matching budgets', then the request budgets')...
_RECORD = r"""
if stale(ARGV[1]) then return {'STALE'} end
local now, id, cost = ARGV[2], ARGV[3], ARGV[5]
if overdue(now) then return {'RECLAIM'} end
local sp = specs(21)
local moved = q_stale(sp)
if moved then return {'REQUEST', moved} end
if R('HEXISTS', P .. ':u', id) == 1 then
  local out = {'DUP'}
  standing(sp, out, now)
  return out
end
local full = charge_fits(sp, cost)
if full then return {'OVERFLOW', full, 'spend'} end
insert_usage(id, ARGV[4], {ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18]}, cost, ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[19], ARGV[20])
local out = {'OK'}
charge(sp, cost, now, out)
return out
"""

# ARGV: version, now, record id prefix, group count, then per group: organization, team, agent,
# workflow, user, provider, model, occurred, specs...; then the item count and per item: instant, uid
# (hex), group, cost, input, output, cache read, cache creation, reasoning, total; then the series
# count and per series: id (hex), group, baseline ('1'/'0'), the same seven totals.
_BATCH = r"""
if stale(ARGV[1]) then return {'STALE'} end
local now, prefix = ARGV[2], ARGV[3]
if overdue(now) then return {'RECLAIM'} end
local MAX = 9007199254740991  -- sums stay exact doubles below 2^53
local groups, j = {}, 5
for g = 1, tonumber(ARGV[4]) do
  local grp = {scopes = {ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4]}, prov = ARGV[j + 5],
    model = ARGV[j + 6], at = ARGV[j + 7], sp = specs(j + 8), n = 0, sums = {0, 0, 0, 0, 0, 0, 0}}
  groups[g] = grp
  j = j + 9 + tonumber(ARGV[j + 8]) * F
  local moved = q_stale(grp.sp)
  if moved then return {'REQUEST', moved} end
end
local function add(grp, values)
  for i = 1, 7 do
    grp.sums[i] = grp.sums[i] + values[i]
    if grp.sums[i] > MAX then return false end
  end
  grp.n = grp.n + 1
  return true
end
-- Read first, write after: a refused batch leaves nothing behind.
local K, SER, SERT = P .. ':bk', P .. ':ser', P .. ':sert'
local fresh, duplicates = {}, 0
local nitems = tonumber(ARGV[j]); j = j + 1
for _ = 1, nitems do
  local member = ARGV[j] .. ':' .. ARGV[j + 1]
  if R('ZSCORE', K, member) then
    duplicates = duplicates + 1
  else
    local t = {}
    for i = 1, 6 do t[i] = tonumber(ARGV[j + 2 + i]) end
    local total = tonumber(ARGV[j + 9])
    if total == 0 then total = t[2] + t[3] end
    t[7] = total
    if not add(groups[tonumber(ARGV[j + 2]) + 1], t) then return {'TOO_LARGE'} end
    fresh[#fresh + 1] = {tonumber(ARGV[j]), member}
  end
  j = j + 10
end
local raised = {}
local nseries = tonumber(ARGV[j]); j = j + 1
for _ = 1, nseries do
  local id, grp, baseline = ARGV[j], groups[tonumber(ARGV[j + 1]) + 1], ARGV[j + 2] == '1'
  local new = {}
  for i = 1, 7 do new[i] = tonumber(ARGV[j + 2 + i]) end
  local known = R('HGET', SER, id)
  if not known then
    raised[#raised + 1] = {id, new}
    if baseline then duplicates = duplicates + 1
    elseif not add(grp, new) then return {'TOO_LARGE'} end
  else
    local old, i = {}, 1
    for v in string.gmatch(known, '[^ ]+') do old[i] = tonumber(v); i = i + 1 end
    local growth, grew, top = {}, false, {}
    for k = 1, 7 do
      growth[k] = math.max(new[k] - old[k], 0)
      top[k] = math.max(new[k], old[k])
      if growth[k] > 0 then grew = true end
    end
    if grew then
      raised[#raised + 1] = {id, top}
      if not add(grp, growth) then return {'TOO_LARGE'} end
    else
      duplicates = duplicates + 1
    end
  end
  j = j + 10
end
local function int(x) return string.format('%.0f', x) end
for _, grp in ipairs(groups) do
  if grp.n > 0 and grp.sums[1] > 0 then
    local full = charge_fits(grp.sp, int(grp.sums[1]))
    if full then return {'OVERFLOW', full, 'spend'} end
  end
end
for _, f in ipairs(fresh) do R('ZADD', K, f[1], f[2]) end
for _, r in ipairs(raised) do
  local parts = {}
  for k = 1, 7 do parts[k] = int(r[2][k]) end
  R('HSET', SER, r[1], table.concat(parts, ' '))
  R('ZADD', SERT, now, r[1])
end
local counts, charged, fired = {}, {}, {}
for g, grp in ipairs(groups) do
  counts[g], charged[g] = tostring(grp.n), '0'
  if grp.n > 0 then
    local sm = grp.sums
    local total = sm[7]
    if total == 0 then total = sm[2] + sm[3] end
    insert_usage(prefix .. ':' .. (g - 1), grp.at, grp.scopes, int(sm[1]), int(total), grp.prov, grp.model,
      int(sm[2]), int(sm[3]), int(sm[4]), int(sm[5]), int(sm[6]), '')
    charged[g] = int(sm[1])
    if sm[1] > 0 then
      local out = {}
      charge(grp.sp, int(sm[1]), now, out)
      local standings = 0
      for _, s in ipairs(grp.sp) do if s.enabled or s.request then standings = standings + 2 end end
      for k = standings + 1, #out do fired[#fired + 1] = out[k] end
    end
  end
end
local reply = {'OK', tostring(duplicates)}
for g = 1, #groups do reply[#reply + 1] = counts[g] end
for g = 1, #groups do reply[#reply + 1] = charged[g] end
for _, q in ipairs(fired) do reply[#reply + 1] = q end
return reply
"""

# ARGV: version, now, alert period key for marks ('' for none), specs...
_STANDING = r"""
if stale(ARGV[1]) then return {'STALE'} end
if overdue(ARGV[2]) then return {'RECLAIM'} end
local sp = specs(4)
local moved = q_stale(sp)
if moved then return {'REQUEST', moved} end
local out = {'OK'}
read_states(sp, out, ARGV[2])
if ARGV[3] ~= '' and #sp > 0 then
  local prefix = 'a:' .. ARGV[3] .. ':'
  for _, f in ipairs(R('HKEYS', skey(sp[1]))) do
    if string.sub(f, 1, #prefix) == prefix then out[#out + 1] = string.sub(f, #prefix + 1) end
  end
end
return out
"""

# ARGV: now, rid, owner
_RELEASE = r"""
local now, rid = ARGV[1], ARGV[2]
local Rk = P .. ':r:' .. rid
local row = R('HMGET', Rk, 'st', 'ow')
local st = row[1]
if not st then return {'NOTFOUND'} end
if (row[2] or '') ~= ARGV[3] then return {'OWNER'} end
if st == '2' then return {'COMMITTED'} end
if st ~= '1' then return {'OK', st, '0'} end
local missing = holds_declared(Rk)
if missing then return {'KEYS', missing} end
return {'OK', '3', settle(rid, '3', now)}
"""

# Release the reservations the caller found due, whose keys and holds' keys it declared; one whose
# holds changed since it read them (or that is no longer due) is left for the next call.
# ARGV: now, reservation ids...
_EXPIRE = r"""
local now, n = tonumber(ARGV[1]), 0
for i = 2, #ARGV do
  local rid = ARGV[i]
  local Rk = P .. ':r:' .. rid
  local at = R('ZSCORE', P .. ':due', rid)
  if at and tonumber(at) <= now then
    if R('HGET', Rk, 'st') ~= '1' then R('ZREM', P .. ':due', rid)
    elseif not holds_declared(Rk) then settle(rid, '4', ARGV[1]); n = n + 1 end
  end
end
return n
"""

# -- request budgets ---------------------------------------------------------------------------------
# Open one (domain.requests): the caller read the id's current incarnation (P:rqc) and, for a child,
# the parent's standing, from which it computed the limit. ARGV: now, id, definition (JSON),
# fingerprint, the incarnation the caller saw ('' for none), expires, then the ancestors as
# <id>@<created>@<idle ttl>, parent first. KEYS: P:rq, P:rqc, P:qdue, the new state key, the seen
# incarnation's state key, the ancestors' state keys.
_REQUEST_OPEN = r"""
local now, id, def, fp, seen, exp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local c = R('HGET', P .. ':rqc', id)
if (c or '') ~= seen then return {'RETRY'} end
if c then
  local S = P .. ':s:~rq@' .. c .. '/' .. id
  local e = R('HGET', S, 'e')
  if e and tonumber(e) > tonumber(now) then
    if cjson.decode(R('HGET', P .. ':rq', id)).fp == fp then return {'SAME', c} end
    return {'EXISTS'}
  end
  R('DEL', S)
  R('ZREM', P .. ':qdue', id .. '@' .. c)
end
for i = 7, #ARGV do
  local aid, ac, attl = string.match(ARGV[i], '^(.*)@(%d+)@(%d+)$')
  local spec = {key = '~rq@' .. ac .. '/' .. aid, bid = aid, ws = ac, pk = attl}
  if R('HGET', P .. ':rqc', aid) ~= ac or not q_open(spec, now) then return {'PARENT', aid} end
end
for i = 7, #ARGV do  -- opening a child is activity on every ancestor
  local aid, ac, attl = string.match(ARGV[i], '^(.*)@(%d+)@(%d+)$')
  q_touch({key = '~rq@' .. ac .. '/' .. aid, bid = aid, ws = ac, pk = attl}, now)
end
R('HSET', P .. ':rq', id, def)
R('HSET', P .. ':rqc', id, now)
R('HSET', P .. ':s:~rq@' .. now .. '/' .. id, 'e', exp, 'u:0', '0', 'r', '0')
R('ZADD', P .. ':qdue', exp, id .. '@' .. now)
return {'OK', now}
"""

# A request budget's standing and spend by service, if it is open. ARGV: version, now, id, created.
_REQUEST_READ = r"""
if overdue(ARGV[2]) then return {'RECLAIM'} end
local S = P .. ':s:~rq@' .. ARGV[4] .. '/' .. ARGV[3]
if R('HGET', P .. ':rqc', ARGV[3]) ~= ARGV[4] then return {'GONE'} end
local e = R('HGET', S, 'e')
if not e or tonumber(e) <= tonumber(ARGV[2]) then return {'GONE'} end
local out = {'OK', R('HGET', S, 'u:0') or '0', R('HGET', S, 'r') or '0', e}
for _, f in ipairs(R('HKEYS', S)) do
  if string.sub(f, 1, 2) == 'v:' then
    out[#out + 1] = string.sub(f, 3)
    out[#out + 1] = R('HGET', S, f)
  end
end
return out
"""

# -- budgets -----------------------------------------------------------------------------------------
_LOAD_BUDGETS = r"""
local out = {R('HGET', P .. ':meta', 'version') or '0'}
for _, v in ipairs(R('HGETALL', P .. ':budgets')) do out[#out + 1] = v end
return out
"""

# Each change bumps the version every script checks; an inserted budget takes the new version as its
# generation, which keys its state apart from any earlier budget with the same id.
_BUDGET_OPS = r"""
local function insert(id, body)
  if R('HEXISTS', P .. ':budgets', id) == 1 then return nil end
  R('HINCRBY', P .. ':meta', 'version', 1)
  -- Read back as a string: a Lua number would be formatted with 14 significant digits.
  local gen = R('HGET', P .. ':meta', 'version')
  R('HSET', P .. ':budgets', id, body .. ',"generation":' .. gen .. '}')
  return gen
end
local function bump() R('HINCRBY', P .. ':meta', 'version', 1) end
-- The audit event of the change, appended in the same step (the layout of ``access``'s scripts).
local function audit(event)
  if event and event ~= '' then
    local seq = R('INCR', P .. ':audit:seq')
    R('ZADD', P .. ':audit', seq, seq .. ' ' .. event)
  end
end
local function remove(id, dead)
  R('HDEL', P .. ':budgets', id)
  R('SADD', P .. ':dead', dead)
  bump()
end
local op = ARGV[1]
if op == 'create' then
  local gen = insert(ARGV[2], ARGV[3])
  if not gen then return {'EXISTS'} end
  audit(ARGV[4])
  return {'OK', gen}
end
if op == 'replace' or op == 'delete' then
  if R('HGET', P .. ':budgets', ARGV[2]) ~= ARGV[3] then return {'CHANGED'} end
  if op == 'replace' then R('HSET', P .. ':budgets', ARGV[2], ARGV[4]); bump()
  else remove(ARGV[2], ARGV[4]) end
  audit(ARGV[5])
  return {'OK'}
end
if op == 'sync' then
  if (R('HGET', P .. ':meta', 'version') or '0') ~= ARGV[2] then return {'CHANGED'} end
  local i = 3
  while i <= #ARGV do
    local kind, id, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if kind == 'i' then insert(id, body)
    elseif kind == 'r' then R('HSET', P .. ':budgets', id, body); bump()
    else remove(id, body) end
    i = i + 3
  end
  return {'OK'}
end
return redis.error_reply('unknown budget operation ' .. tostring(op))
"""

# -- alerts ------------------------------------------------------------------------------------------
# ARGV: owner, now, lease until, limit, scan cap
_CLAIM_ALERTS = r"""
local out = {}
local now, limit, L = tonumber(ARGV[2]), tonumber(ARGV[4]), P .. ':alerts:lease'
for _, seq in ipairs(R('ZRANGE', P .. ':alerts:pending', 0, tonumber(ARGV[5]) - 1)) do
  local lease = R('HGET', L, seq)
  if not lease or tonumber(string.match(lease, '(%d+)$')) <= now then
    R('HSET', L, seq, ARGV[1] .. ' ' .. ARGV[3])
    out[#out + 1] = seq
    if #out >= limit then break end
  end
end
return out
"""

# A delivered alert leaves the pending set; its lease stays, as a record of who delivered it, until
# the alert itself is pruned. ARGV: now, sequences...
_ACK_ALERTS = r"""
for i = 2, #ARGV do R('ZREM', P .. ':alerts:pending', ARGV[i]) end
return #ARGV - 1
"""

# -- housekeeping ------------------------------------------------------------------------------------
# What the caller found past its retention: settled reservations and fired alerts are named in ARGV
# (their keys, and the per-budget alert indexes, are declared), usage and batch keys are taken here.
# ARGV: what, cut, chunk, reservation ids or alert sequences...
_PRUNE = r"""
local what, cut, chunk = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
if what == 'reservations' then
  for i = 4, #ARGV do
    local rid = ARGV[i]
    local at = R('ZSCORE', P .. ':settled', rid)
    if at and tonumber(at) < tonumber(cut) then
      local Rk = P .. ':r:' .. rid
      local k = string.match(R('HGET', Rk, 'x') or '', '([^\30]*)$')
      if k and k ~= '' and R('HGET', P .. ':idem', k) == rid then R('HDEL', P .. ':idem', k) end
      R('DEL', Rk)
      R('ZREM', P .. ':settled', rid)
    end
    n = n + 1
  end
elseif what == 'usage' then
  for _, id in ipairs(R('ZRANGEBYSCORE', P .. ':ut', '-inf', '(' .. cut, 'LIMIT', 0, chunk)) do
    R('HDEL', P .. ':u', id)
    R('ZREM', P .. ':ut', id)
    n = n + 1
  end
elseif what == 'batches' then
  -- Item keys by their instant, series by their last growth (LedgerStore.record_usage_batch).
  n = R('ZREMRANGEBYSCORE', P .. ':bk', '-inf', '(' .. cut)
  for _, id in ipairs(R('ZRANGEBYSCORE', P .. ':sert', '-inf', '(' .. cut, 'LIMIT', 0, chunk)) do
    R('HDEL', P .. ':ser', id)
    R('ZREM', P .. ':sert', id)
    n = n + 1
  end
elseif what == 'requests' then
  -- Request budgets whose expiry passed (the caller read P:qdue and declared their state keys).
  for i = 4, #ARGV do
    local member = ARGV[i]
    local at = R('ZSCORE', P .. ':qdue', member)
    if at and tonumber(at) <= tonumber(cut) then
      local id, c = string.match(member, '^(.*)@(%d+)$')
      local S = P .. ':s:~rq@' .. c .. '/' .. id
      local e = R('HGET', S, 'e')
      if not e or tonumber(e) <= tonumber(cut) then
        R('DEL', S)
        if R('HGET', P .. ':rqc', id) == c then
          R('HDEL', P .. ':rqc', id)
          R('HDEL', P .. ':rq', id)
        end
        R('ZREM', P .. ':qdue', member)
      end
    end
    n = n + 1
  end
elseif what == 'alerts' then
  for i = 4, #ARGV do
    local seq = ARGV[i]
    local at = R('ZSCORE', P .. ':alerts:fired', seq)
    local record = R('HGET', P .. ':alert', seq)
    local B = record and P .. ':alerts:b:' .. cjson.decode(record).b
    if at and tonumber(at) < tonumber(cut) and (not B or DECLARED[B]) then
      if B then R('ZREM', B, seq) end
      R('HDEL', P .. ':alert', seq)
      R('HDEL', P .. ':alerts:lease', seq)
      R('ZREM', P .. ':alerts', seq)
      R('ZREM', P .. ':alerts:pending', seq)
      R('ZREM', P .. ':alerts:fired', seq)
    end
    n = n + 1
  end
end
return n
"""

# Forget what no window reads any more for some entities of one live budget.
# ARGV: bid@gen, rolling ('1'/'0'), lowest bucket, entities...
_PRUNE_STATE = r"""
local base, rolling, lowest = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local E = P .. ':ents:' .. base
for i = 4, #ARGV do
  local key = base .. '/' .. ARGV[i]
  local S = P .. ':s:' .. key
  if rolling then
    used_of({key = key, rolling = true, rb = ARGV[3]})
  else
    for _, f in ipairs(R('HKEYS', S)) do
      local kind, at = string.match(f, '^([ua]):(%d+)')
      if kind and tonumber(at) < lowest then R('HDEL', S, f) end
    end
  end
  if R('HGET', S, 'r') == '0' then R('HDEL', S, 'r') end
  if rolling and R('HGET', S, 't') == '0' and R('EXISTS', P .. ':z:' .. key) == 0 then
    R('HDEL', S, 't')
  end
  if R('EXISTS', S) == 0 then R('SREM', E, ARGV[i]) end
end
return #ARGV - 3
"""

# Delete the state of some entities of a deleted budget generation; ARGV: bid@gen, done ('1'/'0'), entities...
_COLLECT_DEAD = r"""
local base = ARGV[1]
for i = 3, #ARGV do
  R('DEL', P .. ':s:' .. base .. '/' .. ARGV[i])
  R('DEL', P .. ':z:' .. base .. '/' .. ARGV[i])
  R('SREM', P .. ':ents:' .. base, ARGV[i])
end
if ARGV[2] == '1' and R('SCARD', P .. ':ents:' .. base) == 0 then
  R('DEL', P .. ':ents:' .. base)
  R('SREM', P .. ':dead', base)
end
return #ARGV - 2
"""

_BODIES = {
    "reserve": _RESERVE,
    "resend": _RESEND,
    "commit": _COMMIT,
    "record": _RECORD,
    "batch": _BATCH,
    "standing": _STANDING,
    "release": _RELEASE,
    "expire": _EXPIRE,
    "request_open": _REQUEST_OPEN,
    "request_read": _REQUEST_READ,
    "load_budgets": _LOAD_BUDGETS,
    "budget_ops": _BUDGET_OPS,
    "claim_alerts": _CLAIM_ALERTS,
    "ack_alerts": _ACK_ALERTS,
    "prune": _PRUNE,
    "prune_state": _PRUNE_STATE,
    "collect_dead": _COLLECT_DEAD,
}
# The constants of request budgets are domain.requests', written into the text.
_COMMON_TEXT = _COMMON.replace("@QMAX@", str(MAX_SERVICES)).replace("@QOTHER@", OTHER_SERVICES)
# The library is named after its own text, so sidecars of different versions sharing one Redis (a
# rolling upgrade) each call the functions they were built with.
_VERSION = hashlib.sha1("".join([_COMMON_TEXT, *_BODIES.values()]).encode()).hexdigest()[:12]
LIBRARY_NAME = f"paymaster_{_VERSION}"
FUNCTIONS: dict[str, str] = {name: f"pm_{_VERSION}_{name}" for name in _BODIES}
"""The name Redis knows each operation's function by."""

# Arguments travel as one JSON array of strings, decoded by cjson (C) inside Redis: cheaper for the
# client than dozens of separate arguments, and for Redis than splitting them in Lua.
_REGISTER = """
redis.register_function('{name}', function(keys, args)
  P = string.sub(keys[1], 1, -6)
  DECLARED = {{}}
  for _, k in ipairs(keys) do DECLARED[k] = true end
  ARGV = cjson.decode(args[1])
{body}
end)
"""

LIBRARY = (
    f"#!lua name={LIBRARY_NAME}\n"
    + _COMMON_TEXT
    + "".join(_REGISTER.format(name=FUNCTIONS[name], body=body) for name, body in _BODIES.items())
)
"""The function library: the shared helpers, defined once when Redis loads it, then every operation."""
