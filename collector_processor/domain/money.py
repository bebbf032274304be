"""Exact money for the sidecar: decimal strings on the wire, ``Decimal`` in the domain, micro-dollars in storage.

The store keeps whole micro-dollars (integers add exactly and atomically inside a database); the
domain and the API speak ``Decimal`` and exact decimal strings. Amounts finer than a micro-dollar
round *up*, so a budget is never charged less than was spent and a reservation never shrinks to fit.

Every amount on the wire is at most ``MAX_USD`` (a billion dollars); the ledger applies the smaller,
configurable maximum per request (``ledger.max_amount_usd``). What a store adds up stays within
``MAX_TOTAL_MICROS``, the range of a signed 64-bit integer that SQLite and Redis add exactly: a
charge or hold that would take a total past it is refused before anything is written.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from collector_processor.errors import InvalidRequestError
from paymaster.exceptions import quote
from paymaster.money import to_decimal, to_micros

__all__ = [
    "MAX_TOTAL_MICROS",
    "MAX_USD",
    "MICROS_PER_USD",
    "format_micros",
    "format_percentage",
    "format_percentage_of",
    "format_usd",
    "micros_to_usd",
    "parse_usd",
    "percentage",
    "usd_to_micros",
]

MICROS_PER_USD = 1_000_000
MAX_USD = Decimal(10) ** 9
"""The largest amount any money field may carry (a budget's limit, an estimate, a cost)."""
MAX_TOTAL_MICROS = 2**63 - 1
"""The largest total a store keeps (spend per period or window, holds), in micro-dollars: about
$9.2 trillion, the range of the signed 64-bit integers SQLite and Redis add exactly."""
_HUNDREDTH = Decimal("0.01")


def parse_usd(text: str, field: str, *, required: bool = True) -> Decimal:
    """Parse an exact decimal dollar string; an empty optional field is zero. Errors name ``field``."""
    if not text.strip():
        if required:
            raise InvalidRequestError(field, "is required (an exact decimal string such as '0.25')")
        return Decimal(0)
    try:
        value = to_decimal(text, what="amount")
    except ValueError as exc:
        raise InvalidRequestError(field, f"{exc}".replace("amount ", "")) from None
    if value > MAX_USD:
        raise InvalidRequestError(field, f"must be at most {MAX_USD:,} dollars, got {quote(text)}")
    return value


def usd_to_micros(value: Decimal) -> int:
    """Whole micro-dollars, rounding up."""
    return to_micros(value)


def micros_to_usd(micros: int) -> Decimal:
    """The exact ``Decimal`` for a count of micro-dollars, with six places."""
    return Decimal(micros).scaleb(-6)


def format_usd(value: Decimal) -> str:
    """The wire form: plain notation, six places (``'12.500000'``)."""
    return f"{value:.6f}"


def percentage(used_micros: int, limit_micros: int) -> Decimal:
    """Committed spend as a percentage of the limit, two places rounded down; a zero limit reads 100."""
    if limit_micros <= 0:
        return Decimal(100).quantize(_HUNDREDTH)
    return (Decimal(used_micros * 100) / Decimal(limit_micros)).quantize(_HUNDREDTH, rounding=ROUND_FLOOR)


def format_percentage(value: Decimal) -> str:
    return f"{value:.2f}"


def format_micros(micros: int) -> str:
    """The wire form of a whole number of micro-dollars, straight from the integer: ``'12.500000'``."""
    if micros < 0:
        return "-" + format_micros(-micros)
    whole, frac = divmod(micros, MICROS_PER_USD)
    return f"{whole}.{frac:06d}"


def format_percentage_of(used_micros: int, limit_micros: int) -> str:
    """``percentage(used, limit)`` in its wire form, with integer arithmetic only."""
    if limit_micros <= 0:
        return "100.00"
    hundredths = used_micros * 10_000 // limit_micros
    return f"{hundredths // 100}.{hundredths % 100:02d}"
