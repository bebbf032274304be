"""The groups of a trace plan: the spans of an export charged together.

One group per scope set, model and quarter hour. Scope sets and model prices are shared instances
(the attributor's and the pricer's caches, kept alive by the plan's groups), so their ids key a group
without hashing their fields for every span. A group is charged at the latest end time in its quarter
hour among the spans of its scope: never before any of its own spans, and never in another quarter
hour, so never in another period (every real time zone's offset is a multiple of 15 minutes).
"""

from __future__ import annotations

from itertools import repeat
from operator import floordiv, itemgetter

from collector_processor.budgets import ScopeSet
from collector_processor.ledger_types import UsageGroup
from collector_processor.otlp.pricing import ModelPrice

__all__ = ["SLOT_MS", "Groups"]

SLOT_MS = 900_000


class Groups:
    """Assigns spans to groups, appending new ones to ``groups`` and ``unattributed``."""

    def __init__(self, groups: list[UsageGroup], unattributed: list[bool]) -> None:
        self._groups = groups
        self._unattributed = unattributed
        self._index: dict[tuple[int, ModelPrice, int], int] = {}
        self._end: list[int] = []
        self._slot: list[int] = []

    def ids(
        self, scopes: list[tuple[ScopeSet, bool]] | None, default: tuple[ScopeSet, bool], prices: list[ModelPrice],
        ends: list[int],
    ) -> list[int]:  # fmt: skip
        """The group of each span (``scopes`` None: every span has ``default``)."""
        index = self._index
        first = prices[0]
        if scopes is None and prices.count(first) == len(prices):
            slot = ends[0] // SLOT_MS
            if min(ends) // SLOT_MS == max(ends) // SLOT_MS == slot:  # one group: the common case
                key = (id(default[0]), first, slot)
                g = index.get(key)
                if g is None:
                    g = self._add(key, default, first)
                self._end[g] = max(self._end[g], max(ends))
                return [g] * len(ends)
        slots = map(floordiv, ends, repeat(SLOT_MS))
        scope_ids = repeat(id(default[0])) if scopes is None else map(id, map(itemgetter(0), scopes))
        keys = list(zip(scope_ids, prices, slots, strict=False))  # scope_ids may repeat()
        new = set(keys).difference(index)
        if new:  # a scope set, model or quarter hour not seen in this export yet: rare
            scope_of = dict(zip(keys, repeat(default) if scopes is None else scopes, strict=False))
            for key in sorted(new, key=keys.index):
                self._add(key, scope_of[key], key[1])
        ids = list(map(index.__getitem__, keys))
        # Each group is charged at the latest end among this scope's spans of its quarter hour: no
        # earlier than any of its own spans, and in the same quarter hour, so in the same period.
        latest = latest_per_slot(ends)
        end_of = self._end
        for g in set(ids):
            slot_end = latest[self._slot[g]]
            if slot_end > end_of[g]:
                end_of[g] = slot_end
        return ids

    def _add(self, key: tuple[int, ModelPrice, int], scope: tuple[ScopeSet, bool], price: ModelPrice) -> int:
        g = self._index[key] = len(self._end)
        self._end.append(0)
        self._slot.append(key[2])
        self._groups.append(
            UsageGroup(scopes=scope[0], provider=price.provider, model=price.model, occurred_ms=0)
        )
        self._unattributed.append(scope[1])
        return g

    def finish(self) -> list[UsageGroup]:
        """The groups with the instants they are charged at."""
        return [
            UsageGroup(scopes=g.scopes, provider=g.provider, model=g.model, occurred_ms=end)
            for g, end in zip(self._groups, self._end, strict=True)
        ]


def latest_per_slot(ends: list[int]) -> dict[int, int]:
    """Quarter hour -> the latest end in it (one quarter hour, the usual case, without a loop)."""
    first, last = min(ends), max(ends)
    if first // SLOT_MS == last // SLOT_MS:
        return {last // SLOT_MS: last}
    ordered = sorted(ends)
    return dict(zip(map(floordiv, ordered, repeat(SLOT_MS)), ordered, strict=False))  # the last one wins
