"""Exact money and token arithmetic at the API edge, shared by the SDK and the sidecar.

Floats, ints and strings come in; ``Decimal`` goes out. Floats convert through ``str`` so that
``0.1`` means one tenth, not the binary fraction nearest to it, and ``0.1 + 0.2`` totals ``0.3``.
``to_micros`` rounds up to whole micro-dollars, the unit both the SDK's reservations and the
sidecar's ledger count in, so the two sides round every amount the same way. This module is public
(``paymaster.money``): the sidecar parses wire amounts with it rather than keeping a copy of its own.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

__all__ = ["MICRO", "ZERO", "format_usd", "to_decimal", "to_micros", "to_tokens"]

ZERO = Decimal(0)
MICRO = Decimal("0.000001")


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
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{what} must be a decimal number, got {value!r}") from None
    else:
        raise ValueError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    if not result.is_finite():
        raise ValueError(f"{what} must be finite, got {value!r}")
    if result < 0 and not allow_negative:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return result


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
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if result < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return result


def to_micros(value: Decimal) -> int:
    """Whole micro-dollars, rounding up: a reservation never rounds a cost down to fit."""
    return int((value / MICRO).to_integral_value(rounding="ROUND_CEILING"))


def format_usd(value: Decimal | None, *, places: int = 4) -> str:
    """``$0.3000`` style, or ``unknown`` when the cost could not be determined."""
    if value is None:
        return "unknown"
    return f"${value:.{places}f}"
