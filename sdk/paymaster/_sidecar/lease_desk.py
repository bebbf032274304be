"""``LeaseDesk``: where a run's steps draw their estimates from leases instead of reserving each.

Per scope set, a ``Pool`` has the lease steps draw from. A draw is local (``draw`` checks the slice
with the sidecar's own rule and returns at once). When the lease falls below its low-water mark, the
next slice is taken in the background, so a hot loop does not wait for the sidecar at all; when a
step's estimate no longer fits, the lease is retired (committed with what it spent once its last
draw has settled) and the step moves to the next slice, taking one itself if none is ready.

Leases are taken only while the sidecar allows a whole slice cleanly. A slice that would be denied,
downgraded or warned about is given back and the step is reserved on its own (``None`` from
``acquire``), and the pool remembers the headroom the sidecar reported, so that near a limit steps
go straight to per-step reservations instead of asking for slices that cannot fit.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from paymaster._estimate import UsageEstimate
from paymaster._metering import MeasuredUsage
from paymaster._sidecar import wire
from paymaster._sidecar.calls import Admission, Calls, halt_error
from paymaster._sidecar.client import Refused, Unreachable
from paymaster._sidecar.leases import Lease, Pool
from paymaster.exceptions import BudgetExceededError
from paymaster.scopes import Scopes
from paymaster.v1 import budget_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from paymaster.budget import LeasePolicy
    from paymaster.result import StepResult
    from paymaster.step import Step

__all__ = ["LeaseDesk"]

_DRAW: Final = (("decision", "allow"), ("mode", "lease"))
_REFILL_AT: Final = Decimal("0.25")
_ZERO: Final = Decimal(0)


class LeaseDesk:
    """The leases of one run; see the module docstring."""

    def __init__(self, policy: LeasePolicy, calls: Calls, tel: Any) -> None:
        self.policy = policy
        self.calls = calls
        self.tel = tel
        self.age_limit_s = policy.age_limit_s
        self.pools: dict[Scopes, Pool] = {}
        self.closing = False

    def pool(self, scopes: Scopes) -> Pool:
        found = self.pools.get(scopes)
        if found is None:
            found = self.pools[scopes] = Pool(scopes)
        return found

    # ------------------------------------------------------------------ admission
    def draw(
        self,
        pool: Pool,
        lease: Lease,
        step: Step,
        estimate: UsageEstimate,
        record: StepResult,
        span: Span | None,
    ) -> Admission:
        """Take ``estimate`` from ``lease`` (which fits it) for one step."""
        lease.draw(estimate.cost_usd)
        record.metadata["budget"] = lease.outcome
        self.tel.add("paymaster.budget.decisions", 1, _DRAW)
        if span is not None:
            span.set_attributes(lease.attributes)
        if lease.low and pool.next is None and pool.prefetch is None and not self.closing:
            size = self._size(estimate)
            if pool.roomy(size, 3):
                pool.prefetch = self.calls.spawn(self._prefetch(pool, size))
        return Admission(step, estimate, lease.reservation_id, "lease", lease.outcome, lease.scopes, lease)

    async def acquire(
        self, pool: Pool, step: Step, estimate: UsageEstimate, record: StepResult, span: Span | None
    ) -> Admission | None:
        """A draw from a fresh slice, or ``None``: reserve this step on its own. Raises ``Unreachable``."""
        if pool.lock is None:
            pool.lock = asyncio.Lock()
        cost = estimate.cost_usd
        async with pool.lock:
            lease = pool.current
            if lease is not None and lease.fits(cost) and not lease.stale:
                return self.draw(pool, lease, step, estimate, record, span)
            size = self._size(estimate)
            settling = None
            if lease is not None:
                pool.current = None
                settling = self.retire(lease)
            if pool.prefetch is not None:
                await asyncio.shield(pool.prefetch)
            ready, pool.next = pool.next, None
            if ready is not None and ready.fits(cost):
                pool.current = ready
                admission = self.draw(pool, ready, step, estimate, record, span)
            else:
                if ready is not None:
                    self.retire(ready)  # a slice too small for this step: give it back
                if settling is not None and not pool.roomy(size, 2):
                    # Near the limit: let the old slice's commit land before asking for the next, so
                    # its unspent hold does not refuse the new one.
                    await asyncio.shield(settling)
                if not pool.roomy(size, 1):
                    return None
                lease = await self.take_slice(pool, size, self.calls.reserve)
                if lease is None:
                    return None
                pool.current = lease
                admission = self.draw(pool, lease, step, estimate, record, span)
        # Steps that queued for this slice (parallel siblings) draw from it before any of them spends,
        # as their reservations would all be in before any commit without a lease.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.give_back(admission)  # cancelled before the step had its admission: undo the draw
            raise
        return admission

    def give_back(self, admission: Admission) -> None:
        """A draw whose step will not run to the end (failed, cancelled): its estimate returns to the
        lease, and a retired lease nobody else draws from is committed (or released) now."""
        lease = admission.lease
        assert lease is not None
        lease.give_back(admission.estimate.cost_usd)
        if lease.done:
            self.calls.spawn(self.settle(lease))

    def _size(self, estimate: UsageEstimate) -> Decimal:
        return max(self.policy.slice_usd, estimate.cost_usd)

    async def take_slice(self, pool: Pool, size: Decimal, reserve: Any) -> Lease | None:
        """Reserve one slice; ``None`` (and the hold given back) unless the sidecar allows it cleanly."""
        request = pb.ReserveRequest(
            scopes=wire.scope_ids(pool.scopes),
            estimate_usd=wire.wire_usd(size),
            idempotency_key=uuid.uuid4().hex,
        )
        request.ttl.FromMilliseconds(int(self.policy.ttl_s * 1000))
        response = await reserve(request)
        held = wire.usd(response.reserved_usd)
        pool.headroom = wire.headroom(response.budget_info, held if response.reservation_id else _ZERO)
        clean = response.decision == pb.DECISION_ALLOW and not response.warnings
        if not clean or self.closing:
            # The slice would warn, downgrade or be denied (each step is decided on its own estimate
            # then), or it came back after the run ended.
            if response.reservation_id:
                await self.calls.release(response.reservation_id)
                if pool.headroom is not None:
                    pool.headroom += held
            if clean:
                self._count("acquired")
            self._count("released" if clean else "refused")
            return None
        self._count("acquired")
        return Lease(
            response.reservation_id,
            held,
            pool.scopes,
            response.budget_info,
            refill_at=_REFILL_AT,
            age_limit_s=self.age_limit_s,
        )

    async def _prefetch(self, pool: Pool, size: Decimal) -> None:
        """Take the next slice ahead of need; any failure leaves it to the step that needs it."""
        try:
            pool.next = await self.take_slice(pool, size, self.calls.reserve_unshielded)
        except (Unreachable, Refused):
            pool.next = None
        finally:
            pool.prefetch = None
        if pool.next is not None and self.closing:
            ready, pool.next = pool.next, None
            self.retire(ready)

    # ------------------------------------------------------------------ spend
    async def overrun(
        self, admission: Admission, overrun: Decimal, usage: MeasuredUsage
    ) -> BudgetExceededError | None:
        """The step cost more than the slice had left: make the sidecar (and this run's halting) see it
        now. The lease is retired; committed at once when no other step draws from it, else the excess
        is charged on its own and the lease's uncommitted spend counts as spent."""
        lease = admission.lease
        assert lease is not None
        pool = self.pools.get(lease.scopes)
        if pool is not None and pool.current is lease:
            pool.current = None
        lease.retired = True
        if lease.done:
            response = await asyncio.shield(self.calls.spawn(self.settle(lease)))
            return None if response is None else halt_error(response.budget_info)
        lease.take_overrun(overrun, usage)
        usage_id = f"lease:{lease.reservation_id}:overrun:{uuid.uuid4().hex[:12]}"
        facts = {"provider": usage.provider or "", "model": usage.model or ""}
        task = self.calls.spawn(
            self.calls.record_usage(usage_id, lease.scopes, overrun, 0, facts, reason="lease_overrun")
        )
        lease.overruns.append(task)
        response = await asyncio.shield(task)
        # What the lease spent is not in the response's figures yet: its commit waits for this charge.
        return None if response is None else halt_error(response.budget_info, lease.spent)

    def retire(self, lease: Lease) -> asyncio.Future[Any] | None:
        """No more draws from ``lease``; it is committed once its last draw has settled."""
        lease.retired = True
        if lease.done:
            return self.calls.spawn(self.settle(lease))
        return None

    async def settle(self, lease: Lease) -> Any:
        """Commit a lease with what was spent from it (release it when nothing was); the commit's
        response, or ``None`` when there was none (released, or kept for replay)."""
        if lease.settled:
            return None
        lease.settled = True
        if lease.overruns:
            await asyncio.gather(*lease.overruns, return_exceptions=True)
        pieces = lease.pieces()
        if not pieces:
            await self.calls.release(lease.reservation_id)
            self._count("released")
            return None
        main, rest = pieces[0], pieces[1:]
        # Other models' spend is recorded first, while the slice still holds the room for it.
        for i, piece in enumerate(rest, start=1):
            await self.calls.record_usage(
                f"lease:{lease.reservation_id}:{i}",
                lease.scopes,
                piece.cost,
                piece.total_tokens,
                piece.facts(),
                reason="lease_commit_failed",
            )
        response = await self.calls.commit(
            lease.reservation_id,
            lease.scopes,
            main.cost,
            main.total_tokens,
            main.facts(),
            reason="lease_commit_failed",
        )
        self._count("committed" if response is not None else "commit_failed")
        return response

    async def close(self) -> None:
        """The run is over: no more slices; every lease is committed or released."""
        self.closing = True
        for pool in self.pools.values():
            if pool.prefetch is not None:
                await asyncio.shield(pool.prefetch)
            for lease in (pool.current, pool.next):
                if lease is not None:
                    self.retire(lease)
            pool.current = pool.next = None

    def note_headroom(self, scopes: Scopes, lines: Any, held: Decimal) -> None:
        """Remember what a per-step reservation's answer says about the room left."""
        self.pool(scopes).headroom = wire.headroom(lines, held)

    def _count(self, event: str) -> None:
        self.tel.add("paymaster.budget.leases", 1, (("event", event),))
