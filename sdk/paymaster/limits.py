"""``UsageLimits``: the cost and token ceilings of a run or of one step.

``None`` means "no limit". Amounts are exact: floats are converted through ``str`` so the limit is
the number the user wrote, and refusals quote it that way (``over the run's cost limit of $0.25``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from paymaster.exceptions import ConfigError
from paymaster.money import to_decimal, to_tokens

__all__ = ["UsageLimits"]


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageLimits:
    """Ceilings on what a run (or one step) may spend."""

    total_cost_usd_limit: Decimal | None = None
    """Most USD the run may spend; ``None`` for no cost limit. Floats and ints are accepted and converted exactly."""
    total_tokens_limit: int | None = None
    """Most tokens the run may use; ``None`` for no token limit."""

    def __post_init__(self) -> None:
        try:
            if self.total_cost_usd_limit is not None:
                cost = to_decimal(self.total_cost_usd_limit, what="total_cost_usd_limit")
                object.__setattr__(self, "total_cost_usd_limit", cost)
            if self.total_tokens_limit is not None:
                tokens = to_tokens(self.total_tokens_limit, what="total_tokens_limit")
                object.__setattr__(self, "total_tokens_limit", tokens)
        except ValueError as exc:
            raise ConfigError(f"UsageLimits: {exc}") from None

    @property
    def is_unlimited(self) -> bool:
        """True when neither a cost nor a token limit is set."""
        return self.total_cost_usd_limit is None and self.total_tokens_limit is None
