"""The meter turns what agents return into priced usage for the executor: runs price real agents
from paymaster.toml, strict mode refuses before an agent is called, and an unpriceable model
never crashes a run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from paymaster import ConfigError, PricingNotConfiguredError, Runner, Step, UsageLimits, UsageReportError
from paymaster._metering import MeasuredUsage, PricingMeter, agent_model, default_meter
from paymaster.config import CONFIG_ENV_VAR, PaymasterConfig, clear_config_cache, load_config
from paymaster.pricing import CostCalculator
from paymaster.usage import ModelUsage

from .agents import FixedMetricAgent

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    clear_config_cache()
    yield
    clear_config_cache()


@pytest.fixture
def meter() -> PricingMeter:
    return PricingMeter(config=load_config(DATA / "prices.toml"))


@dataclass
class Reply:
    """An output shaped like a provider response: text plus a usage object."""

    text: str
    usage: dict[str, Any]


class ModelAgent:
    """Calls ``model_id`` (or ``model``); every call reports ``usage``."""

    def __init__(
        self, usage: dict[str, Any] | None, *, model_id: str | None = None, model: Any = None
    ) -> None:
        self.usage = usage
        if model_id is not None:
            self.model_id = model_id
        if model is not None:
            self.model = model
        self.calls = 0

    async def run(self, data: Any) -> Any:
        self.calls += 1
        return Reply(text=f"re: {data}", usage=self.usage) if self.usage is not None else f"re: {data}"


def _pydantic_ai_agent(model_name: str, **usage: int) -> Any:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.usage import RequestUsage

    def respond(messages: Any, info: Any) -> ModelResponse:
        return ModelResponse(parts=[TextPart("done")], usage=RequestUsage(**usage))

    return Agent(FunctionModel(respond, model_name=model_name))


def test_a_pydantic_ai_agent_runs_governed_and_priced_from_configuration(meter: PricingMeter) -> None:
    agent = _pydantic_ai_agent("gpt-4o", input_tokens=1000, output_tokens=500)
    result = Runner(Step("answer", agent), meter=meter).run("hello")
    step = result.step_history[0]
    assert (step.cost_usd, step.cost_source, step.provider, step.model) == (
        Decimal("0.0125"),
        "configured",
        "openai",
        "gpt-4o",
    )
    assert (step.input_tokens, step.output_tokens, step.token_counts) == (1000, 500, 1500)
    assert result.total_cost_usd == Decimal("0.0125")


def test_strict_mode_refuses_an_unconfigured_model_before_its_agent_is_called() -> None:
    strict = PricingMeter(config=load_config(DATA / "strict.toml"))
    agent = ModelAgent({"prompt_tokens": 10, "completion_tokens": 10}, model_id="openai:gpt-4o-mini")
    with pytest.raises(PricingNotConfiguredError) as info:
        Runner(Step("draft", agent), meter=strict).run("hi")
    assert agent.calls == 0
    assert str(info.value).startswith(
        "Strict pricing is enabled, but no configuration was found for provider='openai', model='gpt-4o-mini' in "
    )


def test_strict_mode_runs_configured_chat_and_image_models() -> None:
    strict = PricingMeter(config=load_config(DATA / "strict.toml"))
    chat = ModelAgent({"prompt_tokens": 1000, "completion_tokens": 500}, model_id="openai:gpt-4o")
    images = ModelAgent({"images": 2, "input_tokens": 0, "output_tokens": 0}, model_id="openai:dall-e-3")
    result = Runner(Step("write", chat) >> Step("illustrate", images), meter=strict).run("a landscape")
    assert [s.cost_usd for s in result.step_history] == [Decimal("0.0125"), Decimal("0.080")]
    assert result.total_cost_usd == Decimal("0.0925")
    assert {s.cost_source for s in result.step_history} == {"configured"}


def test_an_unpriceable_model_never_crashes_the_run(meter: PricingMeter) -> None:
    agent = ModelAgent({"input_tokens": 800, "output_tokens": 200}, model_id="mistral-7b")
    limits = UsageLimits(total_cost_usd_limit=Decimal("1"))
    result = Runner(
        Step("priced", FixedMetricAgent()) >> Step("cheap", agent), usage_limits=limits, meter=meter
    ).run(1)
    unpriced = result.step_history[1]
    assert result.success
    assert (unpriced.cost_usd, unpriced.cost_source, unpriced.token_counts) == (None, "unknown", 1000)
    assert result.unpriced_steps == 1
    assert result.total_cost_usd == Decimal("0.1")
    assert any("mistral-7b" in w for w in unpriced.warnings)


def test_library_prices_carry_their_snapshot(meter: PricingMeter) -> None:
    usage = meter.measure(
        ModelAgent(None, model_id="anthropic:claude-haiku-4-5"),
        Reply("x", {"input_tokens": 100, "output_tokens": 10}),
    )
    assert usage.cost_source == "library"
    assert usage.cost_usd is not None and usage.cost_usd > 0
    assert usage.price_snapshot is not None and usage.price_snapshot.startswith("genai-prices ")


def test_explicit_reports_are_trusted_and_tagged_with_the_agents_model(meter: PricingMeter) -> None:
    @dataclass
    class Explicit:
        cost_usd: float
        token_counts: int

    usage = meter.measure(
        ModelAgent(None, model_id="openai:gpt-4o"), Explicit(cost_usd=0.25, token_counts=40)
    )
    assert usage == MeasuredUsage(
        cost_usd=Decimal("0.25"), total_tokens=40, cost_source="explicit", provider="openai", model="gpt-4o"
    )


def test_a_model_call_that_reports_no_usage_has_an_unknown_cost(meter: PricingMeter) -> None:
    usage = meter.measure(ModelAgent(None, model_id="openai:gpt-4o"), "just text")
    assert (usage.cost_usd, usage.cost_source, usage.model) == (None, "unknown", "gpt-4o")
    assert usage.detail == "the output of str reports no usage"


def test_an_agent_without_a_model_and_without_usage_costs_nothing(meter: PricingMeter) -> None:
    usage = meter.measure(object(), "just text")
    assert (usage.cost_usd, usage.cost_source) == (Decimal(0), "none")


def test_usage_without_any_model_name_is_unknown_and_says_how_to_fix_it(meter: PricingMeter) -> None:
    usage = meter.measure(object(), Reply("x", {"input_tokens": 5, "output_tokens": 5}))
    assert (usage.cost_usd, usage.cost_source, usage.total_tokens) == (None, "unknown", 10)
    assert usage.detail == "the agent names no model: give it a model_id such as 'openai:gpt-4o'"


def test_the_response_model_prices_when_the_agent_names_none(meter: PricingMeter) -> None:
    chat = pytest.importorskip("openai.types.chat")
    completion = chat.ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
            ],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
        }
    )
    usage = meter.measure(object(), completion)
    assert (usage.cost_usd, usage.cost_source, usage.model) == (Decimal("0.0125"), "configured", "gpt-4o")


def test_cached_reasoning_and_image_counts_reach_the_measurement(meter: PricingMeter) -> None:
    agent = ModelAgent(None, model_id="o4-mini")
    reply = Reply(
        "x",
        {
            "prompt_tokens": 10_000,
            "completion_tokens": 2_000,
            "prompt_tokens_details": {"cached_tokens": 4_000},
            "completion_tokens_details": {"reasoning_tokens": 1_500},
        },
    )
    usage = meter.measure(agent, reply)
    assert usage.cost_usd == Decimal("0.0174")
    assert (usage.cached_input_tokens, usage.reasoning_tokens, usage.total_tokens) == (4_000, 1_500, 12_000)


def test_negative_usage_from_an_agent_stops_the_run(meter: PricingMeter) -> None:
    agent = ModelAgent({"input_tokens": -3, "output_tokens": 1}, model_id="openai:gpt-4o")
    with pytest.raises(UsageReportError, match="input_tokens must not be negative, got -3 \\(from Reply\\)"):
        Runner(Step("bad", agent), meter=meter).run("x")


class _Model:
    """Shaped like a pydantic-ai ``Model``."""

    def __init__(self, model_name: str, system: str) -> None:
        self.model_name = model_name
        self.system = system


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (ModelAgent(None, model_id="openai:gpt-4o"), ("openai:gpt-4o", None)),
        (ModelAgent(None, model="claude-3-haiku"), ("claude-3-haiku", None)),
        (
            ModelAgent(None, model=_Model("gemini-2.5-flash", "google-gla")),
            ("gemini-2.5-flash", "google-gla"),
        ),
        (ModelAgent(None, model=_Model("gpt-4o", "function")), ("gpt-4o", None)),
        (ModelAgent(None), None),
    ],
)
def test_agent_model_reads_model_id_model_strings_and_model_objects(agent: Any, expected: Any) -> None:
    assert agent_model(agent) == expected


class VolumeDiscountCalculator(CostCalculator):
    def calculate(
        self, model_name: str, prompt_tokens: int, completion_tokens: int, provider: str | None = None
    ) -> Decimal | None:
        base = super().calculate(model_name, prompt_tokens, completion_tokens, provider)
        if base is not None and prompt_tokens + completion_tokens > 10_000:
            return base * Decimal("0.9")
        return base


def test_a_subclassed_calculator_injected_into_the_runner_prices_every_step() -> None:
    calc = VolumeDiscountCalculator(load_config(DATA / "prices.toml"))
    big = ModelAgent({"prompt_tokens": 10_000, "completion_tokens": 1_000}, model_id="openai:gpt-4o")
    small = ModelAgent({"prompt_tokens": 1_000, "completion_tokens": 500}, model_id="openai:gpt-4o")
    result = Runner(Step("big", big) >> Step("small", small), meter=PricingMeter(calc)).run("x")
    assert [s.cost_usd for s in result.step_history] == [Decimal("0.0585"), Decimal("0.0125")]


def test_the_default_meter_loads_the_searched_file_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paymaster.toml").write_text(
        '[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = 0.01\n'
    )
    first = default_meter()
    assert default_meter() is first
    agent = ModelAgent({"prompt_tokens": 2000}, model_id="gpt-4o")
    result = Runner(Step("s", agent)).run("x")  # no meter given: the default one
    assert result.step_history[0].cost_usd == Decimal("0.02")
    (tmp_path / "paymaster.toml").write_text(
        '[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = 0.02\n'
    )
    clear_config_cache()
    assert default_meter() is not first
    assert Runner(Step("s", agent)).run("x").step_history[0].cost_usd == Decimal("0.04")


def test_the_default_meter_follows_paymaster_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    named = tmp_path / "prices.toml"
    named.write_text("[cost]\nstrict = true\n")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(named))
    agent = ModelAgent({"prompt_tokens": 1}, model_id="openai:gpt-4o")
    with pytest.raises(PricingNotConfiguredError, match=r"in .*prices\.toml\.$"):
        Runner(Step("s", agent)).run("x")
    assert agent.calls == 0


def test_measuring_is_safe_from_concurrent_branches(meter: PricingMeter) -> None:
    agents = [
        ModelAgent({"prompt_tokens": 1000, "completion_tokens": 500}, model_id="openai:gpt-4o")
        for _ in range(8)
    ]
    branches = {f"b{i}": Step(f"b{i}", a) for i, a in enumerate(agents)}
    result = asyncio.run(Runner(Step.parallel("fan", branches), meter=meter).run_async("x"))
    assert result.total_cost_usd == Decimal("0.0125") * 8


class _HalfPrice(CostCalculator):
    def calculate(
        self, model_name: str, prompt_tokens: int, completion_tokens: int, provider: str | None = None
    ) -> Decimal | None:
        base = super().calculate(model_name, prompt_tokens, completion_tokens, provider)
        return None if base is None else base / 2


def test_a_cost_calculator_given_to_the_runner_prices_every_call() -> None:
    agent = ModelAgent({"prompt_tokens": 1000, "completion_tokens": 500}, model_id="openai:gpt-4o")
    calculator = _HalfPrice(load_config(DATA / "prices.toml"))
    result = Runner(Step("s", agent), cost_calculator=calculator).run("x")
    assert (result.total_cost_usd, result.step_history[0].cost_source) == (Decimal("0.00625"), "configured")


def test_a_runner_takes_a_calculator_or_a_meter_not_both() -> None:
    with pytest.raises(ConfigError, match="give cost_calculator or meter, not both"):
        Runner(
            Step("s", ModelAgent(None)),
            cost_calculator=CostCalculator(PaymasterConfig()),
            meter=PricingMeter(),
        )


class _FloatPrice(CostCalculator):
    def calculate(
        self, model_name: str, prompt_tokens: int, completion_tokens: int, provider: str | None = None
    ) -> Any:
        return -0.5 if model_name == "gpt-4o" else 0.25


def test_a_calculator_returning_a_float_is_read_exactly_and_a_negative_one_is_refused() -> None:
    calculator = _FloatPrice(load_config(DATA / "prices.toml"))
    quote = calculator.price(ModelUsage(input_tokens=10), model="openai:gpt-4o-mini")
    assert quote.cost_usd == Decimal("0.25")
    with pytest.raises(
        UsageReportError,
        match=r"_FloatPrice.calculate\('gpt-4o', ...\) must not be negative, got -0.5; return a Decimal >= 0",
    ):
        calculator.price(ModelUsage(input_tokens=10), model="openai:gpt-4o")
