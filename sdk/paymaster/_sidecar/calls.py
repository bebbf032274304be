"""The calls one run makes to the sidecar, made so that none is lost and none leaves a hold behind.

Every call that must finish runs as a task this object tracks; the step that needs the answer awaits
it through ``asyncio.shield``. A cancelled step therefore stops waiting at once while its call
completes in the background: a reservation that arrives for a step that is gone is released, and a
commit or a usage record goes on. Spend that cannot be delivered (the sidecar is unreachable, or
refuses it) goes to the replay journal with an idempotent id, written and fsynced on a worker thread
so that the event loop never waits for the disk. ``drain`` waits for all of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from paymaster._estimate import UsageEstimate
from paymaster._gate import Ticket
from paymaster._metering import MeasuredUsage
from paymaster._sidecar import wire
from paymaster._sidecar.client import Refused, Unreachable
from paymaster._sidecar.journal import PendingUsage
from paymaster.exceptions import BudgetExceededError, ConfigError
from paymaster.scopes import Scopes
from paymaster.v1 import budget_pb2 as pb

if TYPE_CHECKING:
    from paymaster._sidecar.leases import Lease
    from paymaster.budget import BudgetOutcome, SidecarBudget
    from paymaster.step import Step

__all__ = ["Admission", "Calls", "halt_error", "usage_facts"]

log = logging.getLogger("paymaster")


class Admission(Ticket):
    """A step admitted by the sidecar session: how (``mode``), for which scopes, with what outcome."""

    __slots__ = ("abandoned", "lease", "mode", "outcome", "scopes")

    def __init__(
        self,
        step: Step,
        estimate: UsageEstimate,
        reservation_id: str | None,
        mode: str,
        outcome: BudgetOutcome,
        scopes: Scopes,
        lease: Lease | None = None,
    ) -> None:
        # Ticket's fields, set here rather than through super(): this runs once per governed step.
        self.step = step
        self.agent = step.agent
        self.estimate = estimate
        self.reservation_id = reservation_id
        self.state = None
        self.mode = mode
        self.outcome = outcome
        self.scopes = scopes
        self.lease = lease
        self.abandoned = False


class _Pending:
    """A reservation whose awaiting step may be cancelled before the answer arrives."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


def usage_facts(usage: MeasuredUsage) -> dict[str, Any]:
    """The ``UsageFacts`` fields of one call."""
    return {
        "provider": usage.provider or "",
        "model": usage.model or "",
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cached_input_tokens,
        "cache_creation_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def halt_error(lines: Any, pending: Decimal = Decimal(0)) -> BudgetExceededError | None:
    """The error that halts the run when a charge took a block budget past its limit; ``pending`` is
    this run's spend the sidecar holds but has not been charged yet (a lease's)."""
    over = wire.halting_budgets(lines, pending)
    if not over:
        return None
    message = wire.describe_halt(over[0], pending)
    return BudgetExceededError(
        message,
        code="budget_exceeded",
        budget_info=wire.budget_infos(lines),
        deciding_budget_id=over[0].budget_id,
        reason=message,
    )


class Calls:
    """See the module docstring. ``tel`` is the run's counter batch."""

    def __init__(self, budget: SidecarBudget, tel: Any) -> None:
        self.budget = budget
        self.client = budget.client
        self.tel = tel
        self.tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it (if anyone) has handled it

    async def drain(self) -> None:
        """Wait for every call in flight, including those the finished ones started."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def count(self, rpc: str, outcome: str) -> None:
        self.tel.add("paymaster.sidecar.calls", 1, (("outcome", outcome), ("rpc", rpc)))

    # ------------------------------------------------------------------ reserve and release
    async def reserve(self, request: Any) -> Any:
        """Reserve for a step, surviving its cancellation (a late reservation is released).

        Raises ``Unreachable``; a refusal is a ``ConfigError`` (the request was wrong)."""
        pending = _Pending()
        task = self.spawn(self._reserve(request, pending))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            pending.abandoned = True
            if task.done() and not task.cancelled() and task.exception() is None:
                reservation_id = task.result().reservation_id
                if reservation_id:
                    self.spawn(self.release(reservation_id))
            raise
        except Refused as exc:
            raise ConfigError(f"the sidecar at {self.client.target} refused a reservation: {exc}") from None

    async def _reserve(self, request: Any, pending: _Pending) -> Any:
        response = await self.client.call("Reserve", request, count=self.count)
        if pending.abandoned and response.reservation_id:
            await self.release(response.reservation_id)
        return response

    async def reserve_unshielded(self, request: Any) -> Any:
        """Reserve from a task of the session's own (nobody cancels it)."""
        return await self.client.call("Reserve", request, count=self.count)

    async def release(self, reservation_id: str) -> None:
        try:
            await self.client.call(
                "Release", pb.ReleaseRequest(reservation_id=reservation_id), count=self.count
            )
        except Unreachable:
            self.budget.replayer.add_release(
                reservation_id
            )  # retried when the sidecar is back; TTL meanwhile
        except Refused:
            pass  # committed, expired or unknown: nothing is held

    # ------------------------------------------------------------------ spend
    async def commit(
        self,
        reservation_id: str,
        scopes: Scopes,
        cost: Decimal,
        total_tokens: int,
        facts: dict[str, Any],
        *,
        reason: str = "commit_failed",
    ) -> Any:
        """Commit a reservation; kept for replay (never lost) when the sidecar cannot take it."""
        request = pb.CommitRequest(
            reservation_id=reservation_id,
            actual_usd=wire.wire_usd(cost),
            actual_tokens=total_tokens,
            usage=pb.UsageFacts(**facts),
        )
        try:
            return await self.client.call("Commit", request, count=self.count)
        except (Unreachable, Refused) as exc:
            log.warning("paymaster: commit of %s failed (%s); kept for replay", reservation_id, exc)
            await self.journal(
                f"commit:{reservation_id}", scopes, cost, total_tokens, facts, reservation_id, reason
            )
            return None

    async def record_usage(
        self,
        usage_id: str,
        scopes: Scopes,
        cost: Decimal,
        total_tokens: int,
        facts: dict[str, Any],
        *,
        reason: str,
    ) -> Any:
        """Charge spend without a reservation; kept for replay when the sidecar cannot take it."""
        request = pb.RecordUsageRequest(
            usage_id=usage_id,
            scopes=wire.scope_ids(scopes),
            cost_usd=wire.wire_usd(cost),
            total_tokens=total_tokens,
            usage=pb.UsageFacts(**facts),
        )
        try:
            return await self.client.call("RecordUsage", request, count=self.count)
        except (Unreachable, Refused) as exc:
            log.warning("paymaster: usage %s could not be recorded (%s); kept for replay", usage_id, exc)
            await self.journal(usage_id, scopes, cost, total_tokens, facts, "", reason)
            return None

    async def journal(
        self,
        usage_id: str,
        scopes: Scopes,
        cost: Decimal,
        total_tokens: int,
        facts: dict[str, Any],
        reservation_id: str = "",
        reason: str = "fail_open",
        *,
        request_budget: str = "",
        service: str = "",
    ) -> None:
        """Keep spend for the replayer, durably when the journal has a directory: the write and its fsync
        run on a worker thread and this returns once they are done, so the spend is on disk before the
        step that made it is done, and the event loop runs other steps meanwhile."""
        entry = PendingUsage(
            usage_id=usage_id,
            target=self.client.target,
            scopes=dict(scopes.items()),
            cost_usd=cost,
            total_tokens=total_tokens,
            usage=facts,
            occurred_ms=int(time.time() * 1000),
            reservation_id=reservation_id,
            reason=reason,
            request_budget=request_budget,
            service=service,
        )
        journal = self.budget.journal
        try:
            if journal.directory is None:
                journal.append(entry)  # memory only: nothing to wait for
            else:
                await asyncio.to_thread(journal.append, entry)
        except OSError as exc:
            # The durable journal cannot be written: keep the entry in memory rather than lose it.
            log.error("paymaster: cannot write the replay journal (%s); keeping %s in memory", exc, usage_id)
            journal.keep_in_memory(entry)
        self.tel.add("paymaster.sidecar.replays", 1, (("outcome", "journaled"),))
        self.budget.replayer.wake()
