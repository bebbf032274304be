"""SidecarBudget: every agent step reserves in the sidecar too, and its decision is applied before the
agent runs — allow, warn, downgrade, deny — with the outcome on the step result, the span and the
counters. Against a real sidecar on a loopback port."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from paymaster import (
    BudgetExceededError,
    ConfigError,
    LeasePolicy,
    Pipeline,
    Runner,
    Scopes,
    SidecarBudget,
    Step,
    StepConfig,
    UsageLimitExceededError,
    UsageLimits,
)
from paymaster.config import load_config
from paymaster.pricing import PricingMeter
from paymaster.processor import ReservationSpanProcessor

from .agents import CostlyAgent, FixedMetricAgent, MetricOutput
from .conftest import InProcessSidecar
from .sidecar_support import loop_of
from .test_telemetry import Providers

DATA = Path(__file__).parent / "data"


def budget_for(side: InProcessSidecar, **kwargs: Any) -> SidecarBudget:
    kwargs.setdefault("scopes", Scopes(team="search"))
    kwargs.setdefault("journal_dir", None)
    kwargs.setdefault("deadline_s", 5.0)  # a live sidecar on a loaded machine must never miss it
    return SidecarBudget(side.address, **kwargs)


@pytest.fixture
def otel() -> Any:
    p = Providers()
    p.tracer_provider.add_span_processor(ReservationSpanProcessor())
    yield p
    p.tracer_provider.shutdown()
    p.meter_provider.shutdown()


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"target": "localhost"},
            "SidecarBudget: target must be 'host:port' (e.g. '127.0.0.1:7310'), got 'localhost'",
        ),
        ({"target": "h:99999"}, "SidecarBudget: target must be 'host:port'"),
        (
            {"fail_policy": "fail_soft"},
            "SidecarBudget: fail_policy must be one of ['fail_closed', 'fail_open', 'local_only_limits'], got 'fail_soft'",
        ),
        ({"deadline_s": 0}, "SidecarBudget: deadline_s must be a positive number of seconds, got 0"),
        ({"retries": -1}, "SidecarBudget: retries must be a whole number >= 0, got -1"),
        ({"breaker_failures": True}, "SidecarBudget: breaker_failures must be a whole number >= 1, got True"),
        (
            {"reservation_ttl_s": 7200},
            "SidecarBudget: reservation_ttl_s must be in (0, 3600] seconds, got 7200",
        ),
        ({"lease": {"slice_usd": 1}}, "SidecarBudget: lease must be a LeasePolicy, got dict"),
        ({"scopes": {"tenant": "x"}}, "SidecarBudget: unknown scope(s) ['tenant']"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"target": "127.0.0.1:7310", "journal_dir": None, **kwargs}
    with pytest.raises(ConfigError) as info:
        SidecarBudget(**kwargs)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slice_usd": "-1"}, "LeasePolicy: slice_usd must not be negative, got '-1'"),
        ({"slice_usd": 0}, "LeasePolicy: slice_usd must be positive, got 0"),
        ({"ttl_s": 4000}, "LeasePolicy: ttl_s must be in (0, 3600] (the sidecar's maximum), got 4000"),
        ({"ttl_s": 10, "max_age_s": 20}, "LeasePolicy: max_age_s must be in (0, ttl_s], got 20"),
    ],
)
def test_bad_lease_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        LeasePolicy(**kwargs)
    assert str(info.value) == message


def test_local_only_limits_needs_limits_of_its_own() -> None:
    budget = SidecarBudget("127.0.0.1:7310", fail_policy="local_only_limits", journal_dir=None)
    with pytest.raises(
        ConfigError, match="fail_policy='local_only_limits' falls back to the runner's own limits"
    ):
        Runner(Step("s", FixedMetricAgent()), budget=budget)
    Runner(Step("s", FixedMetricAgent()), budget=budget, usage_limits=UsageLimits(total_cost_usd_limit=1))
    with pytest.raises(ConfigError, match="Runner: budget must be a SidecarBudget"):
        Runner(Step("s", FixedMetricAgent()), budget=object())  # type: ignore[arg-type]
    budget.close()


def test_a_closed_budget_says_so() -> None:
    budget = SidecarBudget("127.0.0.1:7310", scopes=Scopes(team="t"), journal_dir=None)
    budget.close()
    budget.close()  # harmless
    with pytest.raises(ConfigError, match=r"SidecarBudget\('127.0.0.1:7310'.*\) is closed; build a new"):
        Runner(Step("s", FixedMetricAgent()), budget=budget).run(0)


def test_a_step_with_no_scope_ids_is_refused_with_how_to_give_them(sidecar: InProcessSidecar) -> None:
    budget = budget_for(sidecar, scopes=None)
    with pytest.raises(ConfigError) as info:
        Runner(Step("draft", FixedMetricAgent()), budget=budget).run(0)
    assert str(info.value).startswith(
        "Step 'draft' has no scope ids for the budget sidecar: give SidecarBudget(scopes=Scopes(team=...))"
    )
    assert sidecar.admin.usage_by_model() == {}
    budget.close()


def test_downgrade_must_be_an_agent_or_an_agent_step() -> None:
    with pytest.raises(ConfigError, match="Step 'draft': downgrade must be a cheaper agent"):
        Step("draft", FixedMetricAgent(), downgrade="gpt-4o-mini")


# ------------------------------------------------------------------------------ allow and deny
def test_allowed_steps_reserve_then_commit_and_the_sidecar_holds_nothing_after(
    sidecar: InProcessSidecar,
) -> None:
    sidecar.admin.budget("search-daily", "10")
    budget = budget_for(sidecar)
    pipe = Pipeline.from_step(Step("a", FixedMetricAgent(cost="0.0125"))) >> Step(
        "b", FixedMetricAgent(cost="0.1")
    )
    result = Runner(pipe, budget=budget).run(0)
    assert result.total_cost_usd == Decimal("0.1125")
    assert sidecar.admin.status("search-daily") == (Decimal("0.1125"), Decimal(0))
    outcome = result.step_history[0].budget
    assert outcome is not None
    assert outcome.decision == "allow" and outcome.mode == "reservation"
    assert outcome.budget_ids == ("search-daily",)
    assert outcome.charged_usd == Decimal("0.0125")
    assert outcome.reservation_id and outcome.scopes == Scopes(team="search")
    budget.close()


def test_a_denied_step_raises_budget_exceeded_before_its_agent_runs(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "0.25")
    agent = FixedMetricAgent(cost="0.1")
    budget = budget_for(sidecar)
    with pytest.raises(BudgetExceededError) as info:
        Runner(loop_of(agent, expected="0.1"), budget=budget).run(0)
    err = info.value
    assert isinstance(err, UsageLimitExceededError)
    assert agent.calls == 2
    assert err.code == "budget_denied"
    assert str(err).startswith("Denied by block budget 'search-daily' (team=search): used $0.20 + reserved")
    assert err.reason == str(err) and err.deciding_budget_id == "search-daily"
    (line,) = err.budget_info
    assert line["budget_id"] == "search-daily" and line["action"] == "block"
    assert line["used_usd"] == Decimal("0.2") and line["limit_usd"] == Decimal("0.25")
    assert line["exceeded"] is True and line["scope"] == "team" and line["scope_id"] == "search"
    assert err.result is not None and err.result.total_cost_usd == Decimal("0.2")
    denied = [s for s in err.result.walk() if s.denied]
    assert len(denied) == 1 and denied[0].attempts == 0 and denied[0].cost_usd == 0
    assert denied[0].denial_code == "budget_denied"
    assert denied[0].budget is not None and denied[0].budget.decision == "deny"
    assert err.result.halted_step is denied[0] and err.step == denied[0].name
    assert sidecar.admin.status("search-daily") == (Decimal("0.2"), Decimal(0))
    budget.close()


def test_local_limits_still_apply_and_are_checked_first(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "10")
    budget = budget_for(sidecar)
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(
            loop_of(FixedMetricAgent(cost="0.1"), expected="0.1"),
            budget=budget,
            usage_limits=UsageLimits(total_cost_usd_limit="0.25"),
        ).run(0)
    assert str(info.value) == (
        "step 'call' was not run: its estimate $0.10 would take spend from $0.20 to $0.30, "
        "over the run's cost limit of $0.25"
    )
    assert info.value.code == "cost_limit_denied"
    assert not isinstance(info.value, BudgetExceededError)
    assert sidecar.admin.status("search-daily") == (Decimal("0.2"), Decimal(0))
    budget.close()


def test_a_step_charges_the_scopes_it_overrides(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "10")
    sidecar.admin.budget("reviewer", "10", scope="agent", scope_id="reviewer")
    budget = budget_for(sidecar, scopes=Scopes(team="search", agent="drafter"))
    pipe = Pipeline.from_step(Step("draft", FixedMetricAgent(cost="0.3"))) >> Step(
        "review", FixedMetricAgent(cost="0.2"), scopes=Scopes(agent="reviewer")
    )
    result = Runner(pipe, budget=budget).run(0)
    assert sidecar.admin.status("search-daily")[0] == Decimal("0.5")
    assert sidecar.admin.status("reviewer")[0] == Decimal("0.2")
    review = result.step_history[1].budget
    assert review is not None and review.scopes == Scopes(team="search", agent="reviewer")
    assert review.budget_ids == ("search-daily", "reviewer")
    budget.close()


def test_scopes_come_from_the_tracer_providers_resource(sidecar: InProcessSidecar) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    sidecar.admin.budget("search-daily", "10")
    provider = TracerProvider(resource=Resource.create({"paymaster.team": "search", "paymaster.user": "ada"}))
    budget = budget_for(sidecar, scopes=None)
    result = Runner(Step("s", FixedMetricAgent(cost="0.1")), budget=budget, tracer_provider=provider).run(0)
    outcome = result.step_history[0].budget
    assert outcome is not None and outcome.scopes == Scopes(team="search", user="ada")
    assert sidecar.admin.status("search-daily") == (Decimal("0.1"), Decimal(0))
    budget.close()
    provider.shutdown()


def test_an_unpriced_call_is_charged_its_estimate_not_nothing(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "10")

    class Unpriced:
        model_id = "custom:unknown-model"

        async def run(self, data: Any) -> Any:
            return {"usage": {"input_tokens": 10, "output_tokens": 5}}

    budget = budget_for(sidecar)
    result = Runner(Step("s", Unpriced(), config=StepConfig(expected_cost_usd="0.04")), budget=budget).run(0)
    step = result.step_history[0]
    assert step.cost_usd is None
    assert any("the sidecar is charged its estimate $0.04" in w for w in step.warnings)
    assert sidecar.admin.status("search-daily") == (Decimal("0.04"), Decimal(0))
    budget.close()


# ------------------------------------------------------------------------------ warn and downgrade
def test_warn_runs_the_step_and_records_the_warning_on_result_span_and_counter(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    sidecar.admin.budget("search-soft", "0.15", on_exceed="warn")
    budget = budget_for(sidecar)
    result = otel.runner(loop_of(FixedMetricAgent(cost="0.1"), times=2, expected="0.1"), budget=budget).run(0)
    first, second = (s for s in result.walk() if s.kind == "agent")
    assert first.budget is not None and first.budget.decision == "allow" and not first.warnings
    assert second.budget is not None and second.budget.decision == "warn"
    assert second.warnings and second.warnings[0].startswith(
        "Warn budget 'search-soft' (team=search) would be exceeded"
    )
    span = otel.finished("invoke_agent call")[1]
    assert span.attributes is not None
    assert span.attributes["paymaster.decision"] == "warn"
    assert list(span.attributes["paymaster.budget.warnings"]) == list(second.warnings)
    decisions = otel.points("paymaster.budget.decisions")
    assert decisions[(("decision", "allow"), ("mode", "reservation"))] == 1
    assert decisions[(("decision", "warn"), ("mode", "reservation"))] == 1
    assert sidecar.admin.status("search-soft") == (Decimal("0.2"), Decimal(0))
    budget.close()


class ModelAgent:
    """An agent that exposes its model and reports token usage, priced by paymaster.toml."""

    def __init__(self, model_id: str, *, input_tokens: int = 1000, output_tokens: int = 1000) -> None:
        self.model_id = model_id
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.calls: list[str] = []

    async def run(self, data: Any) -> Any:
        self.calls.append(self.model_id)
        return {"usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}


def test_downgrade_runs_the_steps_cheaper_agent_in_one_round_trip(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    sidecar.admin.budget("search-soft", "0.15", on_exceed="downgrade")
    sidecar.admin.budget("search-hard", "10")
    dear, cheap = FixedMetricAgent(cost="0.1"), FixedMetricAgent(cost="0.01")
    step = Step(
        "call",
        dear,
        config=StepConfig(expected_cost_usd="0.1"),
        downgrade=Step("cheap", cheap, config=StepConfig(expected_cost_usd="0.01")),
    )
    loop = Step.loop_until(
        name="loop", loop_body_pipeline=step, exit_condition_callable=lambda o, c: False, max_loops=4
    )
    budget = budget_for(sidecar)
    result = otel.runner(loop, budget=budget).run(0)
    assert (dear.calls, cheap.calls) == (1, 3)
    calls = [s for s in result.walk() if s.kind == "agent"]
    assert [s.cost_usd for s in calls] == [Decimal("0.1"), Decimal("0.01"), Decimal("0.01"), Decimal("0.01")]
    outcome = calls[1].budget
    assert outcome is not None and outcome.decision == "downgrade"
    assert (outcome.downgraded_from, outcome.downgraded_to) == ("FixedMetricAgent", "FixedMetricAgent")
    assert outcome.deciding_budget_id == "search-soft"
    assert sidecar.admin.status("search-hard") == (Decimal("0.13"), Decimal(0))
    span = otel.finished("invoke_agent call")[1]
    assert span.attributes is not None and span.attributes["paymaster.decision"] == "downgrade"
    # The cheaper estimate travelled with the Reserve: one Reserve and one Commit per step.
    calls_made = otel.points("paymaster.sidecar.calls")
    assert calls_made[(("outcome", "ok"), ("rpc", "Reserve"))] == 4
    assert calls_made[(("outcome", "ok"), ("rpc", "Commit"))] == 4
    budget.close()


def test_the_downgrade_mapping_swaps_the_model_and_the_spend_lands_at_its_price(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    config = load_config(DATA / "downgrade.toml")
    sidecar.admin.budget("search-soft", "0.03", on_exceed="downgrade")
    agent = ModelAgent("openai:gpt-4o")
    budget = budget_for(sidecar, config=config)
    runner = otel.runner(
        loop_of(agent, times=3, expected="0.02"), budget=budget, meter=PricingMeter(config=config)
    )
    result = runner.run(0)
    calls = [s for s in result.walk() if s.kind == "agent"]
    # The original ran once; then shallow copies carrying the cheaper model (they share its list).
    assert agent.calls == ["openai:gpt-4o", "openai:gpt-4o-mini", "openai:gpt-4o-mini"]
    assert agent.model_id == "openai:gpt-4o"
    assert [s.model for s in calls] == ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]
    assert [s.cost_usd for s in calls] == [Decimal("0.020"), Decimal("0.00075"), Decimal("0.00075")]
    outcome = calls[1].budget
    assert outcome is not None
    assert (outcome.downgraded_from, outcome.downgraded_to) == ("openai:gpt-4o", "openai:gpt-4o-mini")
    span = otel.finished("invoke_agent call")[2]
    assert span.attributes is not None
    assert span.attributes["paymaster.downgraded_from"] == "openai:gpt-4o"
    assert span.attributes["paymaster.downgraded_to"] == "openai:gpt-4o-mini"
    assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert sidecar.admin.usage_by_model(team="search") == {
        "gpt-4o": Decimal("0.020"),
        "gpt-4o-mini": Decimal("0.0015"),
    }
    assert sidecar.admin.status("search-soft") == (Decimal("0.0215"), Decimal(0))
    budget.close()


def test_a_downgrade_without_a_cheaper_path_is_denied_with_how_to_add_one(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-soft", "0.05", on_exceed="downgrade")
    agent = ModelAgent("anthropic:claude-sonnet-4-5", input_tokens=10, output_tokens=10)
    budget = budget_for(sidecar, config=load_config(DATA / "downgrade.toml"))
    with pytest.raises(BudgetExceededError) as info:
        Runner(Step("review", agent, config=StepConfig(expected_cost_usd="0.1")), budget=budget).run(0)
    err = info.value
    assert err.code == "no_downgrade_path"
    assert str(err).startswith("Downgrade asked by budget 'search-soft' (team=search)")
    assert (
        "Step 'review' has no cheaper path to run under the downgrade decision: add one with "
        "Step('review', agent, downgrade=cheaper_agent), or map its model in paymaster.toml "
        '([downgrade] "anthropic:claude-sonnet-4-5" = "<cheaper provider:model>").'
    ) in str(err)
    assert agent.calls == []
    assert err.result is not None and err.result.step_history[0].denial_code == "no_downgrade_path"
    assert sidecar.admin.status("search-soft") == (Decimal(0), Decimal(0))  # the hold was released
    budget.close()


def test_a_block_budget_still_denies_the_cheaper_path(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-soft", "0.05", on_exceed="downgrade")
    sidecar.admin.budget("search-hard", "0.06")
    cheap = FixedMetricAgent(cost="0.08")
    step = Step("s", FixedMetricAgent(), config=StepConfig(expected_cost_usd="0.1"),
                downgrade=Step("c", cheap, config=StepConfig(expected_cost_usd="0.08")))  # fmt: skip
    budget = budget_for(sidecar)
    with pytest.raises(BudgetExceededError) as info:
        Runner(step, budget=budget).run(0)
    assert info.value.code == "budget_denied" and info.value.deciding_budget_id == "search-hard"
    assert cheap.calls == 0
    budget.close()


# ------------------------------------------------------------------------------ spans
def test_the_step_span_carries_decision_budgets_and_reservation_and_so_do_spans_inside_it(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    sidecar.admin.budget("search-daily", "10")
    tracer = otel.tracer_provider.get_tracer("model-client")

    class Instrumented:
        async def run(self, data: Any) -> MetricOutput:
            with tracer.start_as_current_span("chat gpt-4o", attributes={"gen_ai.usage.input_tokens": 12}):
                pass
            return MetricOutput(value=data, cost_usd=0.01)

    budget = budget_for(sidecar, scopes=Scopes(team="search", user="ada"))
    result = otel.runner(Step("draft", Instrumented()), budget=budget).run(0)
    outcome = result.step_history[0].budget
    assert outcome is not None and outcome.reservation_id
    (step_span,) = otel.finished("invoke_agent draft")
    attrs = dict(step_span.attributes or {})
    assert attrs["paymaster.decision"] == "allow"
    assert list(attrs["paymaster.budget_id"]) == ["search-daily"]
    assert attrs["paymaster.reservation_id"] == outcome.reservation_id
    assert attrs["paymaster.team"] == "search" and attrs["paymaster.user"] == "ada"
    (client_span,) = otel.finished("chat gpt-4o")
    assert client_span.parent is not None and client_span.parent.span_id == step_span.context.span_id
    assert (client_span.attributes or {})["paymaster.reservation_id"] == outcome.reservation_id
    (run_span,) = otel.finished("paymaster.run draft")
    assert (run_span.attributes or {})["paymaster.team"] == "search"
    assert trace.get_current_span() is trace.INVALID_SPAN
    budget.close()


# ------------------------------------------------------------------------------ cancellation
def test_a_cancelled_parallel_branch_releases_its_reservation(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "0.10")
    slow = CostlyAgent(cost=0.01, delay=5)
    branches = {
        "fast_expensive": Step("fast_expensive", CostlyAgent(cost=0.15, delay=0.05)),
        "slow_cheap": Step("slow_cheap", slow, config=StepConfig(expected_cost_usd="0.02")),
    }
    budget = budget_for(sidecar)
    with pytest.raises(BudgetExceededError) as info:
        Runner(Step.parallel("p", branches), budget=budget).run(0)
    assert info.value.code == "budget_exceeded"
    assert (
        str(info.value) == "Block budget 'search-daily' (team=search) exceeded: $0.15 used of its $0.10 limit"
    )
    assert slow.cancelled == 1 and slow.finished == 0
    assert info.value.result is not None and info.value.result.total_cost_usd == Decimal("0.15")
    assert sidecar.admin.status("search-daily") == (Decimal("0.15"), Decimal(0))
    budget.close()


@pytest.mark.parametrize("lease", [None, LeasePolicy(slice_usd="0.5")], ids=["per-step", "leases"])
def test_cancelling_a_run_at_any_point_leaves_nothing_reserved(
    sidecar: InProcessSidecar, lease: LeasePolicy | None
) -> None:
    sidecar.admin.budget("search-daily", "1000")
    budget = budget_for(sidecar, lease=lease)
    pipe = Step.parallel(
        "fan",
        {
            f"b{i}": loop_of(CostlyAgent(cost="0.001", delay=0.001 * i), times=50, expected="0.001")
            for i in range(4)
        },
    )
    runner = Runner(pipe, budget=budget)

    async def cancel_after(delay: float) -> None:
        task = asyncio.ensure_future(runner.run_async(0))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # Every half millisecond through the first 15 ms (where slices are taken and first drawn), then later.
    for delay in [i * 0.0005 for i in range(30)] + [0.03, 0.06]:
        asyncio.run(cancel_after(delay))
        assert sidecar.admin.status("search-daily")[1] == Decimal(0), f"held after a cancel at {delay}s"
    budget.close()
