"""Budget gauges computed from the store when metrics are read: limit, spend, projection, period.

``BudgetGauges.read()`` asks the store for every budget's spend and holds in its current period
(``LedgerStore.budget_spend``, a read that never waits for writers) and derives, per budget and entity,
what an operator watches: limit, used, reserved and remaining USD, the percentage used, the burn rate,
the spend projected at period end, the time until the budget is exhausted at that rate, and when the
period started and ends. Readings are kept for ``refresh_s`` seconds, so several scrapers (two
Prometheus replicas and a Collector) cost one store read.

A wildcard budget reports at most ``max_entities`` entities: those with the most spend (used +
reserved) in the period, which — since every entity of a wildcard shares one limit — are the ones
nearest exhaustion. The rest still count in the ledger; ``entity_count`` says how many there are.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from decimal import Decimal
from time import monotonic, perf_counter

from collector_processor.domain.clock import Clock
from collector_processor.domain.decisions import BudgetState, projection
from collector_processor.domain.money import micros_to_usd, percentage
from collector_processor.domain.periods import zone
from collector_processor.store.base import BudgetSpend, EntitySpend, LedgerStore
from collector_processor.store.index import limit_micros

__all__ = ["BudgetGauges", "BudgetReading", "BudgetSample"]


@dataclass(kw_only=True, frozen=True, slots=True)
class BudgetSample:
    """One budget's standing for one entity in its current period."""

    budget_id: str
    """The budget."""
    scope: str
    """Its scope."""
    entity: str
    """The entity."""
    limit_usd: Decimal
    """The limit."""
    used_usd: Decimal
    """Committed spend in the period."""
    reserved_usd: Decimal
    """Held by reservations in flight."""
    remaining_usd: Decimal
    """``limit - used - reserved``, never below zero."""
    percent: Decimal
    """Committed spend as a percentage of the limit."""
    burn_usd_per_hour: Decimal
    """Committed spend per hour since the period started (a rolling window: over the window)."""
    projected_usd: Decimal
    """Spend at period end if the burn rate holds."""
    exhaustion_seconds: float
    """Seconds until ``remaining`` is spent at the burn rate; 0 when exhausted, ``inf`` when not burning."""
    period_start_ms: int
    """Start of the period (or window)."""
    period_end_ms: int
    """When the period resets; a rolling window never does, and reads the instant of measurement."""


@dataclass(kw_only=True, frozen=True, slots=True)
class BudgetReading:
    """Everything read from the store at one instant."""

    budgets: tuple[BudgetSpend, ...]
    """Every budget with its listed entities and entity count."""
    samples: tuple[BudgetSample, ...]
    """One per budget and listed entity."""
    held_reservations: int
    """Reservations held now."""
    held_usd: Decimal
    """What they hold."""
    read_seconds: float
    """How long the store read took."""


class BudgetGauges:
    """Reads budget standings from ``store``, at most once per ``refresh_s`` seconds."""

    def __init__(
        self, store: LedgerStore, clock: Clock, *, max_entities: int = 25, refresh_s: float = 5.0
    ) -> None:
        self._store = store
        self._clock = clock
        self.max_entities = max_entities
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._cached: tuple[float, BudgetReading] | None = None

    def read(self) -> BudgetReading:
        """The latest reading; store errors propagate (the caller reports them and serves the rest)."""
        with self._lock:
            if self._cached is not None and monotonic() - self._cached[0] < self._refresh_s:
                return self._cached[1]
            reading = self._read()
            self._cached = (monotonic(), reading)
            return reading

    def _read(self) -> BudgetReading:
        start = perf_counter()
        now = self._clock.now_ms()
        budgets = self._store.budget_spend(now_ms=now, max_entities=self.max_entities)
        held, held_micros = self._store.held_reservations()
        samples = tuple(sample(b, e, now) for b in budgets for e in b.entities)
        return BudgetReading(
            budgets=tuple(budgets),
            samples=samples,
            held_reservations=held,
            held_usd=micros_to_usd(held_micros),
            read_seconds=perf_counter() - start,
        )


def sample(spend: BudgetSpend, entity: EntitySpend, now_ms: int) -> BudgetSample:
    """Derive one entity's gauges from its spend and holds."""
    budget = spend.budget
    limit = limit_micros(budget.limit_usd)
    state = BudgetState(
        budget=budget,
        entity=entity.entity,
        limit=limit,
        used=entity.used_micros,
        reserved=entity.reserved_micros,
        window=budget.period.window(now_ms, zone(budget.time_zone)),
    )
    burn, projected = projection(state, now_ms)
    remaining = max(limit - entity.used_micros - entity.reserved_micros, 0)
    if remaining == 0:
        exhaustion = 0.0
    elif burn > 0:
        exhaustion = float(micros_to_usd(remaining) / burn * 3600)
    else:
        exhaustion = math.inf
    return BudgetSample(
        budget_id=budget.id,
        scope=budget.scope.value,
        entity=entity.entity,
        limit_usd=micros_to_usd(limit),
        used_usd=micros_to_usd(entity.used_micros),
        reserved_usd=micros_to_usd(entity.reserved_micros),
        remaining_usd=micros_to_usd(remaining),
        percent=percentage(entity.used_micros, limit),
        burn_usd_per_hour=burn,
        projected_usd=projected,
        exhaustion_seconds=exhaustion,
        period_start_ms=state.window.start_ms,
        period_end_ms=state.window.end_ms,
    )
