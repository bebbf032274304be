"""Span pricing is the SDK's pricing: per-token rates derived from ``CostCalculator`` reproduce its
quotes exactly, non-linear prices go through it call by call, and strict mode is honoured."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_processor.otlp.pricing import FEMTO, SpanPricer, semconv_provider
from paymaster.config import PaymasterConfig, parse_config
from paymaster.pricing import CostCalculator
from paymaster.usage import ModelUsage
from tests.sidecar.otlp.conftest import PRICES

CONFIGURED = CostCalculator(parse_config(PRICES))
LIBRARY = CostCalculator(PaymasterConfig())


@st.composite
def usages(draw: st.DrawFn) -> ModelUsage:
    tin = draw(st.integers(0, 2_000_000))
    tout = draw(st.integers(0, 200_000))
    read = draw(st.integers(0, tin))
    write = draw(st.integers(0, tin - read))
    return ModelUsage(
        input_tokens=tin, output_tokens=tout, cache_read_tokens=read, cache_write_tokens=write,
        reasoning_tokens=draw(st.integers(0, tout)),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("calculator", "provider", "model", "source"),
    [
        (CONFIGURED, "openai", "gpt-4o", "configured"),
        (CONFIGURED, "anthropic", "claude-sonnet-4-5", "configured"),
        (LIBRARY, "openai", "gpt-4o-mini", "library"),
        (LIBRARY, "anthropic", "claude-3-5-sonnet-20241022", "library"),
        (LIBRARY, "gcp.gemini", "gemini-1.5-pro", "library"),  # tiered: priced call by call
    ],
)
@settings(max_examples=25, deadline=None)
@given(usage=usages())
def test_a_span_costs_exactly_what_the_sdk_calculator_charges(
    calculator: CostCalculator, provider: str, model: str, source: str, usage: ModelUsage
) -> None:
    pricer = SpanPricer(calculator)
    price = pricer.model(provider, model)
    assert price.source == source
    femto = pricer.cost_femto(
        price, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
        usage.reasoning_tokens,
    )  # fmt: skip
    quote = calculator.price(usage, model=model, provider=semconv_provider(provider))
    assert quote.cost_usd is not None and femto is not None
    assert Decimal(femto) / FEMTO == quote.cost_usd


def test_flat_prices_become_rates_and_tiered_ones_do_not() -> None:
    assert SpanPricer(CONFIGURED).model("openai", "gpt-4o").rates == (
        5_000_000_000,
        15_000_000_000,
        -2_500_000_000,
        0,
        0,
    )
    assert SpanPricer(LIBRARY).model("gcp.gemini", "gemini-1.5-pro").rates is None


def test_a_model_nobody_can_price_is_unknown_with_the_reason() -> None:
    price = SpanPricer(LIBRARY).model("", "llama-3-8b")
    assert (price.source, price.rates) == ("unknown", None)
    assert "the provider of 'llama-3-8b' cannot be inferred" in price.reason
    assert SpanPricer(LIBRARY).cost_femto(price, 10, 10, 0, 0, 0) is None


def test_strict_mode_leaves_an_unconfigured_model_unpriced_instead_of_guessing() -> None:
    strict = CostCalculator(parse_config("[cost]\nstrict = true\n" + PRICES))
    pricer = SpanPricer(strict)
    assert pricer.model("openai", "gpt-4o").source == "configured"
    price = pricer.model("openai", "gpt-4o-mini")
    assert price.source == "unknown"
    assert "Strict pricing is enabled" in price.reason


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("aws.bedrock", "aws"),
        ("gcp.vertex_ai", "google"),
        ("az.ai.openai", "azure"),
        ("OpenAI", "openai"),
        ("", None),
    ],
)
def test_semantic_convention_provider_names_map_to_the_pricing_tables(
    name: str, provider: str | None
) -> None:
    assert semconv_provider(name) == provider
