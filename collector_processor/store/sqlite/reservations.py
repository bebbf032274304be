"""Reservations in the SQLite store: read the standing of budgets, hold, re-send, replay, release, expire.

Each function runs inside a transaction the caller (``SqliteStore``) holds, so a reservation is held on
every matching budget or on none, and an expiry can never half-release one. The decision itself is
``collector_processor.domain.decisions``; this module only reads what it needs and writes what it decided.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from collector_processor.domain.budgets import ScopeSet, decode_tiers, encode_tiers
from collector_processor.domain.decisions import (
    BudgetState,
    Plan,
    charged_infos,
    estimate_infos,
    plan_reservation,
)
from collector_processor.domain.money import micros_to_usd, usd_to_micros
from collector_processor.domain.requests import closed_plan
from collector_processor.domain.types import (
    BudgetInfo,
    Decision,
    ReservationState,
    ReserveCommand,
    ReserveOutcome,
    UsageFacts,
)
from collector_processor.errors import (
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
)
from collector_processor.store.index import BudgetIndex, LiveBudget
from collector_processor.store.shared import (
    check_fingerprint,
    deciding,
    holds_fit,
    not_owner,
    reserve_outcome,
)
from collector_processor.store.sqlite import requests as req_sql
from collector_processor.store.sqlite.schema import decode_holds, encode_holds
from paymaster.exceptions import quote

__all__ = [
    "RES_COLS",
    "ReservationRow",
    "add_holds",
    "check_owner",
    "drop_holds",
    "expire_due",
    "load_reservation",
    "read_states",
    "replay_reservation",
    "resend_downgrade",
    "reservation_from_row",
    "reserve",
    "settle_hold",
    "standing",
]

RES_COLS = (
    "id, state, organization, team, agent, workflow, user, held_micros, holds, decision, awaiting, "
    "deciding_budget_id, reason, warnings, expires_ms, charged_micros, released_micros, late, provider, model,"
    " owner, fingerprint, tier, request_holds, service"
)
_INSERT_RESERVATION_SQL = (
    "INSERT INTO reservations (id, idempotency_key, state, organization, team, agent, workflow, user,"
    " held_micros, holds, decision, awaiting, deciding_budget_id, reason, warnings, estimate_tokens,"
    " provider, model, created_ms, expires_ms, owner, fingerprint, tier, request_holds, service)"
    " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class ReservationRow(NamedTuple):
    """A reservation as stored."""

    id: str
    state: int
    scopes: ScopeSet
    held: int
    holds: str
    decision: str
    awaiting: int
    deciding: str
    reason: str
    warnings: str
    expires_ms: int
    charged: int | None
    released: int | None
    late: int | None
    provider: str
    model: str
    owner: str
    fingerprint: str
    tier: str
    """The deciding tier, ``encode_tiers`` of it ('' when none decided)."""
    request_holds: str
    """The request budgets it holds on, ``id@created`` joined by commas (``requests``)."""
    service: str
    """The service that reserved, for the request budgets' spend by service."""


def reservation_from_row(r: tuple[object, ...]) -> ReservationRow:
    scopes = ScopeSet(organization=r[2], team=r[3], agent=r[4], workflow=r[5], user=r[6])  # type: ignore[arg-type]
    return ReservationRow(r[0], r[1], scopes, *r[7:])  # type: ignore[arg-type]


def load_reservation(conn: sqlite3.Connection, reservation_id: str) -> ReservationRow | None:
    row = conn.execute(f"SELECT {RES_COLS} FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
    return None if row is None else reservation_from_row(row)


# -- standing --------------------------------------------------------------------------------------
def read_states(
    conn: sqlite3.Connection, matched: Sequence[tuple[LiveBudget, str]], now_ms: int
) -> list[BudgetState]:
    """The standing of every matched budget, read with one statement however many there are."""
    if not matched:
        return []
    args: list[object] = []
    for live, entity in matched:
        budget = live.budget
        args += (budget.id, entity, budget.period.lowest_bucket(now_ms, live.tz), budget.generation)
    rows = conn.execute(_states_sql(len(matched)), args).fetchall()
    return [
        BudgetState(
            budget=live.budget,
            entity=entity,
            limit=live.limit,
            used=used,
            reserved=reserved,
            window=live.budget.period.window(now_ms, live.tz),
        )
        for (live, entity), (used, reserved) in zip(matched, rows, strict=True)
    ]


@lru_cache(maxsize=32)
def _states_sql(count: int) -> str:
    """Used and reserved of ``count`` (budget, entity) pairs, in request order, as one statement."""
    parts = []
    for i in range(count):
        b = 4 * i
        parts.append(
            f"SELECT {i} AS k, (SELECT COALESCE(SUM(used_micros), 0) FROM spend"
            f" WHERE budget_id = ?{b + 1} AND entity = ?{b + 2} AND bucket_ms >= ?{b + 3}) AS u,"
            f" (SELECT COALESCE(SUM(reserved_micros), 0) FROM holds"
            f" WHERE budget_id = ?{b + 1} AND entity = ?{b + 2} AND generation = ?{b + 4}) AS r"
        )
    return f"SELECT u, r FROM ({' UNION ALL '.join(parts)}) ORDER BY k"


def standing(
    conn: sqlite3.Connection, index: BudgetIndex, scopes: ScopeSet, now_ms: int
) -> tuple[BudgetInfo, ...]:
    states = read_states(conn, index.match(scopes, enabled_only=True), now_ms)
    return charged_infos(states)


def _hold_keys(states: Sequence[BudgetState]) -> list[tuple[str, int, str]]:
    return [(s.budget.id, s.budget.generation, s.entity) for s in states]


# One statement for all of a reservation's budgets, not one per budget: every statement costs a round
# through the sqlite3 module (and a hand-off of the interpreter lock to the network thread).
def add_holds(conn: sqlite3.Connection, holds: Sequence[tuple[str, int, str]], amount: int) -> None:
    if amount and holds:
        args = [v for bid, gen, entity in holds for v in (bid, entity, gen, amount)]
        conn.execute(_add_holds_sql(len(holds)), args)


def drop_holds(conn: sqlite3.Connection, holds: str, amount: int) -> None:
    keys = decode_holds(holds) if amount else []
    if keys:
        args = [amount, *(v for bid, gen, entity in keys for v in (bid, entity, gen))]
        conn.execute(_drop_holds_sql(len(keys)), args)


@lru_cache(maxsize=32)
def _add_holds_sql(count: int) -> str:
    rows = ", ".join(["(?, ?, ?, ?)"] * count)
    return (
        f"INSERT INTO holds (budget_id, entity, generation, reserved_micros) VALUES {rows}"
        " ON CONFLICT DO UPDATE SET reserved_micros = reserved_micros + excluded.reserved_micros"
    )


@lru_cache(maxsize=32)
def _drop_holds_sql(count: int) -> str:
    keys = ", ".join(["(?, ?, ?)"] * count)
    return (
        "UPDATE holds SET reserved_micros = reserved_micros - ?"
        f" WHERE (budget_id, entity, generation) IN (VALUES {keys})"
    )


# -- reservations ----------------------------------------------------------------------------------
def reserve(
    conn: sqlite3.Connection,
    index: BudgetIndex,
    command: ReserveCommand,
    reservation_id: str,
    expires_ms: int,
    now_ms: int,
) -> ReserveOutcome:
    own = read_states(conn, index.match(command.scopes, enabled_only=True), now_ms)
    downgrade = command.downgrade_estimate_usd
    estimate = usd_to_micros(command.estimate_usd)
    chain: req_sql.Chain = []
    if command.request_budget:
        found = req_sql.chain_of(conn, command.request_budget, now_ms)
        if isinstance(found, str):
            return reserve_outcome(closed_plan(own, found, estimate), own, "", 0)
        chain = found
    states = own + req_sql.states(chain, now_ms) if chain else own
    plan = plan_reservation(
        states,
        estimate,
        downgrade_estimate=None if downgrade is None else usd_to_micros(downgrade),
        resend=False,
    )
    if plan.decision is Decision.DENY:
        return reserve_outcome(plan, states, "", 0)
    holds_fit(states, plan.hold)
    expires = expires_ms
    holds = _hold_keys(own)
    s, model = command.scopes, command.model or UsageFacts()
    conn.execute(
        _INSERT_RESERVATION_SQL,
        (
            reservation_id, command.idempotency_key or None, s.organization, s.team, s.agent, s.workflow, s.user,
            plan.hold, encode_holds(holds), plan.decision.value, int(plan.awaiting_downgrade_estimate),
            deciding(plan), plan.verdict.reason, "\n".join(plan.verdict.warnings), command.estimate_tokens,
            model.provider, model.model, now_ms, expires, command.owner, command.fingerprint, _tier_code(plan),
            req_sql.encode_request_holds(chain), command.service,
        ),
    )  # fmt: skip
    add_holds(conn, holds, plan.hold)
    if chain:
        req_sql.hold(conn, chain, plan.hold, hold_until_ms=expires, now_ms=now_ms)
    return reserve_outcome(plan, states, reservation_id, expires)


def replay_reservation(
    conn: sqlite3.Connection, index: BudgetIndex, command: ReserveCommand, now_ms: int
) -> ReserveOutcome | None:
    """The first answer to ``command``'s idempotency key, if any; ``AlreadyExistsError`` when the key
    was used for a different request."""
    key = command.idempotency_key
    found = conn.execute(f"SELECT {RES_COLS} FROM reservations WHERE idempotency_key = ?", (key,)).fetchone()
    if found is None:
        return None
    row = reservation_from_row(found)
    check_fingerprint(row.fingerprint, command.fingerprint, "idempotency_key", "Reserve")
    return _replay(conn, index, row, now_ms)


def check_owner(row: ReservationRow, owner: str) -> None:
    """Only the principal that made a reservation may re-send, commit or release it."""
    if row.owner != owner:
        raise not_owner(row.id)


def _replay(conn: sqlite3.Connection, index: BudgetIndex, row: ReservationRow, now_ms: int) -> ReserveOutcome:
    states = _states_without_own_hold(conn, index, row, now_ms)
    return ReserveOutcome(
        decision=Decision(row.decision),
        reservation_id=row.id,
        reserved_usd=micros_to_usd(row.held),
        expires_ms=row.expires_ms,
        budget_info=estimate_infos(states, row.held),
        deciding_budget_id=row.deciding,
        reason=row.reason,
        warnings=tuple(w for w in row.warnings.split("\n") if w),
        awaiting_downgrade_estimate=bool(row.awaiting),
        replayed=True,
        deciding_tier=decode_tiers(row.tier)[0] if row.tier else None,
    )


def _tier_code(plan: Plan) -> str:
    tier = plan.verdict.tier
    return "" if tier is None else encode_tiers((tier,))


def _states_without_own_hold(
    conn: sqlite3.Connection, index: BudgetIndex, row: ReservationRow, now_ms: int
) -> list[BudgetState]:
    """The standing of the reservation's budgets (and of its request budgets that are still open, the
    same incarnations), without what it holds itself."""
    states = read_states(conn, index.match(row.scopes, enabled_only=True), now_ms)
    held = row.held if row.state == ReservationState.HELD else 0
    if held:
        own = set(decode_holds(row.holds))
        for s in states:
            if (s.budget.id, s.budget.generation, s.entity) in own:
                s.reserved -= held
    return states + _request_states(conn, row, now_ms, held)


def _request_states(
    conn: sqlite3.Connection, row: ReservationRow, now_ms: int, held: int
) -> list[BudgetState]:
    chain = request_chain(conn, row, now_ms)
    return req_sql.states(chain, now_ms, own_hold=held) if isinstance(chain, list) else []


def request_chain(conn: sqlite3.Connection, row: ReservationRow, now_ms: int) -> req_sql.Chain | str:
    """The request budgets a reservation holds on, if every one is still the open incarnation it held
    on; else the id of the first that is not."""
    held = req_sql.decode_request_holds(row.request_holds)
    if not held:
        return []
    chain = req_sql.chain_of(conn, held[0][0], now_ms)
    if isinstance(chain, str):
        return chain
    for (budget, *_), (rid, created) in zip(chain, held, strict=False):
        if budget.created_ms != created:
            return rid
    return chain


def resend_downgrade(
    conn: sqlite3.Connection, index: BudgetIndex, command: ReserveCommand, expires_ms: int, now_ms: int
) -> ReserveOutcome:
    """The second half of the downgrade exchange: swap the held estimate for the cheaper path's."""
    row = load_reservation(conn, command.downgrade_of)
    if row is None:
        raise NotFoundError(f"reservation {quote(command.downgrade_of)} (downgrade_of) is unknown")
    check_owner(row, command.owner)
    state = ReservationState(row.state)
    if state is not ReservationState.HELD:
        raise FailedPreconditionError(
            f"reservation {quote(row.id)} is {state.name.lower()}; send a new Reserve for the cheaper path"
        )
    if command.scopes.pairs() and command.scopes != row.scopes:
        raise InvalidRequestError(
            "scopes", f"must be omitted or equal to the scopes of reservation {quote(row.id)}"
        )
    estimate = usd_to_micros(command.estimate_usd)
    if not row.awaiting:
        if row.decision == Decision.DOWNGRADE.value and row.held == estimate:
            return _replay(conn, index, row, now_ms)
        raise FailedPreconditionError(f"reservation {quote(row.id)} is not awaiting a downgrade estimate")
    states = _states_without_own_hold(conn, index, row, now_ms)
    chain = request_chain(conn, row, now_ms)
    if isinstance(chain, str):
        plan = closed_plan(states, chain, estimate)
    else:
        plan = plan_reservation(states, estimate, downgrade_estimate=None, resend=True)
    if plan.decision is not Decision.DENY:
        holds_fit(states, plan.hold)
    drop_holds(conn, row.holds, row.held)
    req_sql.drop(conn, row.request_holds, row.held)
    if plan.decision is Decision.DENY:
        conn.execute(
            "UPDATE reservations SET state = 3, settled_ms = ?, released_micros = held_micros WHERE id = ?",
            (now_ms, row.id),
        )
        return reserve_outcome(plan, states, "", 0)
    holds = _hold_keys(states[: len(states) - len(chain)] if isinstance(chain, list) else states)
    add_holds(conn, holds, plan.hold)
    expires = expires_ms
    if isinstance(chain, list) and chain:
        req_sql.hold(conn, chain, plan.hold, hold_until_ms=expires, now_ms=now_ms)
    conn.execute(
        "UPDATE reservations SET held_micros = ?, holds = ?, decision = ?, awaiting = 0, deciding_budget_id = ?,"
        " reason = ?, warnings = ?, expires_ms = ?, tier = ? WHERE id = ?",
        (plan.hold, encode_holds(holds), plan.decision.value, deciding(plan), plan.verdict.reason,
         "\n".join(plan.verdict.warnings), expires, _tier_code(plan), row.id),
    )  # fmt: skip
    return reserve_outcome(plan, states, row.id, expires)


def settle_hold(conn: sqlite3.Connection, row: ReservationRow, state: ReservationState, now_ms: int) -> None:
    drop_holds(conn, row.holds, row.held)
    req_sql.drop(conn, row.request_holds, row.held)
    conn.execute(
        "UPDATE reservations SET state = ?, settled_ms = ?, released_micros = held_micros WHERE id = ?",
        (int(state), now_ms, row.id),
    )


def expire_due(conn: sqlite3.Connection, now_ms: int, *, limit: int) -> int:
    rows = conn.execute(
        "SELECT id, held_micros, holds, request_holds FROM reservations WHERE state = 1 AND expires_ms <= ? LIMIT ?",
        (now_ms, limit),
    ).fetchall()
    if rows:
        for _, held, holds, request_holds in rows:
            drop_holds(conn, holds, held)
            req_sql.drop(conn, request_holds, held)
        conn.executemany(
            "UPDATE reservations SET state = 4, settled_ms = ?, released_micros = held_micros WHERE id = ?",
            [(now_ms, r[0]) for r in rows],
        )
    return len(rows)


# -- spend -----------------------------------------------------------------------------------------
