"""Parallel steps never spend the same money twice, under either quota strategy."""

from __future__ import annotations

from decimal import Decimal

import pytest

from paymaster import Pipeline, Runner, Step, StepConfig, UsageLimitExceededError, UsageLimits

from .agents import CostlyAgent


def branches(a_cost: float, b_cost: float, **config: StepConfig) -> dict[str, Step]:
    return {
        "a": Step("a", CostlyAgent(cost=a_cost, delay=0.01), config=config.get("a")),
        "b": Step("b", CostlyAgent(cost=b_cost, delay=0.02), config=config.get("b")),
    }


def test_shared_quota_lets_uneven_branches_both_succeed() -> None:
    result = Runner(
        Step.parallel("p", branches(0.06, 0.01)), usage_limits=UsageLimits(total_cost_usd_limit=0.10)
    ).run(0)
    assert result.success
    assert result.total_cost_usd == Decimal("0.07")
    assert set(result.output) == {"a", "b"}


def test_split_quota_without_estimates_halts_the_branch_that_passes_its_equal_share() -> None:
    par = Step.parallel("p", branches(0.06, 0.01), quota="split")
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(par, usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    assert str(info.value) == (
        "step 'a' spent $0.06 (estimated $0.00), taking spend from $0.00 to $0.06, "
        "over the cost share of $0.05 of branch 'a' of parallel step 'p'"
    )
    assert info.value.result.total_cost_usd == Decimal("0.06")


def test_split_quota_weighted_by_estimates_lets_both_succeed() -> None:
    cfg = {"a": StepConfig(expected_cost_usd=0.06), "b": StepConfig(expected_cost_usd=0.01)}
    par = Step.parallel("p", branches(0.06, 0.01, **cfg), quota="split")
    result = Runner(par, usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    assert result.success and result.total_cost_usd == Decimal("0.07")


def test_split_returns_unused_shares_to_the_parent() -> None:
    par = Step.parallel("p", branches(0.01, 0.01), quota="split")
    pipe = par >> Step("after", CostlyAgent(cost=0.07, delay=0), config=StepConfig(expected_cost_usd=0.07))
    result = Runner(pipe, usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    assert result.success and result.total_cost_usd == Decimal("0.09")


def test_shared_reservations_are_atomic_across_concurrent_branches() -> None:
    """Ten branches each declaring $0.03 under $0.10: exactly three may run, never four."""
    cfg = StepConfig(expected_cost_usd=0.03)
    agents = [CostlyAgent(cost=0.03, delay=0.05) for _ in range(10)]
    par = Step.parallel("p", {f"b{i}": Step(f"b{i}", a, config=cfg) for i, a in enumerate(agents)})
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(par, usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    assert sum(a.calls for a in agents) == 3
    denied = [s for s in info.value.result.walk() if s.denied]
    assert len(denied) == 7 and all(s.attempts == 0 for s in denied)
    assert info.value.result.total_cost_usd == 0  # the three running were cancelled before reporting


def test_breach_reports_what_every_branch_spent() -> None:
    par = Step.parallel(
        "p",
        {
            "quick": Pipeline.from_step(Step("q1", CostlyAgent(cost=0.02, delay=0.0)))
            >> Step("q2", CostlyAgent(cost=0.2, delay=0.01)),
            "slow": Step("slow", CostlyAgent(cost=0.01, delay=1.0)),
            "cheap": Step("cheap", CostlyAgent(cost=0.01, delay=0.0)),
        },
    )
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(par, usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    branch = {b.name: b for b in info.value.result.step_history[0].step_history}
    assert branch["quick"].cost_usd == Decimal("0.22")
    assert branch["cheap"].cost_usd == Decimal("0.01") and branch["cheap"].success
    assert branch["slow"].cancelled and branch["slow"].cost_usd == 0
    assert info.value.result.total_cost_usd == Decimal("0.23")


def test_a_failed_branch_fails_the_parallel_step_without_cancelling_siblings() -> None:
    class Boom:
        async def run(self, data: object) -> object:
            raise ValueError("bad input")

    slow = CostlyAgent(cost=0.01, delay=0.05)
    result = Runner(Step.parallel("p", {"boom": Step("boom", Boom()), "slow": Step("slow", slow)})).run(0)
    assert not result.success
    assert slow.finished == 1
    assert result.step_history[0].feedback == "branch(es) ['boom'] failed"


def split_pair(name: str, cost: float, **kwargs: object) -> Step:
    return Step.parallel(name, branches(cost, cost), quota="split", **kwargs)  # type: ignore[arg-type]


def test_two_split_parallels_on_one_shared_quota_are_refused_when_built() -> None:
    """A quota is split by one parallel at a time: sibling branches of a shared parallel that would
    each split it at once are a configuration error, said when the pipeline is built (not a crash
    midway through a run), naming the steps and the way out."""
    left, right = split_pair("left", 0.01), Pipeline.from_step(Step("pre", CostlyAgent(cost=0))) >> Step.loop_until(
        name="again", loop_body_pipeline=Pipeline.from_step(split_pair("right", 0.01)),
        exit_condition_callable=lambda out, ctx: True, max_loops=2,
    )  # fmt: skip
    with pytest.raises(Exception, match=r"Parallel step 'outer': branches 'l' and 'r' both run a split parallel \('left', 'right'\)") as info:  # fmt: skip
        Step.parallel("outer", {"l": left, "r": right})
    assert type(info.value).__name__ == "ConfigError"
    assert "give 'outer' quota='split'" in str(info.value)


@pytest.mark.parametrize("way_out", ["outer split", "own limits"])
def test_nested_split_parallels_run_and_charge_once(way_out: str) -> None:
    own = {"usage_limits": UsageLimits(total_cost_usd_limit=0.04)} if way_out == "own limits" else {}
    left = split_pair("left", 0.01, **own)
    right = split_pair("right", 0.01, **own)
    outer = Step.parallel(
        "outer", {"l": left, "r": right}, quota="split" if way_out == "outer split" else "shared"
    )
    result = Runner(outer, usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    assert result.success and result.total_cost_usd == Decimal("0.04")
    assert sorted(path for path, _ in result.agent_calls()) == [
        "outer.l.left.a",
        "outer.l.left.b",
        "outer.r.right.a",
        "outer.r.right.b",
    ]
