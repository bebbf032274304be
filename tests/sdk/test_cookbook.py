"""The usage governor cookbook's three scenarios, with their exact figures.

The cookbook's figures are those of a runner that reserves nothing for a step that declares no
estimate, which is Paymaster's behaviour without learning (``ExecutorCore(learned=None)``); by
default a step's second call reserves what its first cost, and the runaway loop is denied before
the call that would pass the limit instead of after it."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from paymaster import ExecutorCore, Pipeline, Runner, Step, StepConfig, UsageLimitExceededError, UsageLimits

from .agents import CostlyAgent, FixedMetricAgent


def governed_loop(config: StepConfig | None = None) -> Step:
    body = Pipeline.from_step(
        Step.model_validate({"name": "metric_step", "agent": FixedMetricAgent(), "config": config})
    )
    return Step.loop_until(
        name="governed_loop",
        loop_body_pipeline=body,
        exit_condition_callable=lambda out, ctx: out.value >= 10,
        max_loops=20,
    )


def test_runaway_loop_halts_after_three_iterations_at_thirty_cents() -> None:
    runner = Runner(
        governed_loop(),
        usage_limits=UsageLimits(total_cost_usd_limit=0.25, total_tokens_limit=None),
        executor=ExecutorCore(learned=None),
    )
    with pytest.raises(UsageLimitExceededError) as info:
        runner.run(0)
    err = info.value
    assert str(err) == (
        "step 'metric_step' spent $0.10 (estimated $0.00), taking spend from $0.20 to $0.30, "
        "over the run's cost limit of $0.25"
    )
    assert err.code == "cost_limit_exceeded" and err.step == "metric_step"
    assert err.result is err.partial_result
    loop = err.result.step_history[0]
    assert loop.attempts == 3
    assert loop.output is None  # halted mid-iteration
    assert err.result.total_cost_usd == Decimal("0.30")
    assert [it.cost_usd for it in loop.step_history] == [Decimal("0.1")] * 3
    assert err.result.halted_step is loop.step_history[2].step_history[0]
    assert err.result.halted_at == "governed_loop[3].metric_step"


def test_by_default_the_runaway_loop_is_denied_before_the_call_that_would_pass_the_limit() -> None:
    runner = Runner(governed_loop(), usage_limits=UsageLimits(total_cost_usd_limit=0.25))
    with pytest.raises(UsageLimitExceededError) as info:
        runner.run(0)
    err = info.value
    assert err.code == "cost_limit_denied"
    assert str(err) == (
        "step 'metric_step' was not run: its estimate $0.10 would take spend from $0.20 to $0.30, "
        "over the run's cost limit of $0.25"
    )
    assert err.result.total_cost_usd == Decimal("0.20")
    assert err.result.halted_at == "governed_loop[3].metric_step"
    assert err.result.halted_step.denied and err.result.halted_step.estimate_strategy == "learned"


def test_declared_estimate_denies_the_third_iteration_before_it_runs() -> None:
    agent_cfg = StepConfig(expected_cost_usd=0.1)
    runner = Runner(governed_loop(agent_cfg), usage_limits=UsageLimits(total_cost_usd_limit=0.25))
    with pytest.raises(UsageLimitExceededError) as info:
        runner.run(0)
    result = info.value.result
    assert result.total_cost_usd == Decimal("0.20")
    denied = [s for s in result.walk() if s.denied]
    assert len(denied) == 1
    assert denied[0].attempts == 0 and denied[0].cost_usd == 0
    assert denied[0].feedback == (
        "step 'metric_step' was not run: its estimate $0.10 would take spend from $0.20 to $0.30, "
        "over the run's cost limit of $0.25"
    )
    assert denied[0].denial_code == "cost_limit_denied"


def test_parallel_breach_cancels_the_slow_branch_at_once() -> None:
    slow = CostlyAgent(cost=0.01, delay=0.5)
    branches = {
        "fast_expensive": Step.model_validate(
            {"name": "fast_expensive", "agent": CostlyAgent(cost=0.15, delay=0.05)}
        ),
        "slow_cheap": Step.model_validate({"name": "slow_cheap", "agent": slow}),
    }
    runner = Runner(
        Step.parallel("parallel_cancellation", branches), usage_limits=UsageLimits(total_cost_usd_limit=0.10)
    )
    started = time.monotonic()
    with pytest.raises(UsageLimitExceededError) as info:
        runner.run("input")
    elapsed = time.monotonic() - started
    assert str(info.value) == (
        "step 'fast_expensive' spent $0.15 (estimated $0.00), taking spend from $0.00 to $0.15, "
        "over the run's cost limit of $0.10"
    )
    assert elapsed < 0.5, "the slow branch must be cancelled, not awaited"
    result = info.value.result
    assert result.total_cost_usd == Decimal("0.15")
    par = result.step_history[0]
    by_name = {b.name: b for b in par.step_history}
    assert by_name["fast_expensive"].cost_usd == Decimal("0.15")
    assert by_name["slow_cheap"].cancelled and by_name["slow_cheap"].cost_usd == 0
    assert slow.cancelled == 1 and slow.finished == 0


def test_loop_around_parallel_halts_with_the_spend_it_really_made() -> None:
    inner = Step.parallel(
        "inner_parallel",
        {
            "a": Step.model_validate({"name": "a", "agent": FixedMetricAgent()}),
            "b": Step.model_validate({"name": "b", "agent": FixedMetricAgent()}),
        },
    )
    outer = Step.loop_until(
        name="outer_loop",
        loop_body_pipeline=Pipeline.from_step(inner),
        exit_condition_callable=lambda _out, _ctx: False,
        iteration_input_mapper=lambda _out, _ctx, _i: 0,
        max_loops=10,
    )
    limits = UsageLimits(total_cost_usd_limit=0.5)
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(outer, usage_limits=limits, executor=ExecutorCore(learned=None)).run(0)
    result = info.value.result
    assert str(info.value) == (
        "step 'b' spent $0.10 (estimated $0.00), taking spend from $0.50 to $0.60, "
        "over the run's cost limit of $0.50"
    )
    assert result.step_history[0].attempts == 3
    spent = sum((s.cost_usd for s in result.walk() if s.kind == "agent" and s.cost_usd), Decimal(0))
    assert result.total_cost_usd == spent == Decimal("0.6")


def test_async_run_gives_the_same_result() -> None:
    runner = Runner(
        governed_loop(),
        usage_limits=UsageLimits(total_cost_usd_limit=0.25),
        executor=ExecutorCore(learned=None),
    )

    async def main() -> Decimal:
        try:
            await runner.run_async(0)
        except UsageLimitExceededError as e:
            assert e.result is not None
            return e.result.total_cost_usd
        raise AssertionError("expected a halt")

    assert asyncio.run(main()) == Decimal("0.30")
