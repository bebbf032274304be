"""The groups of a trace plan: the spans of an export charged together.

One group per scope set, model and quarter hour (and, for spans that name a request budget, per
request budget and service). A span arrives here as its ``Target``: the price and
scopes its raw provider, model and scope attributes resolve to, one shared instance per distinct
combination of those values (cached by the trace processor). Targets hash by identity, so a column of
spans is assigned its groups by one dictionary probe each, in C; only each distinct target is looked at
in Python, once per export and quarter hour. A group is charged at the latest end time in its quarter
hour among the spans of its instrumentation scope: never before any of its own spans, and never in
another quarter hour, so never in another period (every real time zone's offset is a multiple of 15
minutes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from itertools import repeat
from operator import floordiv

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.types import UsageGroup
from collector_processor.otlp.pricing import ModelPrice

__all__ = ["SLOT_MS", "Groups", "Target"]

SLOT_MS = 900_000


class Target:
    """What spans with one combination of raw provider, model and scope values are charged as."""

    __slots__ = ("linear", "price", "rate_input", "rate_output", "scopes", "source", "unattributed")

    def __init__(self, price: ModelPrice, scopes: ScopeSet, unattributed: bool) -> None:
        self.price = price
        self.scopes = scopes
        self.unattributed = unattributed
        """Whether ``scopes`` is the unattributed bucket."""
        # The price's, as plain attributes for column-wise pricing.
        self.linear = price.rates is not None
        self.rate_input = price.rate_input
        self.rate_output = price.rate_output
        self.source = price.source


class Groups:
    """Assigns spans to groups; ``finish`` lists them, with the unattributed flag of each."""

    def __init__(self) -> None:
        self._index: dict[tuple[object, ...], int] = {}
        """(scope set, price, quarter hour) -> group. Scope sets are the attributor's shared instances,
        kept alive by the targets held here, so their ids name them."""
        self._slots: dict[int, dict[Target, int]] = {}
        """Quarter hour -> target -> group."""
        self._targets: list[Target] = []
        """The first target of each group: its scopes and price."""
        self._end: list[int] = []
        self._slot: list[int] = []
        self._requests: dict[int, tuple[str, str]] = {}
        """Group -> (request budget, service), for the groups of spans that name one."""

    def ids(
        self, targets: list[Target], distinct: dict[Target, None], ends: list[int], first: int, last: int
    ) -> list[int]:
        """The group of each span, from its target and its end (epoch ms); ``distinct`` holds the
        targets in the order they first appear, ``first`` and ``last`` are the earliest and latest end."""
        slot = first // SLOT_MS
        end_of = self._end
        if last // SLOT_MS == slot:  # one quarter hour: the common case
            table = self._table(slot, distinct)
            for g in {table[t]: None for t in distinct}:
                if last > end_of[g]:
                    end_of[g] = last
            return list(map(table.__getitem__, targets))
        slots = list(map(floordiv, ends, repeat(SLOT_MS)))
        for target, s in dict.fromkeys(zip(targets, slots, strict=True)):  # in the order they first appear
            self._table(s, (target,))
        ids = [self._slots[s][t] for t, s in zip(targets, slots, strict=True)]
        # Each group is charged at the latest end among this scope's spans of its quarter hour: no
        # earlier than any of its own spans, and in the same quarter hour, so in the same period.
        latest = latest_per_slot(ends)
        for g in set(ids):
            slot_end = latest[self._slot[g]]
            if slot_end > end_of[g]:
                end_of[g] = slot_end
        return ids

    def ids_with_requests(
        self, targets: list[Target], ends: list[int], requests: list[str], service: str
    ) -> list[int]:
        """``ids`` for a scope some of whose spans name a request budget (``requests``, '' for none): a
        span span by span, its group also keyed by the request budget and, with one, the ``service``."""
        latest = latest_per_slot(ends)
        index, end_of = self._index, self._end
        out = []
        for target, end, request in zip(targets, ends, requests, strict=True):
            slot = end // SLOT_MS
            key: tuple[object, ...] = (id(target.scopes), target.price, slot)
            if request:
                key = (*key, request, service)
            g = index.get(key)
            if g is None:
                g = index[key] = self._add(target, slot)
                if request:
                    self._requests[g] = (request, service)
            if latest[slot] > end_of[g]:
                end_of[g] = latest[slot]
            out.append(g)
        return out

    def _add(self, target: Target, slot: int) -> int:
        g = len(self._end)
        self._targets.append(target)
        self._end.append(0)
        self._slot.append(slot)
        return g

    def _table(self, slot: int, targets: Iterable[Target]) -> dict[Target, int]:
        """The targets -> groups of quarter hour ``slot``, with ``targets`` in it (new groups appended
        in the order of ``targets``)."""
        table = self._slots.get(slot)
        if table is None:
            table = self._slots[slot] = {}
        index = self._index
        for target in targets:
            if target in table:
                continue
            key = (id(target.scopes), target.price, slot)
            g = index.get(key)
            if g is None:
                g = index[key] = self._add(target, slot)
            table[target] = g
        return table

    def finish(self) -> tuple[list[UsageGroup], list[bool]]:
        """The groups with the instants they are charged at, and which are the unattributed bucket."""
        groups = [
            UsageGroup(scopes=t.scopes, provider=t.price.provider, model=t.price.model, occurred_ms=end)
            for t, end in zip(self._targets, self._end, strict=True)
        ]
        for g, (request, service) in self._requests.items():
            groups[g] = replace(groups[g], request_budget=request, service=service)
        return groups, [t.unattributed for t in self._targets]


def latest_per_slot(ends: list[int]) -> dict[int, int]:
    """Quarter hour -> the latest end in it (one quarter hour, the usual case, without a loop)."""
    first, last = min(ends), max(ends)
    if first // SLOT_MS == last // SLOT_MS:
        return {last // SLOT_MS: last}
    ordered = sorted(ends)
    return dict(zip(map(floordiv, ordered, repeat(SLOT_MS)), ordered, strict=False))  # the last one wins
