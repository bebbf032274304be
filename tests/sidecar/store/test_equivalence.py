"""Both stores answer alike: random budgets (single-action and tiered), a request budget with a child,
and random sequences of reservations (some held to the request budget), downgrades, commits, releases,
recorded usage and the passing of time, run against SQLite and Redis side by side, get the same
decisions, tiers, holds, reasons, warnings, budget and request-budget standings and alerts, to the
micro-dollar and word. (Redis restates the tier rule in Lua; this is where the two statements are held
to each other.)"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector_processor.domain.budgets import OnExceed, Scope, ScopeSet, Tier
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.requests import OpenRequestCommand
from collector_processor.domain.types import CommitCommand, RecordUsageCommand, ReserveCommand
from collector_processor.errors import SidecarError
from collector_processor.ledger import Ledger, LedgerSettings
from collector_processor.store import SqliteStore
from collector_processor.store.redis.store import RedisStore
from tests.sidecar.conftest import START, draft
from tests.sidecar.redisserver import RedisServer

D = Decimal
ORGS = ("acme", "beta", "gamma")
REQUEST = {"beta": "rq_equivalence_000001", "gamma": "rq_equivalence_child1"}
"""Requests of these organizations are held to a request budget (gamma's is beta's child)."""

_BUDGET = st.tuples(
    st.sampled_from(
        [(Scope.ORGANIZATION, "acme"), (Scope.ORGANIZATION, None), (Scope.TEAM, "search"), (Scope.USER, None)]
    ),
    st.sampled_from(list(OnExceed)),
    st.one_of(st.integers(0, 3_000_000), st.just(2**53 + 3)),  # micro-dollars, past 2^53 too
    st.sampled_from(["daily", "monthly", "rolling_1h"]),
    st.sampled_from([(), (50,), (80, 100)]),
    st.sampled_from(
        [
            (),
            (),
            (Tier(50, OnExceed.WARN), Tier(80, OnExceed.DOWNGRADE), Tier(100, OnExceed.BLOCK)),
            (Tier(100, OnExceed.WARN), Tier(150, OnExceed.BLOCK)),
            (Tier(30, OnExceed.DOWNGRADE),),
            (Tier(1, OnExceed.WARN), Tier(999, OnExceed.DOWNGRADE), Tier(1000, OnExceed.BLOCK)),
        ]
    ),
)
_OP = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.integers(0, 1_500_000),
        st.one_of(st.none(), st.integers(0, 400_000)),
        st.sampled_from(ORGS),
    ),
    st.tuples(st.just("resend"), st.integers(0, 300_000), st.integers(0, 20), st.none()),
    st.tuples(st.just("commit"), st.integers(0, 120), st.integers(0, 20), st.none()),
    st.tuples(st.just("release"), st.integers(0, 20), st.none(), st.none()),
    st.tuples(st.just("usage"), st.integers(0, 900_000), st.integers(0, 3), st.sampled_from(ORGS)),
    st.tuples(st.just("tick"), st.integers(1, 1_200), st.none(), st.none()),
    st.tuples(st.just("check"), st.integers(0, 1_500_000), st.none(), st.sampled_from(ORGS)),
    st.tuples(st.just("prune"), st.integers(0, 3_600), st.none(), st.none()),
)


def _answer(outcome: Any) -> Any:
    """An outcome without what legitimately differs between stores (generated ids, log sequences)."""
    fields = asdict(outcome)
    fields.pop("reservation_id", None)
    if "alerts_fired" in fields:
        fields["alerts_fired"] = len(fields["alerts_fired"])
    return fields


def _run(ledger: Ledger, op: tuple[Any, ...], held: list[str], counter: list[int]) -> Any:
    kind, a, b, org = op
    scopes = ScopeSet(organization=org or "acme", team="search", user="ada")
    request = REQUEST.get(org or "", "")
    try:
        if kind == "reserve":
            cheaper = None if b is None else D(b).scaleb(-6)
            r = ledger.reserve(
                ReserveCommand(
                    scopes=scopes,
                    estimate_usd=D(a).scaleb(-6),
                    downgrade_estimate_usd=cheaper,
                    ttl_ms=600_000,
                    request_budget=request,
                    service=org or "",
                )
            )
            if r.reservation_id:
                held.append(r.reservation_id)
            return _answer(r)
        if kind == "resend" and held:
            r = ledger.reserve(
                ReserveCommand(
                    scopes=ScopeSet(), estimate_usd=D(a).scaleb(-6), downgrade_of=held[b % len(held)]
                )
            )
            return _answer(r)
        if kind == "commit" and held:
            rid = held[b % len(held)]
            return _answer(ledger.commit(CommitCommand(reservation_id=rid, actual_usd=D(a).scaleb(-4))))
        if kind == "release" and held:
            return _answer(ledger.release(held[a % len(held)]))
        if kind == "usage":
            counter[0] += 1
            usage_id = f"u{counter[0] - b % 2}"  # every other one repeats the previous id
            return _answer(
                ledger.record_usage(
                    RecordUsageCommand(
                        usage_id=usage_id, scopes=scopes, cost_usd=D(a).scaleb(-6), request_budget=request
                    )
                )
            )
        if kind == "check":
            return _answer(ledger.check(scopes, D(a).scaleb(-6), request_budget=request))
        if kind == "prune":  # forgetting settled reservations makes their late commits unknown alike
            ms = a * 1000
            now = ledger.clock.now_ms()
            ledger.store.prune(
                now_ms=now, reservation_retention_ms=ms, usage_retention_ms=10**12, alert_retention_ms=ms
            )
            return "pruned"
        if kind == "tick":
            ledger.clock.advance(seconds=a)  # type: ignore[attr-defined]
            return "tick"
        return "skipped"
    except SidecarError as exc:
        message = str(exc)
        for i, rid in enumerate(held):  # each store's reservations have their own random ids
            message = message.replace(rid, f"<reservation {i}>")
        return (type(exc).__name__, message)


def _statuses(ledger: Ledger, budgets: list[str]) -> list[Any]:
    out = []
    for budget_id in budgets:
        entity = (
            ""
            if ledger.get_budget(budget_id).scope_id
            else ("acme" if "organization" in budget_id else "ada")
        )
        status = asdict(ledger.budget_status(budget_id, entity))
        status["budget"].pop("generation")  # each store numbers its own
        out.append(status)
    for request_id in REQUEST.values():
        try:
            out.append(asdict(ledger.request_status(request_id)))
        except SidecarError as exc:
            out.append(str(exc))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budgets=st.lists(_BUDGET, min_size=1, max_size=4),
    ops=st.lists(_OP, max_size=30),
    request=st.tuples(
        st.integers(0, 3_000_000), st.sampled_from([None, D("0.5"), D(1)]), st.sampled_from([60, 600])
    ),
)
def test_sqlite_and_redis_give_the_same_answers(
    redis_server: RedisServer,
    tmp_path: Path,
    budgets: list[Any],
    ops: list[tuple[Any, ...]],
    request: tuple[int, Decimal | None, int],
) -> None:
    sqlite = SqliteStore(tmp_path / f"{uuid.uuid4().hex}.db")
    redis = RedisStore(redis_server.url, namespace=f"eq-{uuid.uuid4().hex[:12]}")
    try:
        ledgers = [
            Ledger(store, clock=ManualClock(START), settings=LedgerSettings(default_ttl_ms=60_000))
            for store in (sqlite, redis)
        ]
        ids = []
        for i, (target, action, limit, period, thresholds, tiers) in enumerate(budgets):
            scope, scope_id = target
            budget_id = f"b{i}-{scope.value}"
            for ledger in ledgers:
                ledger.create_budget(
                    draft(
                        budget_id,
                        scope,
                        scope_id,
                        str(D(limit).scaleb(-6)),
                        period=period,
                        on_exceed=None if tiers else action,
                        thresholds=thresholds,
                        tiers=tiers,
                    )
                )
            ids.append(budget_id)
        limit, share, idle_s = request
        for ledger in ledgers:
            ledger.open_request_budget(
                OpenRequestCommand(
                    request_id=REQUEST["beta"], limit_usd=D(limit).scaleb(-6), idle_ttl_ms=idle_s * 1000
                )
            )
            ledger.open_request_budget(
                OpenRequestCommand(request_id=REQUEST["gamma"], parent_id=REQUEST["beta"], fraction=share)
            )
        held: list[list[str]] = [[], []]
        counters = [[0], [0]]
        for step, op in enumerate(ops):
            answers = [_run(ledger, op, held[k], counters[k]) for k, ledger in enumerate(ledgers)]
            assert answers[0] == answers[1], f"step {step}: {op}"
            assert _statuses(ledgers[0], ids) == _statuses(ledgers[1], ids), f"after step {step}: {op}"
        alerts = [
            [
                (a.budget_id, a.scope_id, a.threshold_percent, a.tier, a.action, a.message)
                for a in s.alerts_after(0, limit=1000)
            ]
            for s in (sqlite, redis)
        ]
        assert alerts[0] == alerts[1]
    finally:
        sqlite.close()
        redis.close()
