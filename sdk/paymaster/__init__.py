"""Paymaster: governed LLM pipelines that never spend past their budget, traced with OpenTelemetry.

Build pipelines from ``Step``s (``>>``, ``Step.loop_until``, ``Step.parallel``), run them with a
``Runner`` under ``UsageLimits``, and read every cent in ``result.step_history``. The quota reserves
each step's estimate before its agent runs and reconciles the actual usage after.
"""

from __future__ import annotations

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

__version__ = "0.1.0.dev0"

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "ExecutorCore",
    "LoopStep",
    "MeasuredUsage",
    "ParallelStep",
    "PaymasterError",
    "Pipeline",
    "PipelineResult",
    "PricingNotConfiguredError",
    "Quota",
    "QuotaDecision",
    "RunContext",
    "Runner",
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
]
