"""What a run leaves behind: a ``StepResult`` per step (nested for loops and parallels) and totals.

Costs are exact ``Decimal``. A step whose cost could not be determined has ``cost_usd=None`` and
``cost_source="unknown"``; totals add up every known cost and ``unpriced_steps`` counts the rest,
so an unknown cost is never silently a zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from paymaster._estimate import UsageEstimate
from paymaster.money import ZERO

if TYPE_CHECKING:
    from paymaster.budget import BudgetOutcome

__all__ = ["PipelineResult", "StepResult"]


@dataclass(kw_only=True, slots=True)
class StepResult:
    """The outcome of one step (an agent call, a loop, a parallel step, or one branch of it)."""

    name: str
    """The step's name (for a parallel branch, the branch key)."""
    output: Any = None
    """What the step produced; ``None`` if it did not finish."""
    success: bool = False
    """True when the step finished without error or halt."""
    attempts: int = 0
    """Agent calls made (retries included); for a loop, iterations entered; 0 when denied."""
    cost_usd: Decimal | None = ZERO
    """Exact USD spent by this step and everything nested in it; ``None`` when unknown."""
    token_counts: int = 0
    """Tokens used by this step and everything nested in it."""
    latency_s: float = 0.0
    """Wall-clock seconds the step took."""
    feedback: str | None = None
    """Why it failed, was denied or cancelled, in words; ``None`` on success."""
    step_history: list[StepResult] = field(default_factory=list)
    """Nested results: loop iterations' steps, parallel branches, a branch pipeline's steps."""
    kind: str = "agent"
    """``agent``, ``loop``, ``parallel``, ``branch`` or ``adapter``."""
    denied: bool = False
    """True when the quota refused the step before its agent ran."""
    denial_code: str | None = None
    """``cost_limit``, ``token_limit`` or a sidecar budget code, when denied."""
    cancelled: bool = False
    """True when a sibling branch's breach cancelled this step."""
    cost_source: str = "none"
    """``explicit``, ``configured``, ``library``, ``unknown`` or ``none`` (no model call)."""
    estimate: UsageEstimate | None = None
    """What was reserved before the step ran."""
    estimate_strategy: str | None = None
    """Which estimator produced ``estimate`` (``heuristic``, ``config_hint``, ``learned`` ...)."""
    provider: str | None = None
    """Provider of the priced model, when known."""
    model: str | None = None
    """Model that was priced, when known."""
    input_tokens: int = 0
    """Input tokens of this agent call."""
    output_tokens: int = 0
    """Output tokens of this agent call."""
    warnings: list[str] = field(default_factory=list)
    """Non-fatal conditions worth a look (an unpriced model under a cost limit, a budget warning)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra facts recorded by extensions (budget decisions, downgrades)."""

    @property
    def budget(self) -> BudgetOutcome | None:
        """What the sidecar decided for this agent step (``None`` without a ``SidecarBudget``):
        decision, reservation id, matched budgets, warnings, and what a downgrade swapped."""
        return self.metadata.get("budget")

    def walk(self) -> Iterator[StepResult]:
        """This result and every nested one, depth first."""
        yield self
        for child in self.step_history:
            yield from child.walk()


@dataclass(kw_only=True, slots=True)
class PipelineResult:
    """The outcome of a run: the history and its totals.

    The history is a tree: a loop holds its iterations (``refine[1]``, ``refine[2]`` ...), each
    iteration the steps of the loop's body, a parallel step its branches. ``walk()`` visits every
    result depth first, ``agent_calls()`` lists the agent calls with their paths
    (``refine[2].review``, ``research.web``), and ``halted_step`` / ``halted_at`` name the step that
    halted the run, however deep it sits."""

    step_history: list[StepResult] = field(default_factory=list)
    """One result per top-level step that ran (or was denied)."""
    success: bool = False
    """True when every step finished."""
    output: Any = None
    """The last step's output."""
    halted_step: StepResult | None = None
    """The step whose denial (before it ran) or overrun (after) halted the run, wherever it sits in
    the tree; ``None`` when no limit or budget halted it. Its ``denied``, ``denial_code`` and
    ``feedback`` say which limit and by how much."""

    @property
    def halted_at(self) -> str | None:
        """The path of ``halted_step`` (``refine[3].draft``), or ``None``."""
        if self.halted_step is None:
            return None
        for path, step in self.walk_paths():
            if step is self.halted_step:
                return path
        return self.halted_step.name

    @property
    def total_cost_usd(self) -> Decimal:
        """Exact USD of everything that ran and reported a cost (see ``unpriced_steps``)."""
        return sum((s.cost_usd for s in self.step_history if s.cost_usd is not None), ZERO)

    @property
    def total_tokens(self) -> int:
        """Tokens of everything that ran."""
        return sum(s.token_counts for s in self.step_history)

    @property
    def unpriced_steps(self) -> int:
        """Agent calls whose cost could not be determined; their spend is not in ``total_cost_usd``."""
        return sum(1 for s in self.walk() if s.kind == "agent" and s.cost_source == "unknown")

    def walk(self) -> Iterator[StepResult]:
        """Every step result, nested ones included, depth first: loops, their iterations, parallel
        steps and branches as well as the agent calls (``kind`` tells them apart)."""
        for s in self.step_history:
            yield from s.walk()

    def walk_paths(self) -> Iterator[tuple[str, StepResult]]:
        """``walk()`` with each result's path: ``research``, ``research.web``, ``refine[2]``,
        ``refine[2].review``. A branch that holds one step of its own name shares its path."""
        return _paths(self.step_history, "")

    def agent_calls(self) -> list[tuple[str, StepResult]]:
        """Every agent call (ran, denied or cancelled) with its path, in the order they were made."""
        return [(path, s) for path, s in self.walk_paths() if s.kind == "agent"]


def _paths(steps: list[StepResult], prefix: str) -> Iterator[tuple[str, StepResult]]:
    for s in steps:
        path = prefix + s.name
        yield path, s
        if s.kind == "loop":
            yield from _paths(s.step_history, prefix)  # iterations carry the loop's name: refine[2]
        elif s.kind == "branch" and [c.name for c in s.step_history] == [s.name]:
            yield from _paths(s.step_history, prefix)
        else:
            yield from _paths(s.step_history, f"{path}.")
