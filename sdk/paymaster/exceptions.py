"""Every error Paymaster raises, in one shallow tree.

Two families: misconfiguration (``ConfigError`` and its children), raised at load or before an agent
runs and fixed by editing a file; and runtime refusals (``UsageLimitExceededError`` and its children),
raised when spending would pass a limit and carrying the partial result of the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from paymaster.result import PipelineResult

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "PaymasterError",
    "PricingNotConfiguredError",
    "SidecarUnavailableError",
    "UsageLimitExceededError",
    "UsageReportError",
]


class PaymasterError(Exception):
    """Base class of every error raised by Paymaster."""


class ConfigError(PaymasterError, ValueError):
    """A configuration value is missing, malformed or out of range.

    The message names the file (and line where known), the key, and what was expected.
    """


class PricingNotConfiguredError(ConfigError):
    """Strict pricing is on and a model used by a step has no configured price."""

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model


class UsageReportError(PaymasterError, ValueError):
    """An agent reported usage that cannot be true (negative cost or tokens, non-numeric values)."""


class UsageLimitExceededError(PaymasterError):
    """Spending would pass (or has passed) a usage limit; the run was halted.

    ``result`` (alias ``partial_result``) holds the history of everything that ran up to the halt,
    and its totals are what was really spent.
    """

    def __init__(self, message: str, result: PipelineResult | None = None, *, code: str = "limit") -> None:
        super().__init__(message)
        self.result: PipelineResult | None = result
        self.code = code

    @property
    def partial_result(self) -> PipelineResult | None:
        """The same object as ``result``; the name the cost tracking guide uses."""
        return self.result


class BudgetExceededError(UsageLimitExceededError):
    """A budget held by the sidecar denied the step before its agent ran.

    ``budget_info`` lists what the sidecar said of every matching budget: id, name, used, limit,
    action, and the operator-facing message.
    """

    def __init__(
        self,
        message: str,
        result: PipelineResult | None = None,
        *,
        code: str = "budget",
        budget_info: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, result, code=code)
        self.budget_info: list[dict[str, Any]] = list(budget_info or [])


class SidecarUnavailableError(PaymasterError):
    """The budget sidecar could not be reached within the deadline (fail-closed policy)."""
