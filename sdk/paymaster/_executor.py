"""The governed executor: walks a pipeline, and around every agent call estimates, reserves, runs,
prices and reconciles.

Every step's ``StepResult`` is appended to its parent's history *before* the step runs, so when a
limit halts the run deep inside a loop or a branch, the history up to the halt is already in place
for the error's ``result``. Composite results (loops, parallels, branches) total their children in
``finally`` blocks for the same reason.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, Status, StatusCode

from paymaster._composite import run_loop, run_parallel
from paymaster._estimate import UsageEstimate
from paymaster._metering import MeasuredUsage, UsageMeter
from paymaster.exceptions import ConfigError, PaymasterError, UsageLimitExceededError
from paymaster.money import ZERO
from paymaster.quota import COST_LIMIT, Quota
from paymaster.request_budget import REQUEST_BUDGET_KEY
from paymaster.result import StepResult
from paymaster.step import LoopStep, ParallelStep, Pipeline, Step
from paymaster.telemetry import (
    LOCAL_CLAIM_PREFIX,
    RESERVATION_ATTRIBUTE,
    STEP_ATTRIBUTE,
    RunMetrics,
    Telemetry,
    usage_attributes,
)

if TYPE_CHECKING:
    from paymaster._gate import BudgetGate, Ticket

__all__ = ["ExecutorCore", "RunContext"]

log = logging.getLogger("paymaster")
_ERROR = Status(StatusCode.ERROR)


class RunContext:
    """Passed to exit conditions, iteration mappers and estimators: the run's identity and a scratchpad."""

    __slots__ = ("run_id", "scratchpad")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        """A unique id of this run."""
        self.scratchpad: dict[str, Any] = {}
        """Free space for user code to share state between steps of one run."""


class ExecutorCore:
    """How agent steps are estimated; shared by runs (it holds no per-run state).

    Precedence, as ``paymaster.estimation`` documents it: ``usage_estimator`` decides every step;
    else the first matching rule of ``estimator_factory``; else the default heuristic (the step's
    declared ``StepConfig`` figures, then what ``learned`` has seen of this step, then the
    ``paymaster.toml`` hints, then a bound from the model's price, else zero). ``learned`` is fed
    every priced call's actual usage: by default (``True``) the process's in-memory
    ``default_learner()``, or the ``LearningEstimator`` given; ``None`` (or ``False``) learns nothing.
    """

    __slots__ = ("estimator_factory", "learned", "usage_estimator")

    def __init__(
        self,
        *,
        usage_estimator: Any = None,
        estimator_factory: Any = None,
        learned: Any = True,
    ) -> None:
        if learned is True:
            from paymaster.estimation import default_learner

            learned = default_learner()
        elif learned is False:
            learned = None
        for what, value, method in (
            ("usage_estimator", usage_estimator, "estimate"),
            ("estimator_factory", estimator_factory, "select"),
            ("learned", learned, "observe"),
        ):
            if value is not None and not callable(getattr(value, method, None)):
                raise ConfigError(
                    f"ExecutorCore: {what} must have a method {method}(), got {type(value).__name__}"
                )
        self.usage_estimator = usage_estimator
        self.estimator_factory = estimator_factory
        self.learned = learned

    def estimate(self, step: Step, data: Any, context: RunContext) -> tuple[UsageEstimate, str]:
        """The estimate to reserve for ``step`` and the strategy that produced it."""
        from paymaster.estimation import resolve_estimate

        return resolve_estimate(
            step,
            data,
            context,
            injected=self.usage_estimator,
            factory=self.estimator_factory,
            learned=self.learned,
        )

    def plan(self, step: Step) -> tuple[tuple[UsageEstimate, str] | None, bool]:
        """How to estimate ``step`` for a whole run: its estimate when it cannot change from call to
        call but by learning (see ``HeuristicEstimator.static_estimate``), else ``None`` (an injected
        estimator, a matching registry rule and a price bound are asked at every call); and whether
        what ``learned`` knows of it comes first (it declares no figures of its own)."""
        if self.usage_estimator is not None:
            return None, False
        factory = self.estimator_factory
        if factory is not None:
            if factory.select(step) is not None:
                return None, False
            heuristic = factory.heuristic
        else:
            from paymaster.estimation import default_heuristic

            heuristic = default_heuristic()
        fixed: tuple[UsageEstimate, str] | None = heuristic.static_estimate(step)
        config = step.config
        declared = config.expected_cost_usd is not None or config.expected_tokens is not None
        return fixed, self.learned is not None and not declared and step.kind == "agent"

    def observe(self, step: Step, usage: MeasuredUsage) -> None:
        """Feed a finished call's actual usage to a learning estimator, if there is one."""
        if self.learned is not None:
            self.learned.observe(step, usage)


class _Run:
    """The state of one run: shared by all its steps, never by two runs."""

    __slots__ = ("core", "ctx", "gate", "meter", "plans", "spans", "tel", "tracer", "warned_models")

    tel: RunMetrics

    def __init__(
        self, core: ExecutorCore, meter: UsageMeter, tel: Telemetry, ctx: RunContext, spans: bool
    ) -> None:
        self.core = core
        self.meter = meter
        self.tel = tel.run_metrics()
        self.tracer = tel.tracer
        self.ctx = ctx
        self.spans = spans
        self.warned_models: set[str] = set()
        self.plans: dict[int, tuple[Step, tuple[UsageEstimate, str] | None, bool]] = {}
        """Per step (by id; the run holds the step, so the id stays its own): its fixed estimate, or
        ``None`` when it must be estimated at every call, and whether a learned estimate comes first."""
        self.gate: BudgetGate | None = None
        """The remote budget consulted around every agent step, when the runner has one."""

    # ----------------------------------------------------------------- sequencing
    async def run_pipeline(
        self, pipeline: Pipeline, data: Any, quota: Quota, history: list[StepResult], octx: Any
    ) -> tuple[Any, bool]:
        for step in pipeline.steps:
            record = StepResult(name=step.name, kind=step.kind)
            history.append(record)
            q = quota.child(step.usage_limits, label=step.name) if step.usage_limits is not None else quota
            kind = step.kind
            if kind == "agent":
                await self.run_agent(step, data, q, record, octx)
            elif isinstance(step, LoopStep):
                await run_loop(self, step, data, q, record, octx)
            elif isinstance(step, ParallelStep):
                await run_parallel(self, step, data, q, record, octx)
            else:
                await self.run_adapter(step, data, record)
            if not record.success:
                return None, False
            data = record.output
        return data, True

    def estimate(self, step: Step, data: Any) -> tuple[UsageEstimate, str]:
        """What to reserve for ``step`` now: its fixed estimate for this run, or a fresh one."""
        found = self.plans.get(id(step))
        if found is None or found[0] is not step:
            found = self.plans[id(step)] = (step, *self.core.plan(step))
        _, fixed, learnable = found
        if learnable:
            known = self.core.learned.lookup(step)
            if known is not None:
                return known, "learned"
        return fixed if fixed is not None else self.core.estimate(step, data, self.ctx)

    async def run_adapter(self, step: Step, data: Any, record: StepResult) -> None:
        started = perf_counter()
        try:
            out = step.agent(data)
            record.output = (await out) if inspect.isawaitable(out) else out
            record.success = True
        except Exception as exc:
            record.feedback = f"{type(exc).__name__}: {exc}"
        finally:
            record.latency_s = perf_counter() - started

    # --------------------------------------------------------------- agent steps
    async def run_agent(self, step: Step, data: Any, quota: Quota, record: StepResult, octx: Any) -> None:
        started = perf_counter()
        tel = self.tel
        agent = step.agent
        span: Span | None = None
        sctx = octx
        self.meter.preflight(agent)
        estimate, strategy = self.estimate(step, data)
        record.estimate, record.estimate_strategy = estimate, strategy
        tel.record_estimate(strategy)
        if self.spans:
            span, sctx = self._open_agent_span(step, estimate, strategy, octx)
        decision = quota.reserve(estimate)
        if self.spans:
            self._child_span("quota.reserve.attempt", sctx, _reserve_attrs(estimate, quota, decision.granted))
        if not decision:
            assert decision.breach is not None
            code = f"{decision.breach.reason_code}_denied"
            message = decision.breach.denied(step.name)
            self._denied(record, span, sctx, code, message, started, feedback=message)
            raise _blame(UsageLimitExceededError(message, code=code), record)
        gate = self.gate
        ticket: Ticket | None = None
        run_step = step
        if gate is not None:
            try:
                ticket = await gate.admit(self, step, data, estimate, record, span)
            except BaseException as exc:
                self._not_admitted(exc, estimate, quota, record, span, sctx, started)
                raise
            run_step, agent = ticket.step, ticket.agent
            sctx = _claim(sctx, ticket.reservation_id, span)
        else:
            sctx = _claim(sctx, None, span)
        try:
            if agent is not step.agent:
                self.meter.preflight(agent)
            output = await self._call(run_step, agent, data, record, sctx)
            usage = self.meter.measure(agent, output)
        except BaseException as exc:
            quota.release(estimate)
            if ticket is not None:
                gate.abandon(ticket)  # type: ignore[union-attr]
            record.latency_s = perf_counter() - started
            self._agent_failed(record, exc, span)
            if isinstance(exc, Exception) and not _is_paymaster_error(exc):
                return
            raise
        actual = UsageEstimate(cost_usd=usage.cost_usd or ZERO, tokens=usage.total_tokens)
        verdict = quota.reconcile(estimate, actual)
        self._fill(record, output, usage, started)
        self.core.observe(run_step, usage)
        tel.record_usage(step.name, estimate, usage)
        if usage.cost_source == "unknown":
            self._warn_unpriced(record, usage, quota)
        remote_halt = None
        if ticket is not None:
            # Always: the spend happened and the sidecar must hear of it, even when a local limit halts.
            try:
                remote_halt = await gate.settle(ticket, usage, actual, record, span)  # type: ignore[union-attr]
            except BaseException:
                # Cancelled while the commit was in flight: the step itself finished (the commit goes on).
                tel.record_outcome("ok")
                if span is not None:
                    span.end()
                raise
        if span is not None:
            self._child_span("quota.reconcile", sctx, _reconcile_attrs(estimate, actual))
            span.set_attributes(usage_attributes(usage))
        if not verdict:
            assert verdict.breach is not None
            limit = verdict.breach
            told = estimate.cost_usd if limit.reason_code == COST_LIMIT else estimate.tokens
            message = limit.exceeded(f"step {step.name!r}", estimate=told)
            self._halted(record, span, message)
            raise _blame(UsageLimitExceededError(message, code=f"{limit.reason_code}_exceeded"), record)
        if remote_halt is not None:
            self._halted(record, span, str(remote_halt))
            raise _blame(remote_halt, record)
        tel.record_outcome("ok")
        if span is not None:
            span.end()

    def _not_admitted(
        self,
        exc: BaseException,
        estimate: UsageEstimate,
        quota: Quota,
        record: StepResult,
        span: Span | None,
        sctx: Any,
        started: float,
    ) -> None:
        """The remote budget refused the step (a denial, like a local one) or could not decide it."""
        quota.release(estimate)
        if isinstance(exc, UsageLimitExceededError):
            _blame(exc, record)
            self._denied(record, span, sctx, exc.code, str(exc), started)
        else:
            record.latency_s = perf_counter() - started
            self._agent_failed(record, exc, span)

    def _denied(
        self,
        record: StepResult,
        span: Span | None,
        sctx: Any,
        code: str,
        message: str,
        started: float,
        *,
        feedback: str | None = None,
    ) -> None:
        record.denied, record.denial_code = True, code
        record.feedback = feedback or f"denied before it ran: {message}"
        record.latency_s = perf_counter() - started
        self.tel.record_denial(code)
        self.tel.record_outcome("denied")
        if span is not None:
            self._child_span("quota.reserve.denied", sctx, {"reason_code": code, "message": message})
            _end_error(span, record.feedback)

    def _halted(self, record: StepResult, span: Span | None, message: str) -> None:
        record.success = False
        record.feedback = f"halted: {message}"
        self.tel.record_outcome("halted")
        if span is not None:
            _end_error(span, record.feedback)

    async def _call(self, step: Step, agent: Any, data: Any, record: StepResult, sctx: Any) -> Any:
        """Call the agent, retrying on exceptions up to ``max_retries``; the span is current meanwhile."""
        cfg = step.config
        token = otel_context.attach(sctx) if sctx is not None else None
        try:
            while True:
                record.attempts += 1
                try:
                    out = agent.run(data)
                    if inspect.isawaitable(out):
                        out = await (_with_timeout(out, cfg.timeout_s) if cfg.timeout_s else out)
                    return out
                except Exception:
                    if record.attempts > cfg.max_retries:
                        raise
                    log.info("step %r attempt %d failed; retrying", step.name, record.attempts, exc_info=True)
        finally:
            if token is not None:
                otel_context.detach(token)

    def _fill(self, record: StepResult, output: Any, usage: MeasuredUsage, started: float) -> None:
        record.output = output
        record.success = True
        record.cost_usd = usage.cost_usd
        record.cost_source = usage.cost_source
        record.token_counts = usage.total_tokens
        record.input_tokens = usage.input_tokens
        record.output_tokens = usage.output_tokens
        record.provider = usage.provider
        record.model = usage.model
        record.latency_s = perf_counter() - started

    def _agent_failed(self, record: StepResult, exc: BaseException, span: Span | None) -> None:
        record.success = False
        if isinstance(exc, asyncio.CancelledError):
            record.cancelled = True
            record.feedback = "cancelled: a sibling branch halted the run"
            outcome = "cancelled"
        else:
            record.feedback = f"{type(exc).__name__}: {exc}"
            outcome = "failed"
        self.tel.record_outcome(outcome)
        if span is not None:
            if not isinstance(exc, asyncio.CancelledError):
                span.record_exception(exc)
            _end_error(span, record.feedback)

    def _warn_unpriced(self, record: StepResult, usage: MeasuredUsage, quota: Quota) -> None:
        model = f"{usage.provider or '?'}:{usage.model or '?'}"
        message = f"no price is known for model {model}; its spend is not counted against cost limits"
        record.warnings.append(message)
        if quota.remaining_cost is not None and model not in self.warned_models:
            self.warned_models.add(model)
            log.warning("step %r: %s. Configure it in paymaster.toml.", record.name, message)

    # ---------------------------------------------------------------- spans
    def _open_agent_span(
        self, step: Step, estimate: UsageEstimate, strategy: str, octx: Any
    ) -> tuple[Span, Any]:
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": step.name,
            STEP_ATTRIBUTE: step.name,
            "paymaster.step.kind": step.kind,
        }
        request_budget = baggage.get_baggage(REQUEST_BUDGET_KEY, octx)
        if request_budget:  # the span the ingestion charges, when the SDK does not, names it too
            attributes[REQUEST_BUDGET_KEY] = str(request_budget)
        span = self.tracer.start_span(
            f"invoke_agent {step.name}", context=octx, kind=trace.SpanKind.INTERNAL, attributes=attributes
        )
        sctx = trace.set_span_in_context(span, octx)
        self._child_span(
            "cost.estimator.selected",
            sctx,
            {
                "strategy": strategy,
                "expected_tokens": estimate.tokens,
                "expected_cost_usd": str(estimate.cost_usd),
            },
        )
        return span, sctx

    def _child_span(self, name: str, sctx: Any, attributes: dict[str, Any]) -> None:
        self.tracer.start_span(name, context=sctx, attributes=attributes).end()

    def open_span(self, name: str, octx: Any, attributes: dict[str, Any]) -> tuple[Span | None, Any]:
        """A span for a composite step, or nothing when this run is not traced."""
        if not self.spans:
            return None, octx
        span = self.tracer.start_span(name, context=octx, attributes=attributes)
        return span, trace.set_span_in_context(span, octx)


def _claim(sctx: Any, reservation_id: str | None, span: Span | None) -> Any:
    """The context the agent runs in, its baggage saying who charges the spans started inside the step
    (docs/otlp.md, "Who charges a span"): the SDK under ``reservation_id``; else the step's own span,
    which the sidecar's trace ingestion charges; else, untraced and charged by nobody but the
    ingestion, no claim at all (not even an enclosing step's)."""
    if reservation_id:
        return baggage.set_baggage(RESERVATION_ATTRIBUTE, reservation_id, sctx)
    if span is not None:
        local = f"{LOCAL_CLAIM_PREFIX}{span.get_span_context().span_id:016x}"
        return baggage.set_baggage(RESERVATION_ATTRIBUTE, local, sctx)
    if baggage.get_baggage(RESERVATION_ATTRIBUTE, sctx) is not None:
        return baggage.remove_baggage(RESERVATION_ATTRIBUTE, sctx)
    return sctx


def _blame(exc: UsageLimitExceededError, record: StepResult) -> UsageLimitExceededError:
    """Name ``record`` as the step that halted the run (the innermost one, where the halt began)."""
    if exc.step_result is None:
        exc.step_result = record
    return exc


def _is_paymaster_error(exc: BaseException) -> bool:
    return isinstance(exc, PaymasterError)


async def _with_timeout(awaitable: Awaitable[Any], seconds: float) -> Any:
    async with asyncio.timeout(seconds):
        return await awaitable


def _reserve_attrs(estimate: UsageEstimate, quota: Quota, granted: bool) -> dict[str, Any]:
    cost, tokens = quota.remaining_cost, quota.remaining_tokens
    attrs: dict[str, Any] = {
        "estimate_tokens": estimate.tokens,
        "estimate_cost_usd": str(estimate.cost_usd),
        "granted": granted,
    }
    if cost is not None:
        attrs["remaining_cost_usd"] = str(cost)
    if tokens is not None:
        attrs["remaining_tokens"] = tokens
    return attrs


def _reconcile_attrs(estimate: UsageEstimate, actual: UsageEstimate) -> dict[str, Any]:
    return {
        "actual_tokens": actual.tokens,
        "actual_cost_usd": str(actual.cost_usd),
        "delta_tokens": actual.tokens - estimate.tokens,
        "delta_cost_usd": str(actual.cost_usd - estimate.cost_usd),
    }


def _end_error(span: Span, message: str | None) -> None:
    span.set_status(Status(StatusCode.ERROR, message))
    span.end()
