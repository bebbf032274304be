"""Loops and parallel steps: control flow around agent steps, sharing or splitting the run's quota.

A loop runs every iteration against the same quota. A parallel step runs its branches as tasks;
with the ``shared`` strategy they reserve from the one parent quota (atomic, so no money is spent
twice), with ``split`` each gets a deterministic part. The first branch that breaches a limit
cancels its in-flight siblings at once; each cancelled step releases its reservation on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from paymaster._estimate import UsageEstimate
from paymaster.exceptions import UsageLimitExceededError
from paymaster.money import ZERO
from paymaster.quota import Quota
from paymaster.result import StepResult
from paymaster.step import LoopStep, ParallelStep, Pipeline

if TYPE_CHECKING:
    from paymaster._executor import _Run

__all__ = ["run_loop", "run_parallel", "total_children"]


def total_children(record: StepResult, started: float) -> None:
    """Sum the nested results' known costs and tokens into a composite result."""
    cost = ZERO
    tokens = 0
    for child in record.step_history:
        if child.cost_usd is not None:
            cost += child.cost_usd
        tokens += child.token_counts
    record.cost_usd = cost
    record.token_counts = tokens
    record.latency_s = perf_counter() - started


async def run_loop(run: _Run, step: LoopStep, data: Any, quota: Quota, record: StepResult, octx: Any) -> None:
    started = perf_counter()
    span, lctx = run.open_span(
        f"paymaster.loop {step.name}", octx, {"paymaster.step.name": step.name, "paymaster.step.kind": "loop"}
    )
    current = data
    out: Any = None
    try:
        for i in range(1, step.max_loops + 1):
            record.attempts = i
            iteration = StepResult(name=f"{step.name}[{i}]", kind="iteration", attempts=1)
            record.step_history.append(iteration)
            it_started = perf_counter()
            try:
                out, ok = await run.run_pipeline(step.body, current, quota, iteration.step_history, lctx)
            finally:
                total_children(iteration, it_started)
            iteration.output, iteration.success = out, ok
            if not ok:
                failed = iteration.step_history[-1]
                record.feedback = f"iteration {i} failed at step {failed.name!r}: {failed.feedback}"
                return
            try:
                if step.exit_condition(out, run.ctx):
                    record.output, record.success = out, True
                    return
                current = step.mapper(out, run.ctx, i) if step.mapper is not None else out
            except Exception as exc:
                record.feedback = f"iteration {i}: the loop's callable raised {type(exc).__name__}: {exc}"
                return
        record.output = out
        record.feedback = (
            f"Loop {step.name!r} reached max_loops={step.max_loops} without meeting its exit condition"
        )
    finally:
        total_children(record, started)
        if span is not None:
            span.set_attributes(
                {
                    "paymaster.loop.iterations": record.attempts,
                    "gen_ai.usage.cost": float(record.cost_usd or 0),
                }
            )
            span.end()


async def run_parallel(
    run: _Run, step: ParallelStep, data: Any, quota: Quota, record: StepResult, octx: Any
) -> None:
    started = perf_counter()
    keys = list(step.branches)
    span, pctx = run.open_span(
        f"paymaster.parallel {step.name}",
        octx,
        {
            "paymaster.step.name": step.name,
            "paymaster.step.kind": "parallel",
            "paymaster.parallel.quota": step.strategy,
        },
    )
    branches = [StepResult(name=k, kind="branch") for k in keys]
    record.step_history.extend(branches)
    parts: list[Quota] | None = None
    if step.strategy == "split":
        weights = [_branch_estimate(run, step.branches[k], data) for k in keys]
        parts = quota.split(len(keys), weights=weights, labels=keys, owner=step.name)
    tasks = [
        asyncio.ensure_future(
            _run_branch(
                run, step.branches[k], data, parts[i] if parts is not None else quota, branches[i], pctx
            )
        )
        for i, k in enumerate(keys)
    ]
    error: BaseException | None = None
    try:
        error = await _wait_first_error(tasks)
    finally:
        for branch in branches:
            branch.cancelled = branch.cancelled or any(s.cancelled for s in branch.step_history)
        if parts is not None:
            verdict = quota.merge(parts)
            if error is None and not verdict:
                assert verdict.breach is not None
                limit = verdict.breach
                error = UsageLimitExceededError(
                    limit.exceeded(f"the branches of parallel step {step.name!r}"),
                    code=f"{limit.reason_code}_exceeded",
                )
                error.step_result = record
        total_children(record, started)
        record.attempts = 1
        if span is not None:
            span.set_attribute("gen_ai.usage.cost", float(record.cost_usd or 0))
            span.end()
    if error is not None:
        record.feedback = f"halted: {error}"
        raise error
    record.output = {k: b.output for k, b in zip(keys, branches, strict=True)}
    record.success = all(b.success for b in branches)
    if not record.success:
        failed = [b.name for b in branches if not b.success]
        record.feedback = f"branch(es) {failed} failed"


async def _wait_first_error(tasks: Sequence[asyncio.Future[None]]) -> BaseException | None:
    """Wait for every branch; on the first that raises, cancel the rest at once and return its error."""
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if pending:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending)
    # Prefer a limit breach over other errors; among several, the first in branch order.
    errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for err in errors:
        if isinstance(err, UsageLimitExceededError):
            return err
    return errors[0] if errors else None


async def _run_branch(
    run: _Run, pipeline: Pipeline, data: Any, quota: Quota, record: StepResult, octx: Any
) -> None:
    started = perf_counter()
    try:
        out, ok = await run.run_pipeline(pipeline, data, quota, record.step_history, octx)
        record.output, record.success = out, ok
        if not ok:
            record.feedback = record.step_history[-1].feedback
        record.attempts = 1
    except asyncio.CancelledError:
        record.cancelled = True
        record.feedback = "cancelled: a sibling branch halted the run"
        raise
    finally:
        total_children(record, started)


def _branch_estimate(run: _Run, pipeline: Pipeline, data: Any) -> UsageEstimate:
    """What a branch's agent steps expect to cost, to weight its split share."""
    total = UsageEstimate()
    for s in pipeline.steps:
        if s.kind == "agent":
            total = total + run.estimate(s, data)[0]
    return total
