"""``UsageEstimate``: what a step is expected to cost before it runs, as the quota reserves it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from paymaster.money import ZERO, to_decimal, to_tokens

__all__ = ["UsageEstimate"]


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageEstimate:
    """Expected usage of one step: reserved before the step runs, reconciled after."""

    cost_usd: Decimal = ZERO
    """Expected cost in USD (exact; floats are converted through ``str``)."""
    tokens: int = 0
    """Expected total tokens."""

    def __post_init__(self) -> None:
        # Every step builds one or two of these: a value that is already an exact, valid amount and
        # a plain count (what the executor and estimators pass) skips the general conversion.
        cost = self.cost_usd
        if type(cost) is not Decimal or not cost.is_finite() or cost < 0:
            object.__setattr__(self, "cost_usd", to_decimal(cost, what="estimated cost_usd"))
        tokens = self.tokens
        if type(tokens) is not int or tokens < 0:
            object.__setattr__(self, "tokens", to_tokens(tokens, what="estimated tokens"))

    def __add__(self, other: UsageEstimate) -> UsageEstimate:
        return UsageEstimate(cost_usd=self.cost_usd + other.cost_usd, tokens=self.tokens + other.tokens)


ZERO_ESTIMATE = UsageEstimate()
