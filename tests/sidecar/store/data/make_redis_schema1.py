"""Writes ``redis_schema1.json``: a ledger as a sidecar of schema 1 left it in Redis, and what it answered.

Run it with the code of schema 1 (the commit before the alert log became one hash) first on the path,
against any Redis 7::

    git worktree add /tmp/schema1 8074d43~1
    PYTHONPATH=/tmp/schema1:/tmp/schema1/sdk .venv/bin/python \\
        tests/sidecar/store/data/make_redis_schema1.py redis://127.0.0.1:6379/0

It creates budgets, spends so that thresholds fire, and delivers some of the alerts (acknowledged,
leased and not acknowledged, leased with the lease run out, never claimed), then stores every key of
the namespace (name without the ``{namespace}`` tag, type, value) and the old store's answers: the
alert log, each budget's standing, the pending alerts a new owner could claim.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis

from collector_processor.domain.budgets import OnExceed, Scope, ScopeSet
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.types import CommitCommand, RecordUsageCommand, ReserveCommand
from collector_processor.ledger import Ledger
from collector_processor.store.redis.store import SCHEMA_VERSION, RedisStore
from tests.sidecar.conftest import START, draft

NAMESPACE = "schema1-fixture"
OUT = Path(__file__).with_name("redis_schema1.json")
ADA = ScopeSet(organization="acme", team="search", user="ada", agent="summarizer")
BOB = ScopeSet(organization="acme", team="search", user="bob")


def plain(value: Any) -> Any:
    """JSON for the old store's answers: dataclasses as objects, decimals and enums as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def dump(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    out = []
    for key in sorted(client.scan_iter(match=f"{{{NAMESPACE}}}*", count=1000)):
        kind = client.type(key)
        value: Any
        if kind == "hash":
            value = dict(sorted(client.hgetall(key).items()))
        elif kind == "zset":
            value = [[m, s] for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "string":
            value = client.get(key)
        else:
            raise SystemExit(f"{key}: a {kind} key is not expected in a ledger")
        assert client.pttl(key) == -1, f"{key} has a TTL"
        out.append({"key": key[len(prefix) :], "type": kind, "value": value})
    return out


def main(url: str) -> None:
    assert SCHEMA_VERSION == 1, "run this with the code of schema 1 first on the path"
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"{{{NAMESPACE}}}"
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    clock = ManualClock(START)
    store = RedisStore(url, namespace=NAMESPACE)
    ledger = Ledger(store, clock=clock)
    ledger.create_budget(
        draft("team", Scope.TEAM, "search", "10", on_exceed=OnExceed.WARN, thresholds=(50, 80, 100))
    )
    ledger.create_budget(draft("org", Scope.ORGANIZATION, "acme", "100", period="monthly", thresholds=(1,)))
    ledger.create_budget(
        draft(
            "per-user", Scope.USER, None, "5", period="rolling_1h", on_exceed=OnExceed.WARN, thresholds=(50,)
        )
    )
    ledger.create_budget(draft("agent", Scope.AGENT, "summarizer", "50"))

    first = ledger.reserve(ReserveCommand(scopes=ADA, estimate_usd=Decimal(6)))
    ledger.commit(CommitCommand(reservation_id=first.reservation_id, actual_usd=Decimal(6)))
    clock.advance(seconds=60)
    ledger.record_usage(RecordUsageCommand(usage_id="u-1", scopes=BOB, cost_usd=Decimal("2.5")))
    clock.advance(seconds=60)
    held = ledger.reserve(
        ReserveCommand(scopes=ADA, estimate_usd=Decimal("0.5"), idempotency_key="k-held", ttl_ms=3_600_000)
    )
    released = ledger.reserve(ReserveCommand(scopes=BOB, estimate_usd=Decimal("0.1")))
    ledger.release(released.reservation_id)
    second = ledger.reserve(ReserveCommand(scopes=ADA, estimate_usd=Decimal(2)))
    ledger.commit(CommitCommand(reservation_id=second.reservation_id, actual_usd=Decimal("2.1")))
    clock.advance(seconds=60)

    now = clock.now_ms()
    delivered = store.claim_alerts(owner="replica-a", now_ms=now, lease_ms=30_000, limit=2)
    store.ack_alerts([a.sequence for a in delivered], now_ms=now)
    leased = store.claim_alerts(owner="replica-a", now_ms=now, lease_ms=3_600_000, limit=1)
    lapsed = store.claim_alerts(owner="replica-b", now_ms=now, lease_ms=1_000, limit=1)
    clock.advance(seconds=5)  # replica-b's lease has run out; replica-a's has an hour to go
    now = clock.now_ms()
    log = store.alerts_after(0, limit=100)
    assert len(log) >= 6, [a.threshold_percent for a in log]

    expected = {
        "now_ms": now,
        "alerts": plain(log),
        "delivered": [a.sequence for a in delivered],
        "leased": {
            "owner": "replica-a",
            "sequences": [a.sequence for a in leased],
            "until_ms": now - 5_000 + 3_600_000,
        },
        "lapsed": [a.sequence for a in lapsed],
        "held_reservation": held.reservation_id,
        "budgets": plain(ledger.list_budgets()),
        "statuses": {
            f"{bid}/{entity}": plain(ledger.budget_status(bid, entity))
            for bid, entity in (
                ("team", ""),
                ("org", ""),
                ("per-user", "ada"),
                ("per-user", "bob"),
                ("agent", ""),
            )
        },
        "held_reservations": list(store.held_reservations()),
        "last_alert_sequence": store.last_alert_sequence(),
    }
    store.close()
    fixture = {
        "made_by": "tests/sidecar/store/data/make_redis_schema1.py with the code of commit 8074d43~1 (schema 1)",
        "namespace": NAMESPACE,
        "keys": dump(client, prefix),
        "expected": expected,
    }
    OUT.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}: {len(fixture['keys'])} keys, {len(log)} alerts")


if __name__ == "__main__":
    main(sys.argv[1])
