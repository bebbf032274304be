"""Tokens and the audit log in the SQLite store, in a transaction the caller holds.

A token is a row by id with the hash of its secret; issuing or revoking one writes its audit event in
the same transaction and moves the ``tokens`` counter, which every sidecar sharing the file polls to
notice the change. Audit events are rows numbered by an increasing sequence.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from collector_processor.domain.access import AuditEvent, TokenRecord
from collector_processor.errors import AlreadyExistsError, NotFoundError

__all__ = [
    "ACCESS_SCHEMA",
    "audit_events",
    "insert_audit",
    "insert_token",
    "list_tokens",
    "revoke_token",
    "tokens_version",
]

ACCESS_SCHEMA = """
INSERT OR IGNORE INTO counters VALUES ('tokens', 0);

CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    roles TEXT NOT NULL,
    grants TEXT NOT NULL,
    trust_reported_cost INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    principal TEXT NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL
);
"""

_TOKEN_COLUMNS = "id, name, secret_sha256, roles, grants, trust_reported_cost, created_ms, created_by, expires_ms, revoked_ms"
_AUDIT_COLUMNS = "seq, at_ms, principal, address, action, target, scope, scope_id, before, after"
# Roles and grants are words without these characters (grants refuse spaces), so they join safely.
_SEP = "\n"


def tokens_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM counters WHERE name = 'tokens'").fetchone()[0])


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'tokens'")


def insert_token(conn: sqlite3.Connection, token: TokenRecord, event: AuditEvent) -> None:
    if conn.execute("SELECT 1 FROM tokens WHERE id = ?", (token.id,)).fetchone():
        raise AlreadyExistsError(f"token {token.id} exists already")
    conn.execute(
        f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            token.id, token.name, token.secret_sha256, _SEP.join(token.roles), _SEP.join(token.grants),
            int(token.trust_reported_cost), token.created_ms, token.created_by, token.expires_ms, token.revoked_ms,
        ),
    )  # fmt: skip
    _bump(conn)
    insert_audit(conn, event)


def revoke_token(conn: sqlite3.Connection, token_id: str, now_ms: int, event: AuditEvent) -> TokenRecord:
    row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"token {token_id!r} does not exist")
    token = _token(row)
    if token.revoked_ms is None:
        conn.execute("UPDATE tokens SET revoked_ms = ? WHERE id = ?", (now_ms, token_id))
        _bump(conn)
        insert_audit(conn, event)
        token = _token((*row[:-1], now_ms))
    return token


def list_tokens(conn: sqlite3.Connection) -> list[TokenRecord]:
    return [_token(r) for r in conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_ms, id")]


def insert_audit(conn: sqlite3.Connection, event: AuditEvent) -> int:
    cursor = conn.execute(
        f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.at_ms, event.principal, event.address, event.action, event.target, event.scope,
            event.scope_id, event.before, event.after,
        ),
    )  # fmt: skip
    return int(cursor.lastrowid or 0)


def audit_events(conn: sqlite3.Connection, after: int, limit: int) -> list[AuditEvent]:
    rows = conn.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
    ).fetchall()
    return [_audit(r) for r in rows]


def _token(row: tuple[Any, ...]) -> TokenRecord:
    tid, name, digest, roles, grants, trust, created_ms, created_by, expires_ms, revoked_ms = row
    return TokenRecord(
        id=tid,
        name=name,
        secret_sha256=digest,
        roles=tuple(roles.split(_SEP)) if roles else (),
        grants=tuple(grants.split(_SEP)) if grants else (),
        trust_reported_cost=bool(trust),
        created_ms=created_ms,
        created_by=created_by,
        expires_ms=expires_ms,
        revoked_ms=revoked_ms,
    )


def _audit(row: tuple[Any, ...]) -> AuditEvent:
    seq, at_ms, principal, address, action, target, scope, scope_id, before, after = row
    return AuditEvent(
        sequence=seq, at_ms=at_ms, principal=principal, address=address, action=action, target=target,
        scope=scope, scope_id=scope_id, before=before, after=after,
    )  # fmt: skip
