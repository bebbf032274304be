"""Tiered budgets in the ledger, on every store: each tier boundary decides the same way, the answer
names the tier, and every tier alerts once per period — not again after a restart, again next period."""

from __future__ import annotations

from decimal import Decimal

import pytest

from collector_processor.domain.budgets import BudgetPatch, OnExceed, Scope, ScopeSet, Tier
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.types import (
    CommitCommand,
    Decision,
    RecordUsageCommand,
    ReserveCommand,
    UsageBatch,
    UsageGroup,
)
from collector_processor.ledger import Ledger
from tests.sidecar.conftest import StoreFactory, draft

D = Decimal
SEARCH = ScopeSet(team="search")
W, DG, B = OnExceed.WARN, OnExceed.DOWNGRADE, OnExceed.BLOCK
LADDER = (Tier(50, W), Tier(80, DG), Tier(100, B))


def _tiered(ledger: Ledger, budget_id: str = "tiered", limit: str = "1", **kwargs: object) -> None:
    ledger.create_budget(draft(budget_id, limit=limit, on_exceed=None, tiers=LADDER, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("estimate", "decision", "tier"),
    [
        ("0.5", Decision.ALLOW, None),
        ("0.500001", Decision.ALLOW, Tier(50, W)),
        ("0.8", Decision.ALLOW, Tier(50, W)),
        ("0.800001", Decision.DOWNGRADE, Tier(80, DG)),
        ("1", Decision.DOWNGRADE, Tier(80, DG)),
        ("1.000001", Decision.DENY, Tier(100, B)),
    ],
)
def test_each_tier_boundary_decides_on_every_store(
    ledger: Ledger, estimate: str, decision: Decision, tier: Tier | None
) -> None:
    _tiered(ledger)
    checked = ledger.check(SEARCH, D(estimate))
    reserved = ledger.reserve(
        ReserveCommand(scopes=SEARCH, estimate_usd=D(estimate), downgrade_estimate_usd=D(0))
    )
    for outcome in (checked, reserved):
        assert outcome.decision is decision
        (info,) = outcome.budget_info
        assert info.tiers == LADDER and info.action is B
    # The standing says which tier the estimate reaches; a downgrade holds (and shows) the cheaper path's.
    assert checked.budget_info[0].tier == tier
    assert checked.deciding_tier == (None if decision is Decision.ALLOW else tier)
    if decision is Decision.ALLOW:
        assert reserved.deciding_tier is None
        assert bool(reserved.warnings) == (tier is not None)
    else:
        assert reserved.deciding_tier == tier and reserved.deciding_budget_id == "tiered"
        assert f"the {tier.action.value} tier at {tier.at}% of budget 'tiered'" in reserved.reason  # type: ignore[union-attr]


def test_spend_already_held_moves_the_next_request_up_the_tiers(ledger: Ledger) -> None:
    _tiered(ledger)
    first = ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D("0.6")))
    assert first.decision is Decision.ALLOW and first.warnings
    second = ledger.reserve(
        ReserveCommand(scopes=SEARCH, estimate_usd=D("0.3"), downgrade_estimate_usd=D("0.1"))
    )
    assert second.decision is Decision.DOWNGRADE and second.reserved_usd == D("0.1")
    ledger.commit(CommitCommand(reservation_id=first.reservation_id, actual_usd=D("0.6")))
    charged = ledger.commit(CommitCommand(reservation_id=second.reservation_id, actual_usd=D("0.45")))
    (info,) = charged.budget_info
    assert info.used_usd == D("1.05") and info.exceeded and info.tier == Tier(100, B)


def test_a_replayed_reservation_names_its_tier(ledger: Ledger) -> None:
    _tiered(ledger)
    command = ReserveCommand(
        scopes=SEARCH, estimate_usd=D("0.9"), downgrade_estimate_usd=D("0.2"), idempotency_key="k1"
    )
    first = ledger.reserve(command)
    again = ledger.reserve(command)
    assert again.replayed and again.deciding_tier == first.deciding_tier == Tier(80, DG)


def test_a_single_action_budget_keeps_working_unchanged(ledger: Ledger) -> None:
    ledger.create_budget(draft("plain", limit="1", on_exceed=B))
    allowed = ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D("1")))
    assert allowed.decision is Decision.ALLOW and allowed.deciding_tier is None
    assert allowed.budget_info[0].tier is None and allowed.budget_info[0].tiers == ()
    denied = ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D("0.000001")))
    assert denied.decision is Decision.DENY and denied.reason.startswith("Denied by block budget 'plain'")
    assert denied.deciding_tier == Tier(100, B)


def test_changing_tiers_applies_to_the_next_request(ledger: Ledger) -> None:
    ledger.create_budget(draft("team", limit="1", on_exceed=W))
    assert ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D("2"))).decision is Decision.ALLOW
    updated = ledger.update_budget("team", BudgetPatch(tiers=(Tier(100, W), Tier(300, B))))
    assert updated.on_exceed is B and updated.tiers == (Tier(100, W), Tier(300, B))
    assert ledger.get_budget("team").tiers == updated.tiers
    assert ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D("1.5"))).decision is Decision.DENY


def test_every_tier_alerts_once_per_period_across_a_restart_and_again_next_period(
    store_factory: StoreFactory, clock: ManualClock
) -> None:
    ledger = Ledger(store_factory.open(), clock=clock)
    _tiered(ledger, limit="10", thresholds=(90,))

    def spend(amount: str, on: Ledger) -> None:
        on.record_usage(
            RecordUsageCommand(usage_id=f"u{clock.now_ms()}-{amount}", scopes=SEARCH, cost_usd=D(amount))
        )
        clock.advance(seconds=1)

    spend("5", ledger)  # 50%: the warn tier is reached, not passed
    spend("0.5", ledger)  # 55%
    spend("3", ledger)  # 85%
    store = store_factory.opened[-1]
    alerts = store.alerts_after(0, limit=10)
    assert [(a.threshold_percent, a.tier, a.action) for a in alerts] == [(50, True, W), (80, True, DG)]
    assert "reached its downgrade tier at 80%" in alerts[1].message
    store_factory.close_all()
    restarted = Ledger(store_factory.open(), clock=clock)
    spend("0.4", restarted)  # 89%: nothing new after the restart
    store = store_factory.opened[-1]
    assert len(store.alerts_after(0, limit=10)) == 2
    spend("1.1", restarted)  # 100%: the plain threshold at 90 and the block tier
    alerts = store.alerts_after(0, limit=10)
    assert [(a.threshold_percent, a.tier, a.action) for a in alerts[2:]] == [(90, False, B), (100, True, B)]
    spend("5", restarted)  # past every tier: still nothing new this period
    assert len(store.alerts_after(0, limit=10)) == 4
    assert restarted.budget_status("tiered").alerts_fired == (50, 80, 90, 100)
    clock.advance(seconds=86_400)  # the next day: every tier fires again
    spend("8.5", restarted)
    assert [a.threshold_percent for a in store.alerts_after(0, limit=10)[4:]] == [50, 80]


def test_a_batch_fires_the_tiers_it_crosses_once(ledger: Ledger, clock: ManualClock) -> None:
    _tiered(ledger, limit="1")
    now = clock.now_ms()
    group = UsageGroup(scopes=SEARCH, model="m", occurred_ms=now)
    items = [(now, bytes([i]) * 24, 0, 300_000, 1, 1, 0, 0, 0, 0) for i in range(3)]
    ledger.record_usage_batch(UsageBatch(groups=(group,), items=items))
    ledger.record_usage_batch(UsageBatch(groups=(group,), items=items))  # the same spans again
    alerts = ledger.store.alerts_after(0, limit=10)
    assert [(a.threshold_percent, a.tier) for a in alerts] == [(50, True), (80, True)]


def test_a_wildcard_tiered_budget_tiers_each_entity(ledger: Ledger) -> None:
    ledger.create_budget(draft("per-user", Scope.USER, None, "1", on_exceed=None, tiers=LADDER))  # type: ignore[arg-type]
    ada, bob = ScopeSet(user="ada"), ScopeSet(user="bob")
    held = ledger.reserve(ReserveCommand(scopes=ada, estimate_usd=D("0.9"), downgrade_estimate_usd=D("0.1")))
    assert held.decision is Decision.DOWNGRADE
    bob_held = ledger.reserve(
        ReserveCommand(scopes=bob, estimate_usd=D("0.9"), downgrade_estimate_usd=D("0.1"))
    )
    assert bob_held.decision is Decision.DOWNGRADE and bob_held.reserved_usd == D("0.1")
    assert ledger.reserve(ReserveCommand(scopes=bob, estimate_usd=D("0.45"))).warnings  # 55% of bob's
