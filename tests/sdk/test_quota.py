"""The quota reserves before a step runs, reconciles after, and splits deterministically."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paymaster import Quota, UsageEstimate, UsageLimits


def est(cost: str | int = 0, tokens: int = 0) -> UsageEstimate:
    return UsageEstimate(cost_usd=Decimal(str(cost)), tokens=tokens)


def test_reservation_that_fits_is_granted_and_counted_as_reserved() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.25"))
    assert q.reserve(est("0.1"))
    assert q.reserved_cost == Decimal("0.1")
    assert q.remaining_cost == Decimal("0.15")


def test_reservation_that_does_not_fit_is_denied_and_takes_nothing() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit=0.25))
    assert q.reserve(est("0.2"))
    decision = q.reserve(est("0.1"))
    assert not decision
    assert decision.reason_code == "cost_limit"
    assert decision.message == "over the run's cost limit of $0.25"
    assert decision.breach is not None
    assert decision.breach.denied("draft") == (
        "step 'draft' was not run: its estimate $0.10 would take spend from $0.00 (+ $0.20 held by steps "
        "in flight) to $0.30, over the run's cost limit of $0.25"
    )
    assert q.reserved_cost == Decimal("0.2")


def test_token_limit_denial_names_the_token_limit() -> None:
    q = Quota(UsageLimits(total_tokens_limit=1000))
    decision = q.reserve(est(0, 1001))
    assert decision.reason_code == "token_limit"
    assert decision.message == "over the run's token limit of 1,000"
    assert decision.breach is not None
    assert decision.breach.denied("draft") == (
        "step 'draft' was not run: its estimate 1,001 tokens would take usage from 0 tokens to "
        "1,001 tokens, over the run's token limit of 1,000"
    )


def test_reconcile_replaces_the_reservation_with_the_actual() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit=1))
    q.reserve(est("0.3", 10))
    assert q.reconcile(est("0.3", 10), est("0.1", 4))
    assert (q.spent_cost, q.reserved_cost, q.spent_tokens, q.reserved_tokens) == (Decimal("0.1"), 0, 4, 0)


def test_overrunning_actual_is_recorded_and_reported_as_a_breach() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.25"))
    q.reserve(est(0))
    verdict = q.reconcile(est(0), est("0.3"))
    assert not verdict
    assert verdict.message == "over the run's cost limit of $0.25"
    assert verdict.breach is not None
    assert verdict.breach.exceeded("step 'draft'", estimate=Decimal(0)) == (
        "step 'draft' spent $0.30 (estimated $0.00), taking spend from $0.00 to $0.30, "
        "over the run's cost limit of $0.25"
    )
    assert q.spent_cost == Decimal("0.3")  # what was really spent, not clipped to the limit


def test_exact_money_one_tenth_plus_two_tenths_is_three_tenths() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.3"))
    for amount in (0.1, 0.2):
        q.reserve(est(0))
        assert q.reconcile(est(0), UsageEstimate(cost_usd=amount))  # type: ignore[arg-type]
    assert q.spent_cost == Decimal("0.3")
    assert q.remaining_cost == 0


def test_child_quota_reserves_from_its_parent_too() -> None:
    run = Quota(UsageLimits(total_cost_usd_limit=1))
    step = run.child(UsageLimits(total_cost_usd_limit="0.1"), label="draft")
    refused = step.reserve(est("0.2"))
    assert not refused and refused.message == "over the cost limit of $0.10 on step 'draft'"
    assert run.reserved_cost == 0
    assert step.reserve(est("0.05"))
    assert run.reserved_cost == Decimal("0.05")
    step.reconcile(est("0.05"), est("0.04"))
    assert run.spent_cost == Decimal("0.04")


def test_child_reservation_is_denied_by_a_tighter_parent() -> None:
    run = Quota(UsageLimits(total_cost_usd_limit="0.1"))
    step = run.child(UsageLimits(total_cost_usd_limit=5), label="draft")
    decision = step.reserve(est("0.2"))
    assert decision.message == "over the run's cost limit of $0.10"


def test_actual_above_estimate_breaches_when_siblings_hold_the_rest() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.10"))
    q.reserve(est("0.05"))
    q.reserve(est("0.05"))
    verdict = q.reconcile(est("0.05"), est("0.07"))
    assert not verdict and verdict.reason_code == "cost_limit"
    assert q.spent_cost == Decimal("0.07")


def test_release_gives_the_reservation_back() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit=1))
    q.reserve(est("0.4", 3))
    q.release(est("0.4", 3))
    assert (q.reserved_cost, q.spent_cost, q.reserved_tokens) == (0, 0, 0)


def test_settling_more_than_was_reserved_is_a_programming_error() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit=1))
    with pytest.raises(ValueError, match="settled more than was reserved"):
        q.release(est("0.1"))


def test_split_parts_sum_exactly_to_the_parent_and_zero_it() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.10", total_tokens_limit=1000))
    parts = q.split(3)
    assert sum((p.cost_limit for p in parts), Decimal(0)) == Decimal("0.10")
    assert sum(p.token_limit for p in parts) == 1000  # type: ignore[misc]
    assert [p.token_limit for p in parts] == [334, 333, 333]
    assert q.remaining_cost == 0 and q.remaining_tokens == 0


def test_split_is_deterministic_and_weighted_by_estimates() -> None:
    weights = [est("0.06", 60), est("0.01", 10)]
    a = Quota(UsageLimits(total_cost_usd_limit="0.10", total_tokens_limit=101)).split(2, weights=weights)
    b = Quota(UsageLimits(total_cost_usd_limit="0.10", total_tokens_limit=101)).split(2, weights=weights)
    assert [(p.cost_limit, p.token_limit) for p in a] == [(p.cost_limit, p.token_limit) for p in b]
    # 0.10 * 6/7 = 0.0857142.., 0.10 * 1/7 = 0.0142857..: the leftover micro-dollar goes to the
    # larger fractional share.
    assert a[0].cost_limit == Decimal("0.085714") and a[1].cost_limit == Decimal("0.014286")
    assert [p.token_limit for p in a] == [87, 14]


def test_split_keeps_sub_micro_precision_in_the_first_part() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.0000105"))
    parts = q.split(2)
    assert sum((p.cost_limit for p in parts), Decimal(0)) == Decimal("0.0000105")


def test_merge_charges_what_parts_spent_and_returns_the_rest() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.10"))
    parts = q.split(2)
    parts[0].reserve(est(0))
    parts[0].reconcile(est(0), est("0.03"))
    assert q.merge(parts)
    assert q.spent_cost == Decimal("0.03")
    assert q.remaining_cost == Decimal("0.07")


def test_a_split_part_refuses_past_its_share_with_a_message_naming_the_branch() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit="0.10"))
    parts = q.split(2, labels=["a", "b"], owner="research")
    decision = parts[0].reserve(est("0.06"))
    assert decision.message == "over the cost share of $0.05 of branch 'a' of parallel step 'research'"


def test_splitting_an_unlimited_quota_gives_unlimited_parts() -> None:
    parts = Quota().split(4)
    assert all(p.cost_limit is None and p.token_limit is None for p in parts)
    assert all(p.reserve(est(10**6, 10**9)) for p in parts)


def test_split_twice_without_merge_is_refused() -> None:
    q = Quota(UsageLimits(total_cost_usd_limit=1))
    q.split(2)
    with pytest.raises(RuntimeError, match="already split"):
        q.split(2)


# ------------------------------------------------------------------ properties
amounts = st.decimals(min_value=0, max_value=Decimal("0.2"), places=3)
ops = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "reconcile", "release", "split"]), amounts, amounts, st.integers(0, 50)
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.decimals(min_value=0, max_value=1, places=2), token_limit=st.integers(0, 300), script=ops)
def test_reserved_plus_spent_never_exceeds_the_limit_but_for_the_halting_actual(
    limit: Decimal, token_limit: int, script: list[tuple[str, Decimal, Decimal, int]]
) -> None:
    """Random reserve/reconcile/release/split sequences keep spent+reserved within every limit,
    except by the one overrunning actual that triggers the halt (after which the run stops)."""
    root = Quota(UsageLimits(total_cost_usd_limit=limit, total_tokens_limit=token_limit))
    live: list[tuple[Quota, UsageEstimate]] = []
    quotas = [root]
    splits: list[tuple[Quota, list[Quota]]] = []

    def within(q: Quota) -> bool:
        ok_cost = q.cost_limit is None or q.spent_cost + q.reserved_cost <= q.cost_limit
        ok_tokens = q.token_limit is None or q.spent_tokens + q.reserved_tokens <= q.token_limit
        return ok_cost and ok_tokens

    for op, a, b, n in script:
        target = quotas[n % len(quotas)]
        if op == "reserve":
            e = est(a, n)
            if target.reserve(e):
                live.append((target, e))
        elif op in ("reconcile", "release") and live:
            q, e = live.pop(n % len(live))
            if op == "release":
                q.release(e)
            elif not q.reconcile(e, est(b, n)):
                return  # the halting actual: the run stops here
        elif op == "split" and target._allocated is None and n % 3 == 0:
            parts = target.split(1 + n % 4)
            splits.append((target, parts))
            quotas.extend(parts)
        assert all(within(q) for q in quotas)
    for q, e in reversed(live):
        q.release(e)
    for parent, parts in reversed(splits):
        assert parent.merge(parts)
    assert root.reserved_cost == 0 and root.reserved_tokens == 0
    assert within(root)
