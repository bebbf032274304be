"""The Redis ledger's schema version, and the upgrade of a namespace an older sidecar wrote.

``P:meta``'s ``schema`` field names the key layout of a namespace. Schema 2 keeps the alert log in one
hash (``P:alert``: sequence -> JSON) and delivery leases in ``P:alerts:lease`` (sequence -> ``<owner>
<until ms>``); schema 1 kept each alert in a hash of its own, ``P:alert:<seq>`` (fields ``id b e th u l
ps pe f m``, the lease ``cb``/``cu`` and the delivery time ``d``). Nothing else differs: the alert
indexes (``P:alerts``, ``P:alerts:pending``, ``P:alerts:fired``, ``P:alerts:b:<id>``, ``P:alerts:seq``)
and every budget, reservation and usage key read the same in both.

A sidecar that finds schema 1 upgrades the namespace in place before it serves, in steps small enough
not to hold Redis up on a long alert log:

1. *Begin*: one script marks the namespace ``1>2`` (an older sidecar refuses to start on it) and takes
   the upgrade lease (``upgrade`` = ``<owner> <until ms>``). Another sidecar starting meanwhile finds
   the lease held and waits until the namespace reads 2; when a lease runs out (its holder died), the
   next one to look takes it over and goes on where it stopped.
2. *Steps*: the alerts in ``P:alerts`` are read ``_CHUNK`` at a time; each step is one script, handed
   the keys of its alerts, that moves them to ``P:alert`` (the ten fields as JSON strings, as
   ``fire`` writes them) and ``P:alerts:lease``, deletes the old hashes, remembers the last sequence
   done (``upgrade:seq``, where a resumed upgrade starts) and renews the lease, all or nothing. An
   alert already moved has no old hash and is skipped, so a step repeated is harmless.
3. *Finish*: one script sets ``schema`` to 2 and forgets the upgrade's fields, answering the counts,
   which the sidecar that finished logs once.

Pending alerts stay pending and delivered ones delivered (``P:alerts:pending`` is untouched), a lease
keeps its owner and expiry; schema 2 keeps no delivery time (``d``), so it is dropped. Every key is
declared in KEYS and carries the namespace's hash tag, as every other script's.

A sidecar of schema 1 that is still running (a rolling update) keeps firing alerts in its layout after
the upgrade. The store reads alerts by sequence; one missing from the log is looked for in the old
layout and moved (``adopt_alerts``, with a warning that an older sidecar is still running), so no alert
is lost to the overlap.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from collector_processor.errors import StoreUnavailableError
from paymaster.exceptions import quote

if TYPE_CHECKING:
    from collector_processor.store.redis.link import RedisLink

__all__ = ["SCHEMA_VERSION", "Upgraded", "adopt_alerts", "ensure_schema"]

log = logging.getLogger("paymaster.sidecar.store.redis")

SCHEMA_VERSION = 2
_UPGRADING = "1>2"
"""``schema`` while a namespace of schema 1 is being upgraded."""
_CHUNK = 500
"""Alerts moved per step: each step is one short script."""
_LEASE_MS = 30_000
"""How long an upgrader that stopped renewing keeps the others waiting before one takes over."""
_POLL_S = 0.2

# KEYS: meta. ARGV: owner, now, lease until. Takes (or renews) the upgrade lease unless another
# sidecar holds it; answers DONE, SCHEMA <found>, WAIT <owner>, or OK <last sequence done>.
_BEGIN = """
local s = redis.call('HGET', KEYS[1], 'schema')
if s == '2' then return {'DONE'} end
if s ~= '1' and s ~= '1>2' then return {'SCHEMA', tostring(s)} end
local lease = redis.call('HGET', KEYS[1], 'upgrade')
if s == '1>2' and lease then
  local who, till = string.match(lease, '^(.*) (%d+)$')
  if who ~= ARGV[1] and tonumber(till) > tonumber(ARGV[2]) then return {'WAIT', who} end
end
redis.call('HSET', KEYS[1], 'schema', '1>2', 'upgrade', ARGV[1] .. ' ' .. ARGV[3])
return {'OK', redis.call('HGET', KEYS[1], 'upgrade:seq') or '0'}
"""

# Shared by the scripts that move alerts: KEYS[2] is P:alert, KEYS[3] P:alerts:lease. ``old`` reads an
# alert of schema 1 (nil if its hash is gone; the hash and the first missing field if it lacks one);
# ``move`` writes it as ``fire`` writes an alert of schema 2, with its lease unless it has one, and
# deletes the old hash.
_MOVE = """
local FIELDS = {'id', 'b', 'e', 'th', 'u', 'l', 'ps', 'pe', 'f', 'm'}
local function old(A)
  local flat = redis.call('HGETALL', A)
  if #flat == 0 then return nil end
  local h = {}
  for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
  for _, f in ipairs(FIELDS) do
    if h[f] == nil then return h, f end
  end
  return h, nil
end
local function move(A, seq, h)
  local alert = {}
  for _, f in ipairs(FIELDS) do alert[f] = h[f] end
  redis.call('HSET', KEYS[2], seq, cjson.encode(alert))
  redis.call('DEL', A)
  if h.cb and h.cu then
    return redis.call('HSETNX', KEYS[3], seq, h.cb .. ' ' .. h.cu)
  end
  return 0
end
"""

# KEYS: meta, P:alert, P:alerts:lease, then P:alert:<seq> for each sequence. ARGV: owner, now, lease
# until, then the sequences (ascending), KEYS[i] being the old hash of ARGV[i]. Every old hash is
# read and checked before anything is written. Answers LOST (another sidecar took the lease over),
# BAD <key> <field> (an alert without one of its fields), or OK <alerts moved> <leases moved>.
_STEP = (
    _MOVE
    + """
local lease = redis.call('HGET', KEYS[1], 'upgrade') or ''
if redis.call('HGET', KEYS[1], 'schema') ~= '1>2' or string.match(lease, '^(.*) %d+$') ~= ARGV[1] then
  return {'LOST'}
end
local found = {}
for i = 4, #ARGV do
  local h, missing = old(KEYS[i])
  if missing then return {'BAD', KEYS[i], missing} end
  if h then found[#found + 1] = {i, h} end
end
local leases = 0
for _, row in ipairs(found) do
  leases = leases + move(KEYS[row[1]], ARGV[row[1]], row[2])
end
redis.call('HSET', KEYS[1], 'upgrade', ARGV[1] .. ' ' .. ARGV[3], 'upgrade:seq', ARGV[#ARGV])
redis.call('HINCRBY', KEYS[1], 'upgrade:alerts', #found)
redis.call('HINCRBY', KEYS[1], 'upgrade:leases', leases)
return {'OK', #found, leases}
"""
)

# After the upgrade, alerts a sidecar of schema 1 still running wrote in its layout. KEYS: meta,
# P:alert, P:alerts:lease, then P:alert:<seq> for each sequence; ARGV: the sequences (KEYS[i + 3] is
# the old hash of ARGV[i]). A whole alert not in the log yet is moved, keeping a lease taken on it
# since. Answers how many moved.
_ADOPT = (
    _MOVE
    + """
local moved = 0
for i = 1, #ARGV do
  local A, seq = KEYS[i + 3], ARGV[i]
  local h, missing = old(A)
  if h and not missing and redis.call('HEXISTS', KEYS[2], seq) == 0 then
    move(A, seq, h)
    moved = moved + 1
  end
end
return moved
"""
)

# KEYS: meta, P:alerts:pending. ARGV: owner. Answers LOST, or OK <alerts> <leases> <pending>.
_FINISH = """
local lease = redis.call('HGET', KEYS[1], 'upgrade') or ''
if redis.call('HGET', KEYS[1], 'schema') ~= '1>2' or string.match(lease, '^(.*) %d+$') ~= ARGV[1] then
  return {'LOST'}
end
local alerts = redis.call('HGET', KEYS[1], 'upgrade:alerts') or '0'
local leases = redis.call('HGET', KEYS[1], 'upgrade:leases') or '0'
redis.call('HSET', KEYS[1], 'schema', '2')
redis.call('HDEL', KEYS[1], 'upgrade', 'upgrade:seq', 'upgrade:alerts', 'upgrade:leases')
return {'OK', alerts, leases, redis.call('ZCARD', KEYS[2])}
"""


@dataclass(frozen=True, slots=True)
class Upgraded:
    """What an upgrade from schema 1 moved (over every sidecar that took part in it)."""

    alerts: int
    """Alerts moved to the one-hash alert log."""
    leases: int
    """Delivery leases moved with them."""
    pending: int
    """Alerts not delivered yet."""
    steps: int
    """Steps this sidecar ran."""


def ensure_schema(link: RedisLink, namespace: str) -> Upgraded | None:
    """Make the namespace's schema 2: start a new one at 2, upgrade one of schema 1 in place (or wait
    while another sidecar does), refuse any other. Answers what was moved when this sidecar finished
    an upgrade (and logs it), else ``None``."""
    client, meta = link.client, link.meta_key
    client.hsetnx(meta, "schema", SCHEMA_VERSION)
    found = client.hget(meta, "schema")
    if found == str(SCHEMA_VERSION):
        return None
    if found not in ("1", _UPGRADING):
        raise _unknown(namespace, found)
    owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
    waiting = False
    while True:
        now = _now_ms()
        reply = _text(link.eval(_BEGIN, [meta], [owner, str(now), str(now + _LEASE_MS)]))
        if reply[0] == "DONE":
            return None
        if reply[0] == "SCHEMA":
            raise _unknown(namespace, reply[1])
        if reply[0] == "WAIT":
            if not waiting:
                log.info(
                    "waiting for another sidecar (%s) to upgrade the Redis ledger in namespace %r to schema %d",
                    reply[1],
                    namespace,
                    SCHEMA_VERSION,
                )
                waiting = True
            time.sleep(_POLL_S)
            continue
        done = _upgrade(link, owner, after=int(reply[1]))
        if done is not None:
            log.warning(
                "upgraded the Redis ledger in namespace %r from schema 1 to %d: %d alerts moved to the "
                "one-hash alert log (%d pending delivery, %d delivery leases kept) in %d step%s",
                namespace,
                SCHEMA_VERSION,
                done.alerts,
                done.pending,
                done.leases,
                done.steps,
                "" if done.steps == 1 else "s",
            )
            return done


def adopt_alerts(link: RedisLink, namespace: str, sequences: Sequence[int]) -> int:
    """Move alerts of ``sequences`` found in the layout of schema 1 into the log (see ``_ADOPT``);
    answers how many moved. They come from a sidecar of schema 1 still running on the namespace after
    it was upgraded (during a rolling update), which is said, since it should be stopped."""
    p = link.prefix
    keys = [link.meta_key, f"{p}:alert", f"{p}:alerts:lease", *(f"{p}:alert:{seq}" for seq in sequences)]
    moved = int(link.eval(_ADOPT, keys, [str(seq) for seq in sequences]))
    if moved:
        log.warning(
            "moved %d alerts written in the layout of schema 1 into the alert log of namespace %r: a sidecar "
            "older than this one is still running on it; finish the rollout (see docs/sidecar.md, Upgrading)",
            moved,
            namespace,
        )
    return moved


def _upgrade(link: RedisLink, owner: str, *, after: int) -> Upgraded | None:
    """Move the alerts after sequence ``after`` a step at a time, then finish; ``None`` if another
    sidecar took the upgrade over meanwhile."""
    p, client = link.prefix, link.client
    fixed = [link.meta_key, f"{p}:alert", f"{p}:alerts:lease"]
    steps = 0
    while True:
        seqs: list[str] = link.call(
            functools.partial(client.zrangebyscore, f"{p}:alerts", f"({after}", "+inf", start=0, num=_CHUNK)
        )
        if not seqs:
            break
        now = _now_ms()
        keys = [*fixed, *(f"{p}:alert:{seq}" for seq in seqs)]
        reply = _text(link.eval(_STEP, keys, [owner, str(now), str(now + _LEASE_MS), *seqs]))
        if reply[0] == "LOST":
            return None
        if reply[0] == "BAD":
            raise StoreUnavailableError(
                f"cannot upgrade the Redis ledger to schema {SCHEMA_VERSION}: the alert {quote(reply[1])} has no "
                f"field {quote(reply[2])}; restore it, or delete it and its sequence from {p}:alerts, and start again"
            )
        steps += 1
        after = int(seqs[-1])
    reply = _text(link.eval(_FINISH, [link.meta_key, f"{p}:alerts:pending"], [owner]))
    if reply[0] == "LOST":
        return None
    return Upgraded(alerts=int(reply[1]), leases=int(reply[2]), pending=int(reply[3]), steps=steps)


def _unknown(namespace: str, found: str | None) -> StoreUnavailableError:
    head = f"namespace {quote(namespace)} holds a ledger of schema {quote(str(found))}"
    reads = f"this sidecar reads schema {SCHEMA_VERSION} (and upgrades schema 1)"
    if found is not None and found.isdigit() and int(found) > SCHEMA_VERSION:
        return StoreUnavailableError(
            f"{head}, written by a newer sidecar; {reads}: run a sidecar of that version or newer on it, "
            "or give this one another [store] namespace"
        )
    return StoreUnavailableError(f"{head}, which no sidecar writes; {reads}: check [store] namespace")


def _text(reply: Any) -> list[str]:
    return [str(v) for v in reply]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
