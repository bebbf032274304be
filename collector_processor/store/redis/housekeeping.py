"""Housekeeping of the Redis store, in small steps that never hold Redis up for long.

Settled reservations, usage records, alerts, and batch item keys and series past their retention are
forgotten a chunk at a time;
each live budget's entities lose the spend buckets and alert marks of periods no window reads any
more; the state of deleted budgets is collected. Any number of replicas may run it at once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from collector_processor.store.index import BudgetIndex
from collector_processor.store.redis.link import RedisLink

__all__ = ["prune"]

_CHUNK = 500


def prune(
    link: RedisLink,
    index: BudgetIndex,
    *,
    now_ms: int,
    reservation_retention_ms: int,
    usage_retention_ms: int,
    alert_retention_ms: int,
) -> None:
    for what, keep in (
        ("reservations", reservation_retention_ms),
        ("usage", usage_retention_ms),
        ("alerts", alert_retention_ms),
        ("batches", reservation_retention_ms),
    ):
        while int(link.script("prune", [what, str(now_ms - keep), str(_CHUNK)])) >= _CHUNK:
            pass
    for live in index:
        budget = live.budget
        base = f"{budget.id}@{budget.generation}"
        lowest = str(budget.period.lowest_bucket(now_ms, live.tz))
        rolling = "1" if budget.period.is_rolling else "0"
        for entities, _ in _scan_set(link, f"{link.prefix}:ents:{base}"):
            link.script("prune_state", [base, rolling, lowest, *entities])
    dead: set[str] = link.call(lambda: link.client.smembers(f"{link.prefix}:dead"))
    for base in dead:
        for entities, last in _scan_set(link, f"{link.prefix}:ents:{base}"):
            link.script("collect_dead", [base, "1" if last else "0", *entities])


def _scan_set(link: RedisLink, key: str) -> Iterator[tuple[list[str], bool]]:
    """Chunks of a set's members (and whether each is the last), never one huge reply."""
    cursor = 0
    while True:
        cursor, members = link.call(functools.partial(link.client.sscan, key, cursor, count=_CHUNK))
        yield list(members), cursor == 0
        if cursor == 0:
            return
