"""Every step is estimated before it runs, by the strategy the documented precedence picks, and the
learning estimator turns past runs of a step into reservations that stop overspending early."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from paymaster import (
    ExecutorCore,
    Runner,
    Step,
    StepConfig,
    UsageEstimate,
    UsageLimitExceededError,
    UsageLimits,
)
from paymaster._metering import MeasuredUsage
from paymaster.config import load_config
from paymaster.estimation import (
    EstimatorRegistry,
    HeuristicEstimator,
    LearningEstimator,
    UsageEstimatorFactory,
    resolve_estimate,
)
from paymaster.exceptions import ConfigError
from paymaster.pricing import CostCalculator

from .agents import FixedMetricAgent
from .test_telemetry import Providers

DATA = Path(__file__).parent / "data"


class Fixed:
    """An estimator that always says the same thing."""

    def __init__(self, cost: str, tokens: int) -> None:
        self.value = UsageEstimate(cost_usd=Decimal(cost), tokens=tokens)
        self.calls = 0

    def estimate(self, step: Any, data: Any, context: Any) -> UsageEstimate:
        self.calls += 1
        return self.value


class ModelAgent:
    def __init__(self, model_id: str | None = None, **attrs: Any) -> None:
        if model_id is not None:
            self.model_id = model_id
        for name, value in attrs.items():
            setattr(self, name, value)

    async def run(self, data: Any) -> str:
        return str(data)


@pytest.fixture
def heuristic() -> HeuristicEstimator:
    return HeuristicEstimator(CostCalculator(load_config(DATA / "prices.toml")))


@pytest.fixture
def factory(heuristic: HeuristicEstimator) -> UsageEstimatorFactory:
    return UsageEstimatorFactory(heuristic=heuristic)


# ---------------------------------------------------------------------------------- precedence


def test_an_injected_estimator_decides_every_step(factory: UsageEstimatorFactory) -> None:
    factory.registry.register(lambda s: True, Fixed("0.5", 5), name="everything")
    step = Step("s", ModelAgent("openai:gpt-4o"), config=StepConfig(expected_cost_usd=Decimal("0.2")))
    estimate, strategy = resolve_estimate(step, "x", None, injected=Fixed("0.07", 70), factory=factory)
    assert (estimate, strategy) == (UsageEstimate(cost_usd=Decimal("0.07"), tokens=70), "injected")


def test_registry_rules_come_next_first_match_wins(factory: UsageEstimatorFactory) -> None:
    heavy = Fixed("0.9", 900)
    factory.registry.register(lambda s: s.name.endswith("_heavy"), heavy, name="heavy")
    factory.registry.register(lambda s: True, Fixed("0.1", 100))
    est, strategy = resolve_estimate(Step("summarize_heavy", ModelAgent()), "x", None, factory=factory)
    assert (est.cost_usd, strategy) == (Decimal("0.9"), "registry:heavy")
    est, strategy = resolve_estimate(Step("light", ModelAgent()), "x", None, factory=factory)
    assert (est.cost_usd, strategy) == (Decimal("0.1"), "registry:Fixed")
    assert [r.name for r in factory.registry] == ["heavy", "Fixed"]


def test_without_a_matching_rule_the_default_heuristic_applies(factory: UsageEstimatorFactory) -> None:
    factory.registry.register(lambda s: False, Fixed("0.9", 900))
    step = Step("s", ModelAgent(), config=StepConfig(expected_cost_usd=Decimal("0.2"), expected_tokens=300))
    assert resolve_estimate(step, "x", None, factory=factory) == (
        UsageEstimate(cost_usd=Decimal("0.2"), tokens=300),
        "heuristic",
    )


def test_step_config_beats_learned_which_beats_config_hints(factory: UsageEstimatorFactory) -> None:
    learner = LearningEstimator(min_samples=2)
    step = Step("answer", ModelAgent("openai:gpt-4o"))
    assert resolve_estimate(step, "x", None, factory=factory, learned=learner) == (
        UsageEstimate(cost_usd=Decimal("0.12"), tokens=600),
        "config_hint",
    )
    for cost in ("0.03", "0.05"):
        learner.observe(step, MeasuredUsage(cost_usd=Decimal(cost), total_tokens=400))
    assert resolve_estimate(step, "x", None, factory=factory, learned=learner) == (
        UsageEstimate(cost_usd=Decimal("0.05"), tokens=400),
        "learned",
    )
    declared = Step(
        "answer", ModelAgent("openai:gpt-4o"), config=StepConfig(expected_cost_usd=Decimal("0.2"))
    )
    assert resolve_estimate(declared, "x", None, factory=factory, learned=learner)[1] == "heuristic"


def test_an_estimator_must_return_a_usage_estimate() -> None:
    class Wrong:
        def estimate(self, step: Any, data: Any, context: Any) -> Any:
            return 0.5

    with pytest.raises(ConfigError, match=r"Wrong\.estimate\(\) must return a UsageEstimate, got float"):
        resolve_estimate(Step("s", ModelAgent()), "x", None, injected=Wrong())


def test_registering_something_that_cannot_estimate_is_refused() -> None:
    with pytest.raises(ConfigError, match="estimator must have estimate"):
        EstimatorRegistry().register(lambda s: True, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="predicate must be callable"):
        EstimatorRegistry().register("heavy", Fixed("1", 1))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- the heuristic


def test_declared_tokens_alone_are_priced_at_the_output_rate(heuristic: HeuristicEstimator) -> None:
    step = Step("s", ModelAgent("openai:gpt-4o"), config=StepConfig(expected_tokens=2000))
    estimate, strategy = heuristic.estimate_with_strategy(step, "x", None)
    assert (estimate, strategy) == (UsageEstimate(cost_usd=Decimal("0.03"), tokens=2000), "heuristic")


def test_config_hints_apply_to_dated_and_bare_names(heuristic: HeuristicEstimator) -> None:
    step = Step("s", ModelAgent("gpt-3.5-turbo"))
    assert heuristic.estimate_with_strategy(step, "x", None) == (
        UsageEstimate(cost_usd=Decimal("0.02"), tokens=300),
        "config_hint",
    )


def test_price_bound_uses_input_size_and_max_tokens(heuristic: HeuristicEstimator) -> None:
    """400 characters are about 100 tokens; max_tokens=200 bounds the output."""
    step = Step("s", ModelAgent("openai:o4-mini", max_tokens=200))
    estimate, strategy = heuristic.estimate_with_strategy(step, "x" * 400, None)
    # 100 input tokens at 0.0011/1k + 200 output tokens at 0.0044/1k
    assert (estimate, strategy) == (UsageEstimate(cost_usd=Decimal("0.00099"), tokens=300), "heuristic")


def test_price_bound_reads_pydantic_ai_model_settings(heuristic: HeuristicEstimator) -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    agent = Agent("openai:o4-mini", model_settings={"max_tokens": 1000}, defer_model_check=True)
    estimate, strategy = heuristic.estimate_with_strategy(Step("s", agent), "", None)
    assert (estimate.cost_usd, estimate.tokens, strategy) == (Decimal("0.0044"), 1000, "heuristic")


def test_price_bound_assumes_an_output_size_when_the_agent_exposes_none() -> None:
    heuristic = HeuristicEstimator(
        CostCalculator(load_config(DATA / "prices.toml")), assumed_output_tokens=100
    )
    estimate, _ = heuristic.estimate_with_strategy(Step("s", ModelAgent("custom:my-model")), "abcdefgh", None)
    # 2 input tokens at 0.001/1k + 100 output tokens at 0.002/1k
    assert estimate == UsageEstimate(cost_usd=Decimal("0.000202"), tokens=102)


def test_library_prices_bound_unconfigured_models(heuristic: HeuristicEstimator) -> None:
    estimate, strategy = heuristic.estimate_with_strategy(
        Step("s", ModelAgent("anthropic:claude-haiku-4-5", max_tokens=1000)), "", None
    )
    assert strategy == "heuristic"
    assert estimate.tokens == 1000 and estimate.cost_usd > 0


@pytest.mark.parametrize("agent", [ModelAgent(), ModelAgent("llama-3-8b-unknown"), ModelAgent("acme:secret")])
def test_unpriced_or_unnamed_models_get_the_minimal_estimate(
    heuristic: HeuristicEstimator, agent: Any
) -> None:
    assert heuristic.estimate_with_strategy(Step("s", agent), "x" * 1000, None) == (
        UsageEstimate(),
        "minimal",
    )


def test_adapter_steps_estimate_zero(heuristic: HeuristicEstimator) -> None:
    step = Step.adapter("shape", lambda d: d)
    assert heuristic.estimate_with_strategy(step, "x", None) == (UsageEstimate(), "minimal")


def test_strict_mode_unconfigured_models_are_not_bounded_here() -> None:
    """Preflight refuses them; the estimator must not raise first."""
    heuristic = HeuristicEstimator(CostCalculator(load_config(DATA / "strict.toml")))
    assert (
        heuristic.estimate_with_strategy(Step("s", ModelAgent("claude-haiku-4-5")), "x", None)[1] == "minimal"
    )


# ------------------------------------------------------------------------- learning estimator


def _observe(learner: LearningEstimator, step: Step, costs: list[str], tokens: list[int]) -> None:
    for cost, count in zip(costs, tokens, strict=True):
        learner.observe(step, MeasuredUsage(cost_usd=Decimal(cost), total_tokens=count))


def test_after_enough_observations_the_estimate_is_the_high_quantile_of_the_data() -> None:
    learner = LearningEstimator(min_samples=20, quantile=0.95)
    step = Step("summarize", ModelAgent("openai:gpt-4o"))
    costs = [f"0.{i:02d}" for i in range(20, 0, -1)]  # 0.20 down to 0.01
    tokens = [100 * i for i in range(1, 21)]
    _observe(learner, step, costs[:19], tokens[:19])
    assert learner.lookup(step) is None  # 19 < min_samples
    _observe(learner, step, costs[19:], tokens[19:])
    # nearest rank: ceil(0.95 * 20) = 19th smallest
    assert learner.lookup(step) == UsageEstimate(cost_usd=Decimal("0.19"), tokens=1900)
    stats = learner.stats(step)
    assert stats is not None
    assert (stats.observations, stats.mean_cost_usd) == (20, Decimal("0.105"))


def test_the_window_forgets_old_runs() -> None:
    learner = LearningEstimator(min_samples=3, quantile=1.0, window=3)
    step = Step("s", ModelAgent())
    _observe(learner, step, ["9", "0.1", "0.2", "0.3"], [1, 1, 1, 1])
    assert learner.lookup(step) == UsageEstimate(cost_usd=Decimal("0.3"), tokens=1)
    assert learner.stats(step).observations == 4  # type: ignore[union-attr]


def test_statistics_are_kept_per_step_and_model() -> None:
    learner = LearningEstimator(min_samples=1)
    big, small = Step("s", ModelAgent("openai:gpt-4o")), Step("s", ModelAgent("openai:gpt-4o-mini"))
    _observe(learner, big, ["0.5"], [10])
    assert learner.lookup(big) == UsageEstimate(cost_usd=Decimal("0.5"), tokens=10)
    assert learner.lookup(small) is None
    assert learner.lookup(Step("other", ModelAgent("openai:gpt-4o"))) is None


def test_unknown_costs_teach_nothing() -> None:
    learner = LearningEstimator(min_samples=1)
    step = Step("s", ModelAgent("mistral-7b"))
    learner.observe(step, MeasuredUsage(cost_usd=None, total_tokens=500, cost_source="unknown"))
    assert learner.lookup(step) is None


def test_before_calibration_it_estimates_with_its_fallback() -> None:
    learner = LearningEstimator(min_samples=2, fallback=Fixed("0.01", 10))
    step = Step("s", ModelAgent())
    assert learner.estimate(step, "x", None) == UsageEstimate(cost_usd=Decimal("0.01"), tokens=10)
    _observe(learner, step, ["0.4", "0.6"], [4, 6])
    assert learner.estimate(step, "x", None) == UsageEstimate(cost_usd=Decimal("0.6"), tokens=6)


def test_statistics_persist_so_a_new_process_starts_calibrated(tmp_path: Path) -> None:
    path = tmp_path / "state" / "learned.json"
    first = LearningEstimator(path, min_samples=3)
    step = Step("s", ModelAgent("openai:gpt-4o"))
    _observe(first, step, ["0.1", "0.2", "0.3"], [10, 20, 30])
    assert first.save() == path
    assert [p.name for p in path.parent.iterdir()] == ["learned.json"]  # no temporary file left behind
    document = json.loads(path.read_text())
    assert document["series"][0]["cost_usd"] == ["0.1", "0.2", "0.3"]
    second = LearningEstimator(path, min_samples=3)
    assert second.lookup(step) == first.lookup(step) == UsageEstimate(cost_usd=Decimal("0.3"), tokens=30)


def test_autosave_writes_after_every_n_observations(tmp_path: Path) -> None:
    path = tmp_path / "learned.json"
    learner = LearningEstimator(path, min_samples=1, autosave_every=2)
    step = Step("s", ModelAgent())
    _observe(learner, step, ["0.1"], [1])
    assert not path.exists()
    _observe(learner, step, ["0.2"], [2])
    assert LearningEstimator(path, min_samples=2).lookup(step) == UsageEstimate(
        cost_usd=Decimal("0.2"), tokens=2
    )


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"format": "something-else", "series": []}',
        '{"format": "paymaster-learned-estimates/1", "series": '
        '[{"step": "s", "model": "", "observations": 1, "cost_usd": ["-1"], "tokens": [1]}]}',
    ],
)
def test_a_corrupt_statistics_file_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "learned.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"^{path}: not a learned-estimates file this version can read"):
        LearningEstimator(path)


def test_learning_estimator_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="min_samples"):
        LearningEstimator(min_samples=0)
    with pytest.raises(ConfigError, match="quantile"):
        LearningEstimator(quantile=1.5)
    with pytest.raises(ConfigError, match="autosave_every needs a path"):
        LearningEstimator(autosave_every=3)


def test_learned_estimates_deny_an_over_budget_step_that_minimal_estimates_let_overspend() -> None:
    """Two steps of $0.30 each under a $0.50 limit: estimated at zero, the second runs and the run
    overspends; once the learner has seen a few runs, the second is denied before its agent runs."""

    def pipeline() -> tuple[Step, FixedMetricAgent]:
        revise = FixedMetricAgent(cost="0.30", tokens=100)
        return Step("draft", FixedMetricAgent(cost="0.30", tokens=100)) >> Step("revise", revise), revise

    limits = UsageLimits(total_cost_usd_limit=Decimal("0.50"))

    naive, revise = pipeline()
    with pytest.raises(UsageLimitExceededError) as overspent:
        Runner(naive, usage_limits=limits, executor=ExecutorCore(usage_estimator=Fixed("0", 0))).run(0)
    assert revise.calls == 1
    assert overspent.value.result is not None
    assert overspent.value.result.total_cost_usd == Decimal("0.60")

    learner = LearningEstimator(min_samples=3)
    core = ExecutorCore(usage_estimator=learner, learned=learner)
    for _ in range(3):
        Runner(pipeline()[0], executor=core).run(0)  # unlimited calibration runs
    governed, revise = pipeline()
    with pytest.raises(UsageLimitExceededError) as denied:
        Runner(governed, usage_limits=limits, executor=core).run(0)
    assert revise.calls == 0
    result = denied.value.result
    assert result is not None
    assert result.total_cost_usd == Decimal("0.30")
    assert result.step_history[1].denied
    assert result.step_history[1].estimate_strategy == "injected"


# ------------------------------------------------------------------------- through the runner


def test_the_runner_reserves_what_the_factory_rules_and_the_heuristic_estimate(
    factory: UsageEstimatorFactory,
) -> None:
    """The executor asks the documented precedence for every step: a registry rule for the steps it
    matches, the paymaster.toml hint for a gpt-4o step, and the strategy lands in the history."""
    factory.registry.register(lambda s: s.name == "heavy", Fixed("0.07", 70), name="heavy")
    pipeline = Step("heavy", ModelAgent("openai:gpt-4o")) >> Step("hinted", ModelAgent("openai:gpt-4o"))
    result = Runner(pipeline, executor=ExecutorCore(estimator_factory=factory)).run("x")
    heavy, hinted = result.step_history
    assert (heavy.estimate_strategy, heavy.estimate) == (
        "registry:heavy",
        UsageEstimate(cost_usd=Decimal("0.07"), tokens=70),
    )
    assert (hinted.estimate_strategy, hinted.estimate) == (
        "config_hint",
        UsageEstimate(cost_usd=Decimal("0.12"), tokens=600),
    )


def test_a_hinted_estimate_that_does_not_fit_denies_the_step_before_its_agent_runs(
    factory: UsageEstimatorFactory,
) -> None:
    agent = FixedMetricAgent(cost="0.01")
    agent.model_id = "openai:gpt-4o"  # type: ignore[attr-defined]
    runner = Runner(
        Step("hinted", agent),
        usage_limits=UsageLimits(total_cost_usd_limit=Decimal("0.10")),
        executor=ExecutorCore(estimator_factory=factory),
    )
    with pytest.raises(
        UsageLimitExceededError,
        match=r"^step 'hinted' was not run: its estimate \$0.12 would take spend from \$0.00 to \$0.12, over the run's cost limit of \$0.10$",
    ) as info:
        runner.run(0)
    assert agent.calls == 0
    assert info.value.result is not None
    denied = info.value.result.step_history[0]
    assert (denied.denied, denied.estimate_strategy, denied.cost_usd) == (True, "config_hint", Decimal(0))


def test_the_runner_learns_from_finished_calls_and_then_estimates_from_them(
    factory: UsageEstimatorFactory,
) -> None:
    learner = LearningEstimator(min_samples=2)
    core = ExecutorCore(estimator_factory=factory, learned=learner)
    strategies = [
        Runner(Step("s", FixedMetricAgent(cost="0.25", tokens=40)), executor=core)
        .run(0)
        .step_history[0]
        .estimate_strategy
        for _ in range(3)
    ]
    assert strategies == ["minimal", "minimal", "learned"]


def test_an_executor_refuses_an_estimator_without_an_estimate_method() -> None:
    with pytest.raises(ConfigError, match=r"usage_estimator must have a method estimate\(\), got str"):
        ExecutorCore(usage_estimator="0.1")


# ------------------------------------------------------------------------------ learning by default
def three_step_loop() -> Step:
    """draft, review, edit: agents that report their own cost ($0.045 an iteration) and name no model."""
    body = (
        Step("draft", FixedMetricAgent(cost="0.02"))
        >> Step("review", FixedMetricAgent(cost="0.01"))
        >> Step("edit", FixedMetricAgent(cost="0.015"))
    )
    return Step.loop_until(
        name="refine", loop_body_pipeline=body, exit_condition_callable=lambda _o, _c: False, max_loops=10
    )


def test_without_learning_the_three_step_loop_overshoots_a_ten_cent_limit() -> None:
    """What a runner that reserves nothing for undeclared steps does (the peers' documented overshoot)."""
    runner = Runner(
        three_step_loop(),
        usage_limits=UsageLimits(total_cost_usd_limit=0.10),
        executor=ExecutorCore(learned=None),
    )
    with pytest.raises(UsageLimitExceededError) as info:
        runner.run(0)
    assert info.value.code == "cost_limit_exceeded"
    assert info.value.result is not None and info.value.result.total_cost_usd == Decimal("0.110")


@pytest.mark.parametrize("limit", ["0.06", "0.07", "0.08", "0.09", "0.10", "0.11", "0.12", "0.13"])
def test_by_default_the_loop_is_denied_before_the_call_that_would_cross_its_limit(limit: str) -> None:
    """From the second iteration on every step reserves what it cost in the first, so the call that
    would pass the limit is denied before it runs: spend never crosses the limit."""
    with pytest.raises(UsageLimitExceededError) as info:
        Runner(three_step_loop(), usage_limits=UsageLimits(total_cost_usd_limit=limit)).run(0)
    err = info.value
    assert err.result is not None
    assert err.code == "cost_limit_denied", str(err)
    assert err.result.total_cost_usd <= Decimal(limit)
    halted = err.result.halted_step
    assert halted is not None and halted.denied and halted.attempts == 0
    assert halted.estimate_strategy == "learned"
    assert halted.estimate == UsageEstimate(
        cost_usd=Decimal(dict(draft="0.02", review="0.01", edit="0.015")[halted.name]), tokens=100
    )
    assert err.result.total_cost_usd + halted.estimate.cost_usd > Decimal(limit)
    assert err.result.halted_at == f"refine[{err.result.step_history[0].attempts}].{halted.name}"


def test_the_ten_cent_loop_stops_at_nine_cents_and_says_why() -> None:
    otel = Providers()
    with pytest.raises(UsageLimitExceededError) as info:
        otel.runner(three_step_loop(), usage_limits=UsageLimits(total_cost_usd_limit=0.10)).run(0)
    err = info.value
    assert str(err) == (
        "step 'draft' was not run: its estimate $0.02 would take spend from $0.09 to $0.11, "
        "over the run's cost limit of $0.10"
    )
    assert err.step == "draft" and err.result is not None
    assert err.result.total_cost_usd == Decimal("0.090")
    assert err.result.halted_at == "refine[3].draft"
    strategies = [s.attributes["strategy"] for s in otel.finished("cost.estimator.selected")]
    assert strategies == ["minimal"] * 3 + ["learned"] * 4  # the estimate strategy is on the span


def test_a_learner_forgets_the_series_observed_longest_ago_past_max_series() -> None:
    learner = LearningEstimator(min_samples=1, max_series=2)
    steps = [Step(name, FixedMetricAgent()) for name in ("a", "b", "c")]
    for step in steps:
        learner.observe(step, MeasuredUsage(cost_usd=Decimal("0.1"), total_tokens=1, cost_source="explicit"))
    learner.observe(steps[1], MeasuredUsage(cost_usd=Decimal("0.1"), total_tokens=1))
    assert [learner.lookup(s) is not None for s in steps] == [False, True, True]


def test_a_priced_step_needs_min_samples_while_one_explicit_cost_calibrates() -> None:
    learner = LearningEstimator(min_samples=3, min_explicit_samples=1)
    explicit, priced = Step("tool", FixedMetricAgent()), Step("chat", FixedMetricAgent())
    learner.observe(explicit, MeasuredUsage(cost_usd=Decimal("0.2"), total_tokens=5, cost_source="explicit"))
    for _ in range(2):
        learner.observe(
            priced, MeasuredUsage(cost_usd=Decimal("0.1"), total_tokens=5, cost_source="configured")
        )
    assert learner.lookup(explicit) == UsageEstimate(cost_usd=Decimal("0.2"), tokens=5)
    assert learner.lookup(priced) is None
    learner.observe(priced, MeasuredUsage(cost_usd=Decimal("0.1"), total_tokens=5, cost_source="configured"))
    assert learner.lookup(priced) == UsageEstimate(cost_usd=Decimal("0.1"), tokens=5)
