"""``Runner``: runs a pipeline under usage limits, synchronously or asynchronously.

The runner builds the run's root ``Quota`` from ``UsageLimits``, opens the run's span on the
application's tracer provider, and hands the pipeline to the executor. With a ``SidecarBudget`` the
executor also consults the sidecar's budgets around every agent step (see ``paymaster.budget``).
A halt surfaces as ``UsageLimitExceededError`` whose ``result`` holds the whole history up to it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from paymaster._executor import ExecutorCore, RunContext, _Run
from paymaster._metering import UsageMeter
from paymaster.exceptions import ConfigError, UsageLimitExceededError
from paymaster.limits import UsageLimits
from paymaster.quota import Quota
from paymaster.result import PipelineResult
from paymaster.step import Pipeline, Step
from paymaster.telemetry import Telemetry

if TYPE_CHECKING:
    from paymaster.budget import SidecarBudget

__all__ = ["Runner"]


class Runner:
    """Runs ``pipeline`` with every agent step estimated, reserved, priced and reconciled."""

    def __init__(
        self,
        pipeline: Pipeline | Step,
        *,
        usage_limits: UsageLimits | None = None,
        executor: ExecutorCore | None = None,
        meter: UsageMeter | None = None,
        cost_calculator: Any = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        name: str | None = None,
        budget: SidecarBudget | None = None,
    ) -> None:
        if usage_limits is not None and not isinstance(usage_limits, UsageLimits):
            raise ConfigError(f"Runner: usage_limits must be UsageLimits, got {type(usage_limits).__name__}")
        if budget is not None and not callable(getattr(budget, "open_session", None)):
            raise ConfigError(
                f"Runner: budget must be a SidecarBudget (or have open_session()), got {type(budget).__name__}"
            )
        self.pipeline = Pipeline.coerce(pipeline)
        self.usage_limits = usage_limits or UsageLimits()
        self.budget = budget
        """The sidecar's budgets this runner is also held to (``None``: local limits only)."""
        if budget is not None:
            budget.check_runner(self.usage_limits)
        self._tracer_provider = tracer_provider
        if cost_calculator is not None and meter is not None:
            raise ConfigError(
                "Runner: give cost_calculator or meter, not both (a meter has its own calculator)"
            )
        self.executor = executor or _executor_for(cost_calculator)
        if cost_calculator is not None:
            from paymaster._metering import PricingMeter

            self.meter: UsageMeter = PricingMeter(cost_calculator)
        else:
            self.meter = meter if meter is not None else _default_meter()
        self.name = name or self.pipeline.steps[0].name
        self._telemetry = Telemetry.for_providers(tracer_provider, meter_provider)

    def run(self, data: Any = None) -> PipelineResult:
        """Run to completion in a new event loop; use ``run_async`` from async code."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Runner.run() was called inside a running event loop; use 'await runner.run_async(data)'"
            )
        holder: list[PipelineResult] = []

        async def main() -> None:
            # The task returns nothing: asyncio builds the repr of a finished task's result on the
            # way out, which for a long history costs more than the run itself.
            holder.append(await self.run_async(data))

        asyncio.run(main())
        return holder[0]

    async def run_async(self, data: Any = None) -> PipelineResult:
        """Run the pipeline; raises ``UsageLimitExceededError`` (with ``.result``) when a limit halts it."""
        tel = self._telemetry
        quota = Quota(self.usage_limits)
        result = PipelineResult()
        ctx = RunContext(uuid.uuid4().hex)
        span = tel.tracer.start_span(
            f"paymaster.run {self.name}",
            attributes={
                "paymaster.run.id": ctx.run_id,
                "paymaster.pipeline": self.name,
                **_limit_attrs(self.usage_limits),
            },
        )
        from opentelemetry import trace

        run = _Run(self.executor, self.meter, tel, ctx, span.is_recording())
        octx = trace.set_span_in_context(span) if run.spans else None
        gate = None
        try:
            if self.budget is not None:
                gate = run.gate = self.budget.open_session(run, self._tracer_provider, tel)
                if run.spans:
                    span.set_attributes(self.budget.base_scopes(self._tracer_provider).attributes())
            result.output, result.success = await run.run_pipeline(
                self.pipeline, data, quota, result.step_history, octx
            )
        except UsageLimitExceededError as exc:
            exc.result = result
            result.halted_step = exc.step_result
            span.set_attribute("paymaster.halted", True)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            if gate is not None:
                # However the run ends: return what is still held and wait for every call in flight.
                await asyncio.shield(gate.close(span if run.spans else None))
            span.set_attributes(
                {
                    "gen_ai.usage.cost": float(result.total_cost_usd),
                    "paymaster.cost_usd": str(result.total_cost_usd),
                    "paymaster.usage.total_tokens": result.total_tokens,
                    "paymaster.success": result.success,
                }
            )
            span.end()
            run.tel.flush()
        return result


def _executor_for(calculator: Any) -> ExecutorCore:
    """The default executor; with a custom calculator, its price bounds use that calculator too."""
    if calculator is None:
        return ExecutorCore()
    from paymaster.estimation import HeuristicEstimator, UsageEstimatorFactory

    return ExecutorCore(estimator_factory=UsageEstimatorFactory(heuristic=HeuristicEstimator(calculator)))


def _default_meter() -> UsageMeter:
    from paymaster import _metering

    factory = getattr(_metering, "default_meter", None)
    return factory() if factory is not None else _metering.ExplicitOnlyMeter()


def _limit_attrs(limits: UsageLimits) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if limits.total_cost_usd_limit is not None:
        attrs["paymaster.limit.cost_usd"] = str(limits.total_cost_usd_limit)
    if limits.total_tokens_limit is not None:
        attrs["paymaster.limit.tokens"] = limits.total_tokens_limit
    return attrs
