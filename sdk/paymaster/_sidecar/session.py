"""``BudgetSession``: the sidecar's side of one run — the ``BudgetGate`` the executor consults.

Per step (``admit`` -> agent -> ``settle``, or ``abandon``): with a ``LeasePolicy`` the step draws its
estimate from the current lease of its scopes, taking (or topping up to) a new slice with one
``Reserve`` when the lease cannot cover it; without one, or near a limit (see ``LeasePolicy``), the
step has its own reservation, decided with the downgrade exchange in one round trip when the step
has a cheaper path. After the step the actual usage is committed (or added to the lease); spend that
takes a block budget past its limit halts the run after it is recorded, as local limits do.

Every call that must finish — reservations, commits, releases — runs as a task the session tracks
and the step awaits through ``asyncio.shield``: a cancelled step (a sibling branch breached) stops
waiting at once, while its call completes in the background and is undone (a reservation that
arrives for a cancelled step is released) or kept (a commit). ``close`` commits the leases and waits
for all of it, so the sidecar's reserved totals return to zero when the run ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from paymaster._estimate import UsageEstimate
from paymaster._gate import Ticket
from paymaster._metering import MeasuredUsage, agent_model
from paymaster._sidecar import wire
from paymaster._sidecar.client import Refused, Unreachable
from paymaster._sidecar.downgrade import CheaperPath, find_cheaper_path, no_path_message
from paymaster._sidecar.journal import PendingUsage
from paymaster._sidecar.leases import Lease, ModelSpend, Pool
from paymaster.budget import FAIL_CLOSED, FAIL_OPEN, BudgetOutcome
from paymaster.exceptions import (
    BudgetExceededError,
    ConfigError,
    SidecarUnavailableError,
    UsageLimitExceededError,
)
from paymaster.scopes import Scopes
from paymaster.usage import parse_model_ref
from paymaster.v1 import budget_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from paymaster.budget import SidecarBudget
    from paymaster.result import StepResult
    from paymaster.step import Step

__all__ = ["BudgetSession"]

log = logging.getLogger("paymaster")
_ZERO: Final = Decimal(0)
_LEASE_DRAW: Final = (("decision", "allow"), ("mode", "lease"))


class _Admission:
    """The session's state for one admitted step."""

    __slots__ = ("abandoned", "lease", "mode", "outcome", "scopes")

    def __init__(self, mode: str, scopes: Scopes, outcome: BudgetOutcome, lease: Lease | None = None) -> None:
        self.mode = mode
        self.scopes = scopes
        self.outcome = outcome
        self.lease = lease
        self.abandoned = False


class _Pending:
    """A reservation whose awaiting step may be cancelled before the answer arrives."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


class BudgetSession:
    """See the module docstring."""

    def __init__(self, budget: SidecarBudget, run: Any, base: Scopes) -> None:
        self.budget = budget
        self.client = budget.client
        self.tel = run.tel
        self.base = base
        self.lease_policy = budget.lease
        self._tasks: set[asyncio.Future[Any]] = set()
        self._pools: dict[Scopes, Pool] = {}
        self._scopes: dict[int, Scopes] = {}
        self._paths: dict[int, CheaperPath | None] = {}
        self._models: dict[int, Any] = {}
        self._ttl = budget.reservation_ttl_s

    # ================================================================== the gate
    async def admit(
        self, run: Any, step: Step, data: Any, estimate: UsageEstimate, record: StepResult, span: Span | None
    ) -> Ticket:
        scopes = self._scopes_for(step)
        if self.lease_policy is not None:
            ticket = await self._admit_from_lease(run, step, data, estimate, scopes, record, span)
            if ticket is not None:
                return ticket
        return await self._admit_reserved(run, step, data, estimate, scopes, record, span)

    async def settle(
        self,
        ticket: Ticket,
        usage: MeasuredUsage,
        actual: UsageEstimate,
        record: StepResult,
        span: Span | None,
    ) -> UsageLimitExceededError | None:
        admission: _Admission = ticket.state
        cost = actual.cost_usd
        if usage.cost_usd is None and ticket.estimate.cost_usd:
            # The call's price is unknown: charge what was reserved for it rather than nothing.
            cost = ticket.estimate.cost_usd
            record.warnings.append(
                f"its cost is unknown; the sidecar is charged its estimate ${wire.wire_usd(cost)}"
            )
        mode = admission.mode
        if mode == "lease":
            assert admission.lease is not None
            return await self._spend_from_lease(admission, ticket, cost, usage, record, span)
        if mode == "reservation":
            assert ticket.reservation_id is not None
            task = self._spawn(self._commit(ticket.reservation_id, admission.scopes, cost, usage))
            response = await asyncio.shield(task)
            if response is None:
                return None
            admission.outcome.charged_usd = wire.usd(response.charged_usd)
            return self._halt_if_exceeded(response.budget_info)
        if mode == "fail_open":
            self._journal(admission.outcome.usage_id or "", admission.scopes, cost, usage, reason="fail_open")
        return None

    def abandon(self, ticket: Ticket) -> None:
        admission: _Admission = ticket.state
        if admission.abandoned:
            return
        admission.abandoned = True
        if admission.mode == "reservation" and ticket.reservation_id:
            self._spawn(self._release(ticket.reservation_id))
        elif admission.mode == "lease" and admission.lease is not None:
            lease = admission.lease
            lease.give_back(ticket.estimate.cost_usd)
            if lease.done:
                self._spawn(self._settle_lease(lease))

    async def close(self, span: Span | None) -> None:
        for pool in self._pools.values():
            lease = pool.current
            if lease is not None:
                pool.current = None
                self._retire(lease)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ================================================================== per-step reservations
    async def _admit_reserved(
        self,
        run: Any,
        step: Step,
        data: Any,
        estimate: UsageEstimate,
        scopes: Scopes,
        record: StepResult,
        span: Span | None,
    ) -> Ticket:
        path = self._path_for(step)
        request = pb.ReserveRequest(
            scopes=wire.scope_ids(scopes),
            estimate_usd=wire.wire_usd(estimate.cost_usd),
            estimate_tokens=estimate.tokens,
            idempotency_key=uuid.uuid4().hex,
            model=self._model_facts(step),
        )
        cheaper = self._cheaper_estimate(run, path, data, estimate) if path is not None else None
        if cheaper is not None:
            request.downgrade_estimate_usd = wire.wire_usd(cheaper.cost_usd)
        if self._ttl is not None:
            request.ttl.FromMilliseconds(int(self._ttl * 1000))
        try:
            response = await self._reserve(request)
        except Unreachable as exc:
            return self._unreachable(step, estimate, scopes, exc, record, span)
        self._note_headroom(scopes, response.budget_info, wire.usd(response.reserved_usd))
        return await self._decided(response, step, estimate, cheaper, path, scopes, record, span)

    async def _decided(
        self,
        response: Any,
        step: Step,
        estimate: UsageEstimate,
        cheaper: UsageEstimate | None,
        path: CheaperPath | None,
        scopes: Scopes,
        record: StepResult,
        span: Span | None,
    ) -> Ticket:
        decision = response.decision
        outcome = BudgetOutcome(
            decision="allow",
            mode="reservation",
            scopes=scopes,
            reservation_id=response.reservation_id or None,
            budget_ids=tuple(i.budget_id for i in response.budget_info),
            deciding_budget_id=response.deciding_budget_id or None,
            warnings=tuple(response.warnings),
            budget_info=wire.budget_infos(response.budget_info),
        )
        if decision == pb.DECISION_DENY:
            outcome.decision, outcome.mode, outcome.reason = "deny", "none", response.reason
            self._record(outcome, record, span)
            raise self._denied(response.reason, "budget_denied", outcome)
        if decision == pb.DECISION_DOWNGRADE:
            outcome.reason = response.reason
            if path is None or cheaper is None or response.awaiting_downgrade_estimate:
                if response.reservation_id:
                    await asyncio.shield(self._spawn(self._release(response.reservation_id)))
                outcome.decision, outcome.mode, outcome.reservation_id = "no_downgrade_path", "none", None
                self._record(outcome, record, span)
                message = f"{response.reason} {no_path_message(step, self._model_label(step))}"
                raise self._denied(message, "no_downgrade_path", outcome)
            outcome.decision = "downgrade"
            outcome.downgraded_from, outcome.downgraded_to = path.from_label, path.to_label
            self._record(outcome, record, span)
            ticket = Ticket(path.step, cheaper, outcome.reservation_id)
            ticket.state = _Admission("reservation", scopes, outcome)
            return ticket
        if decision != pb.DECISION_ALLOW:
            raise ConfigError(f"the sidecar at {self.client.target} answered an unknown decision {decision}")
        if outcome.warnings:
            outcome.decision = "warn"
        self._record(outcome, record, span)
        ticket = Ticket(step, estimate, outcome.reservation_id)
        ticket.state = _Admission("reservation", scopes, outcome)
        return ticket

    def _unreachable(
        self,
        step: Step,
        estimate: UsageEstimate,
        scopes: Scopes,
        exc: Unreachable,
        record: StepResult,
        span: Span | None,
    ) -> Ticket:
        """The fail policy, for a step the sidecar could not decide."""
        policy = self.budget.fail_policy
        why = f"the budget sidecar at {self.client.target} did not answer ({exc})"
        if policy == FAIL_CLOSED:
            outcome = BudgetOutcome(decision="fail_closed", mode="none", scopes=scopes, reason=why)
            self._record(outcome, record, span)
            raise SidecarUnavailableError(
                f"{why[0].upper()}{why[1:]}; fail_policy='fail_closed' denies step {step.name!r} before it "
                "runs. Start (or reach) the sidecar, or choose fail_policy='fail_open' or "
                "'local_only_limits' to keep running through outages."
            )
        if policy == FAIL_OPEN:
            usage_id = f"fail-open:{uuid.uuid4().hex}"
            outcome = BudgetOutcome(
                decision="fail_open", mode="fail_open", scopes=scopes, usage_id=usage_id, reason=why
            )
            self._record(outcome, record, span)
            record.warnings.append(f"{why}; ran under fail_open and will replay its spend")
            # The replay id stands in for a reservation id on the spans, so trace ingestion does not
            # charge this spend again once the replay has.
            ticket = Ticket(step, estimate, usage_id)
        else:
            outcome = BudgetOutcome(decision="local_only", mode="local_only", scopes=scopes, reason=why)
            self._record(outcome, record, span)
            record.warnings.append(f"{why}; ran under the runner's own limits only (local_only_limits)")
            ticket = Ticket(step, estimate, None)
        ticket.state = _Admission(outcome.mode, scopes, outcome)
        return ticket

    def _denied(self, message: str, code: str, outcome: BudgetOutcome) -> BudgetExceededError:
        return BudgetExceededError(
            message,
            code=code,
            budget_info=outcome.budget_info,
            deciding_budget_id=outcome.deciding_budget_id,
            reason=message,
        )

    def _halt_if_exceeded(self, lines: Any, pending: Decimal = _ZERO) -> BudgetExceededError | None:
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

    # ================================================================== leases
    async def _admit_from_lease(
        self,
        run: Any,
        step: Step,
        data: Any,
        estimate: UsageEstimate,
        scopes: Scopes,
        record: StepResult,
        span: Span | None,
    ) -> Ticket | None:
        """A draw from the scopes' lease (taking a new slice when needed), or ``None``: reserve per step."""
        policy = self.lease_policy
        assert policy is not None
        pool = self._pools.get(scopes)
        if pool is None:
            pool = self._pools[scopes] = Pool()
        cost = estimate.cost_usd
        lease = pool.current
        if lease is not None and lease.fits(cost) and not lease.stale(policy.age_limit_s):
            return self._draw(lease, step, estimate, record, span)
        if pool.lock is None:
            pool.lock = asyncio.Lock()
        lock: asyncio.Lock = pool.lock  # type: ignore[assignment]
        async with lock:
            lease = pool.current
            if lease is not None and lease.fits(cost) and not lease.stale(policy.age_limit_s):
                return self._draw(lease, step, estimate, record, span)
            size = max(policy.slice_usd, cost)
            plenty = pool.headroom is None or pool.headroom >= 2 * size
            if lease is not None:
                pool.current = None
                settling = self._retire(lease)
                if settling is not None and not plenty:
                    # Near the limit: let the old slice's commit land before asking for the next, so
                    # its unspent hold does not refuse the new one.
                    await asyncio.shield(settling)
            if pool.headroom is not None and pool.headroom < size:
                return None
            try:
                response = await self._reserve(self._lease_request(scopes, size))
            except Unreachable as exc:
                return self._unreachable(step, estimate, scopes, exc, record, span)
            held = wire.usd(response.reserved_usd)
            clean = response.decision == pb.DECISION_ALLOW and not response.warnings
            pool.headroom = wire.headroom(response.budget_info, held if response.reservation_id else _ZERO)
            if not clean:
                # The slice would warn, downgrade or be denied: decide this step on its own estimate.
                if response.reservation_id:
                    await asyncio.shield(self._spawn(self._release(response.reservation_id)))
                    if pool.headroom is not None:
                        pool.headroom += held  # the released hold is room again
                self._count_lease("refused")
                return None
            lease = Lease(
                response.reservation_id,
                held,
                scopes,
                tuple(i.budget_id for i in response.budget_info),
                wire.budget_infos(response.budget_info),
            )
            pool.current = lease
            self._count_lease("acquired")
            ticket = self._draw(lease, step, estimate, record, span)
        # Steps that queued for this slice (parallel siblings) draw from it before any of them spends,
        # as their reservations would all be in before any commit without a lease.
        await asyncio.sleep(0)
        return ticket

    def _lease_request(self, scopes: Scopes, size: Decimal) -> Any:
        assert self.lease_policy is not None
        request = pb.ReserveRequest(
            scopes=wire.scope_ids(scopes), estimate_usd=wire.wire_usd(size), idempotency_key=uuid.uuid4().hex
        )
        request.ttl.FromMilliseconds(int(self.lease_policy.ttl_s * 1000))
        return request

    def _draw(
        self, lease: Lease, step: Step, estimate: UsageEstimate, record: StepResult, span: Span | None
    ) -> Ticket:
        lease.draw(estimate.cost_usd)
        outcome = BudgetOutcome(
            decision="allow",
            mode="lease",
            scopes=lease.scopes,
            reservation_id=lease.reservation_id,
            budget_ids=lease.budget_ids,
            budget_info=lease.budget_info,
        )
        record.metadata["budget"] = outcome
        self.tel.add("paymaster.budget.decisions", 1, _LEASE_DRAW)
        if span is not None:
            span.set_attributes(outcome.attributes())
        ticket = Ticket(step, estimate, lease.reservation_id)
        ticket.state = _Admission("lease", lease.scopes, outcome, lease)
        return ticket

    async def _spend_from_lease(
        self,
        admission: _Admission,
        ticket: Ticket,
        cost: Decimal,
        usage: MeasuredUsage,
        record: StepResult,
        span: Span | None,
    ) -> UsageLimitExceededError | None:
        lease = admission.lease
        assert lease is not None
        admission.abandoned = True  # settled: nothing to give back any more
        overrun = lease.spend_on(ticket.estimate.cost_usd, cost, usage)
        if not overrun:
            if lease.done:
                self._spawn(self._settle_lease(lease))
            return None
        # The step cost more than the slice had left: the sidecar (and this run's halting) must see it
        # now. Retire the lease; commit it at once when no other step draws from it, else charge the
        # excess on its own and count the lease's uncommitted spend as spent.
        pool = self._pools.get(lease.scopes)
        if pool is not None and pool.current is lease:
            pool.current = None
        lease.retired = True
        if lease.done:
            response = await asyncio.shield(self._spawn(self._settle_lease(lease)))
            return None if response is None else self._halt_if_exceeded(response.budget_info)
        lease.take_overrun(overrun, usage)
        usage_id = f"lease:{lease.reservation_id}:overrun:{uuid.uuid4().hex[:12]}"
        task = self._spawn(self._record_usage(usage_id, lease.scopes, overrun, usage, "", "lease_overrun"))
        lease.overruns.append(task)
        response = await asyncio.shield(task)
        # What the lease spent is not in the response's figures yet: its commit waits for this charge.
        return None if response is None else self._halt_if_exceeded(response.budget_info, lease.spent)

    def _retire(self, lease: Lease) -> asyncio.Future[Any] | None:
        lease.retired = True
        if lease.done:
            return self._spawn(self._settle_lease(lease))
        return None

    async def _settle_lease(self, lease: Lease) -> Any:
        """Commit a lease with what was spent from it (release it when nothing was); returns the
        commit's response, or ``None`` when there was none (released, or kept for replay)."""
        if lease.settled:
            return None
        lease.settled = True
        if lease.overruns:
            await asyncio.gather(*lease.overruns, return_exceptions=True)
        pieces = lease.pieces()
        if not pieces:
            await self._release(lease.reservation_id)
            self._count_lease("released")
            return None
        main, rest = pieces[0], pieces[1:]
        # Other models' spend is recorded first, while the slice still holds the room for it.
        for i, piece in enumerate(rest, start=1):
            await self._record_usage(
                f"lease:{lease.reservation_id}:{i}",
                lease.scopes,
                piece.cost,
                piece,
                "",
                "lease_commit_failed",
            )
        request = pb.CommitRequest(
            reservation_id=lease.reservation_id,
            actual_usd=wire.wire_usd(main.cost),
            actual_tokens=main.total_tokens,
            usage=pb.UsageFacts(**main.facts()),
        )
        try:
            response = await self.client.call("Commit", request, count=self._count_call)
        except (Unreachable, Refused) as exc:
            self._journal_piece(
                f"lease:{lease.reservation_id}",
                lease.scopes,
                main,
                lease.reservation_id,
                "lease_commit_failed",
            )
            self._count_lease("commit_failed")
            log.warning(
                "paymaster: lease %s could not be committed (%s); kept for replay", lease.reservation_id, exc
            )
            return None
        self._count_lease("committed")
        return response

    # ================================================================== calls
    async def _reserve(self, request: Any) -> Any:
        """Reserve, surviving the cancellation of the step that asked: a reservation that arrives for
        a cancelled step is released."""
        pending = _Pending()
        task = self._spawn(self._reserve_task(request, pending))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            pending.abandoned = True
            if task.done() and not task.cancelled() and task.exception() is None:
                rid = task.result().reservation_id
                if rid:
                    self._spawn(self._release(rid))
            raise
        except Refused as exc:
            raise ConfigError(f"the sidecar at {self.client.target} refused a reservation: {exc}") from None

    async def _reserve_task(self, request: Any, pending: _Pending) -> Any:
        response = await self.client.call("Reserve", request, count=self._count_call)
        if pending.abandoned and response.reservation_id:
            await self._release(response.reservation_id)
        return response

    async def _commit(self, reservation_id: str, scopes: Scopes, cost: Decimal, usage: MeasuredUsage) -> Any:
        """Commit a step's reservation; kept for replay (never lost) when the sidecar cannot take it."""
        request = pb.CommitRequest(
            reservation_id=reservation_id,
            actual_usd=wire.wire_usd(cost),
            actual_tokens=usage.total_tokens,
            usage=wire.facts(usage),
        )
        try:
            return await self.client.call("Commit", request, count=self._count_call)
        except (Unreachable, Refused) as exc:
            log.warning("paymaster: commit of %s failed (%s); kept for replay", reservation_id, exc)
            self._journal(f"commit:{reservation_id}", scopes, cost, usage, reservation_id, "commit_failed")
            return None

    async def _release(self, reservation_id: str) -> None:
        try:
            await self.client.call(
                "Release", pb.ReleaseRequest(reservation_id=reservation_id), count=self._count_call
            )
        except Unreachable:
            self.budget.replayer.add_release(reservation_id)
        except Refused:
            pass  # committed, expired or unknown: nothing is held

    async def _record_usage(
        self,
        usage_id: str,
        scopes: Scopes,
        cost: Decimal,
        usage: MeasuredUsage | ModelSpend,
        rid: str,
        reason: str,
    ) -> Any:
        facts = usage.facts() if isinstance(usage, ModelSpend) else _facts_dict(usage)
        tokens = usage.total_tokens if isinstance(usage, ModelSpend) else 0
        request = pb.RecordUsageRequest(
            usage_id=usage_id,
            scopes=wire.scope_ids(scopes),
            cost_usd=wire.wire_usd(cost),
            total_tokens=tokens,
            usage=pb.UsageFacts(**facts),
            reservation_id=rid,
        )
        try:
            return await self.client.call("RecordUsage", request, count=self._count_call)
        except (Unreachable, Refused) as exc:
            log.warning("paymaster: usage %s could not be recorded (%s); kept for replay", usage_id, exc)
            self._append(
                PendingUsage(
                    usage_id=usage_id,
                    target=self.client.target,
                    scopes=dict(scopes.items()),
                    cost_usd=cost,
                    total_tokens=tokens,
                    usage=facts,
                    occurred_ms=int(time.time() * 1000),
                    reservation_id=rid,
                    reason=reason,
                )
            )
            return None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ================================================================== the journal
    def _journal(
        self,
        usage_id: str,
        scopes: Scopes,
        cost: Decimal,
        usage: MeasuredUsage,
        reservation_id: str = "",
        reason: str = "fail_open",
    ) -> None:
        self._append(
            PendingUsage(
                usage_id=usage_id,
                target=self.client.target,
                scopes=dict(scopes.items()),
                cost_usd=cost,
                total_tokens=usage.total_tokens,
                usage=_facts_dict(usage),
                occurred_ms=int(time.time() * 1000),
                reservation_id=reservation_id,
                reason=reason,
            )
        )

    def _journal_piece(self, usage_id: str, scopes: Scopes, piece: ModelSpend, rid: str, reason: str) -> None:
        self._append(
            PendingUsage(
                usage_id=usage_id,
                target=self.client.target,
                scopes=dict(scopes.items()),
                cost_usd=piece.cost,
                total_tokens=piece.total_tokens,
                usage=piece.facts(),
                occurred_ms=int(time.time() * 1000),
                reservation_id=rid,
                reason=reason,
            )
        )

    def _append(self, entry: PendingUsage) -> None:
        try:
            self.budget.journal.append(entry)
        except OSError as exc:
            # The durable journal cannot be written: keep the entry in memory rather than lose it.
            log.error(
                "paymaster: cannot write the replay journal (%s); keeping %s in memory", exc, entry.usage_id
            )
            self.budget.journal.keep_in_memory(entry)
        self.tel.add("paymaster.sidecar.replays", 1, (("outcome", "journaled"),))
        self.budget.replayer.wake()

    # ================================================================== helpers
    def _scopes_for(self, step: Step) -> Scopes:
        key = id(step)
        found = self._scopes.get(key)
        if found is None:
            found = self.base.merged(step.scopes)
            if found.is_empty:
                raise ConfigError(
                    f"Step {step.name!r} has no scope ids for the budget sidecar: give "
                    "SidecarBudget(scopes=Scopes(team=...)), Step(..., scopes=...), or set paymaster.team "
                    "(or another paymaster.<scope>) in the OpenTelemetry resource"
                )
            self._scopes[key] = found
        return found

    def _path_for(self, step: Step) -> CheaperPath | None:
        key = id(step)
        if key not in self._paths:
            self._paths[key] = find_cheaper_path(step, self.budget.downgrades)
        return self._paths[key]

    def _model_label(self, step: Step) -> str | None:
        found = agent_model(step.agent)
        return None if found is None else str(parse_model_ref(found[0], provider=found[1]))

    def _model_facts(self, step: Step) -> Any:
        key = id(step)
        found = self._models.get(key)
        if found is None:
            model = agent_model(step.agent)
            if model is None:
                found = pb.UsageFacts()
            else:
                ref = parse_model_ref(model[0], provider=model[1])
                found = pb.UsageFacts(provider=ref.provider or "", model=ref.model)
            self._models[key] = found
        return found

    def _cheaper_estimate(
        self, run: Any, path: CheaperPath | None, data: Any, estimate: UsageEstimate
    ) -> UsageEstimate | None:
        if path is None:
            return None
        cheaper, strategy = run.core.estimate(path.step, data, run.ctx)
        # Nothing is known of the cheaper path: hold what the step itself was expected to cost.
        return estimate if strategy == "minimal" else cheaper

    def _note_headroom(self, scopes: Scopes, lines: Any, held: Decimal) -> None:
        if self.lease_policy is None:
            return
        pool = self._pools.get(scopes)
        if pool is None:
            pool = self._pools[scopes] = Pool()
        pool.headroom = wire.headroom(lines, held)

    def _record(self, outcome: BudgetOutcome, record: StepResult, span: Span | None) -> None:
        record.metadata["budget"] = outcome
        if outcome.warnings:
            record.warnings.extend(outcome.warnings)
        self.tel.add(
            "paymaster.budget.decisions", 1, (("decision", outcome.decision), ("mode", outcome.mode))
        )
        if span is not None:
            span.set_attributes(outcome.attributes())

    def _count_call(self, rpc: str, outcome: str) -> None:
        self.tel.add("paymaster.sidecar.calls", 1, (("outcome", outcome), ("rpc", rpc)))

    def _count_lease(self, event: str) -> None:
        self.tel.add("paymaster.budget.leases", 1, (("event", event),))


def _facts_dict(usage: MeasuredUsage) -> dict[str, Any]:
    return {
        "provider": usage.provider or "",
        "model": usage.model or "",
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cached_input_tokens,
        "cache_creation_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }
