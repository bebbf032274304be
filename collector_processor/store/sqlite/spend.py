"""Spend in the SQLite store: commit a reservation, record usage, charge budgets and fire their alerts.

Each function runs inside a transaction the caller holds: the hold is swapped for the actual spend,
every matching budget is charged, and each threshold the charge reached is marked and logged as an
alert, all or nothing. The mark row is what makes an alert fire exactly once per period.

A charge that would take a period's spend (or a rolling window's) past 2^63 - 1 micro-dollars is
refused by the database itself: the spend triggers refuse the inexact value SQLite would make of it,
and summing a window past that range fails. ``charge`` turns either into ``RefusedAfterWrite``, so the
whole operation is rolled back and refused with ``FAILED_PRECONDITION`` naming the budget.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.decisions import BudgetState, alert_message, charged_infos, crossed_thresholds
from collector_processor.domain.money import MAX_TOTAL_MICROS, micros_to_usd, usd_to_micros
from collector_processor.domain.types import (
    BudgetInfo,
    CommitCommand,
    CommitOutcome,
    RecordUsageCommand,
    RecordUsageOutcome,
    UsageFacts,
)
from collector_processor.errors import NotFoundError
from collector_processor.store.index import BudgetIndex, LiveBudget
from collector_processor.store.shared import check_fingerprint, total_out_of_range
from collector_processor.store.sqlite import requests as req_sql
from collector_processor.store.sqlite.group_commit import RefusedAfterWrite
from collector_processor.store.sqlite.reservations import (
    RES_COLS,
    ReservationRow,
    check_owner,
    drop_holds,
    load_reservation,
    reservation_from_row,
    standing,
)
from collector_processor.store.sqlite.schema import TOTAL_OUT_OF_RANGE
from paymaster.exceptions import quote

__all__ = [
    "INSERT_USAGE_SQL",
    "REARM_SQL",
    "USAGE_INSERT_HEAD",
    "charge",
    "commit",
    "fire_alerts",
    "insert_usage",
    "past_range",
    "rearm_marks",
    "record_against_reservation",
    "record_usage",
]

_STANDING_SQL = (
    "SELECT (SELECT COALESCE(SUM(used_micros), 0) FROM spend"
    " WHERE budget_id = ?1 AND entity = ?2 AND bucket_ms >= ?3),"
    " (SELECT reserved_micros FROM holds WHERE budget_id = ?1 AND entity = ?2 AND generation = ?4)"
)
_UPSERT_SPEND_SQL = (
    "INSERT INTO spend (budget_id, entity, bucket_ms, used_micros) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT DO UPDATE SET used_micros = used_micros + excluded.used_micros"
)
# Settle a reservation as committed and read it back in one statement; no row means it is unknown or
# was committed already.
_COMMIT_SQL = (
    "UPDATE reservations SET state = 2, settled_ms = ?, charged_micros = ?,"
    " released_micros = CASE WHEN state = 1 THEN held_micros ELSE 0 END, late = (state <> 1)"
    f" WHERE id = ? AND state <> 2 AND owner = ? RETURNING {RES_COLS}"
)
USAGE_INSERT_HEAD = (
    "INSERT OR IGNORE INTO usage_events (usage_id, ts_ms, organization, team, agent, workflow, user, provider,"
    " model, cost_micros, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,"
    " reasoning_tokens, total_tokens, reservation_id"
)
"""The columns every usage record has (batched OTLP items leave ``fingerprint`` empty: span ids are
their own keys)."""
INSERT_USAGE_SQL = f"{USAGE_INSERT_HEAD}, fingerprint) VALUES ({', '.join('?' * 18)})"
_INSERT_ALERT_SQL = (
    "INSERT INTO alerts (alert_id, budget_id, budget_name, scope, entity, threshold, used_micros, limit_micros,"
    " action, period_start_ms, period_end_ms, fired_ms, message, tier)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
)


def commit(
    conn: sqlite3.Connection, index: BudgetIndex, command: CommitCommand, now_ms: int
) -> CommitOutcome:
    """Replace the reservation's hold with the actual spend; a second commit changes nothing."""
    actual = usd_to_micros(command.actual_usd)
    found = conn.execute(_COMMIT_SQL, (now_ms, actual, command.reservation_id, command.owner)).fetchone()
    if found is None:
        return _already_committed(conn, index, command.reservation_id, now_ms, command.owner)
    row = reservation_from_row(found)
    return _charge_reservation(conn, index, row, actual, command.actual_tokens, command.usage, now_ms)


def _already_committed(
    conn: sqlite3.Connection, index: BudgetIndex, reservation_id: str, now_ms: int, owner: str
) -> CommitOutcome:
    """Why a commit settled nothing: another principal's reservation, an unknown one, or a duplicate."""
    row = load_reservation(conn, reservation_id)
    if row is None:
        raise NotFoundError(
            f"reservation {quote(reservation_id)} is unknown (never made, or settled longer ago than the retention period)"
        )
    check_owner(row, owner)
    return CommitOutcome(
        charged_usd=micros_to_usd(row.charged or 0),
        released_usd=micros_to_usd(row.released or 0),
        duplicate=True,
        late=bool(row.late),
        budget_info=_standing(
            conn, index, row.scopes, now_ms, req_sql.decode_request_holds(row.request_holds)
        ),
    )


def _standing(
    conn: sqlite3.Connection, index: BudgetIndex, scopes: ScopeSet, now_ms: int, held: list[tuple[str, int]]
) -> tuple[BudgetInfo, ...]:
    """The standing of a duplicate's budgets and of its request budgets that are open."""
    return standing(conn, index, scopes, now_ms) + charged_infos(req_sql.standing_of(conn, held, now_ms))


def _charge_reservation(
    conn: sqlite3.Connection,
    index: BudgetIndex,
    row: ReservationRow,
    actual: int,
    total_tokens: int,
    facts: UsageFacts,
    now_ms: int,
) -> CommitOutcome:
    """The rest of a commit, once ``row`` has been settled as committed (``row.released`` is what it held)."""
    released = row.released or 0
    drop_holds(conn, row.holds, released)
    req_sql.drop(conn, row.request_holds, released)
    if (row.provider and not facts.provider) or (row.model and not facts.model):
        facts = replace(facts, provider=facts.provider or row.provider, model=facts.model or row.model)
    insert_usage(conn, f"reservation:{row.id}", now_ms, row.scopes, actual, total_tokens, facts, row.id)
    infos, fired = charge(conn, index, row.scopes, actual, at_ms=now_ms, now_ms=now_ms)
    requests = req_sql.charge(
        conn, req_sql.decode_request_holds(row.request_holds), actual, row.service, now_ms
    )
    if requests:
        infos += charged_infos(requests)
    return CommitOutcome(
        charged_usd=micros_to_usd(actual),
        released_usd=micros_to_usd(released),
        duplicate=False,
        late=bool(row.late),
        budget_info=infos,
        alerts_fired=tuple(fired),
        scopes=row.scopes,
        usage=facts,
    )


def record_usage(
    conn: sqlite3.Connection, index: BudgetIndex, command: RecordUsageCommand, now_ms: int
) -> RecordUsageOutcome:
    cost = usd_to_micros(command.cost_usd)
    occurred = now_ms if command.occurred_ms is None else command.occurred_ms
    inserted = insert_usage(
        conn, command.usage_id, occurred, command.scopes, cost, command.total_tokens, command.usage,
        command.reservation_id, command.fingerprint,
    )  # fmt: skip
    if not inserted:
        stored = conn.execute(
            "SELECT fingerprint FROM usage_events WHERE usage_id = ?", (command.usage_id,)
        ).fetchone()
        check_fingerprint(stored[0] if stored else "", command.fingerprint, "usage_id", "RecordUsage")
        held = req_sql.members(conn, command.request_budget) if command.request_budget else []
        return RecordUsageOutcome(
            charged_usd=micros_to_usd(0),
            duplicate=True,
            budget_info=_standing(conn, index, command.scopes, now_ms, held),
        )
    infos, fired = charge(conn, index, command.scopes, cost, at_ms=occurred, now_ms=now_ms)
    if command.request_budget:  # each of its request budgets that is still open counts it
        held = req_sql.members(conn, command.request_budget)
        infos += charged_infos(req_sql.charge(conn, held, cost, command.service, now_ms))
    return RecordUsageOutcome(
        charged_usd=micros_to_usd(cost),
        duplicate=False,
        budget_info=infos,
        alerts_fired=tuple(fired),
        scopes=command.scopes,
        usage=command.usage,
    )


def record_against_reservation(
    conn: sqlite3.Connection, index: BudgetIndex, command: RecordUsageCommand, now_ms: int
) -> RecordUsageOutcome | None:
    """Usage naming a known reservation commits it (or is a duplicate of its commit); ``None`` if unknown."""
    cost = usd_to_micros(command.cost_usd)
    found = conn.execute(_COMMIT_SQL, (now_ms, cost, command.reservation_id, command.owner)).fetchone()
    if found is None:
        row = load_reservation(conn, command.reservation_id)
        if row is None:
            return None
        check_owner(row, command.owner)
        held = req_sql.decode_request_holds(row.request_holds)
        return RecordUsageOutcome(
            charged_usd=micros_to_usd(0),
            duplicate=True,
            budget_info=_standing(conn, index, row.scopes, now_ms, held),
        )
    out = _charge_reservation(
        conn, index, reservation_from_row(found), cost, command.total_tokens, command.usage, now_ms
    )
    return RecordUsageOutcome(
        charged_usd=out.charged_usd,
        duplicate=False,
        budget_info=out.budget_info,
        alerts_fired=out.alerts_fired,
        scopes=out.scopes,
        usage=out.usage,
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
    fingerprint: str = "",
) -> bool:
    """Record one unit of spend for reports; False when ``usage_id`` was recorded before."""
    total = total_tokens or f.input_tokens + f.output_tokens
    cur = conn.execute(
        INSERT_USAGE_SQL,
        (usage_id, ts_ms, s.organization, s.team, s.agent, s.workflow, s.user, f.provider, f.model, cost,
         f.input_tokens, f.output_tokens, f.cache_read_tokens, f.cache_creation_tokens, f.reasoning_tokens, total,
         reservation_id, fingerprint),
    )  # fmt: skip
    return cur.rowcount == 1


def charge(
    conn: sqlite3.Connection, index: BudgetIndex, scopes: ScopeSet, amount: int, *, at_ms: int, now_ms: int
) -> tuple[tuple[BudgetInfo, ...], list[int]]:
    """Add ``amount`` spent at ``at_ms`` to every matching budget (disabled ones too: they keep counting),
    then fire the thresholds it reached. Returns the enabled budgets' standing and the alerts fired."""
    matched = index.match(scopes, enabled_only=False)
    try:
        return _charge(conn, matched, amount, at_ms=at_ms, now_ms=now_ms)
    except sqlite3.Error as exc:
        if not past_range(exc):
            raise
        charges = [
            (live, entity, live.budget.period.bucket_of(at_ms, live.tz), amount) for live, entity in matched
        ]
        raise past_range_refusal(conn, charges, now_ms) from None


def past_range(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused a total past 2^63 - 1 (a spend or hold trigger, or a sum that overflowed)."""
    text = str(exc)
    return TOTAL_OUT_OF_RANGE in text or "integer overflow" in text


def past_range_refusal(
    conn: sqlite3.Connection, charges: Sequence[tuple[LiveBudget, str, int, int]], now_ms: int
) -> RefusedAfterWrite:
    """The refusal of charges ``(budget, entity, bucket, amount)`` one of which passed the exact range,
    naming the first budget whose spend would; read in Python ints, which nothing overflows."""
    for live, entity, bucket, amount in charges:
        period = live.budget.period
        lowest = min(bucket, period.lowest_bucket(now_ms, live.tz)) if period.is_rolling else bucket
        highest = bucket if not period.is_rolling else None
        rows = conn.execute(
            "SELECT bucket_ms, used_micros FROM spend WHERE budget_id = ? AND entity = ? AND bucket_ms >= ?",
            (live.budget.id, entity, lowest),
        ).fetchall()
        spent = sum(int(used) for at, used in rows if highest is None or at == highest)
        if spent + amount > MAX_TOTAL_MICROS:
            return RefusedAfterWrite(total_out_of_range(live.budget.id))
    return RefusedAfterWrite(total_out_of_range(None))


def _charge(
    conn: sqlite3.Connection, matched: list[tuple[LiveBudget, str]], amount: int, *, at_ms: int, now_ms: int
) -> tuple[tuple[BudgetInfo, ...], list[int]]:
    standing_after = _charge_calendar(
        conn, [m for m in matched if not m[0].budget.period.is_rolling], amount, at_ms
    )
    states: list[BudgetState] = []
    fired: list[int] = []
    for live, entity in matched:
        budget = live.budget
        period = budget.period
        if period.is_rolling:
            conn.execute(_UPSERT_SPEND_SQL, (budget.id, entity, period.bucket_of(at_ms, live.tz), amount))
            window = period.window(now_ms, live.tz)
            lowest = period.lowest_bucket(now_ms, live.tz)
            used, held = conn.execute(
                _STANDING_SQL, (budget.id, entity, lowest, budget.generation)
            ).fetchone()
        else:
            used, held = standing_after[(budget.id, entity)]
            window = period.window(at_ms, live.tz)
        if not budget.enabled:
            continue
        state = BudgetState(
            budget=budget, entity=entity, limit=live.limit, used=used, reserved=held or 0, window=window
        )
        states.append(state)
        if budget.alert_points:
            fired.extend(fire_alerts(conn, live, state, now_ms))
    return charged_infos(states), fired


def _charge_calendar(
    conn: sqlite3.Connection, matched: list[tuple[LiveBudget, str]], amount: int, at_ms: int
) -> dict[tuple[str, str], tuple[int, int | None]]:
    """Charge every calendar budget in one statement. A calendar bucket is the whole period, so the
    upsert itself returns each period's spend, and each budget's holds come back with it."""
    if not matched:
        return {}
    args: list[object] = []
    for live, entity in matched:
        args += (live.budget.id, entity, live.budget.period.bucket_of(at_ms, live.tz), amount)
    rows = conn.execute(_charge_calendar_sql(len(matched)), args).fetchall()
    return {(bid, entity): (used, held) for bid, entity, used, held in rows}


@lru_cache(maxsize=32)
def _charge_calendar_sql(count: int) -> str:
    rows = ", ".join(["(?, ?, ?, ?)"] * count)
    return (
        f"INSERT INTO spend (budget_id, entity, bucket_ms, used_micros) VALUES {rows}"
        " ON CONFLICT DO UPDATE SET used_micros = used_micros + excluded.used_micros"
        " RETURNING budget_id, entity, used_micros,"
        " (SELECT reserved_micros FROM holds WHERE holds.budget_id = spend.budget_id"
        " AND holds.entity = spend.entity"
        " AND holds.generation = (SELECT generation FROM budgets WHERE budgets.id = spend.budget_id))"
    )


def rearm_marks(s: BudgetState) -> list[tuple[str, str, int]]:
    """The alert marks of a rolling window to delete: its spend has fallen back below those thresholds."""
    budget = s.budget
    return [(budget.id, s.entity, t) for t in budget.alert_points if s.used * 100 < t * s.limit]


REARM_SQL = "DELETE FROM alert_marks WHERE budget_id = ? AND entity = ? AND period_key = 0 AND threshold = ?"


def fire_alerts(
    conn: sqlite3.Connection, live: LiveBudget, s: BudgetState, now_ms: int, *, rearm: bool = True
) -> list[int]:
    """Each threshold fires once per period: the mark row is the de-duplication record, written in the
    same transaction as the spend, so neither a restart nor another sidecar can fire it again.
    ``rearm=False``: the caller has re-armed rolling thresholds itself (``rearm_marks``)."""
    budget, thresholds = live.budget, live.budget.alert_points
    rolling = budget.period.is_rolling
    period_key = 0 if rolling else s.window.start_ms
    if rolling and rearm:
        # A rolling window re-arms a threshold once its spend has fallen back below it.
        conn.executemany(REARM_SQL, rearm_marks(s))
    fired = []
    for threshold in crossed_thresholds(thresholds, s.used, s.limit):
        cur = conn.execute(
            "INSERT OR IGNORE INTO alert_marks VALUES (?, ?, ?, ?)",
            (budget.id, s.entity, period_key, threshold),
        )
        if cur.rowcount != 1:
            continue
        occurrence = f"rolling@{now_ms}" if rolling else str(period_key)
        tier = budget.tier_at(threshold)
        action = budget.on_exceed if tier is None else tier.action
        seq = conn.execute(
            _INSERT_ALERT_SQL,
            (f"{budget.id}/{s.entity}/{occurrence}/{threshold}", budget.id, budget.name, budget.scope.value, s.entity,
             threshold, s.used, s.limit, action.value, s.window.start_ms, s.window.end_ms,
             now_ms, alert_message(budget, s.entity, threshold, s.used, s.limit, s.window), int(tier is not None)),
        ).fetchone()[0]  # fmt: skip
        fired.append(seq)
    return fired


# -- budgets ---------------------------------------------------------------------------------------
