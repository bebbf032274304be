"""The Redis Functions contract: every key a function touches is one its caller declared in KEYS.

A real ``redis-server`` is watched with ``MONITOR`` while a ledger runs every kind of operation
(reservations and their downgrade exchange, commits, releases, expiry, recorded and batched usage,
alerts, budget changes, request budgets opened, nested, held on, charged, read and forgotten,
housekeeping), including those whose keys depend on stored data: the holds of a reservation on a
budget deleted since and on request budgets another replica opened, overdue reservations released
before an operation goes on, settled reservations, alerts and expired request budgets forgotten by
housekeeping. Each command a function ran must name a key
its FCALL declared. The library also refuses an undeclared key by itself.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import redis

from collector_processor.domain.budgets import BudgetPatch, OnExceed, Scope, ScopeSet
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.requests import OpenRequestCommand
from collector_processor.domain.types import (
    CommitCommand,
    RecordUsageCommand,
    ReserveCommand,
    UsageBatch,
    UsageGroup,
)
from collector_processor.errors import NotFoundError
from collector_processor.ledger import Ledger
from collector_processor.store.redis.store import RedisStore
from tests.sidecar.conftest import START, draft
from tests.sidecar.redisserver import RedisServer

D = Decimal
SCOPES = ScopeSet(organization="acme", team="search", user="ada", agent="summarizer")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_END = "paymaster-monitor-end"


@dataclass
class Monitor:
    """Every command the server runs, as MONITOR reports it: (who, arguments as quoted)."""

    server: RedisServer
    lines: list[tuple[str, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client = redis.Redis.from_url(self.server.url)
        self._monitor = self._client.monitor().__enter__()  # sends MONITOR on a connection of its own
        self._conn = self._monitor.connection
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            raw = self._conn.read_response()
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            who = "lua" if "[0 lua]" in text else "client"
            args = _ARG.findall(text)
            if args[:2] == ["ECHO", _END]:
                return
            self.lines.append((who, args))

    def stop(self) -> list[tuple[str, list[str]]]:
        self._client.echo(_END)
        self._thread.join(30)
        self._conn.disconnect()
        self._client.close()
        return self.lines


def undeclared(lines: list[tuple[str, list[str]]]) -> tuple[set[str], list[str]]:
    """The functions called, and every key a function's command touched without its FCALL declaring it."""
    called: set[str] = set()
    bad: list[str] = []
    declared: set[str] | None = None
    function = ""
    for who, args in lines:
        if who == "client":
            if args and args[0].upper() == "FCALL":
                function = args[1].split("_", 2)[2]  # pm_<library version>_<name>
                called.add(function)
                declared = set(args[3 : 3 + int(args[2])])
            else:
                declared = None
        elif declared is not None and len(args) > 1 and args[1] not in declared:
            bad.append(f"{function}: {args[0]} {args[1]}")
    return called, bad


@pytest.fixture
def watched(redis_server: RedisServer) -> Iterator[tuple[RedisStore, Monitor]]:
    store = RedisStore(redis_server.url, namespace=f"keys-{uuid.uuid4().hex[:8]}")
    monitor = Monitor(redis_server)
    try:
        yield store, monitor
    finally:
        store.close()


def reserve(ledger: Ledger, amount: str, scopes: ScopeSet = SCOPES, **kwargs: object) -> object:
    return ledger.reserve(ReserveCommand(scopes=scopes, estimate_usd=D(amount), **kwargs))  # type: ignore[arg-type]


def test_every_key_a_function_touches_is_declared_in_its_keys(
    watched: tuple[RedisStore, Monitor], redis_server: RedisServer
) -> None:
    store, monitor = watched
    clock = ManualClock(START)
    ledger = Ledger(store, clock=clock)
    ledger.create_budget(draft("org", Scope.ORGANIZATION, "acme", "100", thresholds=(1, 50)))
    ledger.create_budget(draft("soft", Scope.TEAM, "search", "1", on_exceed=OnExceed.DOWNGRADE))
    ledger.create_budget(draft("per-user", Scope.USER, None, "50", period="rolling_1h", thresholds=(10,)))
    ledger.create_budget(draft("doomed", Scope.AGENT, "summarizer", "50"))
    ledger.update_budget("org", BudgetPatch(name="The org"))
    ledger.load_config_budgets([draft("declared", Scope.WORKFLOW, "digest", "9")])

    # Reserve, replay, the downgrade exchange (accepted and refused), commit with alerts, release.
    first = reserve(ledger, "0.8", idempotency_key="k")
    assert reserve(ledger, "0.8", idempotency_key="k").replayed  # type: ignore[attr-defined]
    ledger.commit(CommitCommand(reservation_id=first.reservation_id, actual_usd=D("0.9")))  # type: ignore[attr-defined]
    awaiting = reserve(ledger, "0.5")
    reserve(ledger, "0.05", downgrade_of=awaiting.reservation_id, scopes=ScopeSet())  # type: ignore[attr-defined]
    ledger.release(awaiting.reservation_id)  # type: ignore[attr-defined]
    ledger.check(SCOPES, D(1))
    ledger.budget_status("per-user", "ada")

    # Holds on a budget deleted since: their state keys are known only from the reservation.
    held = reserve(ledger, "0.01", ttl_ms=60_000)
    to_release = reserve(ledger, "0.01", ttl_ms=60_000)
    ledger.delete_budget("doomed")
    other = RedisStore(redis_server.url, namespace=store.namespace)  # remembers no reservation
    try:
        Ledger(other, clock=clock).commit(
            CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.01"))
        )  # type: ignore[attr-defined]
        Ledger(other, clock=clock).release(to_release.reservation_id)  # type: ignore[attr-defined]
    finally:
        other.close()

    # An overdue reservation is released before the next operation goes on.
    reserve(ledger, "0.02", ttl_ms=1_000)
    clock.advance(seconds=2)
    reserve(ledger, "0.01")
    reserve(ledger, "0.03", ttl_ms=1_000)
    clock.advance(seconds=2)
    assert ledger.expire_due() >= 1

    # Recorded and batched usage, against a reservation too.
    ledger.record_usage(RecordUsageCommand(usage_id="u1", scopes=SCOPES, cost_usd=D("0.3")))
    late = reserve(ledger, "0.01")
    ledger.record_usage(
        RecordUsageCommand(
            usage_id="u2", scopes=SCOPES, cost_usd=D("0.02"), reservation_id=late.reservation_id
        )  # type: ignore[attr-defined]
    )
    group = UsageGroup(scopes=SCOPES, provider="openai", model="gpt-4o", occurred_ms=clock.now_ms())
    items = [(clock.now_ms(), b"span-1", 0, 1_000, 10, 5, 0, 0, 0, 0)]
    series = [(b"series-1", 0, False, 2_000, 20, 10, 0, 0, 0, 30)]
    ledger.record_usage_batch(UsageBatch(groups=(group,), items=items, series=series))  # type: ignore[arg-type]

    # Request budgets: opened, nested, reserved against, charged by another replica, read, and held on
    # by an overdue reservation.
    ledger.open_request_budget(OpenRequestCommand(request_id="rq_keys_root_000001", limit_usd=D(5)))
    ledger.open_request_budget(
        OpenRequestCommand(
            request_id="rq_keys_child_00001", parent_id="rq_keys_root_000001", fraction=D("0.5")
        )
    )
    on_request = reserve(ledger, "0.01", request_budget="rq_keys_child_00001", service="svc")
    awaiting_request = reserve(ledger, "0.5", request_budget="rq_keys_child_00001")
    reserve(ledger, "0.05", downgrade_of=awaiting_request.reservation_id, scopes=ScopeSet())  # type: ignore[attr-defined]
    ledger.check(SCOPES, D("0.1"), request_budget="rq_keys_child_00001")
    other = RedisStore(redis_server.url, namespace=store.namespace)
    try:
        Ledger(other, clock=clock).commit(
            CommitCommand(reservation_id=on_request.reservation_id, actual_usd=D("0.01"))  # type: ignore[attr-defined]
        )
        Ledger(other, clock=clock).release(awaiting_request.reservation_id)  # type: ignore[attr-defined]
    finally:
        other.close()
    ledger.record_usage(
        RecordUsageCommand(
            usage_id="u3", scopes=SCOPES, cost_usd=D("0.02"), request_budget="rq_keys_child_00001"
        )
    )
    request_group = UsageGroup(
        scopes=SCOPES,
        model="gpt-4o",
        occurred_ms=clock.now_ms(),
        request_budget="rq_keys_root_000001",
        service="x",
    )
    ledger.record_usage_batch(
        UsageBatch(groups=(request_group,), items=[(clock.now_ms(), b"span-2", 0, 1_000, 10, 5, 0, 0, 0, 0)])
    )
    assert ledger.request_status("rq_keys_child_00001").used_micros == 30_000
    reserve(ledger, "0.02", ttl_ms=1_000, request_budget="rq_keys_root_000001")
    clock.advance(seconds=2)
    assert ledger.expire_due() >= 1

    # Alerts are claimed and acknowledged; then everything ages out.
    claimed = store.claim_alerts(owner="me", now_ms=clock.now_ms(), lease_ms=1_000, limit=10)
    assert claimed
    store.ack_alerts([a.sequence for a in claimed], now_ms=clock.now_ms())
    ledger.delete_budget("per-user")
    clock.advance(seconds=3 * 86_400)
    store.prune(now_ms=clock.now_ms(), reservation_retention_ms=0, usage_retention_ms=0, alert_retention_ms=0)

    called, bad = undeclared(monitor.stop())
    assert bad == []
    assert called == {
        "reserve", "resend", "commit", "record", "batch", "standing", "release", "expire", "load_budgets",
        "budget_ops", "claim_alerts", "ack_alerts", "prune", "prune_state", "collect_dead", "request_open",
        "request_read",
    }  # fmt: skip
    with pytest.raises(NotFoundError):
        ledger.request_status("rq_keys_root_000001")
    client = redis.Redis.from_url(redis_server.url)
    try:  # housekeeping forgot the expired request budgets and their state
        prefix = f"{{{store.namespace}}}"
        assert client.hlen(f"{prefix}:rq") == 0 and client.zcard(f"{prefix}:qdue") == 0
        assert not client.keys(f"{prefix}:s:~rq@*")
    finally:
        client.close()


def test_a_function_refuses_a_key_its_caller_did_not_declare(watched: tuple[RedisStore, Monitor]) -> None:
    """The library checks every key it touches against KEYS, so a caller that forgets one fails loudly
    (before any write: the function reads the reservation first) instead of reaching past KEYS."""
    store, monitor = watched
    monitor.stop()
    ledger = Ledger(store, clock=ManualClock(START))
    ledger.create_budget(draft("team", Scope.TEAM, "search", "10"))
    r = reserve(ledger, "1")
    link = store._link  # the store's own connection, handed a key list that leaves the reservation out
    with pytest.raises(redis.ResponseError, match="undeclared key"):
        link.script("release", [str(int(START.timestamp() * 1000)), r.reservation_id], [link.key("due")])  # type: ignore[attr-defined]
    assert ledger.budget_status("team").reserved_usd == 1  # nothing was released
