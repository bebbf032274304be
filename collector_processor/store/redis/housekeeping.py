"""Housekeeping of the Redis store, in small steps that never hold Redis up for long.

Settled reservations, usage records, alerts, and batch item keys and series past their retention, and
request budgets that have expired, are forgotten a chunk at a time;
each live budget's entities lose the spend buckets and alert marks of periods no window reads any
more; the state of deleted budgets is collected. Any number of replicas may run it at once.
"""

from __future__ import annotations

import functools
import json
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
        ("requests", 0),
    ):
        while _prune_chunk(link, what, now_ms - keep) >= _CHUNK:
            pass
    for live in index:
        budget = live.budget
        base = f"{budget.id}@{budget.generation}"
        lowest = str(budget.period.lowest_bucket(now_ms, live.tz))
        rolling = "1" if budget.period.is_rolling else "0"
        for entities, _ in _scan_set(link, link.key("ents", base)):
            link.script("prune_state", [base, rolling, lowest, *entities], _entity_keys(link, base, entities))
    dead: set[str] = link.call(lambda: link.client.smembers(link.key("dead")))
    for base in dead:
        for entities, last in _scan_set(link, link.key("ents", base)):
            keys = [*_entity_keys(link, base, entities), link.key("dead")]
            link.script("collect_dead", [base, "1" if last else "0", *entities], keys)


def _prune_chunk(link: RedisLink, what: str, cut: int) -> int:
    """Forget one chunk of ``what`` older than ``cut``; return how many were looked at. Settled
    reservations and fired alerts are read here first, so that the function is handed their keys."""
    args = [what, str(cut), str(_CHUNK)]
    if what == "usage":
        return int(link.script("prune", args, [link.key("u"), link.key("ut")]))
    if what == "batches":
        return int(link.script("prune", args, [link.key("bk"), link.key("ser"), link.key("sert")]))
    if what == "requests":
        due = link.call(lambda: link.client.zrangebyscore(link.key("qdue"), "-inf", cut, start=0, num=_CHUNK))
        keys = [link.key("qdue"), link.key("rq"), link.key("rqc")]
        for member in due:
            request_id, created = member.rsplit("@", 1)
            keys.append(link.key("s", f"~rq@{created}/{request_id}"))
        return int(link.script("prune", [*args, *due], keys)) if due else 0
    if what == "reservations":
        ids = link.call(
            lambda: link.client.zrangebyscore(link.key("settled"), "-inf", f"({cut}", start=0, num=_CHUNK)
        )
        keys = [link.key("settled"), link.key("idem"), *(link.key("r", rid) for rid in ids)]
        return int(link.script("prune", [*args, *ids], keys)) if ids else 0
    seqs = link.call(
        lambda: link.client.zrangebyscore(link.key("alerts:fired"), "-inf", f"({cut}", start=0, num=_CHUNK)
    )
    if not seqs:
        return 0
    records = link.call(lambda: link.client.hmget(link.key("alert"), seqs))
    budgets = {json.loads(r)["b"] for r in records if r}
    keys = [link.key(k) for k in ("alerts:fired", "alert", "alerts:lease", "alerts", "alerts:pending")]
    keys += [link.key("alerts:b", bid) for bid in sorted(budgets)]
    return int(link.script("prune", [*args, *seqs], keys))


def _entity_keys(link: RedisLink, base: str, entities: list[str]) -> list[str]:
    keys = [link.key("ents", base)]
    for entity in entities:
        keys += (link.key("s", f"{base}/{entity}"), link.key("z", f"{base}/{entity}"))
    return keys


def _scan_set(link: RedisLink, key: str) -> Iterator[tuple[list[str], bool]]:
    """Chunks of a set's members (and whether each is the last), never one huge reply."""
    cursor = 0
    while True:
        cursor, members = link.call(functools.partial(link.client.sscan, key, cursor, count=_CHUNK))
        yield list(members), cursor == 0
        if cursor == 0:
            return
