"""The bodies of the SQLite store's atomic operations; each runs inside a transaction the caller holds.

Nothing here commits or locks: ``SqliteStore`` wraps every call in one ``BEGIN IMMEDIATE``
transaction, so a reservation is held on every matching budget or on none, a commit swaps the hold for
the spend and fires its alerts together, and an expiry can never half-release a reservation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from collector_processor.budgets import Budget, ScopeSet
from collector_processor.decisions import (
    BudgetState,
    Plan,
    alert_message,
    budget_infos,
    crossed_thresholds,
    exceeds,
    plan_reservation,
)
from collector_processor.errors import FailedPreconditionError, InvalidRequestError, NotFoundError
from collector_processor.ledger_types import (
    BudgetInfo,
    CommitCommand,
    CommitOutcome,
    Decision,
    RecordUsageCommand,
    RecordUsageOutcome,
    ReservationState,
    ReserveCommand,
    ReserveOutcome,
    UsageFacts,
)
from collector_processor.money import micros_to_usd, usd_to_micros
from collector_processor.store._index import BudgetIndex, LiveBudget
from collector_processor.store._sqlite_schema import (
    BUDGET_COLUMNS,
    budget_from_row,
    budget_to_row,
    decode_holds,
    encode_holds,
)

_STATE_SQL = (
    "SELECT (SELECT COALESCE(SUM(used_micros), 0) FROM spend"
    " WHERE budget_id = ?1 AND entity = ?2 AND bucket_ms >= ?3),"
    " (SELECT COALESCE(SUM(reserved_micros), 0) FROM holds"
    " WHERE budget_id = ?1 AND entity = ?2 AND generation = ?4)"
)
_HELD_SQL = "SELECT reserved_micros FROM holds WHERE budget_id = ? AND entity = ? AND generation = ?"
_SUM_SPEND_SQL = "SELECT COALESCE(SUM(used_micros), 0) FROM spend WHERE budget_id = ? AND entity = ? AND bucket_ms >= ?"
_UPSERT_SPEND_SQL = (
    "INSERT INTO spend (budget_id, entity, bucket_ms, used_micros) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO UPDATE SET used_micros = used_micros + excluded.used_micros"
)
_ADD_HOLD_SQL = (
    "INSERT INTO holds (budget_id, entity, generation, reserved_micros) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO UPDATE SET reserved_micros = reserved_micros + excluded.reserved_micros"
)
_DROP_HOLD_SQL = (
    "UPDATE holds SET reserved_micros = reserved_micros - ? WHERE budget_id = ? AND entity = ? AND generation = ?"
)
_RES_COLS = (
    "id, state, organization, team, agent, workflow, user, held_micros, holds, decision, awaiting, "
    "deciding_budget_id, reason, warnings, expires_ms, charged_micros, released_micros, late, provider, model"
)
_INSERT_RESERVATION_SQL = (
    "INSERT INTO reservations (id, idempotency_key, state, organization, team, agent, workflow, user,"
    " held_micros, holds, decision, awaiting, deciding_budget_id, reason, warnings, estimate_tokens,"
    " provider, model, created_ms, expires_ms) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_USAGE_SQL = (
    "INSERT OR IGNORE INTO usage_events (usage_id, ts_ms, organization, team, agent, workflow, user, provider,"
    " model, cost_micros, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,"
    " reasoning_tokens, total_tokens, reservation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ALERT_SQL = (
    "INSERT INTO alerts (alert_id, budget_id, budget_name, scope, entity, threshold, used_micros, limit_micros,"
    " action, period_start_ms, period_end_ms, fired_ms, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " RETURNING seq"
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


def _reservation(r: tuple[object, ...]) -> ReservationRow:
    scopes = ScopeSet(organization=r[2], team=r[3], agent=r[4], workflow=r[5], user=r[6])  # type: ignore[arg-type]
    return ReservationRow(r[0], r[1], scopes, *r[7:])  # type: ignore[arg-type]


def load_reservation(conn: sqlite3.Connection, reservation_id: str) -> ReservationRow | None:
    row = conn.execute(f"SELECT {_RES_COLS} FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
    return None if row is None else _reservation(row)


# -- standing --------------------------------------------------------------------------------------
def read_states(conn: sqlite3.Connection, matched: Sequence[tuple[LiveBudget, str]], now_ms: int) -> list[BudgetState]:
    states = []
    for live, entity in matched:
        budget = live.budget
        lowest = budget.period.lowest_bucket(now_ms, live.tz)
        used, reserved = conn.execute(_STATE_SQL, (budget.id, entity, lowest, budget.generation)).fetchone()
        states.append(
            BudgetState(
                budget=budget,
                entity=entity,
                limit=live.limit,
                used=used,
                reserved=reserved,
                window=budget.period.window(now_ms, live.tz),
            )
        )
    return states


def _standing(conn: sqlite3.Connection, index: BudgetIndex, scopes: ScopeSet, now_ms: int) -> tuple[BudgetInfo, ...]:
    states = read_states(conn, index.match(scopes, enabled_only=True), now_ms)
    return budget_infos(states, [s.used > s.limit for s in states])


def _hold_keys(states: Sequence[BudgetState]) -> list[tuple[str, int, str]]:
    return [(s.budget.id, s.budget.generation, s.entity) for s in states]


def add_holds(conn: sqlite3.Connection, holds: Sequence[tuple[str, int, str]], amount: int) -> None:
    if amount:
        conn.executemany(_ADD_HOLD_SQL, [(bid, entity, gen, amount) for bid, gen, entity in holds])


def drop_holds(conn: sqlite3.Connection, holds: str, amount: int) -> None:
    if amount and holds:
        conn.executemany(_DROP_HOLD_SQL, [(amount, bid, entity, gen) for bid, gen, entity in decode_holds(holds)])


# -- reservations ----------------------------------------------------------------------------------
def reserve(
    conn: sqlite3.Connection, index: BudgetIndex, command: ReserveCommand, reservation_id: str, now_ms: int
) -> ReserveOutcome:
    states = read_states(conn, index.match(command.scopes, enabled_only=True), now_ms)
    downgrade = command.downgrade_estimate_usd
    plan = plan_reservation(
        states,
        usd_to_micros(command.estimate_usd),
        downgrade_estimate=None if downgrade is None else usd_to_micros(downgrade),
        resend=False,
    )
    if plan.decision is Decision.DENY:
        return _outcome(plan, states, "", 0)
    expires = now_ms + command.ttl_ms
    holds = _hold_keys(states)
    s, model = command.scopes, command.model or UsageFacts()
    conn.execute(
        _INSERT_RESERVATION_SQL,
        (
            reservation_id, command.idempotency_key or None, s.organization, s.team, s.agent, s.workflow, s.user,
            plan.hold, encode_holds(holds), plan.decision.value, int(plan.awaiting_downgrade_estimate),
            _deciding(plan), plan.verdict.reason, "\n".join(plan.verdict.warnings), command.estimate_tokens,
            model.provider, model.model, now_ms, expires,
        ),
    )  # fmt: skip
    add_holds(conn, holds, plan.hold)
    return _outcome(plan, states, reservation_id, expires)


def _deciding(plan: Plan) -> str:
    return plan.verdict.deciding.budget.id if plan.verdict.deciding else ""


def _outcome(plan: Plan, states: Sequence[BudgetState], reservation_id: str, expires_ms: int) -> ReserveOutcome:
    verdict = plan.verdict
    return ReserveOutcome(
        decision=plan.decision,
        reservation_id=reservation_id,
        reserved_usd=micros_to_usd(plan.hold),
        expires_ms=expires_ms,
        budget_info=budget_infos(states, verdict.exceeded),
        deciding_budget_id=_deciding(plan),
        reason=verdict.reason,
        warnings=verdict.warnings,
        awaiting_downgrade_estimate=plan.awaiting_downgrade_estimate,
    )


def replay_reservation(conn: sqlite3.Connection, index: BudgetIndex, key: str, now_ms: int) -> ReserveOutcome | None:
    row = conn.execute(f"SELECT {_RES_COLS} FROM reservations WHERE idempotency_key = ?", (key,)).fetchone()
    return None if row is None else _replay(conn, index, _reservation(row), now_ms)


def _replay(conn: sqlite3.Connection, index: BudgetIndex, row: ReservationRow, now_ms: int) -> ReserveOutcome:
    states = _states_without_own_hold(conn, index, row, now_ms)
    return ReserveOutcome(
        decision=Decision(row.decision),
        reservation_id=row.id,
        reserved_usd=micros_to_usd(row.held),
        expires_ms=row.expires_ms,
        budget_info=budget_infos(states, [exceeds(s, row.held) for s in states]),
        deciding_budget_id=row.deciding,
        reason=row.reason,
        warnings=tuple(w for w in row.warnings.split("\n") if w),
        awaiting_downgrade_estimate=bool(row.awaiting),
        replayed=True,
    )


def _states_without_own_hold(
    conn: sqlite3.Connection, index: BudgetIndex, row: ReservationRow, now_ms: int
) -> list[BudgetState]:
    states = read_states(conn, index.match(row.scopes, enabled_only=True), now_ms)
    if row.state == ReservationState.HELD:
        own = set(decode_holds(row.holds))
        for s in states:
            if (s.budget.id, s.budget.generation, s.entity) in own:
                s.reserved -= row.held
    return states


def resend_downgrade(conn: sqlite3.Connection, index: BudgetIndex, command: ReserveCommand, now_ms: int) -> ReserveOutcome:
    """The second half of the downgrade exchange: swap the held estimate for the cheaper path's."""
    row = load_reservation(conn, command.downgrade_of)
    if row is None:
        raise NotFoundError(f"reservation {command.downgrade_of!r} (downgrade_of) is unknown")
    state = ReservationState(row.state)
    if state is not ReservationState.HELD:
        raise FailedPreconditionError(
            f"reservation {row.id!r} is {state.name.lower()}; send a new Reserve for the cheaper path"
        )
    if any(True for _ in command.scopes.pairs()) and command.scopes != row.scopes:
        raise InvalidRequestError("scopes", f"must be omitted or equal to the scopes of reservation {row.id!r}")
    estimate = usd_to_micros(command.estimate_usd)
    if not row.awaiting:
        if row.decision == Decision.DOWNGRADE.value and row.held == estimate:
            return _replay(conn, index, row, now_ms)
        raise FailedPreconditionError(f"reservation {row.id!r} is not awaiting a downgrade estimate")
    states = _states_without_own_hold(conn, index, row, now_ms)
    plan = plan_reservation(states, estimate, downgrade_estimate=None, resend=True)
    drop_holds(conn, row.holds, row.held)
    if plan.decision is Decision.DENY:
        conn.execute(
            "UPDATE reservations SET state = 3, settled_ms = ?, released_micros = held_micros WHERE id = ?",
            (now_ms, row.id),
        )
        return _outcome(plan, states, "", 0)
    holds = _hold_keys(states)
    add_holds(conn, holds, plan.hold)
    expires = now_ms + command.ttl_ms
    conn.execute(
        "UPDATE reservations SET held_micros = ?, holds = ?, decision = ?, awaiting = 0, deciding_budget_id = ?,"
        " reason = ?, warnings = ?, expires_ms = ? WHERE id = ?",
        (plan.hold, encode_holds(holds), plan.decision.value, _deciding(plan), plan.verdict.reason,
         "\n".join(plan.verdict.warnings), expires, row.id),
    )  # fmt: skip
    return _outcome(plan, states, row.id, expires)


def settle_hold(conn: sqlite3.Connection, row: ReservationRow, state: ReservationState, now_ms: int) -> None:
    drop_holds(conn, row.holds, row.held)
    conn.execute(
        "UPDATE reservations SET state = ?, settled_ms = ?, released_micros = held_micros WHERE id = ?",
        (int(state), now_ms, row.id),
    )


def expire_due(conn: sqlite3.Connection, now_ms: int, *, limit: int) -> int:
    rows = conn.execute(
        "SELECT id, held_micros, holds FROM reservations WHERE state = 1 AND expires_ms <= ? LIMIT ?", (now_ms, limit)
    ).fetchall()
    if rows:
        for _, held, holds in rows:
            drop_holds(conn, holds, held)
        conn.executemany(
            "UPDATE reservations SET state = 4, settled_ms = ?, released_micros = held_micros WHERE id = ?",
            [(now_ms, r[0]) for r in rows],
        )
    return len(rows)


# -- spend -----------------------------------------------------------------------------------------
def commit(
    conn: sqlite3.Connection, index: BudgetIndex, row: ReservationRow, command: CommitCommand, now_ms: int
) -> CommitOutcome:
    if row.state == ReservationState.COMMITTED:
        return CommitOutcome(
            charged_usd=micros_to_usd(row.charged or 0),
            released_usd=micros_to_usd(row.released or 0),
            duplicate=True,
            late=bool(row.late),
            budget_info=_standing(conn, index, row.scopes, now_ms),
        )
    return _commit_row(conn, index, row, usd_to_micros(command.actual_usd), command.actual_tokens, command.usage, now_ms)


def _commit_row(
    conn: sqlite3.Connection,
    index: BudgetIndex,
    row: ReservationRow,
    actual: int,
    total_tokens: int,
    facts: UsageFacts,
    now_ms: int,
) -> CommitOutcome:
    held = row.held if row.state == ReservationState.HELD else 0
    drop_holds(conn, row.holds, held)
    facts = replace(facts, provider=facts.provider or row.provider, model=facts.model or row.model)
    insert_usage(conn, f"reservation:{row.id}", now_ms, row.scopes, actual, total_tokens, facts, row.id)
    infos, fired = charge(conn, index, row.scopes, actual, at_ms=now_ms, now_ms=now_ms)
    late = row.state != ReservationState.HELD
    conn.execute(
        "UPDATE reservations SET state = 2, settled_ms = ?, charged_micros = ?, released_micros = ?, late = ?"
        " WHERE id = ?",
        (now_ms, actual, held, int(late), row.id),
    )
    return CommitOutcome(
        charged_usd=micros_to_usd(actual),
        released_usd=micros_to_usd(held),
        duplicate=False,
        late=late,
        budget_info=infos,
        alerts_fired=tuple(fired),
    )


def record_usage(
    conn: sqlite3.Connection, index: BudgetIndex, command: RecordUsageCommand, now_ms: int
) -> RecordUsageOutcome:
    cost = usd_to_micros(command.cost_usd)
    inserted = insert_usage(
        conn, command.usage_id, command.occurred_ms, command.scopes, cost, command.total_tokens, command.usage,
        command.reservation_id,
    )  # fmt: skip
    if not inserted:
        return RecordUsageOutcome(
            charged_usd=micros_to_usd(0), duplicate=True, budget_info=_standing(conn, index, command.scopes, now_ms)
        )
    infos, fired = charge(conn, index, command.scopes, cost, at_ms=command.occurred_ms, now_ms=now_ms)
    return RecordUsageOutcome(charged_usd=micros_to_usd(cost), duplicate=False, budget_info=infos, alerts_fired=tuple(fired))


def record_against_reservation(
    conn: sqlite3.Connection, index: BudgetIndex, row: ReservationRow, command: RecordUsageCommand, now_ms: int
) -> RecordUsageOutcome:
    """Usage that names a known reservation commits it, or is a duplicate of its commit."""
    if row.state == ReservationState.COMMITTED:
        return RecordUsageOutcome(
            charged_usd=micros_to_usd(0), duplicate=True, budget_info=_standing(conn, index, row.scopes, now_ms)
        )
    out = _commit_row(
        conn, index, row, usd_to_micros(command.cost_usd), command.total_tokens, command.usage, now_ms
    )
    return RecordUsageOutcome(
        charged_usd=out.charged_usd, duplicate=False, budget_info=out.budget_info, alerts_fired=out.alerts_fired
    )


def insert_usage(
    conn: sqlite3.Connection,
    usage_id: str,
    ts_ms: int,
    s: ScopeSet,
    cost: int,
    total_tokens: int,
    f: UsageFacts,
    reservation_id: str,
) -> bool:
    """Record one unit of spend for reports; False when ``usage_id`` was recorded before."""
    total = total_tokens or f.input_tokens + f.output_tokens
    cur = conn.execute(
        _INSERT_USAGE_SQL,
        (usage_id, ts_ms, s.organization, s.team, s.agent, s.workflow, s.user, f.provider, f.model, cost,
         f.input_tokens, f.output_tokens, f.cache_read_tokens, f.cache_creation_tokens, f.reasoning_tokens, total,
         reservation_id),
    )  # fmt: skip
    return cur.rowcount == 1


def charge(
    conn: sqlite3.Connection, index: BudgetIndex, scopes: ScopeSet, amount: int, *, at_ms: int, now_ms: int
) -> tuple[tuple[BudgetInfo, ...], list[int]]:
    """Add ``amount`` spent at ``at_ms`` to every matching budget (disabled ones too: they keep counting),
    then fire the thresholds it reached. Returns the enabled budgets' standing and the alerts fired."""
    states: list[BudgetState] = []
    fired: list[int] = []
    for live, entity in index.match(scopes, enabled_only=False):
        budget = live.budget
        period = budget.period
        key = (budget.id, entity, period.bucket_of(at_ms, live.tz), amount)
        if period.is_rolling:
            conn.execute(_UPSERT_SPEND_SQL, key)
            window = period.window(now_ms, live.tz)
            used = conn.execute(_SUM_SPEND_SQL, (budget.id, entity, period.lowest_bucket(now_ms, live.tz))).fetchone()[0]
        else:
            used = conn.execute(_UPSERT_SPEND_SQL + " RETURNING used_micros", key).fetchone()[0]
            window = period.window(at_ms, live.tz)
        if not budget.enabled:
            continue
        held = conn.execute(_HELD_SQL, (budget.id, entity, budget.generation)).fetchone()
        state = BudgetState(
            budget=budget, entity=entity, limit=live.limit, used=used, reserved=held[0] if held else 0, window=window
        )
        states.append(state)
        if budget.alert_thresholds:
            fired.extend(_fire_alerts(conn, live, state, now_ms))
    return budget_infos(states, [s.used > s.limit for s in states]), fired


def _fire_alerts(conn: sqlite3.Connection, live: LiveBudget, s: BudgetState, now_ms: int) -> list[int]:
    """Each threshold fires once per period: the mark row is the de-duplication record, written in the
    same transaction as the spend, so neither a restart nor another sidecar can fire it again."""
    budget, thresholds = live.budget, live.budget.alert_thresholds
    rolling = budget.period.is_rolling
    period_key = 0 if rolling else s.window.start_ms
    if rolling:
        # A rolling window re-arms a threshold once its spend has fallen back below it.
        below = [(budget.id, s.entity, t) for t in thresholds if s.used * 100 < t * s.limit]
        conn.executemany(
            "DELETE FROM alert_marks WHERE budget_id = ? AND entity = ? AND period_key = 0 AND threshold = ?", below
        )
    fired = []
    for threshold in crossed_thresholds(thresholds, s.used, s.limit):
        cur = conn.execute(
            "INSERT OR IGNORE INTO alert_marks VALUES (?, ?, ?, ?)", (budget.id, s.entity, period_key, threshold)
        )
        if cur.rowcount != 1:
            continue
        occurrence = f"rolling@{now_ms}" if rolling else str(period_key)
        seq = conn.execute(
            _INSERT_ALERT_SQL,
            (f"{budget.id}/{s.entity}/{occurrence}/{threshold}", budget.id, budget.name, budget.scope.value, s.entity,
             threshold, s.used, s.limit, budget.on_exceed.value, s.window.start_ms, s.window.end_ms,
             now_ms, alert_message(budget, s.entity, threshold, s.used, s.limit, s.window)),
        ).fetchone()[0]  # fmt: skip
        fired.append(seq)
    return fired


# -- budgets ---------------------------------------------------------------------------------------
def bump_budgets_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'budgets' RETURNING value").fetchone()[0])


def load_budget(conn: sqlite3.Connection, budget_id: str) -> Budget:
    row = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE id = ?", (budget_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"budget {budget_id!r} does not exist")
    return budget_from_row(row)


def insert_budget(conn: sqlite3.Connection, budget: Budget) -> Budget:
    created = replace(budget, generation=bump_budgets_version(conn))
    conn.execute(f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ({', '.join('?' * 14)})", budget_to_row(created))
    return created


def replace_budget(conn: sqlite3.Connection, budget: Budget) -> None:
    conn.execute("DELETE FROM budgets WHERE id = ?", (budget.id,))
    conn.execute(f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ({', '.join('?' * 14)})", budget_to_row(budget))
    bump_budgets_version(conn)


def delete_budget(conn: sqlite3.Connection, budget_id: str) -> None:
    for table in ("budgets", "spend", "holds", "alert_marks"):
        column = "id" if table == "budgets" else "budget_id"
        conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (budget_id,))
    bump_budgets_version(conn)


def sync_config_budgets(conn: sqlite3.Connection, budgets: Sequence[Budget], *, now_ms: int) -> None:
    existing = {b.id: b for b in (budget_from_row(r) for r in conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets"))}
    declared = {b.id for b in budgets}
    for budget in budgets:
        old = existing.get(budget.id)
        if old is None:
            insert_budget(conn, budget)
        elif not old.declared_in_config:
            raise FailedPreconditionError(
                f"budget {budget.id!r} exists already, created through the API; delete it or declare another id"
            )
        elif _meaning(old) != _meaning(budget):
            # A different scope, entity, period or zone is a different budget: its spend starts from zero.
            delete_budget(conn, budget.id)
            insert_budget(conn, budget)
        elif _definition(old) != _definition(budget):
            replace_budget(conn, replace(budget, generation=old.generation, created_ms=old.created_ms, updated_ms=now_ms))
    for old in existing.values():
        if old.declared_in_config and old.id not in declared:
            delete_budget(conn, old.id)


def _meaning(b: Budget) -> tuple[object, ...]:
    return (b.scope, b.scope_id, b.period.spec, b.time_zone)


def _definition(b: Budget) -> tuple[object, ...]:
    return (b.name, b.limit_usd, b.on_exceed, b.alert_thresholds, b.enabled)
