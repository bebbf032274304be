"""Tiered budgets as pure rules: the highest tier a request reaches decides, at every boundary, and a
budget without tiers is exactly the single-action rule it always was."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector_processor.domain.budgets import (
    Budget,
    BudgetDraft,
    BudgetPatch,
    OnExceed,
    Scope,
    Tier,
    apply_patch,
    build_budget,
    check_tiers,
    decode_tiers,
    encode_tiers,
)
from collector_processor.domain.decisions import (
    BudgetState,
    alert_message,
    charged_infos,
    evaluate,
    exceeds,
    plan_reservation,
    reached_tier,
    tier_by_spend,
)
from collector_processor.domain.periods import Window, parse_period
from collector_processor.domain.types import Decision
from collector_processor.errors import InvalidRequestError

W, D, B = OnExceed.WARN, OnExceed.DOWNGRADE, OnExceed.BLOCK
LADDER = (Tier(50, W), Tier(80, D), Tier(100, B))


def state(
    tiers: tuple[Tier, ...] = LADDER,
    *,
    used: int = 0,
    reserved: int = 0,
    limit: int = 1_000_000,
    bid: str = "t",
    action: OnExceed | None = None,
) -> BudgetState:
    budget = Budget(
        id=bid, name=bid.upper(), scope=Scope.TEAM, scope_id="search", limit_usd=Decimal(limit) / 10**6,
        period=parse_period("daily"), time_zone="UTC", on_exceed=action or (tiers[-1].action if tiers else B),
        alert_thresholds=(), tiers=tiers,
    )  # fmt: skip
    return BudgetState(
        budget=budget,
        entity="search",
        limit=limit,
        used=used,
        reserved=reserved,
        window=Window(0, 86_400_000),
    )


@pytest.mark.parametrize(
    ("estimate", "decision", "tier"),
    [
        (499_999, Decision.ALLOW, None),  # below 50%
        (500_000, Decision.ALLOW, None),  # exactly 50%: a tier is passed, not reached, by a positive estimate
        (500_001, Decision.ALLOW, Tier(50, W)),  # past 50%: warned
        (800_000, Decision.ALLOW, Tier(50, W)),
        (800_001, Decision.DOWNGRADE, Tier(80, D)),
        (1_000_000, Decision.DOWNGRADE, Tier(80, D)),
        (1_000_001, Decision.DENY, Tier(100, B)),
    ],
)
def test_every_tier_boundary(estimate: int, decision: Decision, tier: Tier | None) -> None:
    s = state()
    assert reached_tier(s, estimate) == tier
    verdict = evaluate([s], estimate)
    assert verdict.decision is decision
    assert verdict.tiers == ((tier,) if tier is not None else ())
    if decision is Decision.ALLOW:
        assert verdict.tier is None
        assert bool(verdict.warnings) == (tier is not None)
    else:
        assert verdict.tier == tier and verdict.deciding is s


def test_a_zero_estimate_reaches_a_tier_the_standing_is_at() -> None:
    assert reached_tier(state(used=500_000), 0) == Tier(50, W)
    assert reached_tier(state(used=499_999), 0) is None
    assert reached_tier(state(used=1_000_000), 0) == Tier(100, B)
    assert evaluate([state(used=800_000)], 0).decision is Decision.DOWNGRADE


def test_reserved_spend_counts_towards_the_tier() -> None:
    assert evaluate([state(used=400_000, reserved=400_000)], 1).decision is Decision.DOWNGRADE


def test_a_tier_above_100_percent_lets_a_soft_overrun_through() -> None:
    soft = state((Tier(100, W), Tier(120, B)))
    assert evaluate([soft], 1_100_000).decision is Decision.ALLOW
    assert evaluate([soft], 1_200_001).decision is Decision.DENY
    assert evaluate([soft], 1_100_000).exceeded == (True,)  # past the limit, still only a warning


def test_without_tiers_the_rule_is_the_single_action_rule() -> None:
    for action in OnExceed:
        plain = state((), action=action, used=700_000)
        for estimate in (0, 299_999, 300_000, 300_001, 2_000_000):
            tier = reached_tier(plain, estimate)
            assert (tier is not None) == exceeds(plain, estimate)
            assert tier in (None, Tier(100, action))


@given(
    used=st.integers(0, 3_000_000),
    reserved=st.integers(0, 3_000_000),
    estimate=st.integers(0, 3_000_000),
    limit=st.integers(0, 2_000_000),
)
def test_one_tier_at_100_percent_decides_exactly_as_a_single_action_budget(
    used: int, reserved: int, estimate: int, limit: int
) -> None:
    for action in OnExceed:
        single = state((), action=action, used=used, reserved=reserved, limit=limit)
        tiered = state((Tier(100, action),), used=used, reserved=reserved, limit=limit)
        a, b = evaluate([single], estimate), evaluate([tiered], estimate)
        assert (a.decision, a.exceeded, a.tiers) == (b.decision, b.exceeded, b.tiers)


def test_the_decision_names_the_tier_that_decided() -> None:
    verdict = evaluate([state(used=700_000, bid="search-daily")], 200_000)
    assert verdict.decision is Decision.DOWNGRADE
    assert verdict.reason.startswith(
        "Downgrade asked by the downgrade tier at 80% of budget 'SEARCH-DAILY' (team=search): "
        "used $0.70 + reserved $0.00 + estimate $0.20 = $0.90 exceeds 80% of the limit $1.00 ($0.80)"
    )
    denied = evaluate([state(used=700_000, bid="search-daily")], 400_000)
    assert denied.reason.startswith("Denied by the block tier at 100% of budget 'SEARCH-DAILY'")
    warned = evaluate([state(used=400_000)], 200_000)
    assert warned.warnings == (
        "Budget 'T' (team=search) reached its warn tier at 50%: used $0.40 + reserved $0.00 + estimate $0.20 = "
        "$0.60 exceeds 50% of the limit $1.00 ($0.50) in the daily period 1970-01-01 00:00 to "
        "1970-01-02 00:00 UTC (UTC).",
    )


def test_across_budgets_block_beats_downgrade_beats_warn_whatever_tier_said_it() -> None:
    warned = state((Tier(10, W),), bid="w")
    downgraded = state((Tier(10, W), Tier(20, D)), bid="d")
    blocked = state((Tier(30, B),), bid="b")
    assert evaluate([warned, downgraded, blocked], 400_000).deciding is blocked
    assert evaluate([warned, downgraded], 400_000).decision is Decision.DOWNGRADE
    assert evaluate([warned], 400_000).decision is Decision.ALLOW


def test_the_cheaper_path_is_held_to_block_tiers() -> None:
    s = state(used=700_000)
    plan = plan_reservation([s], 200_000, downgrade_estimate=50_000, resend=False)
    assert plan.decision is Decision.DOWNGRADE and plan.hold == 50_000
    plan = plan_reservation([s], 200_000, downgrade_estimate=400_000, resend=False)
    assert plan.decision is Decision.DENY and plan.verdict.tier == Tier(100, B)


def test_after_a_charge_the_tier_is_the_one_spend_is_past() -> None:
    assert tier_by_spend(state().budget, 800_000, 1_000_000) == Tier(50, W)
    assert tier_by_spend(state().budget, 800_001, 1_000_000) == Tier(80, D)
    (info,) = charged_infos([state(used=1_000_001)])
    assert info.exceeded and info.tier == Tier(100, B) and info.tiers == LADDER


def test_an_alert_at_a_tier_names_the_tier_and_what_it_does() -> None:
    budget = state().budget
    window = Window(0, 86_400_000)
    assert alert_message(budget, "search", 80, 810_000, 1_000_000, window) == (
        "Budget 'T' (team=search) reached its downgrade tier at 80% of its $1.00 daily limit: $0.81 spent in "
        "the daily period 1970-01-01 00:00 to 1970-01-02 00:00 UTC (UTC); requests past it are downgraded."
    )
    assert budget.alert_points == (50, 80, 100)
    assert replace(budget, alert_thresholds=(80, 90)).alert_points == (50, 80, 90, 100)


# -- validation ------------------------------------------------------------------------------------
def test_tiers_are_ordered_and_kept_in_order() -> None:
    assert check_tiers([Tier(100, B), Tier(50, W)]) == (Tier(50, W), Tier(100, B))
    assert decode_tiers(encode_tiers(LADDER)) == LADDER
    assert encode_tiers(LADDER) == "50:warn,80:downgrade,100:block"


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([Tier(0, W)], "tiers[0].at: must be a whole percentage 1-1000, got 0"),
        ([Tier(1001, W)], "tiers[0].at: must be a whole percentage 1-1000, got 1001"),
        ([Tier(50, W), Tier(50, B)], "tiers: two tiers at 50%"),
        (
            [Tier(50, B), Tier(80, W)],
            "tiers: the warn tier at 80% is less strict than the block tier at 50% below it",
        ),
        ([Tier(i, W) for i in range(1, 12)], "tiers: at most 10 tiers, got 11"),
    ],
)
def test_bad_tiers_are_refused_naming_the_field(tiers: list[Tier], message: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_tiers(tiers)
    assert str(refused.value).startswith(message)


def _draft(**kwargs: object) -> BudgetDraft:
    fields: dict[str, object] = {
        "id": "t", "scope": Scope.TEAM, "scope_id": "search", "limit_usd": Decimal(1), "period": "daily",
    }  # fmt: skip
    fields.update(kwargs)
    return BudgetDraft(**fields)  # type: ignore[arg-type]


def _build(draft: BudgetDraft) -> Budget:
    return build_budget(draft, default_time_zone="UTC", default_thresholds=(80,), generated_id="g", now_ms=0)


def test_a_tiered_budget_acts_as_its_strictest_tier_and_needs_no_on_exceed() -> None:
    budget = _build(_draft(tiers=(Tier(80, D), Tier(50, W))))
    assert budget.on_exceed is D and budget.tiers == (Tier(50, W), Tier(80, D))
    with pytest.raises(InvalidRequestError, match=r"budget\.on_exceed: is block, but the strictest"):
        _build(_draft(tiers=LADDER[:2], on_exceed=B))
    with pytest.raises(InvalidRequestError, match=r"budget\.on_exceed: is required"):
        _build(_draft())


def test_no_budget_is_created_on_the_request_scope() -> None:
    with pytest.raises(InvalidRequestError, match=r"budget\.scope: request budgets are opened per request"):
        _build(_draft(scope=Scope.REQUEST, on_exceed=B))


def test_tiers_are_changed_together_and_the_action_follows_them() -> None:
    single = _build(_draft(on_exceed=W))
    tiered = apply_patch(single, BudgetPatch(tiers=LADDER), now_ms=1)
    assert tiered.tiers == LADDER and tiered.on_exceed is B
    with pytest.raises(InvalidRequestError, match=r"on_exceed: budget 't' has tiers"):
        apply_patch(tiered, BudgetPatch(on_exceed=W), now_ms=2)
    back = apply_patch(tiered, BudgetPatch(tiers=(), on_exceed=D), now_ms=3)
    assert back.tiers == () and back.on_exceed is D
    kept = apply_patch(tiered, BudgetPatch(tiers=()), now_ms=4)
    assert kept.tiers == () and kept.on_exceed is B
