"""Exact money and token arithmetic at the API edge, shared by the SDK and the sidecar.

Floats, ints and strings come in; ``Decimal`` goes out. Floats convert through ``str`` so that
``0.1`` means one tenth, not the binary fraction nearest to it, and ``0.1 + 0.2`` totals ``0.3``.
``to_micros`` rounds up to whole micro-dollars, the unit both the SDK's reservations and the
sidecar's ledger count in, so the two sides round every amount the same way: anything that is not a
whole number of micro-dollars, however small (``1e-1000000000``), is the next micro-dollar up. This
module is public (``paymaster.money``): the sidecar parses wire amounts with it rather than keeping
a copy of its own.

A money string is ASCII only: an optional sign, decimal digits ``0-9`` with at most one point (at
least one digit), and an optional exponent (``e`` or ``E``, an optional sign, digits), with no
spaces, underscores or other characters. ``"12"``, ``"0.25"``, ``".5"``, ``"2.5e-3"`` are amounts;
``"1_000"``, ``" 1"``, ``"1,5"``, ``"NaN"`` and digits of other scripts (Arabic-Indic, fullwidth), which
Python's ``Decimal`` would take, are not. Error messages quote at most about 80 characters of a bad
value (``paymaster.exceptions.quote``).
"""

from __future__ import annotations

import math
import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_CEILING, Context, Decimal, InvalidOperation

from paymaster.exceptions import quote

__all__ = ["MICRO", "ZERO", "format_usd", "to_decimal", "to_micros", "to_tokens"]

ZERO = Decimal(0)
MICRO = Decimal("0.000001")
_AMOUNT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Exact arithmetic for rounding to micro-dollars: no precision limit and the widest exponents, so
# nothing underflows to zero or rounds before the one rounding up that ``to_micros`` means.
_EXACT = Context(prec=MAX_PREC, Emin=MIN_EMIN, Emax=MAX_EMAX, rounding=ROUND_CEILING)
_MAX_MICROS_DIGITS = 40


def to_decimal(value: object, *, what: str = "amount", allow_negative: bool = False) -> Decimal:
    """Convert ``value`` to an exact ``Decimal``; reject NaN, infinities, booleans and (by default) negatives."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be a number, got {value!r}")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        result = _parse(value, what)
    else:
        raise ValueError(f"{what} must be a number, got {type(value).__name__} {quote(value)}")
    if not result.is_finite():
        raise ValueError(f"{what} must be finite, got {quote(value)}")
    if result < 0 and not allow_negative:
        raise ValueError(f"{what} must not be negative, got {quote(value)}")
    return result


def _parse(text: str, what: str) -> Decimal:
    """An ASCII decimal string (see the module docstring) as an exact ``Decimal``."""
    if not _AMOUNT.fullmatch(text):
        if text.lower().lstrip("+-") in ("inf", "infinity", "nan", "snan"):
            raise ValueError(f"{what} must be finite, got {quote(text)}")
        raise ValueError(
            f"{what} must be a decimal number (ASCII digits 0-9, at most one point, an optional "
            f"exponent), got {quote(text)}"
        )
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent past what Decimal can hold
        raise ValueError(f"{what} is out of range, got {quote(text)}") from None


def to_tokens(value: object, *, what: str = "token count") -> int:
    """Convert ``value`` to a non-negative whole number of tokens."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, int):
        result = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, Decimal) and value == value.to_integral_value()
    ):
        result = int(value)
    else:
        raise ValueError(f"{what} must be a whole number, got {quote(value)}")
    if result < 0:
        raise ValueError(f"{what} must not be negative, got {quote(value)}")
    return result


def to_micros(value: Decimal) -> int:
    """Whole micro-dollars, rounding up: a reservation never rounds a cost down to fit.

    Exact for every finite amount: ``1e-1000000000`` is one micro-dollar, not zero. ``ValueError``
    for amounts of more than 10^33 dollars, which no ledger counts (and whose micro-dollars would be
    a needlessly huge integer), and for NaN and infinities."""
    if not value.is_finite():
        raise ValueError(f"amount must be finite, got {quote(value)}")
    if value.is_zero():
        return 0
    if value.adjusted() + 6 >= _MAX_MICROS_DIGITS:
        raise ValueError(f"amount is out of range, got {quote(value)}")
    return int(value.scaleb(6, _EXACT).to_integral_value(ROUND_CEILING, _EXACT))


def format_usd(value: Decimal | None, *, places: int | None = 4) -> str:
    """``$0.3000`` style, or ``unknown`` when the cost could not be determined.

    With ``places=None`` the amount is shown as exactly as the ledgers count, with at least the
    cents and at most micro-dollars: ``$0.10``, ``$0.024825``, ``$12.00``; what refusals quote, so a
    spend of $0.0999 is not rounded to look like the limit $0.10."""
    if value is None:
        return "unknown"
    if places is None:
        exact = value.normalize()
        exponent = exact.as_tuple().exponent
        assert isinstance(exponent, int), "finite amounts only"
        places = min(max(-exponent, 2), 6)
    return f"${value:.{places}f}"
