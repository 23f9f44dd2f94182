"""
``redis://``, ``rediss://`` and ``unix://`` — queues in Redis (6.2 or newer), shared by
any number of producers and workers on any number of hosts.

DSN forms::

    redis://[user:password@]host:port/db      plain TCP
    rediss://[user:password@]host:port/db     TLS
    unix:///path/to/redis.sock?db=N           a local socket

Options travel in the query string: ``lease`` (seconds, default 60), ``prefix`` (default
``alligator``), ``db``, ``socket_timeout`` (seconds, default 5) and, for ``rediss://``,
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_cert_reqs``
(``required``, ``optional`` or ``none``).

Delivery semantics:

- **At-least-once.** ``reserve`` moves a task id atomically from the queue into an
  in-flight list owned by the consumer id; only ``ack`` (after the task finished),
  ``retry`` or ``add_dead_letter`` takes it out. A task is never dropped between steps:
  every step that moves it is one Redis command or one Lua script.
- **One task per id.** Task ids are unique within a queue: ``push`` of an id that is
  waiting, held, in flight or dead there raises ``DuplicateTaskError`` (checked inside the
  push script, so it costs no round trip).
- **Only the holder settles.** ``ack``, ``retry`` and ``add_dead_letter`` with a consumer id
  first take the id out of that consumer's in-flight list; when it is not there (its lease
  ran out and the task went back to the queue) they change nothing.
- **FIFO** within a queue. Tasks that come back from in-flight (``requeue_inflight``,
  ``requeue_expired``) go to the *front* of the queue, the oldest first; retried and
  requeued dead-letter tasks go to the back.
- **Death of a worker.** Each consumer holds a lease key that expires after ``lease``
  seconds unless ``keepalive`` renews it (a Worker does so every ``lease / 3`` seconds from
  its heartbeat thread). A reserve registers the consumer and renews its lease only when it
  is not registered or less than half its lease is left, so a busy worker's reserves write
  nothing but the task's move; a consumer that was swept registers again on its next
  reserve. Once a lease expired, any live worker's ``requeue_expired`` returns
  that consumer's in-flight tasks; a supervisor that saw the process die calls
  ``requeue_inflight`` at once. A long task in a live worker is never handed out twice.
- **Delayed tasks** wait in a sorted set scored by their due time (the Redis server's
  clock decides when they are due) and are moved to the queue by the same script that
  reserves; an idle ``reserve`` never blocks past the next due time, nor past a second,
  so a delayed task starts within about a second of its time and never before.
- **Lost replies.** When a reply to ``reserve``, ``get`` or a settling call is lost (a
  timeout, a dropped connection), the next ``reserve`` for that consumer returns to the
  front of the queue any in-flight task this client did not hand out, so a live worker
  never sits on a task it does not know about. A consumer id belongs to one client. Such
  a task counts no death: its consumer is alive.
- **Deaths.** ``requeue_inflight`` with a ``death`` and ``requeue_expired`` count one death
  per task they return, in the script that moves it, in the queue's ``deaths`` hash (task
  id -> ``"N:reason"``). The reserve script, and the fetch script that rides with a
  BLMOVE, read it with the payload: for a task no consumer died holding, that costs one
  HGET in the script and no byte more in the reply. ``ack``, ``retry``, ``cancel``, ``drop_all``,
  ``add_dead_letter`` (with a consumer id) and ``requeue_dead_letters`` delete the task's
  field in the script that moves or removes the task, so a new push of an id starts at 0.
- **Outcomes.** ``ack``, ``add_dead_letter`` and ``cancel`` given an ``Outcome`` keep its
  record in the script that ends the task (and only when it does end it), so no crash can
  leave a task gone and its outcome untold; without one they keep nothing. The record
  lives in a string key with its ttl as a PX, so Redis itself expires it; ``finish`` keeps
  one on its own, in one script. Each keep also pushes a token on the task's done list
  (which expires a second later): ``result`` waits on the server with
  BLPOP on that list, in slices as short as an idle reserve's, reading the record in the
  same round trip; a waiter that finds the record puts the token back for the next one, so
  every waiter wakes. ``locate`` is one script: a payload in ``data`` is delayed (in the
  sorted set), held (in the held hash), in flight (found with LPOS in the in-flight list of
  one of the ``consumers``, never by scanning the ready list) or else ready; then the dead
  hash; then the kept outcome. A place wins over a kept outcome. ``push`` and
  ``requeue_dead_letters`` delete an id's old outcome and done list in their scripts.
- **Dependencies.** A push with ``depends_on`` is one script (a plain push runs the one it
  always ran) that looks at each dependency in order: its payload in its queue's ``data``
  (waiting, held or in flight): wait; a dead letter: failed; a kept outcome: a pointer
  (``moved_to``) is followed (at most 100 hops, then its last id is waited for), status 1 is
  done and any other failed; nothing: ``UnknownTaskError`` and nothing stored (with
  ``elsewhere``: wait). A failed one stores nothing and keeps the task's ``CANCELED``
  record (naming that dependency; built in Python) at once. Else the task is held: its
  payload in ``data`` (so its id is taken), its entry in ``held`` counting the distinct ids
  it waits for, and ``[queue, id, token]`` on each one's ``waiters`` list; the token names
  this push. ``ack``, ``add_dead_letter``, ``cancel``, ``drop_all`` and ``finish`` settle
  the tasks held on what they end in their own script, which for a task nothing is held on
  costs one EXISTS. A release, once a task's count reaches 0, puts its id at the back of
  its queue's ready list (or its delayed set, while it is not yet due), in the order the
  tasks were pushed; a cancel deletes the held task, keeps for it the ``CANCELED`` record
  the call built (naming the task that ended) with its own ttl, as any keep, and goes on
  down the tasks held on it. An entry whose task is not held under its token (canceled
  meanwhile, maybe pushed again since) is skipped. ``move`` and ``hand_over`` carry a
  waiters list over to the new id. ``retry`` and the requeues settle nothing.

Key layout, for queue ``q`` (every key starts with ``prefix:{q}:`` — one Redis Cluster hash
tag per queue, so each script touches a single slot, except where a task depends on one of
another queue: the scripts build that queue's key names from the prefix, and on Redis
Cluster a task's dependencies must be in its own queue)::

    prefix:{q}:ready             list        ids ready to run, the next one first
    prefix:{q}:delayed           sorted set  delayed ids, scored by due time (epoch seconds)
    prefix:{q}:data              hash        id -> payload (ready, delayed, held, in flight)
    prefix:{q}:inflight:<cid>    list        ids consumer <cid> holds, newest first
    prefix:{q}:lease:<cid>       string      present while <cid>'s lease runs
    prefix:{q}:consumers         set         consumer ids that may hold tasks
    prefix:{q}:deaths            hash        id -> "N:reason": N consumers died holding it,
                                             the latest for that reason (no field: none)
    prefix:{q}:dead              hash        id -> JSON record: payload, error, failed_at
    prefix:{q}:dead:order        list        dead-letter ids, oldest first
    prefix:{q}:result:<id>       string      the record of task <id>'s kept outcome,
                                             expiring after its ttl (none: kept for ever)
    prefix:{q}:done:<id>         list        wake-up tokens for ``result`` waiters of <id>;
                                             expires a second after its last token
    prefix:{q}:held              hash        id -> JSON of a held task: pending (ids it
                                             still waits for), due ('' for none), ttl (ms
                                             of its CANCELED outcome, '' for ever, '0'
                                             none) and the token of its push
    prefix:{q}:waiters:<id>      list        JSON [queue, id, token] of each task held on
                                             <id>, in the order they were pushed

Connection and timeout errors raise ``BackendError`` with the redis-py error as its cause.
A client is safe to share between threads.

Payloads and ids that another program stored as bytes that are not UTF-8 come back as
``str`` with those bytes as surrogate escapes (Python's ``surrogateescape``), and are
stored as the same bytes when written back, e.g. to the dead letters: nothing is lost or
changed, and no call fails because of them. This works with and without hiredis.
"""

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qs, unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import BackendError, DuplicateTaskError, InvalidDSNError, UnknownTaskError
from ..outcomes import dependency_canceled
from . import (
    EXPIRED_LEASE_DEATH,
    DeadLetter,
    Dependencies,
    Located,
    Outcome,
    Reserved,
    dsn_options,
    redact_dsn,
    redact_dsn_part,
    split_dsn,
    storable_text,
)
from . import Client as BaseClient

log = logging.getLogger(__name__)

T = TypeVar("T")

OPTIONS: dict[str, float | str] = {
    "lease": 60.0,
    "prefix": "alligator",
    "db": "",
    "socket_timeout": 5.0,
    "ssl_ca_certs": "",
    "ssl_certfile": "",
    "ssl_keyfile": "",
    "ssl_cert_reqs": "required",
}
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")

#: Longest single wait on the server, so due delayed tasks pushed meanwhile start on time.
MAX_BLOCK = 1.0
#: Redis reads a blocking timeout of 0 as "forever"; never send less than this.
MIN_BLOCK = 0.01
#: Delayed tasks moved to the queue per script call, to keep each call short.
PROMOTE_BATCH = 1000
#: Consumers checked per ``requeue_expired`` script call.
SWEEP_BATCH = 200
#: Longest lease kept on the server (about 68 years): a longer one would not fit PX.
MAX_LEASE = 2.0**31
#: Database numbers have at most this many digits.
MAX_DB_DIGITS = 10
#: Milliseconds a task's done list (the wake-up tokens of ``result``) outlives its last token:
#: a token matters only to a waiter blocked, or about to block, as the outcome arrives, and
#: a list per finished task must not linger in a busy server's memory.
DONE_MS = 1_000
#: Pointers (``moved_to``) a push follows from a dependency's id before it stops and waits
#: for the last id it reached: a circle of pointers must not loop for ever.
MAX_HOPS = 100

# Shared by the scripts: the server's clock, in epoch seconds.
_NOW = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# Registers the consumer and renews its lease before a task enters its in-flight list, so a
# sweep can find it. A live worker's heartbeat keeps both, so this writes only for a new
# consumer, one that was swept, or one whose lease is half gone (no heartbeat, e.g. pop()).
_HOLD = """
local function hold(consumers, lease, consumer, lease_ms)
  if redis.call('SISMEMBER', consumers, consumer) == 0
      or redis.call('PTTL', lease) < tonumber(lease_ms) / 2 then
    redis.call('SADD', consumers, consumer)
    redis.call('SET', lease, '1', 'PX', lease_ms)
  end
end
"""

# One more death for a task, with its reason: the deaths hash holds "N:reason" per id.
_COUNT_DEATH = """
local function count_death(deaths, id, reason)
  local n = tonumber(string.match(redis.call('HGET', deaths, id) or '', '^%d+')) or 0
  redis.call('HSET', deaths, id, (n + 1) .. ':' .. reason)
end
"""

# Keeps a task's outcome: its record, for ttl_ms ('' for ever), and a token on its done list
# that wakes one waiting ``result`` (which passes it on to the next). The list expires soon,
# so no key outlives its use for long.
_KEEP = (
    """
local function keep(result, done, record, ttl_ms)
  if ttl_ms == '' then
    redis.call('SET', result, record)
  else
    redis.call('SET', result, record, 'PX', ttl_ms)
  end
  redis.call('LPUSH', done, '1')
  redis.call('PEXPIRE', done, """
    + str(DONE_MS)
    + """)
end
"""
)

# Stores a payload and puts its id in the queue, or holds it until it is due.
_ENQUEUE = (
    _NOW
    + """
local function enqueue(ready, delayed, data, id, payload, due)
  redis.call('HSET', data, id, payload)
  if due ~= '' and tonumber(due) > now() then
    redis.call('ZADD', delayed, due, id)
  else
    redis.call('RPUSH', ready, id)
  end
end
"""
)

# Decodes JSON stored by any program: nil for text that is not JSON, never an error (a
# script that fails halfway keeps the writes it made).
_DECODED = """
local function decoded(text)
  local ok, value = pcall(cjson.decode, text)
  if ok and type(value) == 'table' then return value end
  return nil
end
"""

# Settles the tasks held on a task that ended, in the script that ends it (needs now, keep
# and decoded). ``waiters`` is the ended task's list of [queue, id, token] entries, each a
# task held on it; an entry whose task is not held, or held under another push's token (it
# was canceled, maybe pushed again since), is stale and skipped. With ``succeeded``, each
# held task counts one dependency done and, with none left, joins the back of its queue (or
# its delayed set, until its due time). Without, each is canceled: its payload goes, and
# ``record`` is kept for it with its own ttl ('0': none), and so on down the tasks held on
# it (an explicit stack: no recursion). Returns the queues where tasks were released. Other
# queues' key names are built from ``prefix``: on Redis Cluster they may be in other slots.
_SETTLE = """
local function settle(prefix, waiters, succeeded, record)
  local released, in_released = {}, {}
  local stack = {waiters}
  while #stack > 0 do
    local key = table.remove(stack)
    local entries = redis.call('LRANGE', key, 0, -1)
    redis.call('DEL', key)
    for _, text in ipairs(entries) do
      local entry = decoded(text) or {}
      local queue, id = tostring(entry[1]), tostring(entry[2])
      local base = prefix .. ':{' .. queue .. '}:'
      local held = entry[3] and decoded(redis.call('HGET', base .. 'held', id) or '')
      if held and held['token'] == entry[3] then
        if not succeeded then
          redis.call('HDEL', base .. 'held', id)
          redis.call('HDEL', base .. 'data', id)
          redis.call('HDEL', base .. 'deaths', id)
          if held['ttl'] ~= '0' then
            keep(base .. 'result:' .. id, base .. 'done:' .. id, record, held['ttl'])
          end
          stack[#stack + 1] = base .. 'waiters:' .. id
        elseif held['pending'] > 1 then
          held['pending'] = held['pending'] - 1
          redis.call('HSET', base .. 'held', id, cjson.encode(held))
        else
          redis.call('HDEL', base .. 'held', id)
          if held['due'] ~= '' and tonumber(held['due']) > now() then
            redis.call('ZADD', base .. 'delayed', held['due'], id)
          else
            redis.call('RPUSH', base .. 'ready', id)
          end
          if not in_released[queue] then
            in_released[queue] = true
            released[#released + 1] = queue
          end
        end
      end
    end
  end
  return released
end
"""

# Everything a script that ends a task needs to settle the tasks held on it.
_ENDS = _NOW + _KEEP + _DECODED + _SETTLE

# Carries the tasks held on one id over to another (same queue), behind those already
# there.
_CARRY = """
local function carry(from, to)
  if redis.call('EXISTS', to) == 0 then
    if redis.call('EXISTS', from) == 1 then redis.call('RENAME', from, to) end
  else
    while redis.call('LMOVE', from, to, 'LEFT', 'RIGHT') do end
  end
end
"""

# KEYS: ready, delayed, data, dead, result, done. ARGV: id, payload, due ('' for none).
# Returns 1, or 0 when the id is waiting, held or in flight (its payload is stored), -1 when
# dead.
# A new task under an id forgets the outcome (and the wake-ups) of the last one.
_PUSH = (
    _ENQUEUE
    + """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return -1 end
enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
redis.call('DEL', KEYS[5], KEYS[6])
return 1
"""
)

# A push with dependencies. KEYS: ready, delayed, data, dead, result, done, held. ARGV: id,
# payload, due ('' for none), prefix, the queue's name, the ttl ms of a CANCELED outcome
# ('' for ever, '0' none), this push's token, '1' when unknown dependencies are waited for
# (they live elsewhere), then per dependency its queue, its id and the CANCELED record that
# names it. Each dependency, in order: its payload in its queue's data hash (waiting, held or
# in flight) means wait; a dead letter, fail; else its kept outcome: a pointer (moved_to) is
# followed, status 1 means done, any other, fail; nothing kept, unknown (or wait). The first
# fail keeps its record for the task (which is not stored) and returns 2; the first unknown
# returns -1 - its position (1 for the first) and stores nothing. Else the task is held,
# with an entry on the waiters list of each distinct id it waits for, or queued when it
# waits for none; returns 1. 0 and -1: as for _PUSH. The outcome the id kept before goes.
_PUSH_HELD = (
    _ENQUEUE
    + _KEEP
    + _DECODED
    + """
local id, prefix, token = ARGV[1], ARGV[4], ARGV[7]
if redis.call('HEXISTS', KEYS[3], id) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[4], id) == 1 then return -1 end
local waits, seen = {}, {}
local position = 0
for i = 9, #ARGV, 3 do
  position = position + 1
  local queue, dep, state = ARGV[i], ARGV[i + 1], 'wait'
  for _ = 1, """
    + str(MAX_HOPS)
    + """ do
    local base = prefix .. ':{' .. queue .. '}:'
    if redis.call('HEXISTS', base .. 'data', dep) == 1 then break end
    if redis.call('HEXISTS', base .. 'dead', dep) == 1 then state = 'failed' break end
    -- This push forgets the task's own old outcome: it cannot count as its dependency.
    local record = (queue ~= ARGV[5] or dep ~= id) and redis.call('GET', base .. 'result:' .. dep)
    if not record then
      if ARGV[8] ~= '1' then return -1 - position end
      break
    end
    local fields = decoded(record) or {}
    local moved = fields['moved_to']
    if type(moved) ~= 'string' and type(moved) ~= 'number' then
      state = fields['status'] == 1 and 'done' or 'failed'
      break
    end
    dep = tostring(moved)
  end
  if state == 'failed' then
    redis.call('DEL', KEYS[5], KEYS[6])
    if ARGV[6] ~= '0' then keep(KEYS[5], KEYS[6], ARGV[i + 2], ARGV[6]) end
    return 2
  end
  local waiters = prefix .. ':{' .. queue .. '}:waiters:' .. dep
  if state == 'wait' and not seen[waiters] then
    seen[waiters] = true
    waits[#waits + 1] = waiters
  end
end
redis.call('DEL', KEYS[5], KEYS[6])
if #waits == 0 then
  enqueue(KEYS[1], KEYS[2], KEYS[3], id, ARGV[2], ARGV[3])
  return 1
end
redis.call('HSET', KEYS[3], id, ARGV[2])
local held = {pending = #waits, due = ARGV[3], ttl = ARGV[6], token = token}
redis.call('HSET', KEYS[7], id, cjson.encode(held))
local entry = cjson.encode({ARGV[5], id, token})
for _, waiters in ipairs(waits) do redis.call('RPUSH', waiters, entry) end
return 1
"""
)

# KEYS: ready, delayed, data, inflight, lease, consumers, deaths. ARGV: consumer, lease ms,
# batch. Returns {id, payload, deaths} ({id, payload} when it never died), or the
# milliseconds until the next delayed task is due (-1: none).
_RESERVE = (
    _NOW
    + _HOLD
    + """
local t = now()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', t, 'LIMIT', 0, tonumber(ARGV[3]))
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  redis.call('RPUSH', KEYS[1], unpack(due))
end
hold(KEYS[6], KEYS[5], ARGV[1], ARGV[2])
while true do
  local id = redis.call('LMOVE', KEYS[1], KEYS[4], 'LEFT', 'LEFT')
  if not id then break end
  local data = redis.call('HGET', KEYS[3], id)
  if data then return {id, data, redis.call('HGET', KEYS[7], id)} end
  -- An id without a payload (e.g. a list edited by hand) has nothing to run: drop it.
  redis.call('LPOP', KEYS[4])
  redis.call('HDEL', KEYS[7], id)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if nxt[2] then return math.max(0, math.ceil((tonumber(nxt[2]) - t) * 1000)) end
return -1
"""
)

# Runs right after a BLMOVE in the same pipeline: the task it moved is at the head.
# KEYS: inflight, data, lease, consumers, deaths. ARGV: consumer, lease ms.
# Returns {id, payload, deaths} ({id, payload} when it never died; {id} without a payload).
_FETCH = (
    _HOLD
    + """
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return nil end
hold(KEYS[4], KEYS[3], ARGV[1], ARGV[2])
local data = redis.call('HGET', KEYS[2], id)
if not data then return {id} end
return {id, data, redis.call('HGET', KEYS[5], id)}
"""
)

# KEYS: inflight, data, deaths, waiters, then result and done with an outcome. ARGV: id,
# prefix, then the outcome's record and ttl ms ('' for none). For a task nothing is held on,
# all it does more than before dependencies existed is the EXISTS of its waiters list: the
# settling functions are built only for a task something is held on.
_ACK = (
    _KEEP
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  if KEYS[5] then keep(KEYS[5], KEYS[6], ARGV[3], ARGV[4]) end
  if redis.call('EXISTS', KEYS[4]) == 1 then
"""
    + _NOW
    + _DECODED
    + _SETTLE
    + """
    settle(ARGV[2], KEYS[4], true)
  end
  return 1
end
return 0
"""
)

# KEYS: inflight, data, ready, delayed, deaths. ARGV: id, payload, due ('' for none).
_RETRY = (
    _ENQUEUE
    + """
-- Not held by this consumer (its lease ran out and the task went back): leave it be.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[5], ARGV[1])
enqueue(KEYS[3], KEYS[4], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1
"""
)

# KEYS: ready, inflight, lease, consumers, deaths. ARGV: consumer, '1' to count a death for
# each task, the death's reason. The newest in-flight task moves first, so the oldest ends
# up at the very front.
_REQUEUE_INFLIGHT = (
    _COUNT_DEATH
    + """
local n = 0
while true do
  local id = redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'LEFT')
  if not id then break end
  if ARGV[2] == '1' then count_death(KEYS[5], id, ARGV[3]) end
  n = n + 1
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return n
"""
)

# KEYS: ready, consumers, deaths, then (inflight, lease) per consumer. ARGV: the reason of
# the deaths, then the consumers.
_REQUEUE_EXPIRED = (
    _COUNT_DEATH
    + """
local n = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', KEYS[2 * i + 1]) == 0 then
    while true do
      local id = redis.call('LMOVE', KEYS[2 * i], KEYS[1], 'LEFT', 'LEFT')
      if not id then break end
      count_death(KEYS[3], id, ARGV[1])
      n = n + 1
    end
    redis.call('SREM', KEYS[2], ARGV[i])
  end
end
return n
"""
)

# KEYS: ready, inflight. ARGV: the ids the client handed out (and so must stay).
_RELEASE_UNKNOWN = """
local known = {}
for i = 1, #ARGV do known[ARGV[i]] = true end
local n = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if not known[id] then
    redis.call('LREM', KEYS[2], 1, id)
    redis.call('LPUSH', KEYS[1], id)
    n = n + 1
  end
end
return n
"""

# KEYS: ready, delayed, data, inflight, lease, consumers, deaths. ARGV: id, consumer,
# lease ms. Returns {payload, deaths} ({payload} when it never died), or nil.
_GET = (
    _HOLD
    + """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return nil
end
local data = redis.call('HGET', KEYS[3], ARGV[1])
if not data then
  redis.call('HDEL', KEYS[7], ARGV[1])
  return nil
end
hold(KEYS[6], KEYS[5], ARGV[2], ARGV[3])
redis.call('LPUSH', KEYS[4], ARGV[1])
return {data, redis.call('HGET', KEYS[7], ARGV[1])}
"""
)

# KEYS: ready, delayed, data, deaths, held, waiters, then result and done with an outcome.
# ARGV: id, prefix, the CANCELED record for the tasks held on it, then the outcome's record
# and ttl ms ('' for none). The outcome is kept, and the tasks held on it canceled, only for
# a task that was waiting or held, with a payload.
_CANCEL = (
    _ENDS
    + """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0
    and redis.call('HDEL', KEYS[5], ARGV[1]) == 0 then
  return nil
end
local data = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if data then
  if KEYS[7] then keep(KEYS[7], KEYS[8], ARGV[4], ARGV[5]) end
  if redis.call('EXISTS', KEYS[6]) == 1 then settle(ARGV[2], KEYS[6], false, ARGV[3]) end
end
return data
"""
)

# KEYS: ready, delayed, data, deaths, held. ARGV: prefix, the queue's key base
# ('prefix:{q}:'), and the CANCELED record naming a dropped task, cut in two where its id
# goes (JSON-escaped here). In slices: Lua's unpack() has a small argument limit. Tasks held
# on the dropped ones are canceled once every task is dropped, so that those of this queue
# are dropped, not canceled.
_DROP_ALL = (
    _ENDS
    + """
local ended = {}
local function forget(ids)
  if #ids > 0 then
    redis.call('HDEL', KEYS[3], unpack(ids))
    redis.call('HDEL', KEYS[4], unpack(ids))
    for _, id in ipairs(ids) do
      if redis.call('EXISTS', ARGV[2] .. 'waiters:' .. id) == 1 then ended[#ended + 1] = id end
    end
  end
  return #ids
end
local start = 0
while forget(redis.call('LRANGE', KEYS[1], start, start + 999)) > 0 do start = start + 1000 end
start = 0
while forget(redis.call('ZRANGE', KEYS[2], start, start + 999)) > 0 do start = start + 1000 end
local held = redis.call('HKEYS', KEYS[5])
for first = 1, #held, 1000 do
  forget({unpack(held, first, math.min(first + 999, #held))})
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
for _, id in ipairs(ended) do
  local record = ARGV[3] .. string.sub(cjson.encode(id), 2, -2) .. ARGV[4]
  settle(ARGV[1], ARGV[2] .. 'waiters:' .. id, false, record)
end
return 1
"""
)

# KEYS: inflight, data, dead order, dead, deaths, waiters, then result and done with an
# outcome. ARGV: id, record, '1' when a consumer holds it, prefix, the CANCELED record for
# the tasks held on it, then the outcome's record and ttl ms ('' for none).
_ADD_DEAD_LETTER = (
    _ENDS
    + """
if ARGV[3] == '1' then
  -- Not held by this consumer (its lease ran out and the task went back): leave it be.
  if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
end
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
if KEYS[7] then keep(KEYS[7], KEYS[8], ARGV[6], ARGV[7]) end
if redis.call('EXISTS', KEYS[6]) == 1 then settle(ARGV[4], KEYS[6], false, ARGV[5]) end
return 1
"""
)

# KEYS: ready, data, dead order, dead, deaths. ARGV: '1' for all, or '0'; the queue's key
# base ('prefix:{q}:'); then the ids. A requeued id forgets its outcome: its result and done
# keys are named here, from the ids the script reads, and share the queue's hash tag (slot).
_REQUEUE_DEAD_LETTERS = """
local ids
if ARGV[1] == '1' then
  ids = redis.call('LRANGE', KEYS[3], 0, -1)
else
  ids = {}
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  local record = redis.call('HGET', KEYS[4], id)
  -- A dead id that is also waiting or in flight stays dead: one task per id.
  if record and redis.call('HEXISTS', KEYS[2], id) == 0 then
    redis.call('HSET', KEYS[2], id, cjson.decode(record)['data'])
    redis.call('RPUSH', KEYS[1], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('DEL', ARGV[2] .. 'result:' .. id, ARGV[2] .. 'done:' .. id)
    if ARGV[1] ~= '1' then redis.call('LREM', KEYS[3], 1, id) end
    n = n + 1
  end
end
if ARGV[1] == '1' then redis.call('DEL', KEYS[3]) end
return n
"""

# KEYS: dead order, dead.
_PURGE_DEAD_LETTERS = """
local n = redis.call('HLEN', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return n
"""

# The end of a task whose queue lives elsewhere. KEYS: result, done, waiters. ARGV: prefix,
# '1' when it succeeded, the CANCELED record for the tasks held on it ('' when it
# succeeded), then the outcome's record and ttl ms ('' for none). Returns the queues where
# held tasks were released.
_FINISH = (
    _ENDS
    + """
if ARGV[4] then keep(KEYS[1], KEYS[2], ARGV[4], ARGV[5]) end
if redis.call('EXISTS', KEYS[3]) == 0 then return {} end
return settle(ARGV[1], KEYS[3], ARGV[2] == '1', ARGV[3])
"""
)

# KEYS: old waiters, new waiters, then result and done of the old id with an outcome. ARGV:
# the outcome's record and ttl ms ('' for none).
_MOVE = (
    _KEEP
    + _CARRY
    + """
if KEYS[3] then keep(KEYS[3], KEYS[4], ARGV[1], ARGV[2]) end
if KEYS[1] ~= KEYS[2] then carry(KEYS[1], KEYS[2]) end
return 1
"""
)

# KEYS: inflight, data, deaths, old waiters, new waiters, then result and done of the old id
# with an outcome. ARGV: id, then the outcome's record and ttl ms ('' for none). Like an ack,
# but the tasks held on the task stay held, on its new id.
_HAND_OVER = (
    _KEEP
    + _CARRY
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if KEYS[6] then keep(KEYS[6], KEYS[7], ARGV[2], ARGV[3]) end
if KEYS[4] ~= KEYS[5] then carry(KEYS[4], KEYS[5]) end
return 1
"""
)

# Runs right after a BLPOP on the done list, in the same pipeline: reads the record and, when
# there is one, puts a token back, since a BLPOP wakes one waiter only: the next waiter wakes
# at once, and so on. A token popped while no record is kept (e.g. it expired) is not put
# back, so a stray token costs a waiter one wake-up, never a loop.
# KEYS: result, done.
_AFTER_WAKE = (
    """
local record = redis.call('GET', KEYS[1])
if record then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], """
    + str(DONE_MS)
    + """)
end
return record
"""
)

# KEYS: delayed, data, consumers, dead, result, held. ARGV: id, the queue's key base
# ('prefix:{q}:'). Returns {place, payload or record}, or nil. A task with a payload is
# delayed when the sorted set holds it, held when the held hash does, in flight when some
# consumer's in-flight list holds it (the consumers set names those lists, built here under
# the queue's hash tag), else ready.
_LOCATE = """
local id = ARGV[1]
local data = redis.call('HGET', KEYS[2], id)
if data then
  if redis.call('ZSCORE', KEYS[1], id) then return {'delayed', data} end
  if redis.call('HEXISTS', KEYS[6], id) == 1 then return {'held', data} end
  for _, consumer in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if redis.call('LPOS', ARGV[2] .. 'inflight:' .. consumer, id) then
      return {'inflight', data}
    end
  end
  return {'ready', data}
end
local dead = redis.call('HGET', KEYS[4], id)
if dead then return {'dead', cjson.decode(dead)['data']} end
local record = redis.call('GET', KEYS[5])
if record then return {'finished', record} end
return nil
"""


class _Keys:
    """The key names of one queue: all share the ``{queue}`` hash tag."""

    def __init__(self, prefix: str, queue_name: str) -> None:
        base = f"{prefix}:{{{queue_name}}}:"
        self.base = base
        self.ready = base + "ready"
        self.delayed = base + "delayed"
        self.data = base + "data"
        self.consumers = base + "consumers"
        self.deaths = base + "deaths"
        self.dead_order = base + "dead:order"
        self.dead = base + "dead"
        self.held = base + "held"

    def inflight(self, consumer_id: str) -> str:
        return f"{self.base}inflight:{consumer_id}"

    def lease(self, consumer_id: str) -> str:
        return f"{self.base}lease:{consumer_id}"

    def result(self, task_id: str) -> str | bytes:
        return _wire(f"{self.base}result:{task_id}")

    def done(self, task_id: str) -> str | bytes:
        return _wire(f"{self.base}done:{task_id}")

    def waiters(self, task_id: str) -> str | bytes:
        return _wire(f"{self.base}waiters:{task_id}")


def _deaths(value: str | None) -> tuple[int, str]:
    """Reads a field of the deaths hash, ``"N:reason"``: ``(0, "")`` for none (or for a
    value another program wrote that is not in that form)."""
    if value is None:
        return 0, ""
    count, _, reason = value.partition(":")
    try:
        return int(count), reason
    except ValueError:
        return 0, ""


def _reply(values: list, length: int) -> tuple:
    """A script's list reply, padded with ``None`` to ``length``: Redis drops the nils at
    the end of a list a script returns (e.g. the deaths of a task that never died)."""
    return (*values, *[None] * (length - len(values)))


def _ttl_ms(ttl: float | None) -> str:
    """An outcome's ttl as the milliseconds of a PX, ``''`` for none: rounded up, so that a
    tiny positive ttl still expires (PX 0 is an error), and kept within what PX takes."""
    if ttl is None:
        return ""
    return str(max(1, math.ceil(min(ttl, MAX_LEASE) * 1000)))


def _outcome_args(outcome: Outcome) -> list[str | bytes]:
    """An outcome as the scripts take it: its record, and its ttl in ms (``''``: none)."""
    return [_wire(outcome.record), _ttl_ms(outcome.ttl)]


def _canceled_ttl_ms(ttl: float | None) -> str:
    """A held task's ``Dependencies.ttl`` as the scripts take it: ``'0'`` to keep no
    ``CANCELED`` outcome, else as ``_ttl_ms``."""
    return "0" if ttl is not None and ttl <= 0 else _ttl_ms(ttl)


def _wire(text: str) -> str | bytes:
    """
    A payload or id as it goes to Redis. hiredis's command packer encodes a ``str``
    strictly, so one holding surrogate escapes goes as the bytes they stand for.
    ``isascii()`` costs nothing, and the packer would encode any other ``str`` anyway.
    """
    return text if text.isascii() else text.encode("utf-8", "surrogateescape")


def _connection_settings(
    conn_string: str, parts: SplitResult, options: dict[str, Any]
) -> tuple[dict, str]:
    """Turns a DSN into redis-py keyword arguments, and a password-free place for messages."""
    shown = redact_dsn(conn_string)
    port = parts.port
    scheme = parts.scheme.lower()

    def part(text: object) -> str:
        return redact_dsn_part(conn_string, text)

    settings: dict[str, Any] = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    path = unquote(parts.path)
    db = options["db"]
    if scheme == "unix":
        if not path or path == "/":
            raise InvalidDSNError(
                f"DSN {shown!r} names no socket; write 'unix:///path/to/redis.sock?db=0'."
            )
        settings["unix_socket_path"] = path
        where = f"unix://{part(path)}"
    else:
        host = parts.hostname or "localhost"
        port = port or 6379
        settings.update(host=host, port=port)
        where = f"{scheme}://{part(host)}:{part(port)}"
        if path.strip("/"):
            if db:
                raise InvalidDSNError(
                    f"DSN {shown!r} names the database twice (path and ?db=); keep one."
                )
            db = path.strip("/")
    if db == "":
        db = "0"
    if not (db.isascii() and db.isdigit()):
        raise InvalidDSNError(
            f"Database {part(db)!r} in DSN {shown!r} is not a number; e.g. 'redis://host:6379/0'."
        )
    if len(db.lstrip("0")) > MAX_DB_DIGITS:
        raise InvalidDSNError(f"Database {part(db)!r} in DSN {shown!r} is out of range.")
    settings["db"] = int(db)
    where = f"{where}/{int(db)}" if scheme != "unix" else f"{where}?db={int(db)}"

    given_tls = [name for name in TLS_OPTIONS if name in parse_qs(parts.query)]
    if scheme == "rediss":
        cert_reqs = options["ssl_cert_reqs"]
        if cert_reqs not in ("required", "optional", "none"):
            raise InvalidDSNError(
                f"Option ssl_cert_reqs={part(cert_reqs)!r} in DSN {shown!r} must be "
                "'required', 'optional' or 'none'."
            )
        settings.update(
            ssl=True,
            ssl_cert_reqs=cert_reqs,
            ssl_check_hostname=cert_reqs != "none",
            ssl_ca_certs=options["ssl_ca_certs"] or None,
            ssl_certfile=options["ssl_certfile"] or None,
            ssl_keyfile=options["ssl_keyfile"] or None,
        )
    elif given_tls:
        raise InvalidDSNError(
            f"Option {given_tls[0]} in DSN {shown!r} needs TLS: use 'rediss://'."
        )
    return settings, where


class Client(BaseClient):
    """
    The Redis backend.

    Ex::

        client = Client('redis://localhost:6379/0?lease=30&prefix=myapp')
        client.push('emails', task.task_id, task.serialize())

    :param conn_string: ``redis://``, ``rediss://`` or ``unix://`` DSN (see the module)
    """

    def __init__(self, conn_string: str) -> None:
        super().__init__(conn_string)
        parts = split_dsn(conn_string)  # first: it refuses a DSN whose password it would split
        options = dsn_options(conn_string, OPTIONS)
        settings, self.where = _connection_settings(conn_string, parts, options)
        self.lease = float(options["lease"])
        self.prefix = str(options["prefix"])
        self._wired_prefix = _wire(self.prefix)
        self.socket_timeout = float(options["socket_timeout"])
        self._lease_ms = max(1, int(min(self.lease, MAX_LEASE) * 1000))
        # Every wait on the server ends well inside the socket timeout (or it would read
        # as a dead server) and inside the lease (so a blocked consumer keeps its tasks).
        self._block_cap = min(MAX_BLOCK, self.socket_timeout / 2, self.lease / 2)
        self._redis = redis.Redis(
            **settings,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            decode_responses=True,
            # Bytes that are not UTF-8 come back as surrogate escapes, never as an error.
            encoding_errors="surrogateescape",
            # A blind retry could run a script twice; the Worker backs off and tries again.
            retry=Retry(NoBackoff(), 0),
        )
        register = self._redis.register_script
        self._push = register(_PUSH)
        self._reserve = register(_RESERVE)
        self._fetch = register(_FETCH)
        self._ack = register(_ACK)
        self._retry = register(_RETRY)
        self._requeue_inflight = register(_REQUEUE_INFLIGHT)
        self._requeue_expired = register(_REQUEUE_EXPIRED)
        self._release_unknown = register(_RELEASE_UNKNOWN)
        self._get = register(_GET)
        self._cancel = register(_CANCEL)
        self._drop_all = register(_DROP_ALL)
        self._add_dead_letter = register(_ADD_DEAD_LETTER)
        self._requeue_dead_letters = register(_REQUEUE_DEAD_LETTERS)
        self._purge_dead_letters = register(_PURGE_DEAD_LETTERS)
        self._push_held = register(_PUSH_HELD)
        self._finish = register(_FINISH)
        self._move = register(_MOVE)
        self._hand_over = register(_HAND_OVER)
        self._after_wake = register(_AFTER_WAKE)
        self._locate = register(_LOCATE)
        # What this client handed out and not yet settled, per (queue, consumer); and the
        # pairs whose last reply was lost, so Redis may hold tasks the caller never saw.
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], set[str]] = {}
        self._unsure: set[tuple[str, str]] = set()

    def keys(self, queue_name: str) -> _Keys:
        """
        Returns the key names of a queue.

        Ex::

            client.keys('emails').ready  # 'alligator:{emails}:ready'
        """
        return _Keys(self.prefix, queue_name)

    def _call(
        self, what: str, operation: Callable[[], T], owner: tuple[str, str] | None = None
    ) -> T:
        """
        Runs ``operation``, turning redis-py errors into ``BackendError``.

        Nothing is retried here: a retried script could run twice. (redis-py itself replaces
        a pooled connection the server closed, e.g. after a restart, before using it.) With
        ``owner``, any failure means a reply with a task in it may have been lost.
        """
        try:
            return operation()
        except redis.RedisError as exc:
            if owner is not None:
                with self._lock:
                    self._unsure.add(owner)
            raise BackendError(f"Redis at {self.where} failed to {what}: {exc}") from exc

    def _hand_out(
        self, owner: tuple[str, str], task_id: str, data: str, deaths: str | None
    ) -> Reserved:
        with self._lock:
            self._held.setdefault(owner, set()).add(task_id)
        return Reserved(task_id, data, *_deaths(deaths))

    def _settle(self, owner: tuple[str, str], task_id: str) -> None:
        # Forgotten before the call: if the call fails, the task counts as unknown and a
        # later reserve returns it to the queue instead of leaving it with a live consumer.
        with self._lock:
            held = self._held.get(owner)
            if held is not None:
                held.discard(task_id)
                if not held:
                    del self._held[owner]

    def push(self, queue_name, task_id, data, delay_until=None, depends_on=None):
        keys = self.keys(queue_name)
        due = "" if delay_until is None else repr(float(delay_until))
        push_keys = [
            keys.ready,
            keys.delayed,
            keys.data,
            keys.dead,
            keys.result(task_id),
            keys.done(task_id),
        ]
        push_args = [_wire(task_id), _wire(data), due]
        if depends_on is None:
            script = self._push
        else:
            script = self._push_held
            push_keys.append(keys.held)
            push_args += self._dependency_args(queue_name, depends_on)
        stored = self._call(
            f"store task {task_id} in queue {queue_name!r}",
            lambda: script(keys=push_keys, args=push_args),
        )
        if depends_on is not None and stored <= -2:
            raise UnknownTaskError(task_id, depends_on.on[-stored - 2])
        if stored == 0:
            raise DuplicateTaskError(
                f"Task {task_id!r} is already waiting or in flight in queue {queue_name!r}; "
                "give the new task an id of its own."
            )
        if stored < 0:
            raise DuplicateTaskError(
                f"Task {task_id!r} is in the dead-letter store of queue {queue_name!r}; "
                "purge the dead letters first, or give the new task an id of its own."
            )
        return task_id

    def _dependency_args(self, queue_name: str, depends_on: Dependencies) -> list[str | bytes]:
        """The push script's arguments after the task's own: see ``_PUSH_HELD``."""
        args = [
            self._wired_prefix,
            _wire(queue_name),
            _canceled_ttl_ms(depends_on.ttl),
            # Tells this push's entries on waiters lists from those of an earlier holding
            # of the same id that was canceled (and left them behind).
            secrets.token_hex(8),
            "1" if depends_on.elsewhere else "0",
        ]
        for dep_queue, dep_id in depends_on.on:
            record = dependency_canceled(dep_queue, dep_id)
            args += [_wire(dep_queue), _wire(dep_id), _wire(record)]
        return args

    def reserve(self, queue_name, consumer_id, timeout=0.0, poll_interval=0.1):
        keys = self.keys(queue_name)
        owner = (queue_name, consumer_id)
        what = f"reserve a task from queue {queue_name!r}"
        deadline = time.monotonic() + max(0.0, timeout)
        if owner in self._unsure:
            self._call(what, lambda: self._release(keys, owner), owner)
        reserve_keys = [
            keys.ready,
            keys.delayed,
            keys.data,
            keys.inflight(consumer_id),
            keys.lease(consumer_id),
            keys.consumers,
            keys.deaths,
        ]
        reserve_args = [consumer_id, self._lease_ms, PROMOTE_BATCH]
        while True:
            found = self._call(
                what, lambda: self._reserve(keys=reserve_keys, args=reserve_args), owner
            )
            if isinstance(found, list):
                return self._hand_out(owner, *_reply(found, 3))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, self._block_cap)
            if found >= 0:
                wait = min(wait, found / 1000)
            wait = max(wait, MIN_BLOCK)
            got = self._call(
                what, lambda wait=wait: self._wait_for_task(keys, consumer_id, wait), owner
            )
            if got is not None:
                return self._hand_out(owner, *got)

    def _wait_for_task(
        self, keys: _Keys, consumer_id: str, seconds: float
    ) -> tuple[str, str, str | None] | None:
        """
        Blocks on the server until a task arrives or ``seconds`` pass; returns its id,
        payload and deaths field.

        BLMOVE cannot also read the payload, the deaths or renew the lease, so the fetch
        script rides in the same pipeline: Redis runs it right after the move, in one round
        trip.
        """
        inflight, lease = keys.inflight(consumer_id), keys.lease(consumer_id)
        fetch_keys = [inflight, keys.data, lease, keys.consumers, keys.deaths]
        fetch_args = [consumer_id, self._lease_ms]
        pipe = self._redis.pipeline(transaction=False)
        pipe.blmove(keys.ready, inflight, seconds, "LEFT", "LEFT")
        pipe.evalsha(self._fetch.sha, len(fetch_keys), *fetch_keys, *fetch_args)
        moved, fetched = pipe.execute(raise_on_error=False)
        if isinstance(moved, Exception):
            raise moved
        if moved is None:
            return None
        if isinstance(fetched, redis.exceptions.NoScriptError):  # e.g. a restarted server
            fetched = self._fetch(keys=fetch_keys, args=fetch_args)
        elif isinstance(fetched, Exception):
            raise fetched
        if not fetched or fetched[0] != moved:
            return None  # taken back by a sweep in between: it waits in the queue again
        if len(fetched) < 2 or fetched[1] is None:
            # An id without a payload: nothing to run, and no deaths to keep for it.
            pipe = self._redis.pipeline(transaction=True)
            pipe.lrem(inflight, 1, _wire(moved))
            pipe.hdel(keys.deaths, _wire(moved))
            pipe.execute()
            return None
        return _reply(fetched, 3)

    def _release(self, keys: _Keys, owner: tuple[str, str]) -> None:
        with self._lock:
            known = [_wire(task_id) for task_id in sorted(self._held.get(owner, ()))]
        released = self._release_unknown(keys=[keys.ready, keys.inflight(owner[1])], args=known)
        with self._lock:
            self._unsure.discard(owner)
        if released:
            log.warning(
                "Returned %d task(s) to the front of queue %r whose reservation reply was lost.",
                released,
                owner[0],
            )

    def ack(self, queue_name, task_id, consumer_id, outcome=None):
        keys = self.keys(queue_name)
        owner = (queue_name, consumer_id)
        ack_keys = [keys.inflight(consumer_id), keys.data, keys.deaths, keys.waiters(task_id)]
        ack_args = [_wire(task_id), self._wired_prefix]
        if outcome is not None:
            ack_keys += [keys.result(task_id), keys.done(task_id)]
            ack_args += _outcome_args(outcome)
        self._settle(owner, task_id)
        self._call(
            f"ack task {task_id} of queue {queue_name!r}",
            lambda: self._ack(keys=ack_keys, args=ack_args),
            owner,
        )

    def retry(self, queue_name, task_id, consumer_id, data, delay_until=None):
        keys = self.keys(queue_name)
        owner = (queue_name, consumer_id)
        due = "" if delay_until is None else repr(float(delay_until))
        retry_keys = [keys.inflight(consumer_id), keys.data, keys.ready, keys.delayed, keys.deaths]
        self._settle(owner, task_id)
        self._call(
            f"retry task {task_id} of queue {queue_name!r}",
            lambda: self._retry(keys=retry_keys, args=[_wire(task_id), _wire(data), due]),
            owner,
        )
        return task_id

    def requeue_inflight(self, queue_name, consumer_id, death=None):
        keys = self.keys(queue_name)
        requeue_keys = [
            keys.ready,
            keys.inflight(consumer_id),
            keys.lease(consumer_id),
            keys.consumers,
            keys.deaths,
        ]
        if death is None:
            requeue_args = [consumer_id, "0", ""]
        else:
            requeue_args = [consumer_id, "1", _wire(storable_text(str(death)))]
        count = self._call(
            f"requeue the tasks of {consumer_id} in queue {queue_name!r}",
            lambda: self._requeue_inflight(keys=requeue_keys, args=requeue_args),
        )
        with self._lock:
            self._held.pop((queue_name, consumer_id), None)
            self._unsure.discard((queue_name, consumer_id))
        return count

    def keepalive(self, queue_name, consumer_id):
        lease_key = self.keys(queue_name).lease(consumer_id)
        self._call(
            f"renew the lease of {consumer_id} in queue {queue_name!r}",
            lambda: self._redis.set(lease_key, 1, px=self._lease_ms),
        )

    def requeue_expired(self, queue_name):
        keys = self.keys(queue_name)
        what = f"requeue expired tasks of queue {queue_name!r}"
        consumers = sorted(self._call(what, lambda: self._redis.smembers(keys.consumers)))
        count = 0
        for start in range(0, len(consumers), SWEEP_BATCH):
            batch = consumers[start : start + SWEEP_BATCH]
            sweep_keys = [keys.ready, keys.consumers, keys.deaths]
            for consumer_id in batch:
                sweep_keys += [keys.inflight(consumer_id), keys.lease(consumer_id)]
            # Sent as read: a consumer id another program wrote may hold surrogate escapes.
            sweep_keys = [_wire(key) for key in sweep_keys]
            sweep_args = [EXPIRED_LEASE_DEATH, *(_wire(consumer_id) for consumer_id in batch)]
            count += self._call(
                what,
                lambda sweep_keys=sweep_keys, sweep_args=sweep_args: self._requeue_expired(
                    keys=sweep_keys, args=sweep_args
                ),
            )
        return count

    def get(self, queue_name, task_id, consumer_id):
        keys = self.keys(queue_name)
        owner = (queue_name, consumer_id)
        get_keys = [
            keys.ready,
            keys.delayed,
            keys.data,
            keys.inflight(consumer_id),
            keys.lease(consumer_id),
            keys.consumers,
            keys.deaths,
        ]
        found = self._call(
            f"take task {task_id} from queue {queue_name!r}",
            lambda: self._get(keys=get_keys, args=[_wire(task_id), consumer_id, self._lease_ms]),
            owner,
        )
        return None if found is None else self._hand_out(owner, task_id, *_reply(found, 2))

    def cancel(self, queue_name, task_id, outcome=None):
        keys = self.keys(queue_name)
        cancel_keys = [
            keys.ready,
            keys.delayed,
            keys.data,
            keys.deaths,
            keys.held,
            keys.waiters(task_id),
        ]
        record = dependency_canceled(queue_name, task_id)
        cancel_args = [_wire(task_id), self._wired_prefix, _wire(record)]
        if outcome is not None:
            cancel_keys += [keys.result(task_id), keys.done(task_id)]
            cancel_args += _outcome_args(outcome)
        return self._call(
            f"cancel task {task_id} of queue {queue_name!r}",
            lambda: self._cancel(keys=cancel_keys, args=cancel_args),
        )

    def len(self, queue_name):
        keys = self.keys(queue_name)

        def count() -> int:
            pipe = self._redis.pipeline(transaction=True)
            pipe.llen(keys.ready)
            pipe.zcard(keys.delayed)
            pipe.hlen(keys.held)
            return sum(pipe.execute())

        return self._call(f"count the tasks of queue {queue_name!r}", count)

    def drop_all(self, queue_name):
        keys = self.keys(queue_name)
        drop_keys = [keys.ready, keys.delayed, keys.data, keys.deaths, keys.held]
        # The record naming a dropped task, with a mark where the script puts each one's id.
        mark = secrets.token_hex(16)
        head, _, tail = dependency_canceled(queue_name, mark).partition(mark)
        drop_args = [self._wired_prefix, _wire(keys.base), _wire(head), _wire(tail)]
        self._call(
            f"empty queue {queue_name!r}",
            lambda: self._drop_all(keys=drop_keys, args=drop_args),
        )

    def add_dead_letter(self, queue_name, task_id, data, error, consumer_id=None, outcome=None):
        keys = self.keys(queue_name)
        # Not ensure_ascii: the scripts' cjson cannot decode an escaped lone surrogate, so the
        # bytes that surrogate escapes stand for go in as they are.
        record = json.dumps(
            {"data": data, "error": storable_text(error), "failed_at": time.time()},
            ensure_ascii=False,
        )
        owner = None if consumer_id is None else (queue_name, consumer_id)
        if owner is not None:
            self._settle(owner, task_id)
        dead_keys = [
            keys.inflight(consumer_id or ""),
            keys.data,
            keys.dead_order,
            keys.dead,
            keys.deaths,
            keys.waiters(task_id),
        ]
        dead_args = [
            _wire(task_id),
            _wire(record),
            "0" if consumer_id is None else "1",
            self._wired_prefix,
            _wire(dependency_canceled(queue_name, task_id)),
        ]
        if outcome is not None:
            dead_keys += [keys.result(task_id), keys.done(task_id)]
            dead_args += _outcome_args(outcome)
        self._call(
            f"store dead letter {task_id} of queue {queue_name!r}",
            lambda: self._add_dead_letter(keys=dead_keys, args=dead_args),
            owner,
        )

    def list_dead_letters(self, queue_name):
        keys = self.keys(queue_name)

        def read() -> list:
            pipe = self._redis.pipeline(transaction=True)
            pipe.lrange(keys.dead_order, 0, -1)
            pipe.hgetall(keys.dead)
            return pipe.execute()

        order, records = self._call(f"list the dead letters of queue {queue_name!r}", read)
        dead = []
        for task_id in order:
            if task_id in records:
                record = json.loads(records[task_id])
                dead.append(
                    DeadLetter(task_id, record["data"], record["error"], record["failed_at"])
                )
        return dead

    def requeue_dead_letters(self, queue_name, task_ids=None):
        keys = self.keys(queue_name)
        base = _wire(keys.base)
        args = ["1", base] if task_ids is None else ["0", base, *map(_wire, task_ids)]
        dead_keys = [keys.ready, keys.data, keys.dead_order, keys.dead, keys.deaths]
        return self._call(
            f"requeue the dead letters of queue {queue_name!r}",
            lambda: self._requeue_dead_letters(keys=dead_keys, args=args),
        )

    def purge_dead_letters(self, queue_name):
        keys = self.keys(queue_name)
        return self._call(
            f"purge the dead letters of queue {queue_name!r}",
            lambda: self._purge_dead_letters(keys=[keys.dead_order, keys.dead]),
        )

    def finish(self, queue_name, task_id, succeeded, outcome):
        keys = self.keys(queue_name)
        finish_keys = [keys.result(task_id), keys.done(task_id), keys.waiters(task_id)]
        record = "" if succeeded else dependency_canceled(queue_name, task_id)
        finish_args = [self._wired_prefix, "1" if succeeded else "0", _wire(record)]
        if outcome is not None:
            finish_args += _outcome_args(outcome)
        released = self._call(
            f"finish task {task_id} of queue {queue_name!r}",
            lambda: self._finish(keys=finish_keys, args=finish_args),
        )
        return sorted(released)

    def move(self, queue_name, old_id, new_id, outcome):
        keys = self.keys(queue_name)
        move_keys = [keys.waiters(old_id), keys.waiters(new_id)]
        move_args = []
        if outcome is not None:
            move_keys += [keys.result(old_id), keys.done(old_id)]
            move_args += _outcome_args(outcome)
        self._call(
            f"move task {old_id} of queue {queue_name!r} to id {new_id}",
            lambda: self._move(keys=move_keys, args=move_args),
        )

    def hand_over(self, queue_name, task_id, consumer_id, new_id, outcome):
        keys = self.keys(queue_name)
        owner = (queue_name, consumer_id)
        hand_keys = [
            keys.inflight(consumer_id),
            keys.data,
            keys.deaths,
            keys.waiters(task_id),
            keys.waiters(new_id),
        ]
        hand_args = [_wire(task_id)]
        if outcome is not None:
            hand_keys += [keys.result(task_id), keys.done(task_id)]
            hand_args += _outcome_args(outcome)
        self._settle(owner, task_id)
        self._call(
            f"hand task {task_id} of queue {queue_name!r} over as {new_id}",
            lambda: self._hand_over(keys=hand_keys, args=hand_args),
            owner,
        )

    def result(self, queue_name, task_id, timeout=0.0):
        keys = self.keys(queue_name)
        result_key, done_key = keys.result(task_id), keys.done(task_id)
        what = f"read the outcome of task {task_id} of queue {queue_name!r}"
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        record = self._call(what, lambda: self._redis.get(result_key))
        while record is None:
            wait = self._block_cap
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = max(min(wait, remaining), MIN_BLOCK)
            record = self._call(
                what, lambda wait=wait: self._wait_for_outcome(result_key, done_key, wait)
            )
        return record

    def _wait_for_outcome(
        self, result_key: str | bytes, done_key: str | bytes, seconds: float
    ) -> str | None:
        """
        Blocks on the server until an outcome is stored or ``seconds`` pass; returns its
        record, or ``None``.

        The script that reads the record rides in the same pipeline as the BLPOP: Redis
        runs it right after the wake-up (or the timeout), in one round trip.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.blpop([done_key], seconds)
        pipe.evalsha(self._after_wake.sha, 2, result_key, done_key)
        woken, record = pipe.execute(raise_on_error=False)
        if isinstance(woken, Exception):
            raise woken
        if isinstance(record, redis.exceptions.NoScriptError):  # e.g. a restarted server
            record = self._after_wake(keys=[result_key, done_key])
        elif isinstance(record, Exception):
            raise record
        return record

    def locate(self, queue_name, task_id):
        keys = self.keys(queue_name)
        found = self._call(
            f"locate task {task_id} of queue {queue_name!r}",
            lambda: self._locate(
                keys=[
                    keys.delayed,
                    keys.data,
                    keys.consumers,
                    keys.dead,
                    keys.result(task_id),
                    keys.held,
                ],
                args=[_wire(task_id), _wire(keys.base)],
            ),
        )
        return None if found is None else Located(*found)

    def close(self):
        self._redis.close()
