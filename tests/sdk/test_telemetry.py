"""Every estimate, reservation, denial and reconciliation is a span and a counter on the app's providers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster import Runner, Step, StepConfig, UsageLimitExceededError, UsageLimits
from paymaster.telemetry import variance_bucket

from .agents import FixedMetricAgent, MetricOutput


class Providers:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def runner(self, pipeline: Any, **kwargs: Any) -> Runner:
        return Runner(
            pipeline, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def points(self, metric: str) -> dict[tuple[tuple[str, Any], ...], float]:
        data = self.reader.get_metrics_data()
        out: dict[tuple[tuple[str, Any], ...], float] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        for p in m.data.data_points:
                            out[tuple(sorted(p.attributes.items()))] = p.value
        return out


def test_a_run_is_a_span_with_one_child_span_per_step(otel: Providers) -> None:
    otel.runner(Step("draft", FixedMetricAgent()) >> Step("review", FixedMetricAgent())).run(0)
    (run,) = otel.finished("paymaster.run draft")
    steps = otel.finished("invoke_agent draft") + otel.finished("invoke_agent review")
    assert [s.parent.span_id for s in steps] == [run.context.span_id] * 2  # type: ignore[union-attr]
    attrs = steps[0].attributes
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.usage.cost"] == 0.1 and attrs["paymaster.cost_usd"] == "0.1"
    assert attrs["gen_ai.usage.cost.source"] == "explicit"
    assert run.attributes["paymaster.cost_usd"] == "0.2"


def test_agent_step_has_estimator_reserve_and_reconcile_child_spans(otel: Providers) -> None:
    step = Step(
        "draft",
        FixedMetricAgent(cost=0.3, tokens=40),
        config=StepConfig(expected_cost_usd=0.25, expected_tokens=50),
    )
    otel.runner(step, usage_limits=UsageLimits(total_cost_usd_limit=1, total_tokens_limit=500)).run(0)
    (agent,) = otel.finished("invoke_agent draft")
    children = {
        s.name: s
        for s in otel.spans.get_finished_spans()
        if s.parent and s.parent.span_id == agent.context.span_id
    }
    assert set(children) == {"cost.estimator.selected", "quota.reserve.attempt", "quota.reconcile"}
    assert children["cost.estimator.selected"].attributes == {
        "strategy": "heuristic",
        "expected_tokens": 50,
        "expected_cost_usd": "0.25",
    }
    attempt = children["quota.reserve.attempt"].attributes
    assert attempt["estimate_cost_usd"] == "0.25" and attempt["estimate_tokens"] == 50
    assert attempt["remaining_cost_usd"] == "0.75" and attempt["remaining_tokens"] == 450
    reconcile = children["quota.reconcile"].attributes
    assert reconcile["actual_cost_usd"] == "0.3" and reconcile["delta_cost_usd"] == "0.05"
    assert reconcile["actual_tokens"] == 40 and reconcile["delta_tokens"] == -10


def test_denial_is_a_span_and_a_counter(otel: Providers) -> None:
    step = Step("big", FixedMetricAgent(), config=StepConfig(expected_cost_usd=2))
    with pytest.raises(UsageLimitExceededError):
        otel.runner(step, usage_limits=UsageLimits(total_cost_usd_limit=1)).run(0)
    (denied,) = otel.finished("quota.reserve.denied")
    assert denied.attributes == {
        "reason_code": "cost_limit_denied",
        "message": "step 'big' was not run: its estimate $2.00 would take spend from $0.00 to $2.00, "
        "over the run's cost limit of $1.00",
    }
    (agent,) = otel.finished("invoke_agent big")
    assert agent.status.status_code == trace.StatusCode.ERROR
    assert otel.points("quota.denials.total") == {(("code", "cost_limit_denied"),): 1}


def test_counters_track_strategy_spend_and_variance(otel: Providers) -> None:
    pipe = Step(
        "a",
        FixedMetricAgent(cost=0.1, tokens=100),
        config=StepConfig(expected_cost_usd=0.1, expected_tokens=100),
    ) >> Step("b", FixedMetricAgent(cost=0.5, tokens=250))
    otel.runner(pipe).run(0)
    assert otel.points("estimator.usage") == {(("strategy", "heuristic"),): 1, (("strategy", "minimal"),): 1}
    variance = otel.points("estimation.variance.count")
    assert variance[(("bucket", "0"), ("type", "cost"))] == 1  # a: exact
    assert variance[(("bucket", "<=100"), ("type", "cost"))] == 1  # b: 50 cents off
    assert variance[(("bucket", "0"), ("type", "tokens"))] == 1
    assert variance[(("bucket", ">100"), ("type", "tokens"))] == 1  # b: 250 tokens off
    cost = otel.points("paymaster.cost_usd")
    assert sum(cost.values()) == pytest.approx(0.6)
    assert otel.points("paymaster.steps") == {(("outcome", "ok"),): 2}


def test_the_step_span_is_current_while_the_agent_runs(otel: Providers) -> None:
    seen: list[str] = []

    class Instrumented:
        async def run(self, data: Any) -> MetricOutput:
            span = trace.get_current_span()
            seen.append(span.name)  # type: ignore[attr-defined]
            return MetricOutput(value=data)

    otel.runner(Step("inner", Instrumented())).run(0)
    assert seen == ["invoke_agent inner"]


def test_loops_and_parallels_nest_their_spans(otel: Providers) -> None:
    par = Step.parallel("fan", {"x": Step("x", FixedMetricAgent()), "y": Step("y", FixedMetricAgent())})
    loop = Step.loop_until(
        name="l", loop_body_pipeline=par, exit_condition_callable=lambda o, c: True, max_loops=2
    )
    otel.runner(loop).run(0)
    (loop_span,) = otel.finished("paymaster.loop l")
    (par_span,) = otel.finished("paymaster.parallel fan")
    assert par_span.parent.span_id == loop_span.context.span_id  # type: ignore[union-attr]
    branch_spans = otel.finished("invoke_agent x") + otel.finished("invoke_agent y")
    assert all(s.parent.span_id == par_span.context.span_id for s in branch_spans)  # type: ignore[union-attr]


def test_without_providers_nothing_is_recorded_and_runs_still_work() -> None:
    result = Runner(Step("a", FixedMetricAgent())).run(0)
    assert result.total_cost_usd == Decimal("0.1")


@pytest.mark.parametrize(
    ("delta", "bucket"),
    [(0, "0"), (Decimal("0.5"), "<=1"), (-1, "<=1"), (10, "<=10"), (99, "<=100"), (101, ">100")],
)
def test_variance_buckets(delta: Decimal, bucket: str) -> None:
    assert variance_bucket(delta) == bucket
