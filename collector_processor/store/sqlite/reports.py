"""Reads and housekeeping of the SQLite store: budget status, usage reports, the alert log, pruning.

Like ``reservations`` and ``spend`` these run on a connection the caller holds: claims
and pruning inside a write transaction, log and report reads on the store's reader connection.

Sums over many rows (report totals, what all held reservations hold) must stay exact however large
they get, and SQLite's ``SUM`` fails past 2^63 - 1. Each column is summed as two halves, its high and
its low 32 bits, neither of which can reach that range before there are 2^31 rows, and the halves
are joined in Python integers, which have no range to leave.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from collector_processor.domain.budgets import OnExceed, Scope, ScopeSet
from collector_processor.domain.money import micros_to_usd, percentage
from collector_processor.domain.types import Alert, BudgetStatus
from collector_processor.domain.usage import UsageRecord
from collector_processor.store.base import USAGE_COLUMNS, BudgetSpend, EntitySpend, UsageFilter, UsageRow
from collector_processor.store.index import LiveBudget
from collector_processor.store.shared import status_from_state
from collector_processor.store.sqlite.batch import prune_batches
from collector_processor.store.sqlite.reservations import read_states
from collector_processor.store.sqlite.schema import BUDGET_COLUMNS, budget_from_row

_SLOT_MS = 900_000
_ALERT_COLS = (
    "seq, alert_id, budget_id, budget_name, scope, entity, threshold, used_micros, limit_micros, action,"
    " period_start_ms, period_end_ms, fired_ms, message, tier"
)


def budget_status(conn: sqlite3.Connection, live: LiveBudget, entity: str, now_ms: int) -> BudgetStatus:
    (state,) = read_states(conn, [(live, entity)], now_ms)
    budget = live.budget
    period_key = 0 if budget.period.is_rolling else state.window.start_ms
    fired = conn.execute(
        "SELECT threshold FROM alert_marks WHERE budget_id = ? AND entity = ? AND period_key = ? ORDER BY threshold",
        (budget.id, entity, period_key),
    ).fetchall()
    return status_from_state(state, (t for (t,) in fired), now_ms)


# Spend and holds of one budget per entity; the window function counts every entity before LIMIT.
_ENTITY_SPEND_SQL = (
    "SELECT entity, SUM(u), SUM(r), COUNT(*) OVER () FROM ("
    " SELECT entity, used_micros AS u, 0 AS r FROM spend WHERE budget_id = ?1 AND bucket_ms >= ?2"
    " UNION ALL SELECT entity, 0, reserved_micros FROM holds"
    " WHERE budget_id = ?1 AND generation = ?3 AND reserved_micros <> 0"
    ") GROUP BY entity ORDER BY SUM(u) + SUM(r) DESC, entity LIMIT ?4"
)


def budget_spend(conn: sqlite3.Connection, *, now_ms: int, max_entities: int) -> list[BudgetSpend]:
    """Every budget with its entities' standing in the current period (see ``LedgerStore.budget_spend``)."""
    out = []
    conn.execute("BEGIN")  # one snapshot for every budget
    try:
        budgets = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY id").fetchall()
        for row in budgets:
            out.append(_budget_spend(conn, row, now_ms, max_entities))
    finally:
        conn.execute("COMMIT")
    return out


def _budget_spend(
    conn: sqlite3.Connection, row: tuple[Any, ...], now_ms: int, max_entities: int
) -> BudgetSpend:
    live = LiveBudget.of(budget_from_row(row))
    budget = live.budget
    lowest = budget.period.lowest_bucket(now_ms, live.tz)
    limit = 1 if budget.scope_id is not None else max_entities
    rows = conn.execute(_ENTITY_SPEND_SQL, (budget.id, lowest, budget.generation, limit)).fetchall()
    entities = tuple(EntitySpend(entity=e, used_micros=u, reserved_micros=r) for e, u, r, _ in rows)
    count = rows[0][3] if rows else 0
    if budget.scope_id is not None and not entities:
        entities, count = (EntitySpend(entity=budget.scope_id, used_micros=0, reserved_micros=0),), 1
    return BudgetSpend(budget=budget, entities=entities, entity_count=count)


def held_reservations(conn: sqlite3.Connection) -> tuple[int, int]:
    count, *halves = conn.execute(
        f"SELECT COUNT(*), {_exact_sum('held_micros')} FROM reservations WHERE state = 1"
    ).fetchone()
    return int(count), _joined(*halves)


def _exact_sum(column: str) -> str:
    """The two SQL sums whose ``_joined`` is the exact sum of ``column`` (see the module docstring)."""
    return f"COALESCE(SUM({column} >> 32), 0), COALESCE(SUM({column} & 4294967295), 0)"


def _joined(high: int, low: int) -> int:
    return (int(high) << 32) + int(low)


def _usage_where(flt: UsageFilter) -> tuple[list[str], list[Any]]:
    """The conditions (and their arguments) that select the usage records ``flt`` covers."""
    where = ["ts_ms < ?"]
    args: list[Any] = [flt.end_ms]
    if flt.start_ms is not None:
        where.append("ts_ms >= ?")
        args.append(flt.start_ms)
    for scope, value in flt.scopes.pairs():
        where.append(f"{scope.value} = ?")
        args.append(value)
    for column, value in (("provider", flt.provider), ("model", flt.model)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    return where, args


def usage_rows(
    conn: sqlite3.Connection, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool
) -> list[UsageRow]:
    for column in columns:
        if column not in USAGE_COLUMNS:
            raise ValueError(f"unknown usage column {column!r}")
    where, args = _usage_where(flt)
    groups = [*columns, *([f"ts_ms - ts_ms % {_SLOT_MS}"] if by_slot else [])]
    sums = [*map(_exact_sum, ("cost_micros", "input_tokens", "output_tokens", "total_tokens")), "COUNT(*)"]
    select = ", ".join([*groups, *sums])
    sql = f"SELECT {select} FROM usage_events WHERE {' AND '.join(where)}"
    if groups:
        sql += f" GROUP BY {', '.join(groups)}"
    rows = conn.execute(sql, args).fetchall()
    width = len(columns)
    out = []
    for row in rows:
        if row[-1] == 0:
            continue  # an aggregate over no rows
        cost, tin, tout, total = (_joined(row[i], row[i + 1]) for i in range(-9, -1, 2))
        out.append(
            UsageRow(
                keys=tuple(row[:width]),
                slot_ms=row[width] if by_slot else None,
                cost_micros=cost,
                input_tokens=tin,
                output_tokens=tout,
                total_tokens=total,
                records=row[-1],
            )
        )
    return out


def _alert(r: tuple[Any, ...]) -> Alert:
    return Alert(
        sequence=r[0],
        alert_id=r[1],
        budget_id=r[2],
        budget_name=r[3],
        scope=Scope(r[4]),
        scope_id=r[5],
        threshold_percent=r[6],
        used_usd=micros_to_usd(r[7]),
        limit_usd=micros_to_usd(r[8]),
        percentage=percentage(r[7], r[8]),
        action=OnExceed(r[9]),
        period_start_ms=r[10],
        period_end_ms=r[11],
        fired_ms=r[12],
        message=r[13],
        tier=bool(r[14]),
    )


def alerts_after(
    conn: sqlite3.Connection, sequence: int, *, limit: int, budget_ids: Sequence[str]
) -> list[Alert]:
    sql = f"SELECT {_ALERT_COLS} FROM alerts WHERE seq > ?"
    args: list[Any] = [sequence]
    if budget_ids:
        sql += f" AND budget_id IN ({', '.join('?' * len(budget_ids))})"
        args.extend(budget_ids)
    return [_alert(r) for r in conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()]


def claim_alerts(
    conn: sqlite3.Connection, *, owner: str, now_ms: int, lease_ms: int, limit: int
) -> list[Alert]:
    rows = conn.execute(
        f"UPDATE alerts SET claimed_by = ?, claim_until_ms = ? WHERE seq IN ("
        " SELECT seq FROM alerts WHERE delivered_ms IS NULL AND (claim_until_ms IS NULL OR claim_until_ms <= ?)"
        f" ORDER BY seq LIMIT ?) RETURNING {_ALERT_COLS}",
        (owner, now_ms + lease_ms, now_ms, limit),
    ).fetchall()
    return sorted((_alert(r) for r in rows), key=lambda a: a.sequence)


def prune(
    conn: sqlite3.Connection,
    budgets: Sequence[LiveBudget],
    *,
    now_ms: int,
    reservation_retention_ms: int,
    usage_retention_ms: int,
    alert_retention_ms: int,
) -> None:
    conn.execute(
        "DELETE FROM reservations WHERE state <> 1 AND settled_ms < ?", (now_ms - reservation_retention_ms,)
    )
    conn.execute("DELETE FROM usage_events WHERE ts_ms < ?", (now_ms - usage_retention_ms,))
    prune_batches(conn, before_ms=now_ms - reservation_retention_ms)
    # The alert log is bounded by age alone: an alert nobody could deliver in that long is history.
    conn.execute("DELETE FROM alerts WHERE fired_ms < ?", (now_ms - alert_retention_ms,))
    conn.execute("DELETE FROM holds WHERE reserved_micros = 0")
    for live in budgets:
        budget = live.budget
        # Buckets before the current period or window are read by nothing (reports read usage_events).
        lowest = budget.period.lowest_bucket(now_ms, live.tz)
        conn.execute("DELETE FROM spend WHERE budget_id = ? AND bucket_ms < ?", (budget.id, lowest))
        if not budget.period.is_rolling:
            conn.execute(
                "DELETE FROM alert_marks WHERE budget_id = ? AND period_key < ?", (budget.id, lowest)
            )


_RECORD_COLS = (
    "usage_id, ts_ms, organization, team, agent, workflow, user, provider, model, cost_micros,"
    " input_tokens, output_tokens, total_tokens, reservation_id"
)


def usage_records(
    conn: sqlite3.Connection, flt: UsageFilter, *, before: tuple[int, str] | None, limit: int
) -> list[UsageRecord]:
    """Recorded units of spend, newest first (see ``LedgerStore.usage_records``)."""
    where, args = _usage_where(flt)
    if before is not None:
        where.append("(ts_ms < ? OR (ts_ms = ? AND usage_id < ?))")
        args += [before[0], before[0], before[1]]
    rows = conn.execute(
        f"SELECT {_RECORD_COLS} FROM usage_events WHERE {' AND '.join(where)}"
        " ORDER BY ts_ms DESC, usage_id DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [_record(r) for r in rows]


def _record(r: tuple[Any, ...]) -> UsageRecord:
    return UsageRecord(
        id=r[0],
        at_ms=r[1],
        scopes=ScopeSet(organization=r[2], team=r[3], agent=r[4], workflow=r[5], user=r[6]),
        provider=r[7],
        model=r[8],
        cost_micros=r[9],
        input_tokens=r[10],
        output_tokens=r[11],
        total_tokens=r[12],
        reservation_id=r[13],
    )
