"""Request budgets in the SQLite store: open, read the standing of a request's chain, hold, charge.

A request budget is one row of ``request_budgets`` (its definition, its spend and holds over its life,
and when it expires unless something happens to it), and its spend per service is in
``request_spend``. A reservation that names one keeps the chain it held on as ``id@created`` items
(``request_holds``), so its commit, release or expiry touches exactly that incarnation of each budget
and skips one that has expired since. Every function runs inside the caller's transaction; the
decisions are ``domain.decisions`` and the rules of opening and expiry ``domain.requests``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from collector_processor.domain.budgets import decode_tiers, encode_tiers
from collector_processor.domain.decisions import BudgetState
from collector_processor.domain.requests import (
    MAX_SERVICES,
    OTHER_SERVICES,
    RequestBudget,
    RequestDraft,
    RequestStatus,
    by_service,
    not_open,
    opened,
    renewed_expiry,
    request_state,
)
from collector_processor.errors import AlreadyExistsError, NotFoundError
from paymaster.exceptions import quote

__all__ = [
    "REQUEST_SCHEMA",
    "Chain",
    "chain_of",
    "charge",
    "decode_request_holds",
    "drop",
    "encode_request_holds",
    "hold",
    "members",
    "open_request",
    "prune",
    "standing_of",
    "status",
]

REQUEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS request_budgets (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    name TEXT NOT NULL,
    chain TEXT NOT NULL,
    limit_micros INTEGER NOT NULL,
    tiers TEXT NOT NULL,
    owner TEXT NOT NULL,
    idle_ttl_ms INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    used_micros INTEGER NOT NULL,
    reserved_micros INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_budgets_by_expiry ON request_budgets (expires_ms);
CREATE TABLE IF NOT EXISTS request_spend (
    request_id TEXT NOT NULL,
    service TEXT NOT NULL,
    used_micros INTEGER NOT NULL,
    PRIMARY KEY (request_id, service)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS request_exact BEFORE UPDATE ON request_budgets
    WHEN typeof(NEW.used_micros) <> 'integer' OR typeof(NEW.reserved_micros) <> 'integer'
    BEGIN SELECT RAISE(ABORT, 'paymaster: total out of range'); END;
"""
"""The request-budget tables, created with the rest of the schema."""

_COLS = "id, created_ms, name, chain, limit_micros, tiers, owner, idle_ttl_ms, used_micros, reserved_micros, expires_ms"

Chain = list[tuple[RequestBudget, int, int, int]]
"""A request budget and its ancestors, innermost first: each with used, reserved and expiry."""


def _row(r: Sequence[object]) -> tuple[RequestBudget, int, int, int]:
    rid, created, name, chain, limit, tiers, owner, idle, used, reserved, expires = r
    budget = RequestBudget(
        id=str(rid), name=str(name), chain=tuple(c for c in str(chain).split(",") if c),
        limit_micros=int(limit), tiers=decode_tiers(str(tiers)), owner=str(owner), created_ms=int(created),  # type: ignore[call-overload]
        idle_ttl_ms=int(idle),  # type: ignore[call-overload]
    )  # fmt: skip
    return budget, int(used), int(reserved), int(expires)  # type: ignore[call-overload]


def _open_rows(
    conn: sqlite3.Connection, ids: Sequence[str], now_ms: int
) -> dict[str, tuple[RequestBudget, int, int, int]]:
    marks = ", ".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT {_COLS} FROM request_budgets WHERE id IN ({marks}) AND expires_ms > ?", (*ids, now_ms)
    ).fetchall()
    return {str(r[0]): _row(r) for r in rows}


def chain_of(conn: sqlite3.Connection, request_id: str, now_ms: int) -> Chain | str:
    """The open request budget ``request_id`` and its ancestors; or the id of the first of them that is
    not open (the request is then denied: its limit must not silently go away)."""
    found = _open_rows(conn, [request_id], now_ms).get(request_id)
    if found is None:
        return request_id
    ancestors = found[0].chain
    if not ancestors:
        return [found]
    rows = _open_rows(conn, ancestors, now_ms)
    out = [found]
    for ancestor in ancestors:
        if ancestor not in rows:
            return ancestor
        out.append(rows[ancestor])
    return out


def members(conn: sqlite3.Connection, request_id: str) -> list[tuple[str, int]]:
    """``(id, created)`` of a request budget and its ancestors as stored, open or not (``charge`` skips
    those that are not): spend that names a request budget counts on each of them that is still open."""
    row = conn.execute("SELECT created_ms, chain FROM request_budgets WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        return []
    out = [(request_id, int(row[0]))]
    ancestors = [a for a in str(row[1]).split(",") if a]
    if ancestors:
        marks = ", ".join("?" * len(ancestors))
        found = dict(
            conn.execute(f"SELECT id, created_ms FROM request_budgets WHERE id IN ({marks})", ancestors)
        )
        out += [(a, int(found[a])) for a in ancestors if a in found]
    return out


def states(chain: Chain, now_ms: int, *, own_hold: int = 0) -> list[BudgetState]:
    """The chain's standings for the decision rules (without ``own_hold``, a reservation's own)."""
    return [request_state(b, u, r - own_hold, now_ms) for b, u, r, _ in chain]


def encode_request_holds(chain: Chain) -> str:
    return ",".join(f"{b.id}@{b.created_ms}" for b, *_ in chain)


def decode_request_holds(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(",") if text else ():
        rid, created = item.rsplit("@", 1)
        out.append((rid, int(created)))
    return out


def hold(conn: sqlite3.Connection, chain: Chain, amount: int, *, hold_until_ms: int, now_ms: int) -> None:
    """Hold ``amount`` on every budget of the chain and keep each open at least until the hold runs out."""
    conn.executemany(
        "UPDATE request_budgets SET reserved_micros = reserved_micros + ?, expires_ms = ? WHERE id = ?",
        [(amount, renewed_expiry(e, now_ms, b.idle_ttl_ms, hold_until_ms), b.id) for b, _, _, e in chain],
    )


def drop(conn: sqlite3.Connection, request_holds: str, amount: int) -> None:
    """Give a reservation's hold back to the request budgets it held on (the same incarnations only)."""
    if amount and request_holds:
        conn.executemany(
            "UPDATE request_budgets SET reserved_micros = reserved_micros - ? WHERE id = ? AND created_ms = ?",
            [(amount, rid, created) for rid, created in decode_request_holds(request_holds)],
        )


def charge(
    conn: sqlite3.Connection, held: Sequence[tuple[str, int]], amount: int, service: str, now_ms: int
) -> list[BudgetState]:
    """Charge ``amount`` spent by ``service`` to each open request budget of ``held`` (``(id, created)``;
    one that expired since is skipped: its request is over), renew their expiry, and return their
    standing after the charge."""
    if not held:
        return []
    rows = _open_rows(conn, [rid for rid, _ in held], now_ms)
    live = [rows[rid] for rid, created in held if rid in rows and rows[rid][0].created_ms == created]
    out = []
    for budget, used, reserved, expires in live:
        after = renewed_expiry(expires, now_ms, budget.idle_ttl_ms)
        conn.execute(
            "UPDATE request_budgets SET used_micros = used_micros + ?, expires_ms = ? WHERE id = ?",
            (amount, after, budget.id),
        )
        _per_service(conn, budget.id, service, amount)
        out.append(request_state(budget, used + amount, reserved, now_ms))
    return out


def standing_of(conn: sqlite3.Connection, held: Sequence[tuple[str, int]], now_ms: int) -> list[BudgetState]:
    """The standing of each of ``held`` (``(id, created)``) that is open, changing nothing."""
    if not held:
        return []
    rows = _open_rows(conn, [rid for rid, _ in held], now_ms)
    return [
        request_state(rows[rid][0], rows[rid][1], rows[rid][2], now_ms)
        for rid, created in held
        if rid in rows and rows[rid][0].created_ms == created
    ]


def _per_service(conn: sqlite3.Connection, request_id: str, service: str, amount: int) -> None:
    known = conn.execute(
        "SELECT 1 FROM request_spend WHERE request_id = ? AND service = ?", (request_id, service)
    ).fetchone()
    if known is None:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM request_spend WHERE request_id = ?", (request_id,)
        ).fetchone()
        if count >= MAX_SERVICES:
            service = OTHER_SERVICES
    conn.execute(
        "INSERT INTO request_spend VALUES (?, ?, ?)"
        " ON CONFLICT DO UPDATE SET used_micros = used_micros + excluded.used_micros",
        (request_id, service, amount),
    )


def status(conn: sqlite3.Connection, request_id: str, now_ms: int) -> RequestStatus:
    found = _open_rows(conn, [request_id], now_ms).get(request_id)
    if found is None:
        raise NotFoundError(not_open(request_id))
    budget, used, reserved, expires = found
    rows = conn.execute(
        "SELECT service, used_micros FROM request_spend WHERE request_id = ?", (request_id,)
    ).fetchall()
    return RequestStatus(
        budget=budget,
        used_micros=used,
        reserved_micros=reserved,
        expires_ms=expires,
        by_service=by_service([(str(s), int(u)) for s, u in rows]),
    )


def open_request(conn: sqlite3.Connection, draft: RequestDraft, now_ms: int) -> RequestStatus:
    """Open ``draft`` (inside its parent, which must be open); the same id opened again with the same
    request returns it as it stands, with another request is ``AlreadyExistsError``."""
    existing = conn.execute(
        "SELECT fingerprint, expires_ms FROM request_budgets WHERE id = ?", (draft.id,)
    ).fetchone()
    if existing is not None and existing[1] > now_ms:
        if existing[0] != draft.fingerprint:
            raise AlreadyExistsError(
                f"request_budget_id: request budget {quote(draft.id)} is open already, for another request"
            )
        return status(conn, draft.id, now_ms)
    parent = None
    if draft.parent_id:
        try:
            parent = status(conn, draft.parent_id, now_ms)
        except NotFoundError:
            raise NotFoundError(not_open(draft.parent_id, "parent_id")) from None
    budget, clamped = opened(draft, parent, now_ms)
    if existing is not None:  # an expired incarnation not yet swept: this one replaces it
        _forget(conn, [draft.id])
    expires = now_ms + budget.idle_ttl_ms
    conn.execute(
        f"INSERT INTO request_budgets ({_COLS}, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
        (budget.id, budget.created_ms, budget.name, ",".join(budget.chain), budget.limit_micros,
         encode_tiers(budget.tiers), budget.owner, budget.idle_ttl_ms, expires, draft.fingerprint),
    )  # fmt: skip
    if parent is not None:  # opening a child is activity on its ancestors
        conn.executemany(
            "UPDATE request_budgets SET expires_ms = MAX(expires_ms, ? + idle_ttl_ms) WHERE id = ?",
            [(now_ms, rid) for rid in budget.chain],
        )
    return RequestStatus(budget=budget, used_micros=0, reserved_micros=0, expires_ms=expires, clamped=clamped)


def _forget(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    marks = ", ".join("?" * len(ids))
    conn.execute(f"DELETE FROM request_budgets WHERE id IN ({marks})", tuple(ids))
    conn.execute(f"DELETE FROM request_spend WHERE request_id IN ({marks})", tuple(ids))


def prune(conn: sqlite3.Connection, now_ms: int) -> int:
    """Forget request budgets that have expired; returns how many."""
    ids = [
        str(r[0])
        for r in conn.execute("SELECT id FROM request_budgets WHERE expires_ms <= ? LIMIT 10000", (now_ms,))
    ]
    if ids:
        _forget(conn, ids)
    return len(ids)
