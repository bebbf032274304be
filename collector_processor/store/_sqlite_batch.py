"""Batches of usage in the SQLite store: many idempotent units of spend, charged once per group.

An export of 512 spans must not cost 512 reservations' worth of work. The items' keys go into
``usage_keys`` with a few multi-row statements (fixed sizes, so their compiled form is reused); an
insert that stores every row proves every item new, which is the common case. Only when some rows
were already there are the new ones told apart, by the stamp this operation wrote. Series keep their
largest totals in ``usage_series``. Then each group with new usage becomes one usage record and one
charge of its budgets, through the same ``charge`` as a single ``RecordUsage``.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TypeVar

from collector_processor.ledger_types import SeriesItem, UsageBatch, UsageBatchOutcome, UsageFacts, UsageItem
from collector_processor.store._index import BudgetIndex
from collector_processor.store._sqlite_spend import charge, insert_usage

__all__ = ["prune_batches", "record_batch"]

T = TypeVar("T")
_CHUNK = 256  # rows per statement: 768 parameters, far below SQLite's limit
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
    fired: list[int] = []
    charged = [0] * width
    for g, group in enumerate(batch.groups):
        if not counts[g]:
            continue
        cost, tin, tout, cache_read, cache_creation, reasoning, total = sums[g]
        facts = UsageFacts(
            provider=group.provider,
            model=group.model,
            input_tokens=tin,
            output_tokens=tout,
            cache_read_tokens=cache_read,
            cache_creation_tokens=cache_creation,
            reasoning_tokens=reasoning,
        )
        insert_usage(conn, f"batch:{stamp:016x}:{g}", group.occurred_ms, group.scopes, cost, total, facts, "")
        if cost:
            _, alerts = charge(conn, index, group.scopes, cost, at_ms=group.occurred_ms, now_ms=now_ms)
            fired.extend(alerts)
        charged[g] = cost
    return UsageBatchOutcome(
        charged_items=tuple(counts),
        charged_micros=tuple(charged),
        duplicates=duplicates,
        alerts_fired=tuple(fired),
    )


def _add_items(
    conn: sqlite3.Connection, items: Sequence[UsageItem], stamp: int, sums: list[list[int]], counts: list[int]
) -> int:
    """Insert the items' keys and add the new items to their groups; return how many were duplicates."""
    inserted = 0
    for chunk in _chunks(items):
        args: list[object] = []
        for item in chunk:
            args += (item[0], item[1], stamp)
        inserted += conn.execute(_insert_keys_sql(len(chunk)), args).rowcount
    fresh: set[tuple[int, bytes]] | None = None
    if inserted != len(items):
        fresh = set()
        for chunk in _chunks(items):
            args = []
            for item in chunk:
                args += (item[0], item[1])
            args.append(stamp)
            fresh.update(conn.execute(_fresh_keys_sql(len(chunk)), args).fetchall())
    for ts, uid, g, cost, tin, tout, cache_read, cache_creation, reasoning, total in items:
        if fresh is not None and (ts, uid) not in fresh:
            continue
        acc = sums[g]
        acc[0] += cost
        acc[1] += tin
        acc[2] += tout
        acc[3] += cache_read
        acc[4] += cache_creation
        acc[5] += reasoning
        acc[6] += total or tin + tout
        counts[g] += 1
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


def _chunks(rows: Sequence[T]) -> Iterator[Sequence[T]]:
    """Slices of at most ``_CHUNK`` rows, each a power of two long, so few statement texts ever exist."""
    start, left, size = 0, len(rows), _CHUNK
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


@lru_cache(maxsize=16)
def _fresh_keys_sql(count: int) -> str:
    values = ", ".join(["(?, ?)"] * count)
    return (
        f"SELECT k.ts_ms, k.uid FROM (VALUES {values}) AS v"
        " JOIN usage_keys AS k ON k.ts_ms = v.column1 AND k.uid = v.column2 WHERE k.stamp = ?"
    )
