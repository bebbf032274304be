"""paymaster.toml is found by the documented search, loads into exact Decimals, and refuses every
malformed file at load with a message naming the file, the line, the key and what was expected."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from paymaster.config import (
    CONFIG_ENV_VAR,
    ModelPricing,
    PaymasterConfig,
    clear_config_cache,
    find_config_path,
    get_config,
    load_config,
    parse_config,
)
from paymaster.exceptions import ConfigError
from paymaster.usage import ModelRef, parse_model_ref

DATA = Path(__file__).parent / "data"
PRICE_KEYS = (
    "prompt_tokens_per_1k, completion_tokens_per_1k, cache_read_tokens_per_1k, cache_write_tokens_per_1k, "
    "reasoning_tokens_per_1k, price_per_image, price_per_image_<quality>_<size>"
)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    clear_config_cache()
    yield
    clear_config_cache()


def test_prices_load_as_exact_decimals() -> None:
    config = load_config(DATA / "prices.toml")
    gpt4o = config.cost.providers["openai"]["gpt-4o"]
    assert gpt4o == ModelPricing(
        prompt_tokens_per_1k=Decimal("0.005"), completion_tokens_per_1k=Decimal("0.015")
    )
    assert type(gpt4o.prompt_tokens_per_1k) is Decimal
    dalle = config.cost.providers["openai"]["dall-e-3"]
    assert dalle.image_prices["price_per_image_standard_1024x1024"] == Decimal("0.040")
    assert dalle.image_prices["price_per_image_hd_1792x1024"] == Decimal("0.120")
    o4 = config.cost.providers["openai"]["o4-mini"]
    assert (o4.cache_read_tokens_per_1k, o4.reasoning_tokens_per_1k) == (
        Decimal("0.000275"),
        Decimal("0.0050"),
    )
    assert config.cost.strict is False
    assert config.path == DATA / "prices.toml"


def test_estimator_hints_and_downgrades_load_normalised() -> None:
    config = load_config(DATA / "prices.toml")
    hint = config.cost.hint_for(ModelRef(provider="openai", model="gpt-4o"))
    assert hint is not None
    assert (hint.expected_cost_usd, hint.expected_tokens) == (Decimal("0.12"), 600)
    assert config.downgrade == {
        "openai:gpt-4o": "openai:gpt-4o-mini",
        "anthropic:claude-opus-4-1": "anthropic:claude-sonnet-4-5",
    }


def test_seeds_flujo_toml_is_read_for_its_cost_tables_with_unquoted_dotted_model_names() -> None:
    """TOML reads `[cost.providers.openai.gpt-3.5-turbo]` as table `gpt-3` holding `5-turbo`; the
    seeds' files are written that way, so the name is joined back."""
    config = load_config(DATA / "flujo" / "flujo.toml")
    openai = config.cost.providers["openai"]
    assert set(openai) == {"gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo"}
    assert openai["gpt-3.5-turbo"].completion_tokens_per_1k == Decimal("0.0015")
    assert set(config.cost.providers["google"]) == {"gemini-1.5-pro", "gemini-1.5-flash"}
    assert config.cost.providers["anthropic"]["claude-3-sonnet"].prompt_tokens_per_1k == Decimal("0.003")


def test_search_order_env_then_paymaster_toml_then_flujo_toml(tmp_path: Path) -> None:
    assert find_config_path(cwd=tmp_path, environ={}) is None
    (tmp_path / "flujo.toml").write_text("[cost]\nstrict = false\n")
    assert find_config_path(cwd=tmp_path, environ={}) == tmp_path / "flujo.toml"
    (tmp_path / "paymaster.toml").write_text("[cost]\nstrict = false\n")
    assert find_config_path(cwd=tmp_path, environ={}) == tmp_path / "paymaster.toml"
    named = tmp_path / "elsewhere.toml"
    named.write_text("[cost]\nstrict = true\n")
    assert find_config_path(cwd=tmp_path, environ={CONFIG_ENV_VAR: str(named)}) == named


def test_env_var_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"PAYMASTER_CONFIG='{missing}' names no file"):
        find_config_path(environ={CONFIG_ENV_VAR: str(missing)})


def test_no_file_gives_the_empty_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config == PaymasterConfig()
    assert config.display_name == "paymaster.toml"


def test_get_config_loads_once_until_the_cache_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paymaster.toml").write_text("[cost]\nstrict = true\n")
    first = get_config()
    assert first.cost.strict is True
    assert first.display_name == "paymaster.toml"
    (tmp_path / "paymaster.toml").write_text("[cost]\nstrict = false\n")
    assert get_config() is first
    clear_config_cache()
    assert get_config().cost.strict is False


def test_a_flujo_toml_keeps_its_other_tables_but_a_paymaster_toml_may_not_have_unknown_ones() -> None:
    text = "[settings]\nx = 1\n[cost]\nstrict = true\n"
    assert parse_config(text, path="flujo.toml").cost.strict is True
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="paymaster.toml")
    assert str(info.value) == (
        "paymaster.toml:1: top level: unknown key 'settings'; expected one of cost, downgrade"
    )


def test_provider_aliases_share_one_table_and_duplicates_are_refused() -> None:
    text = '[cost.providers.google-gla."gemini-2.0-flash"]\nprompt_tokens_per_1k = 0.0001\n'
    config = parse_config(text)
    assert "gemini-2.0-flash" in config.cost.providers["google"]
    twice = text + '[cost.providers.google."gemini-2.0-flash"]\nprompt_tokens_per_1k = 0.0002\n'
    with pytest.raises(ConfigError, match=r"'gemini-2\.0-flash' is configured twice"):
        parse_config(twice)


def test_lookup_accepts_dated_names_and_unique_bare_names_but_never_guesses() -> None:
    config = load_config(DATA / "prices.toml").cost
    dated = config.pricing_for(ModelRef(provider="openai", model="gpt-4o-2024-08-06"))
    assert dated is not None
    assert dated[0] == ModelRef(provider="openai", model="gpt-4o")
    bare = config.pricing_for(ModelRef(provider=None, model="llama-3-8b"))
    assert bare is not None
    assert bare[0].provider == "groq"
    assert config.pricing_for(ModelRef(provider="openai", model="gpt-4o-mini")) is None
    two = parse_config(
        '[cost.providers.groq."llama-3-8b"]\nprompt_tokens_per_1k = 1\n'
        '[cost.providers.together."llama-3-8b"]\nprompt_tokens_per_1k = 2\n'
    ).cost
    assert two.pricing_for(ModelRef(provider=None, model="llama-3-8b")) is None


BAD = {
    "syntax.toml": "paymaster.toml:6:26: invalid TOML: Expected '=' after a key in a key/value pair",
    "unknown_key.toml": (
        "paymaster.toml:6: [cost.providers.openai.\"gpt-4o\"]: unknown key 'completion_per_1k' "
        f"(did you mean 'completion_tokens_per_1k'?); expected one of {PRICE_KEYS}"
    ),
    "negative_price.toml": (
        'paymaster.toml:2: [cost.providers.openai."gpt-4o"] prompt_tokens_per_1k: '
        "expected a non-negative number of USD, got -0.005"
    ),
    "string_price.toml": (
        'paymaster.toml:3: [cost.providers.openai."gpt-4o"] completion_tokens_per_1k: '
        'expected a non-negative number of USD, got "0.015"'
    ),
    "image_nan.toml": (
        'paymaster.toml:3: [cost.providers.openai."dall-e-3"] price_per_image_hd_1024x1024: '
        "expected a non-negative number of USD, got nan"
    ),
    "strict_not_bool.toml": 'paymaster.toml:2: [cost] strict: expected true or false, got "yes"',
    "unknown_table.toml": (
        "paymaster.toml:2: top level: unknown key 'costs' (did you mean 'cost'?); expected one of cost, downgrade"
    ),
    "empty_model.toml": f'paymaster.toml:1: [cost.providers.openai."gpt-4o"]: no price given; expected one of {PRICE_KEYS}',
    "model_not_table.toml": "paymaster.toml:2: [cost.providers.openai] gpt-4o: expected a table, got 0.005",
    "bad_hint.toml": (
        'paymaster.toml:3: [cost.estimators.openai."gpt-4o"] expected_tokens: '
        "expected a non-negative whole number of tokens, got 600.5"
    ),
    "downgrade_ambiguous.toml": (
        'paymaster.toml:3: [downgrade] llama-3-8b: expected "provider:model", got "llama-3-8b" '
        "(its provider cannot be inferred)"
    ),
    "downgrade_cycle.toml": (
        "paymaster.toml:3: [downgrade] has a cycle: openai:gpt-4o -> openai:gpt-4o-mini -> openai:gpt-4o"
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_fail_at_load_with_file_line_key_and_expectation(name: str) -> None:
    text = (DATA / "bad" / name).read_text()
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="paymaster.toml")
    assert str(info.value) == BAD[name]


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    text = '[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = -1\ncompletion_tokens_per_1k = true\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    lines = str(info.value).splitlines()
    assert lines == [
        'paymaster.toml:2: [cost.providers.openai."gpt-4o"] prompt_tokens_per_1k: '
        "expected a non-negative number of USD, got -1",
        'paymaster.toml:3: [cost.providers.openai."gpt-4o"] completion_tokens_per_1k: '
        "expected a non-negative number of USD, got true",
    ]


def test_errors_name_the_file_actually_loaded(tmp_path: Path) -> None:
    path = tmp_path / "team-prices.toml"
    path.write_text("[cost]\nstrict = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: [cost] strict: expected true or false, got 1"


def test_a_model_cannot_downgrade_to_itself() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[downgrade]\n"gpt-4o" = "openai:gpt-4o"\n')
    assert str(info.value) == "paymaster.toml:2: [downgrade] gpt-4o: a model cannot downgrade to itself"


def test_the_example_configuration_loads() -> None:
    example = Path(__file__).parents[2] / "examples" / "paymaster.toml"
    config = load_config(example)
    assert config.cost.providers["openai"]["gpt-4o"].prompt_tokens_per_1k == Decimal("0.0025")
    assert config.downgrade


def test_the_readme_configuration_example_loads_and_prices_as_it_says() -> None:
    """The paymaster.toml shown in the README is a real, valid file."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = parse_config(block, path="README.md")
    assert config.downgrade == {"openai:gpt-4o": "openai:gpt-4o-mini"}
    ref = parse_model_ref("openai:dall-e-3")
    found = config.cost.pricing_for(ref)
    assert found is not None and found[1].image_prices["price_per_image_hd_1792x1024"] == Decimal("0.120")


def test_an_unquoted_dotted_name_is_joined_back_unless_a_shorter_name_is_priced_too() -> None:
    """What the README and docs/pricing.md say of unquoted model names, both ways."""
    prices = "prompt_tokens_per_1k = 0.002\ncompletion_tokens_per_1k = 0.008\n"
    joined = parse_config(f"[cost.providers.openai.gpt-4.1]\n{prices}", path="p.toml")
    assert set(joined.cost.providers["openai"]) == {"gpt-4.1"}
    both = f"[cost.providers.openai.gpt-4]\n{prices}[cost.providers.openai.gpt-4.1]\n{prices}"
    with pytest.raises(
        ConfigError, match=r"""^p.toml:1: \[cost.providers.openai."gpt-4"\]: unknown key '1'"""
    ):
        parse_config(both, path="p.toml")
    quoted = f'[cost.providers.openai."gpt-4"]\n{prices}[cost.providers.openai."gpt-4.1"]\n{prices}'
    assert set(parse_config(quoted, path="p.toml").cost.providers["openai"]) == {"gpt-4", "gpt-4.1"}
