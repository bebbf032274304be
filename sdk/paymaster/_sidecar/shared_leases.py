"""``SharedLeases``: leases one ``SidecarBudget`` holds for every run it governs (``LeasePolicy(shared=True)``).

A service that runs one short pipeline per incoming request would otherwise pay a ``Reserve`` and a
``Commit`` per run even with leases, since each run's leases end with it. Here the leases belong to
the budget: per scope set one slice that every run draws from, concurrently, from any thread and any
event loop.

* **Drawing is local and immediate.** A step takes its estimate from the current slice under one
  lock (the sidecar's own rule, as in ``leases.Lease``), with no call and no hop to another thread.
* **Calls run on one thread of the budget's own** (an event loop in a daemon thread): taking a slice,
  taking the next one ahead of need, committing a slice, charging an overrun. A run that needs one
  waits for it through its own loop; runs that need the same slice at once share one ``Reserve``.
* **Accounting is the per-run leases'.** A slice is committed with exactly what every run spent from
  it (by model), once it is retired — exhausted, older than ``max_age_s`` (a keeper looks twice per
  age limit, so an idle service commits too), or the budget closed — and the last step drawing from
  it has settled. An actual that overruns the slice is charged at once on its own. Steps carry the
  slice's reservation id, so trace ingestion charges none of them again.
* **Release**: ``close()`` of the budget commits or releases every slice (waiting for steps still
  drawing from one); a process that dies leaves its slices to expire after ``ttl_s``; a slice that
  cannot be committed goes to the replay journal like any commit, and a slice that cannot be taken
  leaves the step to the fail policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Coroutine
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar

from paymaster._estimate import UsageEstimate
from paymaster._metering import MeasuredUsage
from paymaster._sidecar import wire
from paymaster._sidecar.calls import Admission, Calls, halt_error
from paymaster._sidecar.client import Refused, Unreachable
from paymaster._sidecar.lease_desk import LeaseDesk
from paymaster._sidecar.leases import Lease, Pool
from paymaster.exceptions import BudgetExceededError
from paymaster.scopes import Scopes

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from paymaster.budget import LeasePolicy, SidecarBudget
    from paymaster.result import StepResult
    from paymaster.step import Step

__all__ = ["SharedLeases"]

log = logging.getLogger("paymaster")

T = TypeVar("T")
_DRAW: Final = (("decision", "allow"), ("mode", "lease"))
_ZERO: Final = Decimal(0)
_MAX_POOLS: Final = 10_000
_IDLE_POOL_S: Final = 60.0


class _Counters:
    """The ``tel`` of the budget's own calls: counted on the telemetry of the runs it governs."""

    def __init__(self, budget: SidecarBudget) -> None:
        self._budget = budget

    def add(self, name: str, value: float, attributes: tuple[tuple[str, str], ...]) -> None:
        telemetry = self._budget.telemetry
        if telemetry is not None:
            telemetry.count(name, value, dict(attributes))


class SharedLeases:
    """See the module docstring."""

    def __init__(self, budget: SidecarBudget, policy: LeasePolicy) -> None:
        self.budget = budget
        self.policy = policy
        self.lock = threading.Lock()
        self.pools: dict[Scopes, Pool] = {}
        self._used: dict[Scopes, float] = {}  # when each pool was last drawn from (for forgetting)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._starting = threading.Lock()
        self._counters = _Counters(budget)
        self._desk: LeaseDesk | None = None
        self._keeper: asyncio.Future[Any] | None = None

    # ------------------------------------------------------------------ the budget's thread
    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            with self._starting:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="paymaster-leases", daemon=True)
                    self._thread.start()
            self._started.wait()
        assert self._loop is not None
        return self._loop

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._desk = LeaseDesk(self.policy, Calls(self.budget, self._counters), self._counters)
        self._keeper = loop.create_task(self._keep())
        self._loop = loop
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the budget's thread, tracked so that ``close`` waits for it."""
        loop = self._ensure_started()
        return asyncio.run_coroutine_threadsafe(self._tracked(coro), loop)

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._desk is not None
        result: T = await self._desk.calls.spawn(coro)
        return result

    def _later(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the budget's thread; nobody waits for it here (``close`` does)."""
        self._start(coro)

    @staticmethod
    async def _await(future: concurrent.futures.Future[T]) -> T:
        """Wait for ``future`` in the caller's loop; a cancelled caller stops waiting, the work goes on
        (other runs may be waiting for it too)."""
        return await asyncio.shield(asyncio.wrap_future(future))

    # ------------------------------------------------------------------ admission (any thread)
    def draw(
        self,
        scopes: Scopes,
        step: Step,
        estimate: UsageEstimate,
        record: StepResult,
        span: Span | None,
        tel: Any,
    ) -> Admission | None:
        """Take ``estimate`` from the current slice of ``scopes`` if it fits; ``None`` otherwise."""
        cost = estimate.cost_usd
        with self.lock:
            pool = self.pools.get(scopes)
            lease = None if pool is None or self._closing else pool.current
            if lease is None or not lease.fits(cost) or lease.stale:
                return None
            lease.draw(cost)
            self._used[scopes] = time.monotonic()
            prefetch = lease.low and pool.next is None and pool.prefetch is None  # type: ignore[union-attr]
            if prefetch:
                size = self._size(estimate)
                prefetch = pool.roomy(size, 3)  # type: ignore[union-attr]
                if prefetch:
                    pool.prefetch = concurrent.futures.Future()  # type: ignore[union-attr]
        if prefetch:
            self._later(self._prefetch(pool, size))  # type: ignore[arg-type]
        record.metadata["budget"] = lease.outcome
        tel.add("paymaster.budget.decisions", 1, _DRAW)
        if span is not None:
            span.set_attributes(lease.attributes)
        return Admission(step, estimate, lease.reservation_id, "lease", lease.outcome, lease.scopes, lease)

    async def acquire(
        self,
        scopes: Scopes,
        step: Step,
        estimate: UsageEstimate,
        record: StepResult,
        span: Span | None,
        tel: Any,
    ) -> Admission | None:
        """A draw from a fresh slice, or ``None``: reserve this step on its own. Raises ``Unreachable``."""
        for _ in range(3):  # other runs may take what was refilled before this one draws
            with self.lock:
                if self._closing:
                    return None
                pool = self.pools.get(scopes)
                if pool is None:
                    if len(self.pools) >= _MAX_POOLS:
                        return None
                    pool = self.pools[scopes] = Pool(scopes)
                refill = pool.refilling
                if refill is None:
                    refill = pool.refilling = self._start(self._refill(pool, estimate.cost_usd))
            ready = await self._await(refill)
            if not ready:
                return None
            drawn = self.draw(scopes, step, estimate, record, span, tel)
            if drawn is not None:
                return drawn
        return None

    def note_headroom(self, scopes: Scopes, lines: Any, held: Decimal) -> None:
        """Remember what a per-step reservation's answer says about the room left."""
        with self.lock:
            pool = self.pools.get(scopes)
            if pool is not None:
                pool.headroom = wire.headroom(lines, held)

    # ------------------------------------------------------------------ spend (any thread)
    async def spent(
        self, admission: Admission, estimate: Decimal, cost: Decimal, usage: MeasuredUsage
    ) -> BudgetExceededError | None:
        """A drawing step finished: its actual replaces its draw; an overrun is charged at once."""
        lease = admission.lease
        assert lease is not None
        with self.lock:
            overrun = lease.spend_on(estimate, cost, usage)
            if overrun:
                pool = self.pools.get(lease.scopes)
                if pool is not None and pool.current is lease:
                    pool.current = None
                lease.retired = True
                settle_now = lease.done
                if not settle_now:
                    lease.take_overrun(overrun, usage)
                    lease.inflight += 1  # the charge below: the slice is committed after it
            done = lease.done
        if not overrun:
            if done:
                self._later(self._settle(lease))
            return None
        if settle_now:
            response = await self._await(self._start(self._settle(lease)))
            return None if response is None else halt_error(response.budget_info)
        return await self._await(self._start(self._charge_overrun(lease, overrun, usage)))

    def give_back(self, admission: Admission) -> None:
        """A drawing step did not run to the end: its draw returns to the slice."""
        lease = admission.lease
        assert lease is not None
        with self.lock:
            lease.give_back(admission.estimate.cost_usd)
            done = lease.done
        if done:
            self._later(self._settle(lease))

    # ------------------------------------------------------------------ on the budget's thread
    def _size(self, estimate: UsageEstimate) -> Decimal:
        return max(self.policy.slice_usd, estimate.cost_usd)

    def _retire(self, lease: Lease) -> bool:
        """No more draws from ``lease`` (with the lock held); whether it is done and to be committed."""
        lease.retired = True
        return lease.done

    async def _refill(self, pool: Pool, cost: Decimal) -> bool:
        """Make a slice that fits ``cost`` current: the one there (another run's refill may have made
        it), the one taken ahead, or a new one; whether there is one."""
        try:
            return await self._refill_pool(pool, cost)
        finally:
            with self.lock:
                pool.refilling = None

    async def _refill_pool(self, pool: Pool, cost: Decimal) -> bool:
        desk = self._desk
        assert desk is not None
        size = max(self.policy.slice_usd, cost)
        with self.lock:
            old = pool.current
            if old is not None and old.fits(cost) and not old.stale:
                return True
            pool.current = None
            settle_old = old is not None and self._retire(old)
        if settle_old:
            self._later(self._settle(old))  # type: ignore[arg-type]
        prefetching = pool.prefetch
        if prefetching is not None:  # a slice being taken ahead: wait for it
            await asyncio.wrap_future(prefetching)
        with self.lock:
            ready, pool.next = pool.next, None
            if ready is not None and not ready.fits(cost):
                if self._retire(ready):  # a slice too small for this step: give it back
                    self._later(self._settle(ready))
                ready = None
            if ready is not None:
                pool.current = ready
                return True
            roomy = pool.roomy(size, 1)
        if not roomy or self._closing:
            return False
        lease = await desk.take_slice(pool, size, desk.calls.reserve)
        if lease is None:
            return False
        with self.lock:
            if self._closing:
                stale = True
            else:
                pool.current, stale = lease, False
        if stale:
            self._retire(lease)
            await self._settle(lease)
            return False
        return True

    async def _prefetch(self, pool: Pool, size: Decimal) -> None:
        desk = self._desk
        assert desk is not None
        taken = None
        try:
            taken = await desk.take_slice(pool, size, desk.calls.reserve_unshielded)
        except (Unreachable, Refused):
            pass  # the step that needs the next slice takes it (or meets the fail policy)
        finally:
            with self.lock:
                done, pool.prefetch = pool.prefetch, None
                if taken is not None and not self._closing:
                    pool.next, taken = taken, None
            if done is not None:
                done.set_result(None)
        if taken is not None:
            self._retire(taken)
            await self._settle(taken)

    async def _settle(self, lease: Lease) -> Any:
        desk = self._desk
        assert desk is not None
        return await desk.settle(lease)

    async def _charge_overrun(
        self, lease: Lease, overrun: Decimal, usage: MeasuredUsage
    ) -> BudgetExceededError | None:
        """Charge the part of a step's cost past its slice on its own, now; the slice is committed once
        its other draws settle, after this charge landed."""
        desk = self._desk
        assert desk is not None
        usage_id = f"lease:{lease.reservation_id}:overrun:{uuid.uuid4().hex[:12]}"
        facts = {"provider": usage.provider or "", "model": usage.model or ""}
        task = desk.calls.spawn(
            desk.calls.record_usage(usage_id, lease.scopes, overrun, 0, facts, reason="lease_overrun")
        )
        lease.overruns.append(task)
        with self.lock:
            lease.inflight -= 1
            done = lease.done
        if done:
            self._later(self._settle(lease))
        response = await asyncio.shield(task)
        return None if response is None else halt_error(response.budget_info, lease.spent)

    async def _keep(self) -> None:
        """Commit slices that grew old while nobody drew from them, and forget idle scope sets."""
        tick = min(1.0, self.policy.age_limit_s / 2)
        while True:
            await asyncio.sleep(tick)
            settle: list[Lease] = []
            now = time.monotonic()
            with self.lock:
                for scopes, pool in list(self.pools.items()):
                    for lease in (pool.current, pool.next):
                        if lease is not None and lease.stale:
                            if pool.current is lease:
                                pool.current = None
                            else:
                                pool.next = None
                            if self._retire(lease):
                                settle.append(lease)
                    idle = pool.current is None and pool.next is None and pool.prefetch is None
                    if idle and pool.refilling is None and now - self._used.get(scopes, 0) > _IDLE_POOL_S:
                        del self.pools[scopes]
                        self._used.pop(scopes, None)
            for lease in settle:
                self._later(self._settle(lease))

    # ------------------------------------------------------------------ closing
    def close(self, timeout_s: float = 30.0) -> None:
        """Commit or release every slice (waiting up to ``timeout_s`` for steps still drawing from
        one), then stop the budget's thread."""
        with self.lock:
            self._closing = True
            started = self._thread is not None
        if not started:
            return
        loop = self._ensure_started()
        future = asyncio.run_coroutine_threadsafe(self._close(timeout_s), loop)
        try:
            future.result(timeout_s + 5)
        except Exception:
            log.exception("paymaster: closing the shared leases failed")
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    async def _close(self, timeout_s: float) -> None:
        desk = self._desk
        assert desk is not None
        if self._keeper is not None:
            self._keeper.cancel()
        while True:
            with self.lock:
                busy = any(p.prefetch is not None or p.refilling is not None for p in self.pools.values())
            if not busy:
                break
            await asyncio.sleep(0.005)
        leases: list[Lease] = []
        with self.lock:
            for pool in self.pools.values():
                for lease in (pool.current, pool.next):
                    if lease is not None:
                        self._retire(lease)
                        leases.append(lease)
                pool.current = pool.next = None
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                drawing = [lease for lease in leases if lease.inflight and not lease.settled]
            if not drawing or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        for lease in drawing:
            log.warning(
                "paymaster: SidecarBudget closed while %d step(s) still drew from lease %s; committing "
                "what it spent so far",
                lease.inflight,
                lease.reservation_id,
            )
            lease.inflight = 0
        for lease in leases:
            if not lease.settled:
                await self._settle(lease)
        await desk.calls.drain()
