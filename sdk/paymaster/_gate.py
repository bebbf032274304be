"""The small interface between the executor and a remote budget (the sidecar).

The executor consults a ``BudgetGate`` only when the runner has one (``Runner(..., budget=...)``);
without it, none of this is touched. Around each agent step, after the local quota granted the
step's estimate:

* ``admit`` decides remotely before the agent runs. It returns a ``Ticket`` naming the agent (and
  step configuration) to run — the step's own, or its cheaper path under a downgrade decision — or
  raises a ``UsageLimitExceededError`` (``BudgetExceededError``, ``SidecarUnavailableError``) that
  denies the step.
* ``settle`` records the actual usage remotely once the agent has run, and returns the error that
  halts the run when that spend took a block budget past its limit (``None`` otherwise).
* ``abandon`` gives the admission back when the agent failed, was cancelled or its usage report was
  refused. It never blocks and never raises; the gate finishes the work before ``close`` returns.
* ``close`` runs when the run ends, however it ends: it returns what is still held (leases) and
  waits for every outstanding call, so no reservation outlives the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from paymaster._estimate import UsageEstimate
    from paymaster._metering import MeasuredUsage
    from paymaster.exceptions import UsageLimitExceededError
    from paymaster.result import StepResult
    from paymaster.step import Step

__all__ = ["BudgetGate", "Ticket"]


class Ticket:
    """An admitted step: what to run, and the gate's own bookkeeping (``state``)."""

    __slots__ = ("agent", "estimate", "reservation_id", "state", "step")

    def __init__(
        self, step: Step, estimate: UsageEstimate, reservation_id: str | None, state: Any = None
    ) -> None:
        self.step = step
        """The step to run: the original, or its cheaper path (same name, another agent)."""
        self.agent = step.agent
        """The agent to call."""
        self.estimate = estimate
        """What the gate holds for the step."""
        self.reservation_id = reservation_id
        """The id under which the sidecar accounts for this step's spend, if any; it travels on the
        step's span and, as baggage (``paymaster.telemetry.RESERVATION_ATTRIBUTE``), on every span
        started while the agent runs."""
        self.state = state
        """The gate's own state for this admission."""


class BudgetGate(Protocol):
    """A remote budget consulted around every agent step; see the module docstring."""

    async def admit(
        self,
        run: Any,
        step: Step,
        data: Any,
        estimate: UsageEstimate,
        record: StepResult,
        span: Span | None,
    ) -> Ticket: ...

    async def settle(
        self,
        ticket: Ticket,
        usage: MeasuredUsage,
        actual: UsageEstimate,
        record: StepResult,
        span: Span | None,
    ) -> UsageLimitExceededError | None: ...

    def abandon(self, ticket: Ticket) -> None: ...

    async def close(self, span: Span | None) -> None: ...
