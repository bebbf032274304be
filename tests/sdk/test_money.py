"""``paymaster.money``, the money arithmetic the SDK and the sidecar share: ASCII decimal strings
only, micro-dollars rounded up exactly however small or long the amount, and errors that quote a
bounded part of a bad value."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paymaster.exceptions import quote
from paymaster.money import to_decimal, to_micros, to_tokens


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", Decimal(12)),
        ("0.25", Decimal("0.25")),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("+1", Decimal(1)),
        ("2.5e-3", Decimal("0.0025")),
        ("1E3", Decimal(1000)),
    ],
)
def test_ascii_decimal_strings_are_amounts(text: str, value: Decimal) -> None:
    assert to_decimal(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "1_000",
        "\u0661\u0662\u0663",
        "\uff15",
        "1,5",
        " 1",
        "1 ",
        "1.2.3",
        "e5",
        ".",
        "",
        "0x10",
        "1e",
        "--1",
        "\uff11e3",
        "1e\u0663",
    ],
)
def test_anything_but_ascii_digits_a_point_and_an_exponent_is_refused(text: str) -> None:
    """Python's ``Decimal`` takes underscores and the digits of every script; money does not."""
    with pytest.raises(ValueError, match=r"^amount must be a decimal number \(ASCII digits 0-9"):
        to_decimal(text)


@pytest.mark.parametrize("text", ["NaN", "inf", "-Infinity", "sNaN"])
def test_non_finite_strings_are_refused_as_such(text: str) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        to_decimal(text, allow_negative=True)


def test_an_exponent_past_what_decimal_holds_is_out_of_range() -> None:
    with pytest.raises(ValueError, match="is out of range"):
        to_decimal("1e99999999999999999999")


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1e-1000000000", 1),
        ("0.1e-999999", 1),
        ("0.0000001", 1),
        ("0.000001", 1),
        ("0.0000010000000000000000000000000000001", 2),
        ("1." + "0" * 100_000 + "1", 1_000_001),
        ("0", 0),
        ("0e-1000000000", 0),
        ("123.456789", 123_456_789),
    ],
)
def test_micro_dollars_round_up_exactly_however_small_or_long_the_amount(text: str, micros: int) -> None:
    assert to_micros(to_decimal(text)) == micros


@given(st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False, places=12))
def test_micro_dollars_are_the_ceiling_of_the_amount(value: Decimal) -> None:
    micros = to_micros(value)
    assert Decimal(micros - 1).scaleb(-6) < value <= Decimal(micros).scaleb(-6)


def test_amounts_no_ledger_counts_are_refused_rather_than_made_into_huge_integers() -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_micros(to_decimal("1e999999999999999999"))
    with pytest.raises(ValueError, match="finite"):
        to_micros(Decimal("NaN"))


def test_errors_quote_at_most_about_80_characters_of_a_bad_value() -> None:
    for bad in ("x" * 1_000_000, "9" * 1_000_000 + "x"):
        with pytest.raises(ValueError) as info:
            to_decimal(bad)
        assert len(str(info.value)) < 250
        assert "(1,000,00" in str(info.value)
    with pytest.raises(ValueError) as tokens:
        to_tokens(Decimal("1." + "5" * 10_000))
    assert len(str(tokens.value)) < 250


def test_quote_shows_short_values_whole_and_cuts_long_ones() -> None:
    assert quote("abc") == "'abc'"
    assert quote("a" * 100) == repr("a" * 80) + "… (100 characters)"
    assert quote(10**10_000) == "an integer of 33,220 bits"
    assert quote(Decimal(5)) == "Decimal('5')"
    assert quote(list(range(1000))).endswith("…") and len(quote(list(range(1000)))) == 81
