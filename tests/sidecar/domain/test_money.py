"""Money on the wire: exact decimal strings, parsed with the field named, formatted identically by the
Decimal path and the integer fast path."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector_processor.domain.money import (
    format_micros,
    format_percentage,
    format_percentage_of,
    format_usd,
    micros_to_usd,
    parse_usd,
    percentage,
    usd_to_micros,
)
from collector_processor.errors import InvalidRequestError


@given(st.integers(0, 10**17))
def test_integer_formatting_matches_the_decimal_path(micros: int) -> None:
    assert format_micros(micros) == format_usd(micros_to_usd(micros))


@given(st.integers(0, 10**17), st.integers(0, 10**17))
def test_integer_percentage_matches_the_decimal_path(used: int, limit: int) -> None:
    assert format_percentage_of(used, limit) == format_percentage(percentage(used, limit))


def test_amounts_finer_than_a_micro_dollar_round_up_so_nothing_is_under_charged() -> None:
    assert usd_to_micros(Decimal("0.0000001")) == 1
    assert usd_to_micros(Decimal("0.1") + Decimal("0.2")) == 300_000  # exact, no binary float in sight


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("-1", "must not be negative"),
        ("1,5", "must be a decimal number"),
        ("inf", "must be finite"),
        ("1e10", "must be at most 1,000,000,000 dollars"),
        ("", "is required"),
    ],
)
def test_bad_amounts_name_the_field(text: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_usd(text, "budget.limit_usd")
    assert info.value.field == "budget.limit_usd"
    assert str(info.value).startswith(f"budget.limit_usd: {problem}")


def test_the_package_exposes_its_factory_lazily() -> None:
    import collector_processor

    assert collector_processor.create_default_config().server.listen == "127.0.0.1:7310"
    assert set(collector_processor.__all__) >= {"create_sidecar", "Ledger", "SqliteStore", "LedgerStore"}
    with pytest.raises(AttributeError):
        collector_processor.nothing_here  # noqa: B018
