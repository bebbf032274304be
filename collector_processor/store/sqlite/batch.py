"""Batches of usage in the SQLite store: many idempotent units of spend, charged once per group.

An export of 512 spans must not cost 512 reservations' worth of work. The items' keys go into
``usage_keys`` with a few multi-row statements (fixed sizes, so their compiled form is reused); an
insert that stores every row proves every item new, which is the common case. Only when some rows
were already there are the new ones told apart, by the stamp this operation wrote. Series keep their
largest totals in ``usage_series``. Then each group with new usage becomes one usage record and one
charge of its budgets, through the same ``charge`` as a single ``RecordUsage``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from functools import lru_cache
from itertools import chain, groupby, repeat
from operator import itemgetter
from typing import Any, TypeVar

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.decisions import BudgetState, crossed_thresholds
from collector_processor.domain.types import SeriesItem, UsageBatch, UsageBatchOutcome, UsageItem
from collector_processor.store.index import BudgetIndex, LiveBudget
from collector_processor.store.sqlite import requests as req_sql
from collector_processor.store.sqlite.spend import (
    USAGE_INSERT_HEAD,
    fire_alerts,
    past_range,
    past_range_refusal,
    rearm_marks,
)

__all__ = ["prune_batches", "record_batch"]

T = TypeVar("T")
_TS, _UID, _GROUP, _KEY = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(0, 1)
_CHUNK = 256  # rows per statement: at most 17 * 256 parameters, far below SQLite's limit of 32,766
_SERIES_COLS = "cost_micros, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens"


def record_batch(
    conn: sqlite3.Connection, index: BudgetIndex, batch: UsageBatch, now_ms: int
) -> UsageBatchOutcome:
    """Record ``batch`` inside the caller's transaction (see ``LedgerStore.record_usage_batch``)."""
    width = len(batch.groups)
    sums = [[0] * 7 for _ in range(width)]
    counts = [0] * width
    duplicates = 0
    stamp = secrets.randbits(62)
    if batch.items:
        duplicates += _add_items(conn, batch.items, stamp, sums, counts)
    if batch.series:
        duplicates += _add_series(conn, batch.series, sums, counts, now_ms)
    charged = [sums[g][0] if counts[g] else 0 for g in range(width)]
    records = []
    for g, group in enumerate(batch.groups):
        if counts[g]:
            cost, tin, tout, read, creation, reasoning, total = sums[g]
            s = group.scopes
            records.append((f"batch:{stamp:016x}:{g}", group.occurred_ms, s.organization, s.team, s.agent, s.workflow,
                            s.user, group.provider, group.model, cost, tin, tout, read, creation, reasoning,
                            total or tin + tout, ""))  # fmt: skip
    for chunk in _chunks(records):
        conn.execute(_insert_usage_sql(len(chunk)), list(chain.from_iterable(chunk)))
    fired = charge_many(
        conn,
        index,
        [(g.scopes, charged[i], g.occurred_ms) for i, g in enumerate(batch.groups) if charged[i]],
        now_ms,
    )
    for i, group in enumerate(batch.groups):
        if charged[i] and group.request_budget:
            _charge_request(conn, group.request_budget, charged[i], group.service, now_ms)
    return UsageBatchOutcome(
        charged_items=tuple(counts),
        charged_micros=tuple(charged),
        duplicates=duplicates,
        alerts_fired=tuple(fired),
    )


def _charge_request(
    conn: sqlite3.Connection, request_id: str, amount: int, service: str, now_ms: int
) -> None:
    """A group's spend on the request budget its spans name and its ancestors, each while it is open."""
    req_sql.charge(conn, req_sql.members(conn, request_id), amount, service, now_ms)


def charge_many(
    conn: sqlite3.Connection, index: BudgetIndex, charges: list[tuple[ScopeSet, int, int]], now_ms: int
) -> list[int]:
    """Charge each ``(scopes, micros, at_ms)`` to every budget matching its scopes, as ``charge`` would
    one by one, in a few statements: the amounts are first summed per budget, entity and bucket, and
    thresholds are evaluated once per budget and entity on the standing after all of them."""
    totals: dict[tuple[str, str, int], list[Any]] = {}
    for scopes, amount, at_ms in charges:
        for live, entity in index.match(scopes, enabled_only=False):
            bucket = live.budget.period.bucket_of(at_ms, live.tz)
            found = totals.get((live.budget.id, entity, bucket))
            if found is None:
                totals[(live.budget.id, entity, bucket)] = [live, entity, bucket, amount, at_ms]
            else:
                found[3] += amount
                found[4] = max(found[4], at_ms)
    if not totals:
        return []
    try:
        return _charge_totals(conn, list(totals.values()), now_ms)
    except sqlite3.Error as exc:
        if not past_range(exc):
            raise
        summed = [(live, entity, bucket, amount) for live, entity, bucket, amount, _ in totals.values()]
        raise past_range_refusal(conn, summed, now_ms) from None


def _charge_totals(conn: sqlite3.Connection, totals: list[list[Any]], now_ms: int) -> list[int]:
    """``charge_many`` once the amounts are summed per budget, entity and bucket."""
    calendar = [t for t in totals if not t[0].budget.period.is_rolling]
    rolling = [t for t in totals if t[0].budget.period.is_rolling]
    states: list[tuple[LiveBudget, BudgetState]] = []
    # Every statement is one step of SQLite: the sqlite3 module lets go of the interpreter lock around
    # each step, and taking it back next to a busy receiver thread costs more than the step itself.
    _upsert_spend(conn, calendar + rolling)
    for rows in _chunks(calendar):
        args: list[object] = [v for t in rows for v in (t[0].budget.id, t[1], t[2], t[0].budget.generation)]
        after = {(bid, entity, bucket): (used, held) for bid, entity, bucket, used, held in
                 _json_rows(conn, _calendar_standing_sql(len(rows)), args)}  # fmt: skip
        for live, entity, bucket, _amount, at_ms in rows:
            if live.budget.enabled:
                used, held = after[(live.budget.id, entity, bucket)]
                states.append(
                    (live, _state(live, entity, used, held, live.budget.period.window(at_ms, live.tz)))
                )
    # Disabled windows are read too: summing a window is what finds one charged past the exact range.
    pairs = {(t[0].budget.id, t[1]): t[0] for t in rolling}
    for chunk in _chunks(list(pairs.items())):
        args = []
        for (bid, entity), live in chunk:
            args += (bid, entity, live.budget.period.lowest_bucket(now_ms, live.tz), live.budget.generation)
        for bid, entity, used, held in _json_rows(conn, _rolling_standing_sql(len(chunk)), args):
            live = pairs[(bid, entity)]
            if not live.budget.enabled:
                continue
            states.append(
                (live, _state(live, entity, used, held, live.budget.period.window(now_ms, live.tz)))
            )
    alerting = [(live, state) for live, state in states if live.budget.alert_points]
    rearm = [m for live, st in alerting if live.budget.period.is_rolling for m in rearm_marks(st)]
    for marks in _chunks(rearm):
        conn.execute(_rearm_sql(len(marks)), list(chain.from_iterable(marks)))
    fired: list[int] = []
    for live, state in alerting:
        if crossed_thresholds(live.budget.alert_points, state.used, state.limit):
            fired.extend(fire_alerts(conn, live, state, now_ms, rearm=False))
    return fired


def _upsert_spend(conn: sqlite3.Connection, totals: list[list[Any]]) -> None:
    for rows in _chunks(totals):
        args = [v for t in rows for v in (t[0].budget.id, t[1], t[2], t[3])]
        conn.execute(_upsert_spend_sql(len(rows)), args)


def _json_rows(conn: sqlite3.Connection, sql: str, args: list[object]) -> list[list[Any]]:
    """Rows a query returns as one JSON array (one step of SQLite instead of one per row)."""
    (text,) = conn.execute(sql, args).fetchone()
    return json.loads(text) if text else []  # type: ignore[no-any-return]


def _state(live: LiveBudget, entity: str, used: int, held: int | None, window: Any) -> BudgetState:
    return BudgetState(
        budget=live.budget, entity=entity, limit=live.limit, used=used, reserved=held or 0, window=window
    )


def _add_items(
    conn: sqlite3.Connection, items: Sequence[UsageItem], stamp: int, sums: list[list[int]], counts: list[int]
) -> int:
    """Insert the items' keys and add the new items to their groups; return how many were duplicates."""
    inserted = 0
    for chunk in _chunks(items, 1024):
        args = list(chain.from_iterable(zip(map(_TS, chunk), map(_UID, chunk), repeat(stamp))))
        inserted += conn.execute(_insert_keys_sql(len(chunk)), args).rowcount
    fresh: Sequence[UsageItem] = items
    if inserted != len(items):
        known: set[tuple[int, bytes]] = set()
        for chunk in _chunks(items):
            args = [*chain.from_iterable(map(_KEY, chunk)), stamp]
            known.update(conn.execute(_fresh_keys_sql(len(chunk)), args).fetchall())
        fresh = [item for item in items if (item[0], item[1]) in known]
    # Sum the new items per group a column at a time (in C): a batch has hundreds of items, few groups.
    for g, rows in groupby(sorted(fresh, key=_GROUP), key=_GROUP):
        columns = list(zip(*rows, strict=True))
        acc = sums[g]
        for i in range(6):
            acc[i] += sum(columns[3 + i])
        totals = columns[9]
        if any(totals):  # a total of 0 means input + output
            acc[6] += sum(t or a + b for t, a, b in zip(totals, columns[4], columns[5], strict=True))
        else:
            acc[6] += sum(columns[4]) + sum(columns[5])
        counts[g] += len(columns[0])
    return len(items) - inserted


def _add_series(
    conn: sqlite3.Connection,
    series: Sequence[SeriesItem],
    sums: list[list[int]],
    counts: list[int],
    now_ms: int,
) -> int:
    """Raise each series to its new totals and add the growth to its group; return how many did not grow."""
    known: dict[bytes, tuple[int, ...]] = {}
    for chunk in _chunks(series):
        ids = [s[0] for s in chunk]
        rows = conn.execute(
            f"SELECT id, {_SERIES_COLS} FROM usage_series WHERE id IN ({', '.join('?' * len(ids))})", ids
        ).fetchall()
        known.update((row[0], tuple(row[1:])) for row in rows)
    writes: list[tuple[object, ...]] = []
    unchanged = 0
    for series_id, g, baseline, *totals in series:
        previous = known.get(series_id)
        if previous is None:
            writes.append((series_id, *totals, now_ms))
            if baseline:
                unchanged += 1
                continue
            growth = totals
        else:
            growth = [max(new - old, 0) for new, old in zip(totals, previous, strict=True)]
            if not any(growth):
                unchanged += 1
                continue
            writes.append((series_id, *(max(n, o) for n, o in zip(totals, previous, strict=True)), now_ms))
        acc = sums[g]
        for i, amount in enumerate(growth):
            acc[i] += amount
        counts[g] += 1
    conn.executemany(
        f"INSERT INTO usage_series (id, {_SERIES_COLS}, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT (id) DO UPDATE SET ({_SERIES_COLS}, updated_ms) ="
        " (excluded.cost_micros, excluded.input_tokens, excluded.output_tokens, excluded.cache_read_tokens,"
        " excluded.cache_creation_tokens, excluded.reasoning_tokens, excluded.total_tokens, excluded.updated_ms)",
        writes,
    )
    return unchanged


def prune_batches(conn: sqlite3.Connection, *, before_ms: int) -> None:
    """Forget item keys whose instant, and series whose last growth, is before ``before_ms``."""
    conn.execute("DELETE FROM usage_keys WHERE ts_ms < ?", (before_ms,))
    conn.execute("DELETE FROM usage_series WHERE updated_ms < ?", (before_ms,))


def _chunks(rows: Sequence[T], most: int = _CHUNK) -> Iterator[Sequence[T]]:
    """Slices of at most ``most`` rows, each a power of two long, so few statement texts ever exist."""
    start, left, size = 0, len(rows), most
    while left:
        while size > left:
            size //= 2
        yield rows[start : start + size]
        start += size
        left -= size


@lru_cache(maxsize=16)
def _insert_keys_sql(count: int) -> str:
    return (
        "INSERT INTO usage_keys (ts_ms, uid, stamp) VALUES "
        + ", ".join(["(?, ?, ?)"] * count)
        + " ON CONFLICT DO NOTHING"
    )


def _values(width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * count)


@lru_cache(maxsize=16)
def _insert_usage_sql(count: int) -> str:
    return f"{USAGE_INSERT_HEAD}) VALUES {_values(17, count)}"


@lru_cache(maxsize=16)
def _upsert_spend_sql(count: int) -> str:
    return (
        f"INSERT INTO spend (budget_id, entity, bucket_ms, used_micros) VALUES {_values(4, count)}"
        " ON CONFLICT DO UPDATE SET used_micros = used_micros + excluded.used_micros"
    )


@lru_cache(maxsize=16)
def _calendar_standing_sql(count: int) -> str:
    """Spend of many (budget, entity, bucket, generation) calendar buckets (a bucket is the whole period)
    and what is held, as one JSON array."""
    return (
        "SELECT json_group_array(json_array(v.column1, v.column2, v.column3,"
        " (SELECT used_micros FROM spend WHERE budget_id = v.column1 AND entity = v.column2 AND bucket_ms = v.column3),"
        " (SELECT reserved_micros FROM holds WHERE budget_id = v.column1 AND entity = v.column2"
        f" AND generation = v.column4))) FROM (VALUES {_values(4, count)}) AS v"
    )


@lru_cache(maxsize=16)
def _rolling_standing_sql(count: int) -> str:
    """Spend in the window of many (budget, entity, lowest bucket, generation) and what is held, as one
    JSON array."""
    return (
        "SELECT json_group_array(json_array(v.column1, v.column2, (SELECT COALESCE(SUM(used_micros), 0) FROM spend"
        " WHERE budget_id = v.column1 AND entity = v.column2 AND bucket_ms >= v.column3),"
        " (SELECT reserved_micros FROM holds WHERE budget_id = v.column1 AND entity = v.column2"
        f" AND generation = v.column4))) FROM (VALUES {_values(4, count)}) AS v"
    )


@lru_cache(maxsize=16)
def _rearm_sql(count: int) -> str:
    return (
        "DELETE FROM alert_marks WHERE period_key = 0 AND (budget_id, entity, threshold) IN"
        f" (VALUES {_values(3, count)})"
    )


@lru_cache(maxsize=16)
def _fresh_keys_sql(count: int) -> str:
    values = ", ".join(["(?, ?)"] * count)
    return (
        f"SELECT k.ts_ms, k.uid FROM (VALUES {values}) AS v"
        " JOIN usage_keys AS k ON k.ts_ms = v.column1 AND k.uid = v.column2 WHERE k.stamp = ?"
    )
