"""Every error Paymaster raises, in one shallow tree.

Two families: misconfiguration (``ConfigError`` and its children), raised at load or before an agent
runs and fixed by editing a file; and runtime refusals (``UsageLimitExceededError`` and its children:
``BudgetExceededError`` from the sidecar's budgets, ``SidecarUnavailableError`` when a fail-closed
runner cannot reach it), raised when spending would pass a limit and carrying the partial result of
the run.

Messages quote the values they refuse through ``quote``, which keeps at most about 80 characters of
one: a megabyte of bad input makes a one-line error, never a megabyte of error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from paymaster.result import PipelineResult, StepResult

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "PaymasterError",
    "PricingNotConfiguredError",
    "SidecarUnavailableError",
    "UsageLimitExceededError",
    "UsageReportError",
    "quote",
]

QUOTE_LIMIT = 80
"""The most characters of a value that ``quote`` shows."""


def quote(value: object, *, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    A longer string shows its first ``limit`` characters and its length (``'aaaa…' (1,000,000
    characters)``); any other value shows the start of its ``repr`` followed by ``…``. Integers too
    long to print are described by their size."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


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

    ``code`` says which and when: ``cost_limit_denied`` / ``token_limit_denied`` when a step's
    estimate did not fit and the step was not run; ``cost_limit_exceeded`` / ``token_limit_exceeded``
    when a step's actual usage passed the limit after it ran (the spend is recorded); the sidecar's
    codes (``budget_denied``, ``budget_exceeded``, ``no_downgrade_path``, ``sidecar_unavailable``)
    for its budgets. The message names the step, the limit, what was spent and what was estimated.
    ``result`` (alias ``partial_result``) holds the history of everything that ran up to the halt,
    its totals are what was really spent, and ``result.halted_step`` is ``step_result``.
    """

    def __init__(self, message: str, result: PipelineResult | None = None, *, code: str = "limit") -> None:
        super().__init__(message)
        self.result: PipelineResult | None = result
        self.code = code
        self.step_result: StepResult | None = None
        """The step whose denial or overrun halted the run (set by the executor)."""

    @property
    def step(self) -> str | None:
        """The name of the step that halted the run."""
        return None if self.step_result is None else self.step_result.name

    @property
    def partial_result(self) -> PipelineResult | None:
        """The same object as ``result``; the name the cost tracking guide uses."""
        return self.result


class BudgetExceededError(UsageLimitExceededError):
    """A budget held by the sidecar refused the step before its agent ran, or its spend passed a block
    budget's limit (the run halts after recording that spend).

    ``budget_info`` lists what the sidecar said of every matching budget: ``budget_id``,
    ``budget_name``, ``scope``, ``scope_id``, ``used_usd``, ``reserved_usd``, ``limit_usd``,
    ``remaining_usd``, ``percentage``, ``exceeded``, ``action`` (``block``, ``warn``, ``downgrade``),
    ``period_start`` and ``period_end``. ``reason`` is the operator-facing message (also the error's
    text) and ``deciding_budget_id`` the budget that decided.
    """

    def __init__(
        self,
        message: str,
        result: PipelineResult | None = None,
        *,
        code: str = "budget",
        budget_info: list[dict[str, Any]] | None = None,
        deciding_budget_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, result, code=code)
        self.budget_info: list[dict[str, Any]] = list(budget_info or [])
        self.deciding_budget_id = deciding_budget_id
        self.reason = reason if reason is not None else message


class SidecarUnavailableError(UsageLimitExceededError):
    """The budget sidecar could not be reached within the deadline and the runner's fail policy is
    ``fail_closed``: the step was denied before its agent ran. ``result`` holds the run up to it."""

    def __init__(
        self, message: str, result: PipelineResult | None = None, *, code: str = "sidecar_unavailable"
    ) -> None:
        super().__init__(message, result, code=code)
