"""Every model call is priced exactly: configured prices first, genai-prices defaults (warned about
once, with their snapshot) when none is configured, an unknown cost (never zero, never a crash)
when nobody can price it, and a refusal naming the model and the file under strict mode."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paymaster import pricing
from paymaster.config import CostConfig, load_config, parse_config
from paymaster.exceptions import PricingNotConfiguredError
from paymaster.pricing import CostCalculator, PriceQuote, price_usage
from paymaster.usage import ImageUsage, ModelUsage
from tests.fresh import loads_pricing_library

DATA = Path(__file__).parent / "data"


@pytest.fixture
def calc() -> CostCalculator:
    return CostCalculator(load_config(DATA / "prices.toml"))


@pytest.fixture(autouse=True)
def _forget_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_warned", set())


# ---------------------------------------------------------------------------- the seeds' figures


def test_seeds_figure_1000_prompt_500_completion_tokens_is_exactly_0_0125(calc: CostCalculator) -> None:
    cost = calc.calculate("gpt-4o", 1000, 500)
    assert cost == Decimal("0.0125")
    assert str(cost) == "0.0125"
    assert calc.calculate("openai:gpt-4o", 1000, 500, provider="openai") == Decimal("0.0125")


def test_seeds_figure_two_standard_dall_e_3_images_cost_0_080(calc: CostCalculator) -> None:
    quote = calc.price(ModelUsage(images=(ImageUsage(count=2),)), model="openai:dall-e-3")
    assert quote == PriceQuote(
        cost_usd=Decimal("0.080"), source="configured", provider="openai", model="dall-e-3"
    )


def test_hd_and_wide_images_use_their_own_price(calc: CostCalculator) -> None:
    usage = ModelUsage(
        images=(
            ImageUsage(count=1, quality="hd", size="1792x1024"),
            ImageUsage(count=3, quality="hd", size="1024x1024"),
        )
    )
    assert calc.price(usage, model="dall-e-3").cost_usd == Decimal("0.360")


def test_decimal_arithmetic_never_drifts() -> None:
    config = parse_config(
        '[cost.providers.custom."m"]\nprompt_tokens_per_1k = 0.1\ncompletion_tokens_per_1k = 0.2\n'
    )
    cost = CostCalculator(config).calculate("custom:m", 1000, 1000)
    assert cost == Decimal("0.3")
    assert 0.1 + 0.2 != 0.3  # the float sum this avoids


# ------------------------------------------------------------------------ cached, reasoning, gaps


def test_cached_and_reasoning_tokens_use_their_configured_prices(calc: CostCalculator) -> None:
    usage = ModelUsage(
        input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000, reasoning_tokens=1_500
    )
    # 6,000 plain input at 0.0011 + 4,000 cached at 0.000275 + 500 plain output at 0.0044
    # + 1,500 reasoning at 0.0050
    expected = Decimal("0.0066") + Decimal("0.0011") + Decimal("0.0022") + Decimal("0.0075")
    assert calc.price(usage, model="o4-mini").cost_usd == expected


def test_cache_writes_and_reads_are_priced_apart(calc: CostCalculator) -> None:
    usage = ModelUsage(input_tokens=1_300, output_tokens=50, cache_read_tokens=1_000, cache_write_tokens=200)
    expected = Decimal("0.0003") + Decimal("0.0003") + Decimal("0.00075") + Decimal("0.00075")
    assert calc.price(usage, model="claude-sonnet-4-5").cost_usd == expected


def test_cached_tokens_without_their_own_price_are_billed_at_the_prompt_price(calc: CostCalculator) -> None:
    usage = ModelUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=600)
    assert calc.price(usage, model="gpt-4o").cost_usd == Decimal("0.0125")


def test_a_price_the_usage_needs_but_the_table_lacks_makes_the_cost_unknown(calc: CostCalculator) -> None:
    quote = calc.price(ModelUsage(input_tokens=100, output_tokens=5), model="text-embedding-3-small")
    assert quote.cost_usd is None
    assert quote.source == "unknown"
    assert quote.reason == (
        f'[cost.providers.openai."text-embedding-3-small"] in {calc.file} has no completion_tokens_per_1k'
    )
    embed_only = calc.price(ModelUsage(input_tokens=1000), model="text-embedding-3-small")
    assert embed_only.cost_usd == Decimal("0.00002")
    odd_size = calc.price(ModelUsage(images=(ImageUsage(count=1, size="512x512"),)), model="dall-e-3")
    assert odd_size.cost_usd is None
    assert odd_size.reason is not None and odd_size.reason.endswith("has no price_per_image_standard_512x512")


def test_price_per_image_covers_any_quality_and_size() -> None:
    config = parse_config(
        '[cost.providers.midjourney."v6"]\nprice_per_image = 0.05\nprice_per_image_hd_1024x1024 = 0.1\n'
    )
    usage = ModelUsage(images=(ImageUsage(count=2, size="2048x2048"), ImageUsage(count=1, quality="hd")))
    assert CostCalculator(config).price(usage, model="midjourney:v6").cost_usd == Decimal("0.2")


def test_token_priced_image_models_bill_images_through_their_tokens() -> None:
    config = parse_config(
        '[cost.providers.openai."gpt-image-1"]\nprompt_tokens_per_1k = 0.005\ncompletion_tokens_per_1k = 0.04\n'
    )
    usage = ModelUsage(input_tokens=100, output_tokens=1000, images=(ImageUsage(count=1, quality="high"),))
    assert CostCalculator(config).price(usage, model="gpt-image-1").cost_usd == Decimal("0.0405")


def test_dated_model_names_use_the_undated_price(calc: CostCalculator) -> None:
    quote = calc.price(ModelUsage(input_tokens=1000, output_tokens=500), model="gpt-4o-2024-08-06")
    assert (quote.cost_usd, quote.source, quote.model) == (Decimal("0.0125"), "configured", "gpt-4o")


def test_custom_providers_are_priced_by_name(calc: CostCalculator) -> None:
    assert calc.calculate("custom:my-model", 2000, 1000) == Decimal("0.004")
    assert calc.calculate("my-model", 2000, 1000, provider="custom") == Decimal("0.004")


# --------------------------------------------------------------------------------- strict mode


@pytest.fixture
def strict() -> CostCalculator:
    return CostCalculator(load_config(DATA / "strict.toml"))


def test_strict_mode_prices_every_configured_model(strict: CostCalculator) -> None:
    assert strict.calculate("openai:gpt-4o", 1000, 500) == Decimal("0.0125")
    assert strict.calculate("gpt-3.5-turbo", 1000, 1000) == Decimal("0.002")
    assert strict.price(
        ModelUsage(images=(ImageUsage(count=2),)), model="openai:dall-e-3"
    ).cost_usd == Decimal("0.080")
    strict.require_configured("openai:gpt-4o")


def test_strict_mode_refuses_an_unconfigured_model_with_the_exact_message(tmp_path: Path) -> None:
    (tmp_path / "paymaster.toml").write_text(
        '[cost]\nstrict = true\n[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = 0.005\n'
    )
    calc = CostCalculator(load_config(tmp_path / "paymaster.toml"))
    with pytest.raises(PricingNotConfiguredError) as info:
        calc.require_configured("openai:gpt-3.5-turbo")
    assert str(info.value).endswith(
        "Strict pricing is enabled, but no configuration was found for provider='openai', "
        "model='gpt-3.5-turbo' in " + f"{tmp_path / 'paymaster.toml'}."
    )
    assert (info.value.provider, info.value.model) == ("openai", "gpt-3.5-turbo")


def test_strict_message_names_the_file_actually_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paymaster.toml").write_text("[cost]\nstrict = true\n")
    calc = CostCalculator(load_config(tmp_path / "paymaster.toml"))
    with pytest.raises(PricingNotConfiguredError) as info:
        calc.calculate("gpt-3.5-turbo", 10, 10)
    assert str(info.value) == (
        "Strict pricing is enabled, but no configuration was found for provider='openai', "
        "model='gpt-3.5-turbo' in paymaster.toml."
    )
    (tmp_path / "flujo.toml").write_text("[cost]\nstrict = true\n")
    flujo = CostCalculator(load_config(tmp_path / "flujo.toml"))
    with pytest.raises(PricingNotConfiguredError, match=r"model='dall-e-3' in flujo\.toml\.$"):
        flujo.require_configured("openai:dall-e-3")


def test_strict_mode_never_uses_library_defaults(strict: CostCalculator) -> None:
    with pytest.raises(PricingNotConfiguredError):
        strict.price(ModelUsage(input_tokens=10), model="claude-sonnet-4-5")


def test_strict_mode_refuses_a_configured_model_missing_a_needed_price(strict: CostCalculator) -> None:
    with pytest.raises(PricingNotConfiguredError) as info:
        strict.price(ModelUsage(images=(ImageUsage(count=1, quality="hd"),)), model="dall-e-3")
    assert str(info.value) == (
        'Strict pricing is enabled, but [cost.providers.openai."dall-e-3"] in '
        f"{strict.file} has no price_per_image_hd_1024x1024."
    )


# --------------------------------------------------------------------------- library defaults


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("o3-mini", "openai"),
        ("claude-haiku-4-5", "anthropic"),
        ("claude-opus-4-1", "anthropic"),
        ("gemini-2.5-flash", "google"),
        ("gemini-2.5-pro", "google"),
    ],
)
def test_unconfigured_models_use_genai_prices_defaults(
    calc: CostCalculator, model: str, provider: str
) -> None:
    usage = ModelUsage(input_tokens=12_000, output_tokens=3_000, cache_read_tokens=2_000)
    quote = calc.price(usage, model=model)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=12_000, output_tokens=3_000, cache_read_tokens=2_000),
        model,
        provider_id=provider,
    ).total_price
    assert quote.cost_usd == expected
    assert quote.cost_usd is not None and quote.cost_usd > 0
    assert (quote.source, quote.provider, quote.model) == ("library", provider, model)
    assert quote.snapshot == f"genai-prices {genai_prices.__version__} (bundled data)"


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(
        ["gpt-4o-mini", "claude-haiku-4-5", "claude-opus-4-1", "gemini-2.5-flash", "gemini-2.5-pro"]
    ),
    plain=st.integers(0, 3_000_000),
    cache_read=st.integers(0, 1_000_000),
    cache_write=st.integers(0, 1_000_000),
    output=st.integers(0, 500_000),
)
def test_library_prices_equal_genai_prices_own_calculation_for_any_usage(
    model: str, plain: int, cache_read: int, cache_write: int, output: int
) -> None:
    """Flat library prices take a fast per-token path; tiered ones (gemini-2.5-pro) the general one.
    Both must agree with calc_price to the last digit."""
    calc = CostCalculator(CostConfig())
    total_in = plain + cache_read + cache_write
    usage = ModelUsage(
        input_tokens=total_in,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=total_in,
            output_tokens=output,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        ),
        model,
        provider_id=calc.resolve(model).provider,
    ).total_price
    assert calc.price(usage, model=model).cost_usd == expected


def test_a_library_default_is_warned_about_once_per_model(
    calc: CostCalculator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="paymaster.pricing")
    for _ in range(3):
        calc.price(ModelUsage(input_tokens=10, output_tokens=10), model="gpt-4o-mini")
    calc.price(ModelUsage(input_tokens=10, output_tokens=10), model="claude-haiku-4-5")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(
        f"No price configured for openai:gpt-4o-mini; using the default from genai-prices {genai_prices.__version__}"
    )
    assert '[cost.providers.openai."gpt-4o-mini"]' in messages[0]


def test_the_library_can_be_turned_off() -> None:
    calc = CostCalculator(CostConfig(), use_library=False)
    quote = calc.price(ModelUsage(input_tokens=10), model="gpt-4o")
    assert (quote.cost_usd, quote.source) == (None, "unknown")
    assert quote.reason == "no price is configured for openai:gpt-4o in paymaster.toml"


# ------------------------------------------------------------------------------ unknown prices


def test_ambiguous_models_are_unknown_not_zero_and_not_guessed(calc: CostCalculator) -> None:
    quote = calc.price(ModelUsage(input_tokens=1000, output_tokens=500), model="mistral-7b")
    assert quote == PriceQuote(
        cost_usd=None,
        source="unknown",
        provider=None,
        model="mistral-7b",
        reason="the provider of 'mistral-7b' cannot be inferred; name it as 'provider:mistral-7b'",
    )
    assert calc.calculate("mistral-7b", 1000, 500) is None


def test_models_no_one_prices_are_unknown_with_a_reason(calc: CostCalculator) -> None:
    quote = calc.price(ModelUsage(input_tokens=10), model="openai:gpt-nonexistent-9")
    assert (quote.cost_usd, quote.source) == (None, "unknown")
    assert quote.reason is not None and "genai-prices cannot price it" in quote.reason
    images = calc.price(ModelUsage(images=(ImageUsage(count=1),)), model="openai:dall-e-2")
    assert images.cost_usd is None
    assert (
        images.reason == "genai-prices has no per-image prices; configure price_per_image_standard_1024x1024"
    )


# ----------------------------------------------------------------------------------- extension


class VolumeDiscountCalculator(CostCalculator):
    """The seeds' example: 10% off calls of more than 10,000 tokens."""

    def calculate(
        self, model_name: str, prompt_tokens: int, completion_tokens: int, provider: str | None = None
    ) -> Decimal | None:
        base = super().calculate(model_name, prompt_tokens, completion_tokens, provider)
        if base is not None and prompt_tokens + completion_tokens > 10_000:
            return base * Decimal("0.9")
        return base


def test_a_subclass_overriding_calculate_adjusts_every_price() -> None:
    calc = VolumeDiscountCalculator(load_config(DATA / "prices.toml"))
    assert calc.calculate("gpt-4o", 1000, 500) == Decimal("0.0125")
    assert calc.calculate("gpt-4o", 10_000, 1_000) == Decimal("0.0585")
    # The detailed usage reaches super().calculate: cached tokens keep their own price.
    usage = ModelUsage(
        input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000, reasoning_tokens=1_500
    )
    quote = calc.price(usage, model="o4-mini")
    assert quote.cost_usd == Decimal("0.0174") * Decimal("0.9")
    assert quote.source == "configured"


def test_price_usage_prices_without_agent_objects(calc: CostCalculator) -> None:
    quote = price_usage("openai", "gpt-4o", ModelUsage(input_tokens=1000, output_tokens=500), calculator=calc)
    assert (quote.cost_usd, quote.source, quote.provider, quote.model) == (
        Decimal("0.0125"),
        "configured",
        "openai",
        "gpt-4o",
    )


def test_price_usage_uses_the_searched_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from paymaster.config import clear_config_cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAYMASTER_CONFIG", raising=False)
    (tmp_path / "paymaster.toml").write_text('[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = 1\n')
    clear_config_cache()
    try:
        assert price_usage(None, "gpt-4o", ModelUsage(input_tokens=500)).cost_usd == Decimal("0.5")
    finally:
        clear_config_cache()


def test_preload_loads_the_library_only_when_it_may_be_used() -> None:
    setup = "from paymaster.config import PaymasterConfig, CostConfig\nfrom paymaster.pricing import CostCalculator\n"
    assert not loads_pricing_library(setup + "CostCalculator(PaymasterConfig())")
    assert loads_pricing_library(setup + "CostCalculator(PaymasterConfig()).preload()")
    assert not loads_pricing_library(setup + "CostCalculator(PaymasterConfig(), use_library=False).preload()")
    assert not loads_pricing_library(setup + "CostCalculator(CostConfig(strict=True)).preload()")
