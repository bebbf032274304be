"""The seam between the executor and pricing: what a step really used and what it cost.

The executor asks a ``UsageMeter`` two things: ``preflight(agent)`` before the agent runs (strict
pricing refuses an unpriced model here, so nothing is spent), and ``measure(agent, output)`` after,
which turns whatever the agent returned into a ``MeasuredUsage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from paymaster._money import ZERO, to_decimal, to_tokens
from paymaster.exceptions import UsageReportError

__all__ = ["CostSource", "MeasuredUsage", "UsageMeter", "explicit_usage"]

CostSource = Literal["explicit", "configured", "library", "unknown", "none"]


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasuredUsage:
    """What one agent call used, as the executor records it."""

    cost_usd: Decimal | None
    """Exact cost in USD; ``None`` when it could not be determined (never a fake zero)."""
    input_tokens: int = 0
    """Prompt / input tokens, cached ones included."""
    output_tokens: int = 0
    """Completion / output tokens, reasoning ones included."""
    total_tokens: int = 0
    """Tokens counted against token limits."""
    cost_source: CostSource = "none"
    """``explicit`` (the output reported its cost), ``configured`` (paymaster.toml), ``library``
    (genai-prices default), ``unknown`` (usage seen but no price), ``none`` (no model call seen)."""
    provider: str | None = None
    """Provider of the model that was priced, when known."""
    model: str | None = None
    """Model name that was priced, when known."""
    cached_input_tokens: int = 0
    """Input tokens served from the provider's cache."""
    reasoning_tokens: int = 0
    """Output tokens spent on reasoning."""


NO_USAGE = MeasuredUsage(cost_usd=ZERO)


class UsageMeter(Protocol):
    """Prices agent calls for the executor."""

    def preflight(self, agent: object) -> None:
        """Raise ``PricingNotConfiguredError`` if this agent's model cannot be priced under strict mode."""
        ...

    def measure(self, agent: object, output: object) -> MeasuredUsage:
        """What the call that produced ``output`` used and cost."""
        ...


def explicit_usage(output: object) -> MeasuredUsage | None:
    """The seeds' ExplicitCostReporter protocol: an output carrying ``cost_usd`` and ``token_counts``.

    Returns ``None`` when the output does not report explicitly. Negative or non-numeric values are
    refused with ``UsageReportError``: a refund reported by an agent is never subtracted from spend.
    """
    cost = getattr(output, "cost_usd", None)
    tokens = getattr(output, "token_counts", None)
    if cost is None and tokens is None:
        return None
    try:
        cost_usd = None if cost is None else to_decimal(cost, what="cost_usd reported by the agent")
        total = 0 if tokens is None else to_tokens(tokens, what="token_counts reported by the agent")
    except ValueError as exc:
        raise UsageReportError(f"{exc} (from {type(output).__name__})") from None
    return MeasuredUsage(
        cost_usd=cost_usd,
        total_tokens=total,
        cost_source="explicit" if cost_usd is not None else "unknown",
    )


class ExplicitOnlyMeter:
    """Trusts explicit reports only; any other output counts as no model call."""

    def preflight(self, agent: object) -> None:
        return None

    def measure(self, agent: object, output: object) -> MeasuredUsage:
        return explicit_usage(output) or NO_USAGE
