"""Tokens and the audit log in the Redis store.

Tokens live in one hash (``{ns}:tokens``, id → JSON); issuing or revoking one is a short script that
writes the token, moves ``{ns}:tokens:version`` (which every replica polls to notice the change) and
appends the audit event, in one atomic step. Audit events are members of a sorted set scored by an
increasing sequence (``{ns}:audit``, numbered by ``{ns}:audit:seq``). Every key is declared in KEYS
and carries the ledger's ``{namespace}`` hash tag, so a Redis Cluster keeps them in the ledger's slot.
"""

from __future__ import annotations

import json
from typing import Any

from collector_processor.domain.access import AuditEvent, TokenRecord
from collector_processor.errors import AlreadyExistsError, NotFoundError
from collector_processor.store.redis.link import RedisLink

__all__ = ["AccessRows", "audit_json"]

# KEYS: tokens hash, tokens version, audit sequence, audit set. ARGV: id, token JSON, audit JSON.
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'EXISTS' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[4], seq, seq .. ' ' .. ARGV[3])
return 'OK'
"""

# KEYS as above. ARGV: id, now_ms, audit JSON. Returns the token's JSON after the change.
_REVOKE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 'NOTFOUND' end
local token = cjson.decode(raw)
if token['revoked_ms'] ~= cjson.null and token['revoked_ms'] ~= nil then return raw end
token['revoked_ms'] = tonumber(ARGV[2])
raw = cjson.encode(token)
redis.call('HSET', KEYS[1], ARGV[1], raw)
redis.call('INCR', KEYS[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[4], seq, seq .. ' ' .. ARGV[3])
return raw
"""

# KEYS: audit sequence, audit set. ARGV: audit JSON.
_AUDIT = """
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. ' ' .. ARGV[1])
return seq
"""


class AccessRows:
    """Tokens and audit events of one ledger on Redis."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        p = link.prefix
        self._tokens, self._version = f"{p}:tokens", f"{p}:tokens:version"
        self._seq, self._audit = f"{p}:audit:seq", f"{p}:audit"

    def create_token(self, token: TokenRecord, event: AuditEvent) -> None:
        keys = (self._tokens, self._version, self._seq, self._audit)
        reply = self._link.eval(_CREATE, keys, (token.id, _token_json(token), audit_json(event)))
        if _text(reply) == "EXISTS":
            raise AlreadyExistsError(f"token {token.id} exists already")

    def revoke_token(self, token_id: str, now_ms: int, event: AuditEvent) -> TokenRecord:
        keys = (self._tokens, self._version, self._seq, self._audit)
        reply = _text(self._link.eval(_REVOKE, keys, (token_id, str(now_ms), audit_json(event))))
        if reply == "NOTFOUND":
            raise NotFoundError(f"token {token_id!r} does not exist")
        return _token(reply)

    def list_tokens(self) -> list[TokenRecord]:
        rows = self._link.call(lambda: self._link.client.hvals(self._tokens))
        return sorted((_token(_text(r)) for r in rows), key=lambda t: (t.created_ms, t.id))

    def tokens_version(self) -> int:
        value = self._link.call(lambda: self._link.client.get(self._version))
        return int(value or 0)

    def record_audit(self, event: AuditEvent) -> None:
        self._link.eval(_AUDIT, (self._seq, self._audit), (audit_json(event),))

    def audit_events(self, after: int, limit: int) -> list[AuditEvent]:
        rows = self._link.call(
            lambda: self._link.client.zrangebyscore(self._audit, f"({after}", "+inf", start=0, num=limit)
        )
        out = []
        for raw in rows:
            seq, _, text = _text(raw).partition(" ")
            fields = json.loads(text)
            out.append(AuditEvent(sequence=int(seq), **fields))
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _token_json(t: TokenRecord) -> str:
    return json.dumps(
        {
            "id": t.id, "name": t.name, "secret_sha256": t.secret_sha256, "roles": list(t.roles),
            "grants": list(t.grants), "trust_reported_cost": t.trust_reported_cost, "created_ms": t.created_ms,
            "created_by": t.created_by, "expires_ms": t.expires_ms, "revoked_ms": t.revoked_ms,
        },
        separators=(",", ":"),
    )  # fmt: skip


def _token(raw: str) -> TokenRecord:
    d = json.loads(raw)
    return TokenRecord(
        id=d["id"],
        name=d["name"],
        secret_sha256=d["secret_sha256"],
        roles=tuple(d["roles"] or ()),
        grants=tuple(d["grants"] or ()),
        trust_reported_cost=bool(d["trust_reported_cost"]),
        created_ms=int(d["created_ms"]),
        created_by=d["created_by"],
        expires_ms=None if d.get("expires_ms") is None else int(d["expires_ms"]),
        revoked_ms=None if d.get("revoked_ms") is None else int(d["revoked_ms"]),
    )


def audit_json(e: AuditEvent) -> str:
    """An audit event as both the access scripts and the budget function store it (without its sequence)."""
    return json.dumps(
        {
            "at_ms": e.at_ms, "principal": e.principal, "address": e.address, "action": e.action,
            "target": e.target, "scope": e.scope, "scope_id": e.scope_id, "before": e.before, "after": e.after,
        },
        separators=(",", ":"),
    )  # fmt: skip
