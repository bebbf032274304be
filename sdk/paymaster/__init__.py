"""Paymaster: governed LLM pipelines that never spend past their budget, traced with OpenTelemetry.

Build pipelines from ``Step``s (``>>``, ``Step.loop_until``, ``Step.parallel``), run them with a
``Runner`` under ``UsageLimits``, and read every cent in ``result.step_history``. The quota reserves
each step's estimate before its agent runs and reconciles the actual usage after; with
``Runner(..., budget=SidecarBudget(...))`` it reserves in the budget sidecar too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paymaster._estimate import UsageEstimate
from paymaster._executor import ExecutorCore, RunContext
from paymaster._metering import MeasuredUsage, UsageMeter
from paymaster.exceptions import (
    BudgetExceededError,
    ConfigError,
    PaymasterError,
    PricingNotConfiguredError,
    SidecarUnavailableError,
    UsageLimitExceededError,
    UsageReportError,
)
from paymaster.limits import UsageLimits
from paymaster.quota import Quota, QuotaDecision
from paymaster.result import PipelineResult, StepResult
from paymaster.runner import Runner
from paymaster.step import LoopStep, ParallelStep, Pipeline, Step, StepConfig

if TYPE_CHECKING:
    from paymaster.budget import (
        FAIL_CLOSED,
        FAIL_OPEN,
        LOCAL_ONLY_LIMITS,
        BudgetOutcome,
        FailPolicy,
        LeasePolicy,
        SidecarBudget,
    )
    from paymaster.request_budget import RequestBudget, current_request_budget
    from paymaster.scopes import Scopes

__version__ = "0.1.0.dev0"

# The sidecar's names are imported on first use: a program that never governs against a sidecar
# does not pay for loading them.
_LAZY = {
    "FAIL_CLOSED": "paymaster.budget",
    "FAIL_OPEN": "paymaster.budget",
    "LOCAL_ONLY_LIMITS": "paymaster.budget",
    "BudgetOutcome": "paymaster.budget",
    "FailPolicy": "paymaster.budget",
    "LeasePolicy": "paymaster.budget",
    "SidecarBudget": "paymaster.budget",
    "Scopes": "paymaster.scopes",
    "RequestBudget": "paymaster.request_budget",
    "current_request_budget": "paymaster.request_budget",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'paymaster' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "FAIL_CLOSED",
    "FAIL_OPEN",
    "LOCAL_ONLY_LIMITS",
    "BudgetExceededError",
    "BudgetOutcome",
    "ConfigError",
    "ExecutorCore",
    "FailPolicy",
    "LeasePolicy",
    "LoopStep",
    "MeasuredUsage",
    "ParallelStep",
    "PaymasterError",
    "Pipeline",
    "PipelineResult",
    "PricingNotConfiguredError",
    "Quota",
    "QuotaDecision",
    "RequestBudget",
    "RunContext",
    "Runner",
    "Scopes",
    "SidecarBudget",
    "SidecarUnavailableError",
    "Step",
    "StepConfig",
    "StepResult",
    "UsageEstimate",
    "UsageLimitExceededError",
    "UsageLimits",
    "UsageMeter",
    "UsageReportError",
    "__version__",
    "current_request_budget",
]
