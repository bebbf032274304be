"""The decision rules as pure functions: block denies, downgrade downgrades, warn only warns."""

from __future__ import annotations

from decimal import Decimal

from collector_processor.domain.budgets import Budget, OnExceed, Scope
from collector_processor.domain.decisions import BudgetState, evaluate, exceeds, plan_reservation
from collector_processor.domain.periods import Window, parse_period
from collector_processor.domain.types import Decision


def state(
    action: OnExceed, *, used: int = 0, reserved: int = 0, limit: int = 1_000_000, bid: str = "b"
) -> BudgetState:
    budget = Budget(
        id=bid, name=bid.upper(), scope=Scope.TEAM, scope_id="search", limit_usd=Decimal(limit) / 10**6,
        period=parse_period("daily"), time_zone="UTC", on_exceed=action, alert_thresholds=(),
    )  # fmt: skip
    return BudgetState(
        budget=budget,
        entity="search",
        limit=limit,
        used=used,
        reserved=reserved,
        window=Window(0, 86_400_000),
    )


def test_a_budget_is_exceeded_when_used_plus_reserved_plus_estimate_passes_the_limit() -> None:
    s = state(OnExceed.BLOCK, used=600_000, reserved=300_000)
    assert not exceeds(s, 100_000)  # exactly at the limit still fits
    assert exceeds(s, 100_001)


def test_a_used_up_budget_admits_not_even_a_zero_estimate() -> None:
    assert exceeds(state(OnExceed.BLOCK, used=1_000_000), 0)
    assert not exceeds(state(OnExceed.BLOCK, used=999_999), 0)
    assert exceeds(state(OnExceed.BLOCK, limit=0), 0)  # a zero limit is a kill switch


def test_block_beats_downgrade_beats_warn() -> None:
    warn = state(OnExceed.WARN, bid="w")
    down = state(OnExceed.DOWNGRADE, bid="d")
    block = state(OnExceed.BLOCK, bid="k")
    verdict = evaluate([warn, down, block], 2_000_000)
    assert verdict.decision is Decision.DENY
    assert verdict.deciding is block
    assert verdict.exceeded == (True, True, True)
    assert len(verdict.warnings) == 1 and "Warn budget 'W'" in verdict.warnings[0]
    assert evaluate([warn, down], 2_000_000).decision is Decision.DOWNGRADE
    only_warn = evaluate([warn], 2_000_000)
    assert only_warn.decision is Decision.ALLOW and only_warn.warnings


def test_the_deny_reason_names_the_budget_its_figures_the_reset_and_what_to_change() -> None:
    verdict = evaluate([state(OnExceed.BLOCK, used=900_000, reserved=50_000, bid="team-search")], 100_000)
    assert verdict.reason.startswith("Denied by block budget 'TEAM-SEARCH' (team=search)")
    assert "used $0.90 + reserved $0.05 + estimate $0.10 = $1.05 exceeds the limit $1.00" in verdict.reason
    assert "paymaster budgets update team-search --limit" in verdict.reason
    assert "reset at 1970-01-02 00:00 UTC" in verdict.reason


def test_downgrade_with_a_cheaper_estimate_up_front_holds_the_cheaper_estimate() -> None:
    down = state(OnExceed.DOWNGRADE, used=900_000)
    plan = plan_reservation([down], 200_000, downgrade_estimate=50_000, resend=False)
    assert (plan.decision, plan.hold, plan.awaiting_downgrade_estimate) == (Decision.DOWNGRADE, 50_000, False)


def test_downgrade_without_a_cheaper_estimate_holds_the_full_estimate_until_the_resend() -> None:
    down = state(OnExceed.DOWNGRADE, used=900_000)
    plan = plan_reservation([down], 200_000, downgrade_estimate=None, resend=False)
    assert (plan.decision, plan.hold, plan.awaiting_downgrade_estimate) == (Decision.DOWNGRADE, 200_000, True)
    resent = plan_reservation([down], 150_000, downgrade_estimate=None, resend=True)
    assert (resent.decision, resent.hold) == (
        Decision.DOWNGRADE,
        150_000,
    )  # the cheaper path is admitted past the limit


def test_block_budgets_still_apply_to_the_cheaper_path() -> None:
    down = state(OnExceed.DOWNGRADE, used=900_000, bid="soft")
    hard = state(OnExceed.BLOCK, used=900_000, limit=1_500_000, bid="hard")
    assert (
        plan_reservation([down, hard], 200_000, downgrade_estimate=700_000, resend=False).decision
        is Decision.DENY
    )
    fits = plan_reservation([down, hard], 200_000, downgrade_estimate=100_000, resend=False)
    assert (fits.decision, fits.hold) == (Decision.DOWNGRADE, 100_000)


def test_no_matching_budget_allows_and_says_so() -> None:
    verdict = evaluate([], 5_000_000)
    assert verdict.decision is Decision.ALLOW
    assert verdict.reason == "No enabled budget matches these scopes."
