"""An in-memory index from scope ids to the budgets that match them, shared by every store.

Matching is the first step of every reservation; a store rebuilds the index only when its budgets
change (a version counter it reads inside the same atomic operation), so the hot path never scans the
budget table and never acts on a stale budget list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo

from collector_processor.domain.budgets import Budget, Scope, ScopeSet
from collector_processor.domain.periods import zone

__all__ = ["BudgetIndex", "LiveBudget", "limit_micros"]

_NONE: list[LiveBudget] = []


def limit_micros(limit_usd: Decimal) -> int:
    """A limit in whole micro-dollars, rounded down: rounding never admits more than the limit."""
    return int((limit_usd * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(kw_only=True, frozen=True, slots=True)
class LiveBudget:
    """A budget with what the hot path needs precomputed."""

    budget: Budget
    """The budget."""
    limit: int
    """Its limit in micro-dollars."""
    tz: ZoneInfo
    """Its time zone."""

    @classmethod
    def of(cls, budget: Budget) -> LiveBudget:
        return cls(budget=budget, limit=limit_micros(budget.limit_usd), tz=zone(budget.time_zone))


class BudgetIndex:
    """Budgets keyed by ``(scope, scope_id)``; wildcards under ``(scope, None)``."""

    def __init__(self, budgets: Iterable[Budget], *, version: int) -> None:
        self.version = version
        self._by_key: dict[tuple[Scope, str | None], list[LiveBudget]] = {}
        self._all: dict[str, LiveBudget] = {}
        for budget in sorted(budgets, key=lambda b: b.id):
            live = LiveBudget.of(budget)
            self._by_key.setdefault((budget.scope, budget.scope_id), []).append(live)
            self._all[budget.id] = live

    def match(self, scopes: ScopeSet, *, enabled_only: bool) -> list[tuple[LiveBudget, str]]:
        """Every budget matching any id in ``scopes``, with the entity it matched, in scope order then by id."""
        out: list[tuple[LiveBudget, str]] = []
        by_key = self._by_key
        for scope, entity in scopes.pairs():
            specific = by_key.get((scope, entity))
            wildcard = by_key.get((scope, None))
            if specific and wildcard:
                found = sorted(specific + wildcard, key=_by_id)
            else:
                found = specific or wildcard or _NONE
            for live in found:
                if live.budget.enabled or not enabled_only:
                    out.append((live, entity))
        return out

    def get(self, budget_id: str) -> LiveBudget | None:
        return self._all.get(budget_id)

    def __iter__(self) -> Iterator[LiveBudget]:
        return iter(self._all.values())


def _by_id(live: LiveBudget) -> str:
    return live.budget.id
