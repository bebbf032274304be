"""Reads of the Redis store that change no money: usage reports and the alert log.

Usage records are scanned by time in pages (never one reply the size of the history) and grouped here,
so a report never blocks Redis for other replicas. Alerts are rebuilt from the fields their script
stored, with the same message the SQLite store writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from collector_processor.domain.budgets import Budget, OnExceed, Scope, ScopeSet, decode_tiers
from collector_processor.domain.decisions import alert_message
from collector_processor.domain.money import micros_to_usd, percentage
from collector_processor.domain.periods import Window, parse_period
from collector_processor.domain.types import Alert
from collector_processor.domain.usage import UsageRecord
from collector_processor.store.base import USAGE_COLUMNS, UsageFilter, UsageRow
from collector_processor.store.redis.codec import SEP

__all__ = ["alerts_after", "load_alerts", "usage_records", "usage_rows"]

_SLOT_MS = 900_000
_PAGE = 2000
# Positions in a usage record (see the ``insert_usage`` script helper).
_TS, _COST, _INPUT, _OUTPUT, _TOTAL, _RESERVATION = 0, 8, 9, 10, 14, 15
_COLUMN_AT = {name: i + 1 for i, name in enumerate(USAGE_COLUMNS)}


def usage_rows(
    client: Any, prefix: str, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool
) -> list[UsageRow]:
    for column in columns:
        if column not in USAGE_COLUMNS:
            raise ValueError(f"unknown usage column {column!r}")
    wanted = [(_COLUMN_AT[scope.value], value) for scope, value in flt.scopes.pairs()]
    wanted += [(_COLUMN_AT[c], v) for c, v in (("provider", flt.provider), ("model", flt.model)) if v]
    picks = [_COLUMN_AT[c] for c in columns]
    sums: dict[tuple[Any, ...], list[int]] = {}
    low = "-inf" if flt.start_ms is None else str(flt.start_ms)
    for ids in _by_score(client, f"{prefix}:ut", low, f"({flt.end_ms}"):
        for record in client.hmget(f"{prefix}:u", ids):
            if record is None:
                continue  # pruned meanwhile
            f = record.split(SEP)
            if any(f[i] != v for i, v in wanted):
                continue
            key: tuple[Any, ...] = tuple(f[i] for i in picks)
            if by_slot:
                ts = int(f[_TS])
                key += (ts - ts % _SLOT_MS,)
            acc = sums.setdefault(key, [0, 0, 0, 0, 0])
            acc[0] += int(f[_COST])
            acc[1] += int(f[_INPUT])
            acc[2] += int(f[_OUTPUT])
            acc[3] += int(f[_TOTAL])
            acc[4] += 1
    width = len(columns)
    return [
        UsageRow(
            keys=key[:width],
            slot_ms=key[width] if by_slot else None,
            cost_micros=cost,
            input_tokens=tin,
            output_tokens=tout,
            total_tokens=total,
            records=records,
        )
        for key, (cost, tin, tout, total, records) in sums.items()
    ]


def usage_records(
    client: Any, prefix: str, flt: UsageFilter, *, before: tuple[int, str] | None, limit: int
) -> list[UsageRecord]:
    """Recorded units of spend, newest first (see ``LedgerStore.usage_records``): the time index is
    read backwards a page at a time and each page filtered here, until ``limit`` records are found."""
    wanted = [(_COLUMN_AT[scope.value], value) for scope, value in flt.scopes.pairs()]
    wanted += [(_COLUMN_AT[c], v) for c, v in (("provider", flt.provider), ("model", flt.model)) if v]
    low = "-inf" if flt.start_ms is None else str(flt.start_ms)
    high = f"({flt.end_ms}" if before is None or before[0] >= flt.end_ms else str(before[0])
    out: list[UsageRecord] = []
    skip = 0
    while len(out) < limit:
        page = client.zrevrangebyscore(f"{prefix}:ut", high, low, start=skip, num=_PAGE, withscores=True)
        if not page:
            break
        skip += len(page)
        ids = [m for m, score in page if before is None or int(score) < before[0] or m < before[1]]
        records = client.hmget(f"{prefix}:u", ids) if ids else []
        for usage_id, record in zip(ids, records, strict=True):
            if record is None:
                continue  # pruned meanwhile
            f = record.split(SEP)
            if any(f[i] != v for i, v in wanted):
                continue
            out.append(_record(usage_id, f))
            if len(out) == limit:
                break
        if len(page) < _PAGE:
            break
    return out


def _record(usage_id: str, f: list[str]) -> UsageRecord:
    return UsageRecord(
        id=usage_id,
        at_ms=int(f[_TS]),
        scopes=ScopeSet(organization=f[1], team=f[2], agent=f[3], workflow=f[4], user=f[5]),
        provider=f[6],
        model=f[7],
        cost_micros=int(f[_COST]),
        input_tokens=int(f[_INPUT]),
        output_tokens=int(f[_OUTPUT]),
        total_tokens=int(f[_TOTAL]),
        reservation_id=f[_RESERVATION],
    )


def _by_score(client: Any, key: str, low: str, high: str) -> Iterator[list[str]]:
    """Members of a sorted set with scores in [low, high), a page at a time; members sharing the score
    a page ended on are skipped by offset, so no page is read twice however many share it."""
    start, skip = low, 0
    while True:
        page = client.zrangebyscore(key, start, high, start=skip, num=_PAGE, withscores=True)
        if not page:
            return
        yield [member for member, _ in page]
        if len(page) < _PAGE:
            return
        last = str(int(page[-1][1]))
        same = sum(1 for _, score in page if str(int(score)) == last)
        skip = skip + same if last == start else same
        start = last


def load_alerts(client: Any, prefix: str, sequences: Sequence[int]) -> list[Alert]:
    if not sequences:
        return []
    records = client.hmget(f"{prefix}:alert", [str(seq) for seq in sequences])
    out = [_alert(seq, json.loads(record)) for seq, record in zip(sequences, records, strict=True) if record]
    return sorted(out, key=lambda a: a.sequence)


def alerts_after(
    client: Any, prefix: str, sequence: int, *, limit: int, budget_ids: Sequence[str]
) -> list[Alert]:
    low = f"({sequence}"
    if not budget_ids:
        seqs = {int(s) for s in client.zrangebyscore(f"{prefix}:alerts", low, "+inf", start=0, num=limit)}
    else:
        seqs = set()
        for bid in budget_ids:
            found = client.zrangebyscore(f"{prefix}:alerts:b:{bid}", low, "+inf", start=0, num=limit)
            seqs.update(int(s) for s in found)
    return load_alerts(client, prefix, sorted(seqs)[:limit])


def _alert(seq: int, h: dict[str, str]) -> Alert:
    name, scope, action, spec, zone_name, *rest = h["m"].split(SEP)
    tiers = decode_tiers(rest[0]) if rest else ()  # alerts fired before tiers existed carry none
    used, limit, threshold = int(h["u"]), int(h["l"]), int(h["th"])
    budget = Budget(
        id=h["b"],
        name=name,
        scope=Scope(scope),
        scope_id=None,
        limit_usd=Decimal(0),
        period=parse_period(spec),
        time_zone=zone_name,
        on_exceed=OnExceed(action),
        alert_thresholds=(),
        tiers=tiers,
    )
    tier = budget.tier_at(threshold)
    window = Window(int(h["ps"]), int(h["pe"]))
    return Alert(
        sequence=seq,
        alert_id=h["id"],
        budget_id=h["b"],
        budget_name=name,
        scope=Scope(scope),
        scope_id=h["e"],
        threshold_percent=threshold,
        used_usd=micros_to_usd(used),
        limit_usd=micros_to_usd(limit),
        percentage=percentage(used, limit),
        action=OnExceed(action) if tier is None else tier.action,
        period_start_ms=window.start_ms,
        period_end_ms=window.end_ms,
        fired_ms=int(h["f"]),
        message=alert_message(budget, h["e"], threshold, used, limit, window),
        tier=tier is not None,
    )
