"""The Redis backend: many processes on many machines share one queue.

``RedisBackend("redis://host:6379/0?prefix=myapp")``, or the URL wherever a
backend is chosen (``errands serve --backend redis://...``).  ``rediss://``
for TLS and ``unix:///path/to/redis.sock`` work too; a username and password
come from the URL or from ``ERRANDS_REDIS_USERNAME`` and
``ERRANDS_REDIS_PASSWORD``.  It needs Redis 7.0 or newer (or Valkey 7.2+).

Every state change is one Lua script, so each is atomic and one round trip.
No Redis call runs on the trio thread: an I/O thread sends them with
redis-py's synchronous client, every call queued meanwhile in one pipeline
(calls made together share a round trip).  A listener thread subscribes to two
channels, ``work`` (a task was queued) and ``changes`` (a record changed,
or a cancel was asked), so idle engines wake on new work and waiters wake
when another process ends their task, without polling; a slow poll
(``poll_interval``, 5 s) covers messages lost while the connection was down.

Layout (``P`` is ``{prefix}``, a hash tag, so every key of one service is on
one Redis Cluster slot):

* ``P:t:<id>`` hash, a task: ``n`` name, ``s`` status, ``k`` token, ``c``
  created_at, ``e`` expires_at (empty while not final), ``d`` the record's
  JSON without its arguments, ``a`` the arguments' JSON (written once: they
  never change, and may be megabytes), ``b`` its batch; ``rm`` and ``rv``
  its result (media type, bytes).  Arguments of 16 KiB or more are not in
  ``a`` but in ``P:a:<id>`` (``A`` is then their length), and results of
  16 KiB or more not in ``rv`` but in ``P:r:<id>`` (``R`` their length):
  strings staged by a plain ``SET`` under ``P:u:<random>`` (with an
  expiry, for a call that never reaches its script) in the pipeline of the
  script that creates or ends the task, which renames them into place (or
  drops them, when the record did not move), and read back in 1 MB pieces;
  they expire and are deleted with their task.  A record that an errands of
  before wrote (``d`` whole, no ``a``) is read whole, and written whole.
* ``P:i:all``, ``P:i:s:<status>``, ``P:i:n:<name>``, ``P:i:ns:<name>:<status>``
  sorted sets of ids by created_at, for listing; ``P:x`` ids by expires_at,
  for purging.
* ``P:e:<id>`` hash, a queue entry: ``n`` name, ``p`` priority, ``r`` rank,
  ``m`` its member (put order and id), ``nb`` not_before, ``o`` owner (empty
  while waiting), ``k`` token, ``l`` lease_until, ``x`` cancel asked.
* ``P:q:<name>`` ready entries by rank (member ``<seq>:<id>``, so equal
  ranks keep put order); ``P:d:<name>`` delayed ids by not_before and
  ``P:dr:<name>`` the same by rank (for positions); ``P:leases`` claimed ids
  by lease_until; ``P:names`` every name ever queued.
* ``P:b:<batch>`` a batch's ids by position; ``P:bl:<batch>`` how many of
  its members' records exist.
* ``P:seq``, ``P:token`` counters; channels ``P:work`` and ``P:changes``.

Final records also get a Redis expiry (their ttl plus a margin, counted from
their creation) as a backstop; the engine's sweeper deletes them on time, and
the engine reads an expired record as not found before either runs.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import trio

from errands import (
    Backend,
    BackendError,
    Claim,
    Payload,
    Queue,
    Renewal,
    Store,
    StoredTask,
    TaskStatus,
)
from errands._backend import start_record
from errands._status import check_transition

try:
    import redis
    import redis.exceptions
except ImportError as exc:  # pragma: no cover - an optional dependency
    raise ImportError("the Redis backend needs redis-py: pip install 'errands[redis]'") from exc

__all__ = ["RedisBackend", "RedisQueue", "RedisStore"]

log = logging.getLogger("errands.backends.redis")

T = TypeVar("T")

#: Seconds a final record outlives its ttl in Redis (the engine purges on time).
EXPIRY_MARGIN = 3600
#: Ids purged per script call (a script blocks Redis while it runs).
PURGE_BATCH = 500
#: Arguments (their JSON) and results of this many bytes or more are kept in
#: a key of their own (``a:<id>``, ``r:<id>``), staged with a plain ``SET``
#: and renamed into place by the script that creates or ends the task:
#: through the script's arguments, Redis copied 6.7 MB into Lua (15 ms), and
#: reading them back out of a script cost as much again.  Below it, a second
#: key per task and a second read would cost more than the copy.
APART_LIMIT = 16 * 1024
#: Seconds staged arguments outlive a submit that never reached its script
#: (a client gone between the two); the script renames them out of the way.
STAGED_TTL = 3600
#: Bytes per ``GETRANGE`` when arguments kept apart are read back: one
#: 6.7 MB reply took redis-py's parser 22-31 ms (it grows a buffer, then
#: copies out of it), the same in 1 MB pieces of one pipeline 5-8 ms.
READ_PIECE = 1 << 20


# ---------------------------------------------------------------------- scripts

_PRELUDE = """
local P = ARGV[1]
local function entry_member(seq, id)
  return string.format('%016.0f', seq) .. ':' .. id
end
-- ``quiet``: the caller announces the name itself (once for many puts).
local function announce(name)
  redis.call('SADD', P .. ':names', name)
  redis.call('PUBLISH', P .. ':work', name)
end
local function queue_put(id, name, priority, not_before, rank, quiet)
  local e = P .. ':e:' .. id
  if redis.call('EXISTS', e) == 1 then return 0 end
  local seq = redis.call('INCR', P .. ':seq')
  local member = entry_member(seq, id)
  redis.call('HSET', e, 'n', name, 'p', priority, 'r', rank, 'm', member,
             'nb', not_before, 'o', '', 'k', 0, 'l', 0, 'x', 0)
  if tonumber(not_before) > 0 then
    redis.call('ZADD', P .. ':d:' .. name, not_before, id)
    redis.call('ZADD', P .. ':dr:' .. name, rank, member)
  else
    redis.call('ZADD', P .. ':q:' .. name, rank, member)
  end
  if not quiet then announce(name) end
  return 1
end
local function unqueue_waiting(e, name, member, id)
  redis.call('ZREM', P .. ':q:' .. name, member)
  redis.call('ZREM', P .. ':d:' .. name, id)
  redis.call('ZREM', P .. ':dr:' .. name, member)
end
local function claim_ready(owner, now, lease_until, limit, left)
  -- left: name -> quota; claims up to limit ready entries, best first:
  -- {id, name, token, ...}
  for name, _ in pairs(left) do
    local due = redis.call('ZRANGEBYSCORE', P .. ':d:' .. name, '-inf', now)
    for _, id in ipairs(due) do
      local e = redis.call('HMGET', P .. ':e:' .. id, 'm', 'r')
      redis.call('ZREM', P .. ':d:' .. name, id)
      if e[1] then
        redis.call('ZREM', P .. ':dr:' .. name, e[1])
        redis.call('ZADD', P .. ':q:' .. name, e[2], e[1])
      end
    end
  end
  local claims = {}
  local count = 0
  while count < limit do
    local best, best_name, best_score = nil, nil, nil
    for name, quota in pairs(left) do
      if quota > 0 then
        local head = redis.call('ZRANGE', P .. ':q:' .. name, 0, 0, 'WITHSCORES')
        if head[1] then
          local score = tonumber(head[2])
          if best == nil or score < best_score or (score == best_score and head[1] < best) then
            best, best_name, best_score = head[1], name, score
          end
        end
      end
    end
    if best == nil then break end
    redis.call('ZREM', P .. ':q:' .. best_name, best)
    local id = string.sub(best, 18)
    local token = redis.call('INCR', P .. ':token')
    redis.call('HSET', P .. ':e:' .. id, 'o', owner, 'k', token, 'l', lease_until, 'x', 0)
    redis.call('ZADD', P .. ':leases', lease_until, id)
    table.insert(claims, id)
    table.insert(claims, best_name)
    table.insert(claims, token)
    left[best_name] = left[best_name] - 1
    count = count + 1
  end
  return claims
end
local function index(id, name, status, created)
  redis.call('ZADD', P .. ':i:all', created, id)
  redis.call('ZADD', P .. ':i:s:' .. status, created, id)
  redis.call('ZADD', P .. ':i:n:' .. name, created, id)
  redis.call('ZADD', P .. ':i:ns:' .. name .. ':' .. status, created, id)
end
local function unindex(id, name, status)
  redis.call('ZREM', P .. ':i:all', id)
  redis.call('ZREM', P .. ':i:s:' .. status, id)
  redis.call('ZREM', P .. ':i:n:' .. name, id)
  redis.call('ZREM', P .. ':i:ns:' .. name .. ':' .. status, id)
  redis.call('ZREM', P .. ':x', id)
end
local function set_expiry(t, id, created, expires)
  if expires == '' then return end
  redis.call('ZADD', P .. ':x', expires, id)
  local keep = math.floor(tonumber(expires) - tonumber(created)) + MARGIN
  if keep < MARGIN then keep = MARGIN end
  redis.call('EXPIRE', t, keep)
  redis.call('EXPIRE', P .. ':a:' .. id, keep)  -- its arguments and result, if kept apart
  redis.call('EXPIRE', P .. ':r:' .. id, keep)
end
-- A record written whole (``d`` with its arguments, no ``a``: by an errands
-- before the arguments were kept apart) must stay whole: a write of the rest
-- alone (``whole`` not '1') is refused with -1, changing nothing, and the
-- caller sends the record whole.
local function stored_whole(t, whole)
  return whole ~= '1' and redis.call('EXISTS', t) == 1 and redis.call('HEXISTS', t, 'a') == 0
    and redis.call('HEXISTS', t, 'A') == 0
end
-- Arguments staged for a task (``staged`` not ''): SET beforehand under
-- ``u:<staged>`` by the same pipeline, they must be there before anything
-- is written (a SET that Redis refused fails the script, writing nothing).
local function check_staged(staged)
  if staged ~= '' and redis.call('EXISTS', P .. ':u:' .. staged) == 0 then
    return redis.error_reply('errands: the arguments or the result of a task did not reach redis')
  end
  return nil
end
-- A result, from the scripts' has_result, media_type, result: has '1' with
-- the bytes in ``rv``, '2' with the name of their staged key (``r:<id>``,
-- with its length in ``R``); '0' no result.
local function put_result(t, id, has, media_type, value)
  local r = P .. ':r:' .. id
  if has == '1' then
    redis.call('HSET', t, 'rm', media_type, 'rv', value)
    redis.call('HDEL', t, 'R')
    redis.call('DEL', r)
  elseif has == '2' then
    redis.call('RENAME', P .. ':u:' .. value, r)
    redis.call('PERSIST', r)
    redis.call('HSET', t, 'rm', media_type, 'R', redis.call('STRLEN', r))
    redis.call('HDEL', t, 'rv')
  end
end
-- A staged result that its script did not store (the record did not move).
local function drop_staged(has, value)
  if has == '2' then redis.call('DEL', P .. ':u:' .. value) end
end
local function move_status(id, name, created, old, new)
  if old == new then return end
  redis.call('ZREM', P .. ':i:s:' .. old, id)
  redis.call('ZREM', P .. ':i:ns:' .. name .. ':' .. old, id)
  redis.call('ZADD', P .. ':i:s:' .. new, created, id)
  redis.call('ZADD', P .. ':i:ns:' .. name .. ':' .. new, created, id)
end
local function create(id, name, status, token, created, expires, data, args, batch, staged)
  local t = P .. ':t:' .. id
  if redis.call('EXISTS', t) == 1 then
    if staged ~= '' then redis.call('DEL', P .. ':u:' .. staged) end
    return 0
  end
  if staged == '' then
    redis.call('HSET', t, 'n', name, 's', status, 'k', token, 'c', created, 'e', expires,
               'd', data, 'a', args, 'b', batch)
  else
    -- Renamed into place, not copied; it kept the staging key's expiry.
    local a = P .. ':a:' .. id
    redis.call('RENAME', P .. ':u:' .. staged, a)
    redis.call('PERSIST', a)
    redis.call('HSET', t, 'n', name, 's', status, 'k', token, 'c', created, 'e', expires,
               'd', data, 'A', redis.call('STRLEN', a), 'b', batch)
  end
  index(id, name, status, created)
  if batch ~= '' then redis.call('INCR', P .. ':bl:' .. batch) end
  set_expiry(t, id, created, expires)
  return 1
end
local function delete(id, drop_batch)
  local t = P .. ':t:' .. id
  local f = redis.call('HMGET', t, 'n', 's', 'b')
  if not f[1] then return 0 end
  unindex(id, f[1], f[2])
  redis.call('DEL', t, P .. ':a:' .. id, P .. ':r:' .. id)
  local batch = f[3]
  -- (An expired id deleted to be used anew keeps its batch as it is.)
  if drop_batch and batch and batch ~= '' then
    if redis.call('DECR', P .. ':bl:' .. batch) <= 0 then
      redis.call('DEL', P .. ':b:' .. batch, P .. ':bl:' .. batch)
    end
  end
  return 1
end
""".replace("MARGIN", str(EXPIRY_MARGIN))

_PUT = """
return queue_put(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""

_ENQUEUE = """
-- ARGV: P, id, name, status, token, created, expires, data, args, staged,
--       priority, not_before, rank
local lost = check_staged(ARGV[10])
if lost then return lost end
if create(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], '',
          ARGV[10]) == 0 then
  return 0
end
queue_put(ARGV[2], ARGV[3], ARGV[11], ARGV[12], ARGV[13])
return 1
"""

_ENQUEUE_MANY = """
-- ARGV: P, priority, not_before, rank, batch, then per task:
--   id, name, status, token, created, expires, data, args, staged, position
local priority, not_before, rank, batch = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for i = 6, #ARGV, 10 do
  local lost = check_staged(ARGV[i + 8])
  if lost then return lost end
end
local answers = {}
local queued = {}
for i = 6, #ARGV, 10 do
  local id = ARGV[i]
  local added = redis.call('ZADD', P .. ':b:' .. batch, 'NX', ARGV[i + 9], id)
  local made = create(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
                      ARGV[i + 6], ARGV[i + 7], batch, ARGV[i + 8])
  if made == 1 then
    queue_put(id, ARGV[i + 1], priority, not_before, rank, true)
    queued[ARGV[i + 1]] = true
  elseif added == 1 and redis.call('EXISTS', P .. ':t:' .. id) == 1 then
    redis.call('HSET', P .. ':t:' .. id, 'b', batch)
    redis.call('INCR', P .. ':bl:' .. batch)
  end
  table.insert(answers, made)
end
for name, _ in pairs(queued) do announce(name) end  -- one wake-up per name, not per task
return answers
"""

_ADD_MEMBERS = """
-- ARGV: P, batch, then position, id pairs
local batch = ARGV[2]
for i = 3, #ARGV, 2 do
  local id = ARGV[i + 1]
  if redis.call('ZADD', P .. ':b:' .. batch, 'NX', ARGV[i], id) == 1 then
    local t = P .. ':t:' .. id
    if redis.call('EXISTS', t) == 1 then
      redis.call('HSET', t, 'b', batch)
      redis.call('INCR', P .. ':bl:' .. batch)
    end
  end
end
return 1
"""

_CLAIM = """
-- ARGV: P, owner, now, lease_until, limit, then name, quota pairs
local left = {}
for i = 6, #ARGV, 2 do left[ARGV[i]] = tonumber(ARGV[i + 1]) end
return claim_ready(ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), left)
"""

_RENEW = """
-- ARGV: P, lease_until, then id, token pairs; answers 0 lost, 1 renewed, 2 cancel asked
local lease_until = ARGV[2]
local answers = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local e = P .. ':e:' .. id
  local f = redis.call('HMGET', e, 'o', 'k', 'x')
  if f[1] and f[1] ~= '' and f[2] == token then
    redis.call('HSET', e, 'l', lease_until)
    redis.call('ZADD', P .. ':leases', lease_until, id)
    if f[3] == '1' then table.insert(answers, 2) else table.insert(answers, 1) end
  else
    table.insert(answers, 0)
  end
end
return answers
"""

_ACK = """
local id, token = ARGV[2], ARGV[3]
local e = P .. ':e:' .. id
local f = redis.call('HMGET', e, 'o', 'k')
if not f[1] or f[1] == '' or f[2] ~= token then return 0 end
redis.call('DEL', e)
redis.call('ZREM', P .. ':leases', id)
return 1
"""

_RELEASE = """
-- ARGV: P, id, token, not_before, rank ('' for -priority)
local id, token, not_before, rank = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local e = P .. ':e:' .. id
local f = redis.call('HMGET', e, 'o', 'k', 'n', 'p')
if not f[1] or f[1] == '' or f[2] ~= token then return 0 end
if rank == '' then rank = tostring(-tonumber(f[4])) end
redis.call('ZREM', P .. ':leases', id)
redis.call('DEL', e)
queue_put(id, f[3], f[4], not_before, rank)
return 1
"""

_REMOVE = """
local id = ARGV[2]
local e = P .. ':e:' .. id
local f = redis.call('HMGET', e, 'o', 'n', 'm')
if not f[1] or f[1] ~= '' then return 0 end
unqueue_waiting(e, f[2], f[3], id)
redis.call('DEL', e)
return 1
"""

_REQUEST_CANCEL = """
local id = ARGV[2]
local e = P .. ':e:' .. id
local owner = redis.call('HGET', e, 'o')
if not owner or owner == '' then return 0 end
redis.call('HSET', e, 'x', 1)
redis.call('PUBLISH', P .. ':changes', id)
return 1
"""

_EXPIRED = """
local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', P .. ':e:' .. id, 'n', 'k', 'o', 'l')
  if f[1] and f[3] ~= '' then
    table.insert(out, id)
    table.insert(out, f[1])
    table.insert(out, f[2])
    table.insert(out, f[3])
    table.insert(out, f[4])
  else
    redis.call('ZREM', P .. ':leases', id)
  end
end
return out
"""

_NEXT_DUE = """
local due = nil
for i = 2, #ARGV do
  local name = ARGV[i]
  if redis.call('ZCARD', P .. ':q:' .. name) > 0 then return '0' end
  local head = redis.call('ZRANGE', P .. ':d:' .. name, 0, 0, 'WITHSCORES')
  if head[1] and (due == nil or tonumber(head[2]) < due) then due = tonumber(head[2]) end
end
if due == nil then return false end
return tostring(due)
"""

_DEPTH = """
local names
if ARGV[2] == '' then names = redis.call('SMEMBERS', P .. ':names') else names = {ARGV[2]} end
local total = 0
for _, name in ipairs(names) do
  total = total + redis.call('ZCARD', P .. ':q:' .. name) + redis.call('ZCARD', P .. ':d:' .. name)
end
return total
"""

_POSITION = """
local id = ARGV[2]
local f = redis.call('HMGET', P .. ':e:' .. id, 'o', 'n', 'm', 'r')
if not f[1] or f[1] ~= '' then return false end
local name, member, rank = f[2], f[3], f[4]
local ready = redis.call('ZRANK', P .. ':q:' .. name, member)
if ready then
  return ready + redis.call('ZCOUNT', P .. ':dr:' .. name, '-inf', '(' .. rank)
end
local delayed = redis.call('ZRANK', P .. ':dr:' .. name, member)
if not delayed then return false end
return delayed + redis.call('ZCOUNT', P .. ':q:' .. name, '-inf', '(' .. rank)
"""

#: ``_CLAIM``, answering each claim with its record's fields (those of
#: ``_FIELDS``) too: a claim and the reads of its records in one round trip.
_CLAIM_AND_READ = """
-- ARGV: as claim's; answers id, name, token, record fields per claim
local left = {}
for i = 6, #ARGV, 2 do left[ARGV[i]] = tonumber(ARGV[i + 1]) end
local claims = claim_ready(ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), left)
local out = {}
for i = 1, #claims, 3 do
  table.insert(out, claims[i])
  table.insert(out, claims[i + 1])
  table.insert(out, claims[i + 2])
  table.insert(out, redis.call('HMGET', P .. ':t:' .. claims[i], 'n', 's', 'k', 'c', 'e', 'd', 'a',
                                'A'))
end
return out
"""

_CREATE = """
local lost = check_staged(ARGV[10])
if lost then return lost end
return create(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], '',
              ARGV[10])
"""

_TRANSITION = """
-- ARGV: P, id, expect, token ('' for any), status, new token, expires, data,
--       whole, has_result, media_type, result (see put_result)
local id, expect, token = ARGV[2], ARGV[3], ARGV[4]
local has, result = ARGV[10], ARGV[12]
if has == '2' then
  local lost = check_staged(result)
  if lost then return lost end
end
local t = P .. ':t:' .. id
local f = redis.call('HMGET', t, 's', 'k', 'n', 'c')
if not f[1] or f[1] ~= expect or (token ~= '' and f[2] ~= token) then
  drop_staged(has, result)
  return 0
end
if stored_whole(t, ARGV[9]) then
  drop_staged(has, result)
  return -1
end
local status = ARGV[5]
move_status(id, f[3], f[4], f[1], status)
redis.call('HSET', t, 's', status, 'k', ARGV[6], 'e', ARGV[7], 'd', ARGV[8])
put_result(t, id, has, ARGV[11], result)
set_expiry(t, id, f[4], ARGV[7])
redis.call('PUBLISH', P .. ':changes', id)
return 1
"""

_BEGIN = """
-- ARGV: P, id, claim token, expect, status, new token, data, whole
local id, token = ARGV[2], ARGV[3]
local f = redis.call('HMGET', P .. ':e:' .. id, 'o', 'k')
if not f[1] or f[1] == '' or f[2] ~= token then return 0 end
local t = P .. ':t:' .. id
local g = redis.call('HMGET', t, 's', 'n', 'c')
if not g[1] or g[1] ~= ARGV[4] then return 0 end
if stored_whole(t, ARGV[8]) then return -1 end
move_status(id, g[2], g[3], g[1], ARGV[5])
redis.call('HSET', t, 's', ARGV[5], 'k', ARGV[6], 'd', ARGV[7])
redis.call('PUBLISH', P .. ':changes', id)
return 1
"""

_FINISH = """
-- ARGV: P, id, claim token, status, new token, expires, data, whole,
--       has_result, media_type, result (see put_result)
local id, token = ARGV[2], ARGV[3]
local has, result = ARGV[9], ARGV[11]
if has == '2' then
  local lost = check_staged(result)
  if lost then return lost end
end
local moved = 0
local t = P .. ':t:' .. id
local f = redis.call('HMGET', t, 's', 'k', 'n', 'c')
if f[1] == 'in_progress' and f[2] == token then
  if stored_whole(t, ARGV[8]) then
    drop_staged(has, result)
    return -1
  end
  local status = ARGV[4]
  move_status(id, f[3], f[4], f[1], status)
  redis.call('HSET', t, 's', status, 'k', ARGV[5], 'e', ARGV[6], 'd', ARGV[7])
  put_result(t, id, has, ARGV[10], result)
  set_expiry(t, id, f[4], ARGV[6])
  redis.call('PUBLISH', P .. ':changes', id)
  moved = 1
else
  drop_staged(has, result)
end
-- The ack, whether or not the record moved: the entry goes if this claim
-- holds it, unless the record was put back to pending meanwhile (the
-- release that follows makes the entry wait again).
if moved == 1 or f[1] ~= 'pending' then
  local e = P .. ':e:' .. id
  local g = redis.call('HMGET', e, 'o', 'k')
  if g[1] and g[1] ~= '' and g[2] == token then
    redis.call('DEL', e)
    redis.call('ZREM', P .. ':leases', id)
  end
end
return moved
"""

_DELETE = """
return delete(ARGV[2], true)
"""

_DELETE_EXPIRED = """
local id, now = ARGV[2], tonumber(ARGV[3])
local expires = redis.call('HGET', P .. ':t:' .. id, 'e')
if not expires or expires == '' or tonumber(expires) > now then return 0 end
return delete(id, false)
"""

_PURGE = """
local ids = redis.call('ZRANGEBYSCORE', P .. ':x', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local purged = 0
for _, id in ipairs(ids) do
  local expires = redis.call('HGET', P .. ':t:' .. id, 'e')
  if expires and expires ~= '' and tonumber(expires) <= tonumber(ARGV[2]) then
    purged = purged + delete(id, true)
  else
    redis.call('ZREM', P .. ':x', id)  -- gone already (Redis expired it), or not final
  end
end
return {purged, #ids}
"""

_SCRIPTS = {
    "put": _PUT,
    "enqueue": _ENQUEUE,
    "enqueue_many": _ENQUEUE_MANY,
    "add_members": _ADD_MEMBERS,
    "claim": _CLAIM,
    "claim_and_read": _CLAIM_AND_READ,
    "renew": _RENEW,
    "ack": _ACK,
    "release": _RELEASE,
    "remove": _REMOVE,
    "request_cancel": _REQUEST_CANCEL,
    "expired": _EXPIRED,
    "next_due": _NEXT_DUE,
    "depth": _DEPTH,
    "position": _POSITION,
    "create": _CREATE,
    "transition": _TRANSITION,
    "begin": _BEGIN,
    "finish": _FINISH,
    "delete": _DELETE,
    "delete_expired": _DELETE_EXPIRED,
    "purge": _PURGE,
}


def _num(value: float) -> str:
    """A float as Lua and Redis read it back exactly."""
    return repr(float(value))


#: What a script that writes a record answers when the record is stored whole
#: (by an errands of before): nothing changed; send it whole.
_WHOLE = -1


def _stage(prefix: str, data: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """A random staging name for ``data`` kept apart (``APART_LIMIT``), and
    the ``SET`` that :meth:`_Connection.script_staged` sends before its script."""
    nonce = os.urandom(12).hex()
    return nonce, [(f"{prefix}:u:{nonce}", data)]


def _result_args(prefix: str, result: Payload | None) -> tuple[list[Any], list[tuple[str, bytes]]]:
    """The three script arguments that carry a result (has-one, media type,
    bytes or staged key: see ``put_result``), and what to stage for them."""
    if result is None:
        return ["0", "", ""], []
    if len(result.data) < APART_LIMIT:
        return ["1", result.media_type, result.data], []
    nonce, staged = _stage(prefix, result.data)
    return ["2", result.media_type, nonce], staged


def _first(replies: list[Any]) -> Any:
    return replies[0]


def _last(replies: list[Any]) -> Any:
    return replies[-1]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------- connection


class _Op:
    """One backend call on its way to Redis: the commands it adds to a
    pipeline, how to read their replies, and where the answer goes: the
    trio run waiting on ``event``, or, for a call from another thread,
    ``answer`` (called on the I/O thread)."""

    __slots__ = ("add", "answer", "count", "error", "event", "read", "result")

    def __init__(
        self,
        add: Callable[[Any], None],
        count: int,
        read: Callable[[list[Any]], Any],
        answer: Callable[[Any], object] | None = None,
    ) -> None:
        self.add = add
        self.count = count
        self.read = read
        self.answer = answer
        self.event: trio.Event | None = None if answer is not None else trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _Connection:
    """redis-py's sync client driven by one I/O thread that pipelines calls.

    A call from trio is queued; the I/O thread takes every call queued so
    far, sends them in one pipeline (one round trip), and hands the answers
    back to trio in one wake-up.  Calls made together (a burst of submits,
    the runners of many tasks) share round trips and thread hops; each call
    stays atomic on its own (a Lua script or one command), and the pipeline
    is not a transaction.  A second thread, the listener, subscribes to the
    ``work`` and ``changes`` channels.
    """

    def __init__(self, url: str, prefix: str, **options: Any) -> None:
        self.url = url
        self.prefix = prefix
        settings = {
            "socket_timeout": options.get("socket_timeout", 10.0),
            "socket_connect_timeout": options.get("socket_connect_timeout", 5.0),
            "health_check_interval": 30,
            "username": options.get("username"),
            "password": options.get("password"),
        }
        self._settings = settings
        self.client = redis.Redis.from_url(url, max_connections=4, **settings)
        self.sources = {name: _PRELUDE + src for name, src in _SCRIPTS.items()}
        self.shas = {
            name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.sources.items()
        }
        self.route = f"{prefix}:seq"  # every key shares the hash tag: this routes the calls
        self._pending: collections.deque[_Op] = collections.deque()
        self._work = threading.Event()
        self._stop = threading.Event()
        #: Guards the end of the I/O thread against a call from a thread
        #: queued meanwhile (see :meth:`call_from_thread`).
        self._lock = threading.Lock()
        self._io_ended = False
        self._io: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.on_work: Callable[[], None] = lambda: None
        self.on_changes: Callable[[list[str]], None] = lambda ids: None
        self.on_reconnect: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ calls

    async def call(
        self, add: Callable[[Any], None], count: int, read: Callable[[list[Any]], T]
    ) -> T:
        """Queue ``add(pipeline)`` (``count`` commands) for the I/O thread and
        return ``read(replies)``; redis errors arrive as BackendError."""
        await trio.lowlevel.checkpoint_if_cancelled()
        op = _Op(add, count, read)
        self._queue(op)
        assert op.event is not None
        await op.event.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def call_from_thread(
        self,
        add: Callable[[Any], None],
        count: int,
        read: Callable[[list[Any]], Any],
        answer: Callable[[Any], object],
    ) -> None:
        """From any thread but a trio run's: queue ``add(pipeline)`` as
        :meth:`call` does, without waiting; ``answer`` gets ``read(replies)``,
        or the BackendError, on the I/O thread.  Raises BackendError at once
        (``answer`` never called) when the connection takes no more calls.

        Nothing queued is left unanswered: the I/O thread ends only under
        the lock, with nothing queued, once the stop is set; a call queued
        before that is sent, one that comes after is refused."""
        self._queue(_Op(add, count, read, answer))

    def _queue(self, op: _Op) -> None:
        """Queue ``op`` for the I/O thread; BackendError when it takes no more."""
        with self._lock:
            if self._stop.is_set() or self._io is None or self._io_ended:
                raise BackendError("redis: the backend is closed")
            self._pending.append(op)
        self._work.set()

    async def script(self, name: str, *args: Any) -> Any:
        sha = self.shas[name]
        return await self.call(
            lambda pipe: pipe.evalsha(sha, 1, self.route, self.prefix, *args), 1, _first
        )

    async def script_staged(
        self, name: str, args: Sequence[Any], staged: Sequence[tuple[str, bytes]]
    ) -> Any:
        """The script ``name``, sent right after a ``SET`` of each staged key
        (arguments or a result kept apart, see ``APART_LIMIT``), in one pipeline."""
        if not staged:
            return await self.script(name, *args)
        return await self.call(*self._staged(name, args, staged))

    def _staged(
        self, name: str, args: Sequence[Any], staged: Sequence[tuple[str, bytes]]
    ) -> tuple[Callable[[Any], None], int, Callable[[list[Any]], Any]]:
        """The pipeline additions, command count and reply reader of
        :meth:`script_staged` (for :meth:`call`, or :meth:`call_from_thread`)."""
        sha = self.shas[name]

        def add(pipe: Any) -> None:
            for key, value in staged:
                pipe.set(key, value, ex=STAGED_TTL)
            pipe.evalsha(sha, 1, self.route, self.prefix, *args)

        return add, len(staged) + 1, _last

    async def command(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.call(lambda pipe: getattr(pipe, method)(*args, **kwargs), 1, _first)

    def _io_loop(self, stop: threading.Event) -> None:
        while True:
            self._work.wait(timeout=1.0)
            self._work.clear()
            while self._pending:
                ops: list[_Op] = []
                while self._pending and len(ops) < 512:
                    ops.append(self._pending.popleft())
                self._execute(ops, load_scripts=False)
            if stop.is_set():
                with self._lock:
                    if not self._pending:  # else a call came meanwhile: sent first
                        if self._stop is stop:  # not started again since
                            self._io_ended = True
                        return

    def _execute(self, ops: list[_Op], *, load_scripts: bool) -> None:
        done: list[_Op] = []
        again: list[_Op] = []
        try:
            if load_scripts:
                for source in self.sources.values():
                    self.client.script_load(source)
            pipe = self.client.pipeline(transaction=False)
            for op in ops:
                op.add(pipe)
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every call in the pipeline
            error = BackendError(f"redis: {type(exc).__name__}: {exc}")
            for op in ops:
                op.error = error
            self._answer(ops)
            return
        at = 0
        for op in ops:
            answer = replies[at : at + op.count]
            at += op.count
            failed = next((r for r in answer if isinstance(r, Exception)), None)
            if isinstance(failed, redis.exceptions.NoScriptError) and not load_scripts:
                again.append(op)  # a restarted Redis forgot the scripts: not run
                continue
            if failed is not None:
                op.error = BackendError(f"redis: {type(failed).__name__}: {failed}")
            else:
                try:
                    op.result = op.read(answer)
                except Exception as exc:  # a reply that does not read
                    op.error = BackendError(f"redis: unexpected reply: {exc}")
            done.append(op)
        if done:
            self._answer(done)
        if again:
            self._execute(again, load_scripts=True)

    def _answer(self, ops: list[_Op]) -> None:
        """Hand the answered ``ops`` back: calls from threads here and now,
        first (what they tell the trio run reaches it before the answers of
        the calls queued after them), the trio run's in one wake-up."""
        waiting = []
        for op in ops:
            if op.answer is None:
                waiting.append(op)
                continue
            try:
                op.answer(op.result if op.error is None else op.error)
            except Exception:  # a bug: the other callers still hear back
                log.exception("an answer to a redis call from a thread failed")
        if waiting:
            self._deliver(self._finish, waiting)

    @staticmethod
    def _finish(ops: list[_Op]) -> None:
        for op in ops:
            assert op.event is not None
            op.event.set()

    # ------------------------------------------------------------------ listener

    def start(self) -> None:
        """Start the I/O and listener threads (from the trio run that uses
        them).  Again after :meth:`close`, for the next engine: new threads,
        each with the stop of its own start (a listener still ending, which
        nobody waits for, cannot outlive its start)."""
        with self._lock:
            if self._io is not None:  # started before: a new start of its own
                self._stop = threading.Event()
                self._io_ended = False
            stop = self._stop
            self._token = trio.lowlevel.current_trio_token()
            self._io = threading.Thread(
                target=self._io_loop, args=(stop,), name="errands-redis-io", daemon=True
            )
        self._io.start()
        # The listener's own client: its thread alone uses and closes it.
        listen = redis.Redis.from_url(self.url, max_connections=2, **self._settings)
        self._thread = threading.Thread(
            target=self._listen, args=(stop, listen), name="errands-redis", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        # Not joined: the listener notices within one read timeout, and what
        # either thread delivers after the trio run ended is dropped.
        self._stop.set()
        self._work.set()

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            self._stop.set()

    def _listen(self, stop: threading.Event, client: Any) -> None:
        work, changes = f"{self.prefix}:work", f"{self.prefix}:changes"
        backoff = 0.05
        connected_before = False
        while not stop.is_set():
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(work, changes)
                if connected_before:
                    self._deliver(self.on_reconnect)  # messages may have been missed
                connected_before = True
                backoff = 0.05
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    channel = _text(message["channel"])
                    if channel == work:
                        self._deliver(self.on_work)
                    else:
                        ids = [_text(message["data"])]
                        # Take what else is waiting now: one wake-up for a burst.
                        while (more := pubsub.get_message(timeout=0)) is not None:
                            if _text(more["channel"]) == work:
                                self._deliver(self.on_work)
                            else:
                                ids.append(_text(more["data"]))
                        self._deliver(self.on_changes, ids)
            except Exception as exc:  # a lost connection: reconnect, whatever it raised
                log.debug("redis listener: %s; reconnecting", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except Exception:  # closing a broken connection
                    pass
        client.close()

    def close(self) -> None:
        self.stop()
        if self._io is not None:
            self._io.join(timeout=15)  # what was queued is sent first
        self.client.close()


# ---------------------------------------------------------------------- queue


class RedisQueue(Queue):
    """The waiting line in Redis (see the module docstring for its keys)."""

    def __init__(self, connection: _Connection) -> None:
        self._c = connection
        self._work = trio.Event()

    def _woken(self) -> None:
        self._work.set()
        self._work = trio.Event()

    async def put(
        self,
        task_id: str,
        *,
        name: str,
        priority: int = 0,
        not_before: float = 0.0,
        rank: float | None = None,
    ) -> None:
        rank_ = -priority if rank is None else rank
        await self._c.script("put", task_id, name, int(priority), _num(not_before), _num(rank_))

    async def claim(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[Claim]:
        args = _claim_args(owner, quotas, limit, now, lease_until)
        if args is None:
            await trio.lowlevel.checkpoint()
            return []
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # begun, it finishes: no unseen claims
            flat = await self._c.script("claim", *args)
        return [
            Claim(
                task_id=_text(flat[i]),
                name=_text(flat[i + 1]),
                token=int(flat[i + 2]),
                owner=owner,
                lease_until=lease_until,
            )
            for i in range(0, len(flat), 3)
        ]

    async def renew(self, task_id: str, token: int, *, lease_until: float) -> Renewal:
        return (await self.renew_many([(task_id, token)], lease_until=lease_until))[0]

    async def renew_many(
        self, claims: Sequence[tuple[str, int]], *, lease_until: float
    ) -> list[Renewal]:
        if not claims:
            await trio.lowlevel.checkpoint()
            return []
        args: list[Any] = [_num(lease_until)]
        for task_id, token in claims:
            args += [task_id, str(token)]
        answers = await self._c.script("renew", *args)
        kinds = (Renewal.LOST, Renewal.RENEWED, Renewal.CANCEL_REQUESTED)
        return [kinds[int(a)] for a in answers]

    async def ack(self, task_id: str, token: int) -> bool:
        return bool(await self._c.script("ack", task_id, str(token)))

    async def release(
        self, task_id: str, token: int, *, not_before: float = 0.0, rank: float | None = None
    ) -> bool:
        rank_ = "" if rank is None else _num(rank)
        return bool(await self._c.script("release", task_id, str(token), _num(not_before), rank_))

    async def remove(self, task_id: str) -> bool:
        return bool(await self._c.script("remove", task_id))

    async def request_cancel(self, task_id: str) -> bool:
        return bool(await self._c.script("request_cancel", task_id))

    async def expired(self, now: float) -> list[Claim]:
        flat = await self._c.script("expired", _num(now))
        return [
            Claim(
                task_id=_text(flat[i]),
                name=_text(flat[i + 1]),
                token=int(flat[i + 2]),
                owner=_text(flat[i + 3]),
                lease_until=float(flat[i + 4]),
            )
            for i in range(0, len(flat), 5)
        ]

    async def contains(self, task_id: str) -> bool:
        key = f"{self._c.prefix}:e:{task_id}"
        return bool(await self._c.command("exists", key))

    async def next_due(self, names: Sequence[str]) -> float | None:
        if not names:
            await trio.lowlevel.checkpoint()
            return None
        due = await self._c.script("next_due", *names)
        return None if due is None else float(due)

    async def depth(self, name: str | None = None) -> int:
        return int(await self._c.script("depth", name or ""))

    async def position(self, task_id: str) -> int | None:
        at = await self._c.script("position", task_id)
        return None if at is None else int(at)

    async def wait_for_work(self) -> None:
        """Until a ``work`` message (a process queued or released a task), or
        the listener reconnected (messages may have been lost meanwhile)."""
        await self._work.wait()


# ---------------------------------------------------------------------- store


def _claim_args(
    owner: str, quotas: Mapping[str, int], limit: int, now: float, lease_until: float
) -> list[Any] | None:
    """The claim scripts' arguments; None when nothing may be claimed."""
    pairs: list[Any] = []
    for name, quota in quotas.items():
        if quota > 0:
            pairs += [name, int(quota)]
    if not pairs or limit <= 0:
        return None
    return [owner, _num(now), _num(lease_until), int(limit), *pairs]


def _payload(media_type: Any, data: Any) -> Payload | None:
    """A stored result from its hash fields (None when it has none)."""
    if media_type is None or data is None:
        return None
    return Payload(
        media_type=_text(media_type),
        data=data if isinstance(data, bytes) else str(data).encode(),
    )


def _stored(task_id: str, fields: Sequence[Any], *, read: bool = True) -> StoredTask | None:
    """The task of ``_FIELDS``; with ``read`` False, of ``_LISTED_FIELDS`` (no
    ``a``): the task without its arguments.  Arguments kept apart (``A``)
    must be in ``a`` already (:meth:`RedisStore._with_apart`)."""
    name, status, token, created, expires, data, *rest = fields
    if name is None:
        return None
    args = rest[0] if rest else None
    scalars: dict[str, Any] = {
        "id": task_id,
        "name": _text(name),
        "status": TaskStatus(_text(status)),
        "token": int(token),
        "created_at": float(created),
        "expires_at": None if not expires else float(expires),
    }
    data = _bytes(data)
    if read and args is None:  # stored whole
        return StoredTask(**scalars, data=data)
    return StoredTask.from_parts(**scalars, state=data, args=_bytes(args) if read else None)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


_FIELDS = ("n", "s", "k", "c", "e", "d", "a", "A")
#: The fields of a task without its arguments (a listing reads ``info()``).
_LISTED_FIELDS = _FIELDS[:-2]


def _apart(fields: Sequence[Any]) -> bool:
    """Whether a task read with ``_FIELDS`` keeps its arguments in ``a:<id>``
    (``A`` is then their length in bytes)."""
    return fields[0] is not None and fields[6] is None and bool(fields[7])


#: A result's fields: media type, bytes, or the length of those kept apart.
_RESULT_FIELDS = ("rm", "rv", "R")
_LISTED_AND_RESULT = (*_LISTED_FIELDS, *_RESULT_FIELDS)


class RedisStore(Store):
    """Records and results in Redis (see the module docstring for its keys)."""

    def __init__(self, connection: _Connection) -> None:
        self._c = connection

    def _key(self, task_id: str) -> str:
        return f"{self._c.prefix}:t:{task_id}"

    def _row(self, task: StoredTask) -> tuple[list[Any], list[tuple[str, bytes]]]:
        """The create scripts' arguments for ``task`` (id, name, status,
        token, created, expires, data, args, staged), and the staged
        arguments to ``SET`` first when they are kept apart."""
        expires = "" if task.expires_at is None else _num(task.expires_at)
        args = task.args_data
        row = [
            task.id,
            task.name,
            task.status.value,
            task.token,
            _num(task.created_at),
            expires,
            task.state_data,
        ]
        if len(args) < APART_LIMIT:
            return [*row, args, ""], []
        nonce, staged = _stage(self._c.prefix, args)
        return [*row, "", nonce], staged

    async def create(self, task: StoredTask) -> bool:
        row, staged = self._row(task)
        return bool(await self._c.script_staged("create", row, staged))

    async def _read_apart(self, wanted: Sequence[tuple[str, int]]) -> list[bytes | None]:
        """The strings kept apart at these (key, length) pairs, read in
        ``READ_PIECE`` pieces in one round trip; None for one not there whole
        (its task deleted meanwhile)."""
        count = sum(-(-size // READ_PIECE) for _, size in wanted)

        def add(pipe: Any) -> None:
            for key, size in wanted:
                for at in range(0, size, READ_PIECE):
                    pipe.getrange(key, at, at + READ_PIECE - 1)

        pieces = iter(await self._c.call(add, count, list))
        values: list[bytes | None] = []
        for _, size in wanted:
            value = b"".join([next(pieces) for _ in range(0, size, READ_PIECE)])
            values.append(value if len(value) == size else None)
        return values

    async def _with_apart(self, rows: Sequence[tuple[str, list[Any]]]) -> None:
        """Fill in ``a`` of the rows (read with ``_FIELDS``) whose arguments
        are kept apart; a row whose arguments are gone reads as not found."""
        apart = [(task_id, fields) for task_id, fields in rows if _apart(fields)]
        if not apart:
            return
        prefix = self._c.prefix
        wanted = [(f"{prefix}:a:{task_id}", int(fields[7])) for task_id, fields in apart]
        for (_, fields), value in zip(apart, await self._read_apart(wanted), strict=True):
            if value is None:
                fields[0] = None
            else:
                fields[6] = value

    async def _with_results(self, rows: Sequence[tuple[str, list[Any]]]) -> None:
        """Fill in ``rv`` of the rows (ending in ``_RESULT_FIELDS``) whose
        result is kept apart; one that is gone reads as no result."""
        apart = [(task_id, fields) for task_id, fields in rows if fields[-1] and not fields[-2]]
        if not apart:
            return
        prefix = self._c.prefix
        wanted = [(f"{prefix}:r:{task_id}", int(fields[-1])) for task_id, fields in apart]
        for (_, fields), value in zip(apart, await self._read_apart(wanted), strict=True):
            fields[-2] = value

    async def get(self, task_id: str) -> StoredTask | None:
        key = self._key(task_id)
        fields = list(await self._c.command("hmget", key, _FIELDS))
        await self._with_apart([(task_id, fields)])
        return _stored(task_id, fields)

    async def get_state(self, task_id: str) -> StoredTask | None:
        key = self._key(task_id)
        fields = await self._c.command("hmget", key, _LISTED_FIELDS)
        return _stored(task_id, fields, read=False)

    async def _hmget_many(
        self, task_ids: Collection[str], fields: Sequence[str]
    ) -> list[tuple[str, Sequence[Any]]]:
        """``fields`` of each task's hash, in one pipeline: (id, values) pairs."""
        ids = list(task_ids)
        if not ids:
            await trio.lowlevel.checkpoint()
            return []

        def add(pipe: Any) -> None:
            for task_id in ids:
                pipe.hmget(self._key(task_id), fields)

        rows = await self._c.call(add, len(ids), list)
        return list(zip(ids, rows, strict=True))

    async def get_many(
        self,
        task_ids: Collection[str],
        *,
        arguments: bool = True,
    ) -> dict[str, StoredTask]:
        found = {}
        fields_read = _FIELDS if arguments else _LISTED_FIELDS
        rows = [(i, list(f)) for i, f in await self._hmget_many(task_ids, fields_read)]
        if arguments:
            await self._with_apart(rows)
        for task_id, fields in rows:
            task = _stored(task_id, fields, read=arguments)
            if task is not None:
                found[task_id] = task
        return found

    async def transition(
        self,
        task: StoredTask,
        *,
        expect: TaskStatus,
        token: int | None = None,
        result: Payload | None = None,
    ) -> bool:
        check_transition(expect, task.status)  # InvalidTransition before any I/O
        expires = "" if task.expires_at is None else _num(task.expires_at)
        head: list[Any] = [
            task.id,
            expect.value,
            "" if token is None else str(token),
            task.status.value,
            task.token,
            expires,
        ]
        tail, staged = _result_args(self._c.prefix, result)
        state = [*head, task.state_data, "0", *tail]
        moved = await self._c.script_staged("transition", state, staged)
        if moved == _WHOLE:
            whole = [*head, task.data, "1", *tail]
            moved = await self._c.script_staged("transition", whole, staged)
        return bool(moved)

    async def get_result(self, task_id: str) -> Payload | None:
        fields = list(await self._c.command("hmget", self._key(task_id), _RESULT_FIELDS))
        await self._with_results([(task_id, fields)])
        return _payload(fields[0], fields[1])

    async def get_with_results(
        self, task_ids: Collection[str]
    ) -> dict[str, tuple[StoredTask, Payload | None]]:
        found: dict[str, tuple[StoredTask, Payload | None]] = {}
        listed = len(_LISTED_FIELDS)
        rows = [(i, list(f)) for i, f in await self._hmget_many(task_ids, _LISTED_AND_RESULT)]
        await self._with_results(rows)
        for task_id, fields in rows:
            task = _stored(task_id, fields[:listed], read=False)
            if task is not None:
                found[task_id] = (task, _payload(fields[listed], fields[listed + 1]))
        return found

    async def get_results(self, task_ids: Collection[str]) -> dict[str, Payload]:
        found = {}
        rows = [(i, list(f)) for i, f in await self._hmget_many(task_ids, _RESULT_FIELDS)]
        await self._with_results(rows)
        for task_id, (media_type, data, _) in rows:
            payload = _payload(media_type, data)
            if payload is not None:
                found[task_id] = payload
        return found

    async def delete(self, task_id: str) -> bool:
        return bool(await self._c.script("delete", task_id))

    async def delete_expired(self, task_id: str, now: float) -> bool:
        return bool(await self._c.script("delete_expired", task_id, _num(now)))

    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        arguments: bool = True,
    ) -> list[StoredTask]:
        p = self._c.prefix
        if name is not None and status is not None:
            index = f"{p}:i:ns:{name}:{status.value}"
        elif name is not None:
            index = f"{p}:i:n:{name}"
        elif status is not None:
            index = f"{p}:i:s:{status.value}"
        else:
            index = f"{p}:i:all"
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        ids = await self._c.command("zrevrange", index, offset, offset + limit - 1)
        found = await self.get_many([_text(i) for i in ids], arguments=arguments)
        return [found[_text(i)] for i in ids if _text(i) in found]

    async def purge_expired(self, now: float) -> int:
        purged = 0
        while True:
            done, looked = await self._c.script("purge", _num(now), PURGE_BATCH)
            purged += int(done)
            if int(looked) < PURGE_BATCH:
                return purged

    async def add_batch_members(self, batch_id: str, members: Sequence[tuple[int, str]]) -> None:
        args: list[Any] = [batch_id]
        for position, task_id in members:
            args += [position, task_id]
        await self._c.script("add_members", *args)

    async def batch_members(
        self, batch_id: str, *, offset: int = 0, limit: int | None = None
    ) -> Sequence[tuple[int, str]]:
        key = f"{self._c.prefix}:b:{batch_id}"
        stop = -1 if limit is None else offset + limit - 1
        if limit is not None and limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        rows: Any = await self._c.command("zrange", key, offset, stop, withscores=True)
        return [(int(score), _text(member)) for member, score in rows]


# ---------------------------------------------------------------------- backend


class RedisBackend(Backend):
    """A queue and store in Redis, shared by every process that uses the same
    URL and prefix.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS)
            or ``unix:///path/to/socket?db=0``; ``?prefix=NAME`` too.
        prefix: the key prefix (default ``errands``, or the URL's); one
            service's keys share it, as a Redis Cluster hash tag.
        poll_interval: seconds between looks for changes whose message was
            lost (the listener reconnected); changes arrive by message.
    """

    queue: RedisQueue
    store: RedisStore
    #: A submit from another thread (a script's, ``errands.start()``) goes
    #: to the I/O thread without a trip through the engine's loop.
    enqueues_from_threads = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        poll_interval: float = 5.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        given = query.pop("prefix", [None])[0]
        prefix = prefix or given or "errands"
        if not prefix or any(c in prefix for c in "{}: \n"):
            raise BackendError(
                f"redis prefix {prefix!r} must be non-empty, without {{}}: or spaces"
            )
        rest = urlencode(query, doseq=True)
        clean = url.partition("?")[0] + (f"?{rest}" if rest else "")  # unix:/// keeps its ///
        if not parts.username:
            username = username or os.environ.get("ERRANDS_REDIS_USERNAME") or None
        if not parts.password:
            password = password or os.environ.get("ERRANDS_REDIS_PASSWORD") or None
        self.url = clean
        self.prefix = prefix
        self.poll_interval = poll_interval
        self._poll = poll_interval
        self._connection = _Connection(
            clean, "{" + prefix + "}", username=username, password=password
        )
        self.queue = RedisQueue(self._connection)
        self.store = RedisStore(self._connection)
        self._changed: set[str] = set()
        self._changes = trio.Event()
        self._everything = False
        self._opened = 0

    def __repr__(self) -> str:
        safe = urlsplit(self.url)
        host = safe.hostname or safe.path
        return f"RedisBackend({safe.scheme}://{host}:{safe.port or ''}, prefix={self.prefix!r})"

    async def open(self) -> None:
        """Start the listener (the connection itself is made on first use, so a
        Redis that is down now makes the engine start not ready, not fail)."""
        self._opened += 1
        if self._opened == 1:
            connection = self._connection
            connection.on_work = self.queue._woken
            connection.on_changes = self._on_changes
            connection.on_reconnect = self._on_reconnect
            connection.start()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._opened -= 1
        if self._opened == 0:
            await trio.to_thread.run_sync(self._connection.close)
        else:
            await trio.lowlevel.checkpoint()

    def _on_changes(self, ids: list[str]) -> None:
        self._changed.update(ids)
        self._changes.set()

    def _on_reconnect(self) -> None:
        self._everything = True  # messages may have been lost: look at all
        self._changes.set()
        self.queue._woken()

    async def changed_tasks(self) -> Collection[str] | None:
        """Block until another process changed tasks (a ``changes`` message);
        their ids, or None (look at every watched task) after ``poll_interval``
        with no message or after a reconnect."""
        with trio.move_on_after(self._poll):
            await self._changes.wait()
        self._changes = trio.Event()
        changed, self._changed = self._changed, set()
        if self._everything or not changed:
            self._everything = False
            return None
        return changed

    async def enqueue(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        on_stored: Callable[[], None] | None = None,  # not reported: reports_stored is False
    ) -> bool:
        rank_ = -priority if rank is None else rank
        row, staged = self.store._row(task)
        args = [*row, int(priority), _num(not_before), _num(rank_)]
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):
            created = await self._connection.script_staged("enqueue", args, staged)
        return bool(created)

    def enqueue_from_thread(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None,
        answer: Callable[[bool | BackendError], object],
        then: Callable[[], object] | None = None,
    ) -> None:
        # The record is encoded here, in the caller's thread; the script is
        # the one enqueue sends, in the I/O thread's next pipeline.
        rank_ = -priority if rank is None else rank
        row, staged = self.store._row(task)
        args = [*row, int(priority), _num(not_before), _num(rank_)]

        def answered(reply: Any) -> None:
            answer(reply if isinstance(reply, BackendError) else bool(reply))
            if then is not None:
                then()

        connection = self._connection
        connection.call_from_thread(*connection._staged("enqueue", args, staged), answered)

    async def enqueue_many(
        self,
        tasks: Sequence[StoredTask],
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        batch_id: str,
        positions: Sequence[int],
    ) -> list[bool]:
        rank_ = -priority if rank is None else rank
        args: list[Any] = [int(priority), _num(not_before), _num(rank_), batch_id]
        staged: list[tuple[str, bytes]] = []
        for task, position in zip(tasks, positions, strict=True):
            row, apart = self.store._row(task)
            args += [*row, int(position)]
            staged += apart
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):
            answers = await self._connection.script_staged("enqueue_many", args, staged)
        return [bool(a) for a in answers]

    async def state_and_position(self, task_id: str) -> tuple[StoredTask | None, int | None]:
        """Both in one pipeline (see :meth:`Backend.state_and_position`): a
        status of a waiting task costs one round trip to Redis, not two."""
        connection = self._connection
        sha = connection.shas["position"]
        key = self.store._key(task_id)

        def add(pipe: Any) -> None:
            pipe.hmget(key, _LISTED_FIELDS)
            pipe.evalsha(sha, 1, connection.route, connection.prefix, task_id)

        fields, at = await connection.call(add, 2, list)
        stored = _stored(task_id, fields, read=False)
        if stored is None or stored.status is not TaskStatus.PENDING or at is None:
            return stored, None
        return stored, int(at)

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        # Fenced: the record moves only while the claim is held, in one script.
        check_transition(TaskStatus.PENDING, task.status)
        moved = await self._connection.script("begin", *self._begin_args(task, claim))
        if moved == _WHOLE:
            args = self._begin_args(task, claim, whole=True)
            moved = await self._connection.script("begin", *args)
        return bool(moved)

    @staticmethod
    def _begin_args(task: StoredTask, claim: Claim, *, whole: bool = False) -> list[Any]:
        return [
            claim.task_id,
            str(claim.token),
            TaskStatus.PENDING.value,
            task.status.value,
            task.token,
            *((task.data, "1") if whole else (task.state_data, "0")),
        ]

    async def claim_and_start(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
    ) -> list[tuple[Claim, StoredTask | None]]:
        """Two round trips for the whole round: the claim, which reads the
        claimed records too, and the fenced starts of those still pending."""
        args = _claim_args(owner, quotas, limit, now, lease_until)
        if args is None:
            await trio.lowlevel.checkpoint()
            return []
        connection = self._connection
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # begun, it finishes: no unseen claims
            flat = await connection.script("claim_and_read", *args)
            rows = [(_text(flat[i]), list(flat[i + 3])) for i in range(0, len(flat), 4)]
            try:
                await self.store._with_apart(rows)
            except BackendError:  # each run reads its task itself (Backend.start)
                rows = [(task_id, [None] * len(_FIELDS)) for task_id, _ in rows]
            started: list[tuple[Claim, StoredTask | None]] = []
            for i, (task_id, fields) in zip(range(0, len(flat), 4), rows, strict=True):
                claim = Claim(
                    task_id=task_id,
                    name=_text(flat[i + 1]),
                    token=int(flat[i + 2]),
                    owner=owner,
                    lease_until=lease_until,
                )
                pending = _stored(claim.task_id, fields)
                begun = None
                if pending is not None and pending.status is TaskStatus.PENDING:
                    begun = start_record(starting, claim, pending)
                started.append((claim, begun))
            begins = [(claim, begun) for claim, begun in started if begun is not None]
            if begins:
                sha = connection.shas["begin"]

                def add(pipe: Any) -> None:
                    for claim, begun in begins:
                        args = self._begin_args(begun, claim)
                        pipe.evalsha(sha, 1, connection.route, connection.prefix, *args)

                try:
                    moved = await connection.call(add, len(begins), list)
                except BackendError:
                    # Claimed all the same: each run starts its task itself
                    # (Backend.start), riding out the fault there.  A start
                    # that ran before the connection broke reads as "not
                    # pending" there, and the orphan finder re-queues it
                    # within a lease.
                    return [(claim, None) for claim, _ in started]
                for n, ((claim, begun), ok) in enumerate(zip(begins, moved, strict=True)):
                    if ok == _WHOLE:  # stored whole: started whole (rare, one more trip)
                        try:
                            args = self._begin_args(begun, claim, whole=True)
                            moved[n] = await connection.script("begin", *args)
                        except BackendError:
                            moved[n] = False  # the run starts its task itself
                refused = {
                    claim.task_id for (claim, _), ok in zip(begins, moved, strict=True) if not ok
                }
                if refused:
                    started = [
                        (claim, None if claim.task_id in refused else begun)
                        for claim, begun in started
                    ]
        return started

    async def finish(
        self,
        task: StoredTask,
        *,
        claim: Claim,
        result: Payload | None = None,
        waited: bool = False,
    ) -> bool:
        # (Nothing is held back here: ``waited`` changes nothing.)
        # The fenced move (with the result) and the ack, in one script.
        check_transition(TaskStatus.IN_PROGRESS, task.status)
        expires = "" if task.expires_at is None else _num(task.expires_at)
        head: list[Any] = [claim.task_id, str(claim.token), task.status.value, task.token, expires]
        tail, staged = _result_args(self._connection.prefix, result)
        state = [*head, task.state_data, "0", *tail]
        moved = await self._connection.script_staged("finish", state, staged)
        if moved == _WHOLE:
            whole = [*head, task.data, "1", *tail]
            moved = await self._connection.script_staged("finish", whole, staged)
        return bool(moved)

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """``redis://``, ``rediss://`` or ``unix://`` (with ``?prefix=``)."""
        return cls(url)
