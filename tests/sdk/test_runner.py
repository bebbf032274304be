"""The runner executes pipelines, tracks every step's cost and tokens exactly, and enforces limits."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from paymaster import (
    ConfigError,
    ExecutorCore,
    Pipeline,
    Runner,
    Step,
    StepConfig,
    UsageEstimate,
    UsageLimitExceededError,
    UsageLimits,
    UsageReportError,
)

from .agents import FixedMetricAgent, FlakyAgent, MetricOutput, SyncAgent


def test_steps_compose_with_rshift_and_pass_outputs_along() -> None:
    pipe = (
        Pipeline.from_step(Step("one", FixedMetricAgent()))
        >> Step("two", FixedMetricAgent())
        >> (Step("three", FixedMetricAgent()) >> Step("four", FixedMetricAgent()))
    )
    result = Runner(pipe).run(0)
    assert result.success
    assert [s.name for s in result.step_history] == ["one", "two", "three", "four"]
    assert result.output.value == 4
    assert result.total_cost_usd == Decimal("0.4")
    assert result.total_tokens == 400


def test_float_costs_total_exactly() -> None:
    pipe = Step("a", FixedMetricAgent(cost=0.1)) >> Step("b", FixedMetricAgent(cost=0.2))
    result = Runner(pipe).run(0)
    assert result.total_cost_usd == Decimal("0.3")
    assert isinstance(result.step_history[0].cost_usd, Decimal)


def test_step_result_records_attempts_latency_and_source() -> None:
    result = Runner(Step("a", FixedMetricAgent())).run(0)
    step = result.step_history[0]
    assert (step.name, step.success, step.attempts, step.token_counts) == ("a", True, 1, 100)
    assert step.cost_source == "explicit"
    assert step.latency_s > 0
    assert step.feedback is None


def test_sync_agents_work_too() -> None:
    result = Runner(Step("s", SyncAgent())).run("x")
    assert result.output.value == "sync:x"
    assert result.total_cost_usd == Decimal("0.01")


def test_negative_cost_reported_by_an_agent_is_rejected_not_subtracted() -> None:
    runner = Runner(Step("a", FixedMetricAgent(cost=0.5)) >> Step("refund", FixedMetricAgent(cost=-0.4)))
    with pytest.raises(
        UsageReportError, match=r"cost_usd reported by the agent must not be negative, got -0.4"
    ):
        runner.run(0)


def test_negative_tokens_are_rejected() -> None:
    with pytest.raises(UsageReportError, match=r"token_counts reported by the agent must not be negative"):
        Runner(Step("a", FixedMetricAgent(tokens=-5))).run(0)


def test_token_limit_halts_with_its_message() -> None:
    pipe = Step("a", FixedMetricAgent(tokens=600)) >> Step("b", FixedMetricAgent(tokens=600))
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(pipe, usage_limits=UsageLimits(total_tokens_limit=1000)).run(0)
    assert str(info.value) == (
        "step 'b' used 600 tokens (estimated 0 tokens), taking usage from 600 tokens to 1,200 tokens, "
        "over the run's token limit of 1,000"
    )
    assert info.value.code == "token_limit_exceeded"
    assert info.value.result.total_tokens == 1200


def test_step_level_limits_are_enforced_as_a_child_quota() -> None:
    expensive = Step(
        "expensive", FixedMetricAgent(cost=0.2), usage_limits=UsageLimits(total_cost_usd_limit=0.1)
    )
    pipe = Step("cheap", FixedMetricAgent(cost=0.01)) >> expensive
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(pipe, usage_limits=UsageLimits(total_cost_usd_limit=1)).run(0)
    assert str(info.value) == (
        "step 'expensive' spent $0.20 (estimated $0.00), taking spend from $0.00 to $0.20, "
        "over the cost limit of $0.10 on step 'expensive'"
    )
    assert info.value.result.total_cost_usd == Decimal("0.21")


def test_step_level_estimate_is_denied_by_the_step_limit_before_the_agent_runs() -> None:
    agent = FixedMetricAgent(cost=0.2)
    step = Step(
        "expensive",
        agent,
        usage_limits=UsageLimits(total_cost_usd_limit=0.1),
        config=StepConfig(expected_cost_usd=0.2),
    )
    with pytest.raises(UsageLimitExceededError):
        Runner(step).run(0)
    assert agent.calls == 0


def test_denied_step_costs_nothing_and_the_agent_is_never_called() -> None:
    agent = FixedMetricAgent()
    pipe = Step("first", FixedMetricAgent(cost=0.4)) >> Step(
        "second", agent, config=StepConfig(expected_cost_usd=0.2)
    )
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(pipe, usage_limits=UsageLimits(total_cost_usd_limit=0.5)).run(0)
    denied = info.value.result.step_history[1]
    assert denied.denied and denied.attempts == 0 and denied.cost_usd == 0
    assert agent.calls == 0
    assert info.value.result.total_cost_usd == Decimal("0.4")


def test_failing_agent_fails_the_step_and_stops_the_pipeline() -> None:
    later = FixedMetricAgent()
    result = Runner(Step("flaky", FlakyAgent(failures=5)) >> Step("later", later)).run("x")
    assert not result.success
    assert result.step_history[0].feedback == "RuntimeError: transient failure 1"
    assert len(result.step_history) == 1 and later.calls == 0


def test_retries_count_attempts() -> None:
    agent = FlakyAgent(failures=2)
    result = Runner(Step("flaky", agent, config=StepConfig(max_retries=2))).run("x")
    assert result.success and result.step_history[0].attempts == 3


def test_failed_step_releases_its_reservation() -> None:
    """Branch 'a' reserves $0.30 of $0.50 and fails; 'b' then needs $0.30 and gets it only if 'a' released."""

    class ThirtyCents:
        def estimate(self, step: Any, data: Any, context: Any) -> UsageEstimate:
            return UsageEstimate(cost_usd=Decimal("0.3"))

    par = Step.parallel(
        "p", {"a": Step("a", FlakyAgent(failures=9)), "b": Step("b", FixedMetricAgent(cost=0.3))}
    )
    runner = Runner(
        par,
        usage_limits=UsageLimits(total_cost_usd_limit=0.5),
        executor=ExecutorCore(usage_estimator=ThirtyCents()),
    )
    result = runner.run(0)
    a, b = result.step_history[0].step_history
    assert not a.success and a.step_history[0].feedback == "RuntimeError: transient failure 1"
    assert b.success and b.step_history[0].estimate_strategy == "injected"
    assert result.total_cost_usd == Decimal("0.3")


def test_timeout_counts_as_a_failed_attempt() -> None:
    class Slow:
        async def run(self, data: Any) -> MetricOutput:
            await asyncio.sleep(5)
            return MetricOutput(value=data)

    result = Runner(Step("slow", Slow(), config=StepConfig(timeout_s=0.05))).run(0)
    assert not result.success and result.step_history[0].feedback.startswith("TimeoutError")


def test_loop_that_reaches_max_loops_fails_with_feedback() -> None:
    loop = Step.loop_until(
        name="l",
        loop_body_pipeline=Step("s", FixedMetricAgent(cost=0)),
        exit_condition_callable=lambda o, c: False,
        max_loops=3,
    )
    result = Runner(loop).run(0)
    assert not result.success
    assert result.step_history[0].attempts == 3
    assert (
        result.step_history[0].feedback == "Loop 'l' reached max_loops=3 without meeting its exit condition"
    )


def test_loop_exits_when_its_condition_holds_and_uses_the_mapper() -> None:
    loop = Step.loop_until(
        name="l",
        loop_body_pipeline=Step("s", FixedMetricAgent(cost=0.01)),
        exit_condition_callable=lambda out, ctx: out.value >= 30,
        iteration_input_mapper=lambda out, ctx, i: out.value * 2,
        max_loops=10,
    )
    result = Runner(loop).run(1)
    # 1 -> 2, mapped to 4 -> 5, 10 -> 11, 22 -> 23, 46 -> 47 >= 30: five iterations.
    assert result.success and result.output.value == 47
    assert result.step_history[0].attempts == len(result.step_history[0].step_history) == 5
    assert result.total_cost_usd == Decimal("0.05")


def test_adapter_steps_are_free_and_ungoverned() -> None:
    pipe = (
        Step("a", FixedMetricAgent())
        >> Step.adapter("unwrap", lambda out: out.value)
        >> Step("b", FixedMetricAgent())
    )
    result = Runner(pipe, usage_limits=UsageLimits(total_cost_usd_limit=0.2)).run(0)
    assert result.step_history[1].kind == "adapter" and result.step_history[1].output == 1
    assert result.total_cost_usd == Decimal("0.2")


def test_model_validate_refuses_unknown_keys_and_bad_agents() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['agnet'\]"):
        Step.model_validate({"name": "x", "agnet": FixedMetricAgent()})
    with pytest.raises(ConfigError, match="agent must be an object with a run"):
        Step.model_validate({"name": "x", "agent": "gpt-4o"})
    step = Step.model_validate(
        {"name": "x", "agent": FixedMetricAgent(), "config": {"expected_cost_usd": 0.1}}
    )
    assert step.config.expected_cost_usd == Decimal("0.1")


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="total_cost_usd_limit must not be negative"):
        UsageLimits(total_cost_usd_limit=-1)
    with pytest.raises(ConfigError, match="total_tokens_limit must be a whole number"):
        UsageLimits(total_tokens_limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_loops must be a positive integer"):
        Step.loop_until(
            name="l",
            loop_body_pipeline=Step("s", FixedMetricAgent()),
            exit_condition_callable=lambda o, c: True,
            max_loops=0,
        )


def test_run_inside_an_event_loop_points_to_run_async() -> None:
    async def main() -> None:
        Runner(Step("a", FixedMetricAgent())).run(0)

    with pytest.raises(RuntimeError, match=r"use 'await runner\.run_async"):
        asyncio.run(main())


def test_the_result_walks_every_step_with_its_path_and_names_the_one_that_halted() -> None:
    research = Step.parallel(
        "research",
        {
            "web": Step("web", FixedMetricAgent(cost="0.01")),
            "wiki": Step("lookup", FixedMetricAgent(cost="0.01")),
        },
    )
    body = Step("draft", FixedMetricAgent(cost="0.05")) >> Step("review", FixedMetricAgent(cost="0.05"))
    refine = Step.loop_until(
        name="refine", loop_body_pipeline=body, exit_condition_callable=lambda _o, _c: False, max_loops=5
    )
    with pytest.raises(UsageLimitExceededError) as info:
        pipeline = Pipeline.from_step(research) >> Step.adapter("merge", lambda _found: 0) >> refine
        Runner(pipeline, usage_limits=UsageLimits(total_cost_usd_limit="0.2")).run(0)
    result = info.value.result
    assert result is not None
    assert [path for path, _ in result.walk_paths()] == [
        "research", "research.web", "research.web", "research.wiki", "research.wiki.lookup", "merge",
        "refine", "refine[1]", "refine[1].draft", "refine[1].review", "refine[2]", "refine[2].draft",
        "refine[2].review",
    ]  # fmt: skip
    assert [path for path, _ in result.agent_calls()] == [
        "research.web",
        "research.wiki.lookup",
        "refine[1].draft",
        "refine[1].review",
        "refine[2].draft",
        "refine[2].review",
    ]
    assert result.halted_at == "refine[2].review"
    assert result.halted_step is result.agent_calls()[-1][1] and result.halted_step.denied
    assert [s.kind for s in result.walk()] == [
        "parallel", "branch", "agent", "branch", "agent", "adapter", "loop", "iteration", "agent", "agent",
        "iteration", "agent", "agent",
    ]  # fmt: skip


def test_a_finished_run_names_no_halted_step() -> None:
    result = Runner(Step("a", FixedMetricAgent())).run(0)
    assert result.halted_step is None and result.halted_at is None
