"""Usage reports: totals of recorded spend broken down by scope, provider, model and calendar period.

A store groups its usage records by the requested columns and, when a period is asked for, by
15-minute slot (every real time zone offset is a multiple of 15 minutes). This module folds those
slots into local days, ISO weeks, months, quarters or years, so period breakdowns are exact in any
zone and every store only has to answer one simple grouped query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.money import micros_to_usd
from collector_processor.errors import InvalidRequestError
from paymaster.vocabulary import NO_MODEL

__all__ = [
    "SCOPE_COLUMNS",
    "USAGE_COLUMNS",
    "Dimension",
    "UsageQuery",
    "UsageRecord",
    "UsageReport",
    "UsageReportRow",
    "UsageRow",
    "UsageTotals",
    "build_report",
    "check_group_by",
]


USAGE_COLUMNS = ("organization", "team", "agent", "workflow", "user", "provider", "model")
"""The columns a store groups recorded spend by."""
SCOPE_COLUMNS = USAGE_COLUMNS[:5]
"""The columns that are scope ids, in scope order."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageRow:
    """Totals of recorded spend for one combination of grouping columns (and 15-minute slot, if asked)."""

    keys: tuple[str, ...]
    """Values of the grouping columns, in the order asked."""
    slot_ms: int | None
    """Start of the 15-minute slot, when grouping by time; every real time zone offset is a multiple."""
    cost_micros: int
    """Spend, micro-dollars."""
    input_tokens: int
    """Input tokens."""
    output_tokens: int
    """Output tokens."""
    total_tokens: int
    """Total tokens."""
    records: int
    """Commits and recorded usages counted."""


class Dimension(StrEnum):
    """What a usage report is broken down by."""

    ORGANIZATION = "organization"
    TEAM = "team"
    AGENT = "agent"
    WORKFLOW = "workflow"
    USER = "user"
    PROVIDER = "provider"
    MODEL = "model"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


PERIOD_DIMENSIONS = frozenset(
    {Dimension.DAY, Dimension.WEEK, Dimension.MONTH, Dimension.QUARTER, Dimension.YEAR}
)
_FACT_DIMENSIONS = frozenset({Dimension.PROVIDER, Dimension.MODEL})
"""Spend that named no provider or model is reported under ``NO_MODEL``, as the metrics count it."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageQuery:
    """What to report."""

    start_ms: int | None = None
    """Inclusive start; ``None``: all retained history."""
    end_ms: int | None = None
    """Exclusive end; ``None``: now."""
    scopes: ScopeSet = field(default_factory=ScopeSet)
    """Only spend attributed to every id given."""
    provider: str = ""
    """Only this provider."""
    model: str = ""
    """Only this model."""
    group_by: tuple[Dimension, ...] = ()
    """Breakdown dimensions, in order; at most one period."""
    time_zone: str = ""
    """Zone for period dimensions; empty: the ledger's default."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageTotals:
    """Sums over some recorded spend."""

    cost_usd: Decimal
    """Spend."""
    input_tokens: int
    """Input tokens."""
    output_tokens: int
    """Output tokens."""
    total_tokens: int
    """All tokens."""
    records: int
    """Commits and recorded usages counted."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageReportRow:
    """One line of a breakdown."""

    key: tuple[str, ...]
    """One value per ``group_by`` dimension."""
    totals: UsageTotals
    """Its sums."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageReport:
    """A usage report."""

    total: UsageTotals
    """Sums over everything the query covered."""
    rows: tuple[UsageReportRow, ...]
    """The breakdown, ordered by key; empty without ``group_by``."""


def check_group_by(group_by: Sequence[Dimension]) -> tuple[Dimension, ...]:
    if len(set(group_by)) != len(group_by):
        raise InvalidRequestError("group_by", "lists a dimension twice")
    periods = [d for d in group_by if d in PERIOD_DIMENSIONS]
    if len(periods) > 1:
        raise InvalidRequestError(
            "group_by", f"at most one period dimension, got {[d.value for d in periods]}"
        )
    return tuple(group_by)


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageRecord:
    """One recorded unit of spend (a commit, a recorded usage, an OTLP charge), as reports read it."""

    id: str
    """The store's key of the record: ``reservation:<id>`` for a commit, the usage id (in its
    owner's namespace) for recorded usage."""
    at_ms: int
    """When the spend happened, epoch milliseconds UTC."""
    scopes: ScopeSet
    """Who it was charged to."""
    provider: str
    """``gen_ai.provider.name``, or empty."""
    model: str
    """The model, or empty."""
    cost_micros: int
    """What it cost, micro-dollars."""
    input_tokens: int
    """Input tokens."""
    output_tokens: int
    """Output tokens."""
    total_tokens: int
    """Total tokens."""
    reservation_id: str
    """The reservation it settled, or empty."""


def columns_for(group_by: Sequence[Dimension]) -> tuple[str, ...]:
    """The store columns a breakdown needs (everything but the period)."""
    return tuple(d.value for d in group_by if d not in PERIOD_DIMENSIONS)


def build_report(
    rows: Sequence[UsageRow],
    group_by: Sequence[Dimension],
    tz: ZoneInfo,
    *,
    columns: Sequence[str] | None = None,
) -> UsageReport:
    """Fold a store's rows (grouped by ``columns``, by default exactly the breakdown's) into a report."""
    columns = columns_for(group_by) if columns is None else columns
    sums: dict[tuple[str, ...], list[int]] = {}
    labels: dict[int, dict[Dimension, str]] = {}
    total = [0, 0, 0, 0, 0]
    for row in rows:
        values = dict(zip(columns, row.keys, strict=True))
        key = tuple(
            _period_label(d, row.slot_ms, tz, labels)
            if d in PERIOD_DIMENSIONS
            else values[d.value] or (NO_MODEL if d in _FACT_DIMENSIONS else "")
            for d in group_by
        )
        figures = (row.cost_micros, row.input_tokens, row.output_tokens, row.total_tokens, row.records)
        acc = sums.setdefault(key, [0, 0, 0, 0, 0])
        for i, figure in enumerate(figures):
            acc[i] += figure
            total[i] += figure
    breakdown = (
        tuple(UsageReportRow(key=k, totals=_totals(v)) for k, v in sorted(sums.items())) if group_by else ()
    )
    return UsageReport(total=_totals(total), rows=breakdown)


def _totals(v: Sequence[int]) -> UsageTotals:
    return UsageTotals(
        cost_usd=micros_to_usd(v[0]), input_tokens=v[1], output_tokens=v[2], total_tokens=v[3], records=v[4]
    )


def _period_label(
    dim: Dimension, slot_ms: int | None, tz: ZoneInfo, cache: dict[int, dict[Dimension, str]]
) -> str:
    assert slot_ms is not None, "period dimensions need slot rows"
    known = cache.setdefault(slot_ms, {})
    if dim not in known:
        local = datetime.fromtimestamp(slot_ms / 1000, tz)
        if dim is Dimension.DAY:
            known[dim] = local.strftime("%Y-%m-%d")
        elif dim is Dimension.WEEK:
            year, week, _ = local.isocalendar()
            known[dim] = f"{year}-W{week:02d}"
        elif dim is Dimension.MONTH:
            known[dim] = local.strftime("%Y-%m")
        elif dim is Dimension.QUARTER:
            known[dim] = f"{local.year}-Q{(local.month - 1) // 3 + 1}"
        else:
            known[dim] = str(local.year)
    return known[dim]
