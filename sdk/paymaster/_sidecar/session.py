"""``BudgetSession``: the sidecar's side of one run — the ``BudgetGate`` the executor consults.

Per step (``admit`` -> agent -> ``settle``, or ``abandon``): with a ``LeasePolicy`` the step draws its
estimate from the current lease of its scopes (``LeaseDesk``); without one, or near a limit, the
step has its own reservation, decided with the downgrade exchange in one round trip when the step
has a cheaper path. After the step the actual usage is committed (or added to the lease); spend that
takes a block budget past its limit halts the run after it is recorded, as local limits do. When the
sidecar cannot be reached, the budget's fail policy decides the step. A step run inside a request
budget (its id in the OpenTelemetry baggage, ``paymaster.request_budget``) names it on its Reserve and
is held to it as well; such steps take per-step reservations, never a lease.

Calls go through ``Calls``, which tracks them so that a cancelled step never leaves a hold behind;
``close`` commits the leases and waits for every call, so the sidecar's reserved totals return to
zero when the run ends, however it ends.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from opentelemetry import baggage

from paymaster._estimate import UsageEstimate
from paymaster._gate import Ticket
from paymaster._metering import MeasuredUsage, agent_model
from paymaster._sidecar import wire
from paymaster._sidecar.calls import Admission, Calls, halt_error, usage_facts
from paymaster._sidecar.client import Unreachable
from paymaster._sidecar.downgrade import CheaperPath, find_cheaper_path, no_path_message
from paymaster._sidecar.lease_desk import LeaseDesk
from paymaster._sidecar.leases import Pool
from paymaster.budget import FAIL_CLOSED, FAIL_OPEN, BudgetOutcome
from paymaster.exceptions import (
    BudgetExceededError,
    ConfigError,
    SidecarUnavailableError,
    UsageLimitExceededError,
)
from paymaster.request_budget import REQUEST_BUDGET_KEY
from paymaster.scopes import Scopes
from paymaster.usage import parse_model_ref
from paymaster.v1 import budget_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from paymaster.budget import SidecarBudget
    from paymaster.result import StepResult
    from paymaster.step import Step

__all__ = ["BudgetSession"]


class _StepFacts:
    """What the session works out once per step definition: its scopes, lease pool, cheaper path."""

    __slots__ = ("model", "path", "pool", "scopes")

    def __init__(self, scopes: Scopes, pool: Pool | None, path: CheaperPath | None, model: Any) -> None:
        self.scopes = scopes
        self.pool = pool
        self.path = path
        self.model = model


class BudgetSession:
    """See the module docstring."""

    def __init__(self, budget: SidecarBudget, run: Any, base: Scopes, *, service: str = "") -> None:
        self.budget = budget
        self.service = service
        """This process's ``service.name``, for a request budget's spend by service."""
        self.tel = run.tel
        self.base = base
        self.calls = Calls(budget, run.tel)
        self.shared = budget.shared_leases
        self.leases = (
            None
            if budget.lease is None or self.shared is not None
            else LeaseDesk(budget.lease, self.calls, run.tel)
        )
        self._steps: dict[int, _StepFacts] = {}
        self._ttl_ms = None if budget.reservation_ttl_s is None else int(budget.reservation_ttl_s * 1000)

    # ================================================================== the gate
    async def admit(
        self, run: Any, step: Step, data: Any, estimate: UsageEstimate, record: StepResult, span: Span | None
    ) -> Ticket:
        facts = self._steps.get(id(step))
        if facts is None:
            facts = self._learn(step)
        request_budget = baggage.get_baggage(REQUEST_BUDGET_KEY)
        if request_budget:
            # A request budget never draws from a lease, the run's or the budget's shared ones: each
            # step is reserved against it (and its scopes' budgets) on its own estimate.
            return await self._reserve(run, step, data, estimate, facts, record, span, str(request_budget))
        shared = self.shared
        if shared is not None:
            drawn = shared.draw(facts.scopes, step, estimate, record, span, self.tel)
            if drawn is not None:
                return drawn
            try:
                drawn = await shared.acquire(facts.scopes, step, estimate, record, span, self.tel)
            except Unreachable as exc:
                return self._unreachable(step, estimate, facts.scopes, exc, record, span)
            if drawn is not None:
                return drawn
        pool = facts.pool
        if pool is not None:
            assert self.leases is not None
            lease = pool.current
            if lease is not None and lease.fits(estimate.cost_usd) and not lease.stale:
                return self.leases.draw(pool, lease, step, estimate, record, span)
            try:
                drawn = await self.leases.acquire(pool, step, estimate, record, span)
            except Unreachable as exc:
                return self._unreachable(step, estimate, facts.scopes, exc, record, span)
            if drawn is not None:
                return drawn
        return await self._reserve(run, step, data, estimate, facts, record, span)

    async def settle(
        self,
        ticket: Ticket,
        usage: MeasuredUsage,
        actual: UsageEstimate,
        record: StepResult,
        span: Span | None,
    ) -> UsageLimitExceededError | None:
        admission: Admission = ticket  # type: ignore[assignment]
        admission.abandoned = True  # settled: nothing to give back any more
        cost = actual.cost_usd
        if usage.cost_usd is None and ticket.estimate.cost_usd:
            # The call's price is unknown: charge what was reserved for it rather than nothing.
            cost = ticket.estimate.cost_usd
            record.warnings.append(
                f"its cost is unknown; the sidecar is charged its estimate ${wire.wire_usd(cost)}"
            )
        mode = admission.mode
        if mode == "lease" and self.shared is not None:
            return await self.shared.spent(admission, ticket.estimate.cost_usd, cost, usage)
        if mode == "lease":
            lease = admission.lease
            assert lease is not None and self.leases is not None
            overrun = lease.spend_on(ticket.estimate.cost_usd, cost, usage)
            if overrun:
                return await self.leases.overrun(admission, overrun, usage)
            if lease.done:
                self.calls.spawn(self.leases.settle(lease))
            return None
        if mode == "reservation":
            assert ticket.reservation_id is not None
            task = self.calls.spawn(
                self.calls.commit(
                    ticket.reservation_id, admission.scopes, cost, usage.total_tokens, usage_facts(usage)
                )
            )
            response = await asyncio.shield(task)
            if response is None:
                return None
            admission.outcome.charged_usd = wire.usd(response.charged_usd)
            return halt_error(response.budget_info)
        if mode == "fail_open":
            # Durable before the step is done; a cancelled step stops waiting, the write goes on.
            await asyncio.shield(
                self.calls.spawn(
                    self.calls.journal(
                        admission.outcome.usage_id or "",
                        admission.scopes,
                        cost,
                        usage.total_tokens,
                        usage_facts(usage),
                        request_budget=admission.outcome.request_budget or "",
                        service=self.service,
                    )
                )
            )
        return None

    def abandon(self, ticket: Ticket) -> None:
        admission: Admission = ticket  # type: ignore[assignment]
        if admission.abandoned:
            return
        admission.abandoned = True
        if admission.mode == "reservation" and ticket.reservation_id:
            self.calls.spawn(self.calls.release(ticket.reservation_id))
        elif admission.mode == "lease" and admission.lease is not None and self.shared is not None:
            self.shared.give_back(admission)
        elif admission.mode == "lease" and admission.lease is not None and self.leases is not None:
            self.leases.give_back(admission)

    async def close(self, span: Span | None) -> None:
        if self.leases is not None:
            await self.leases.close()
        await self.calls.drain()

    # ================================================================== per-step reservations
    async def _reserve(
        self,
        run: Any,
        step: Step,
        data: Any,
        estimate: UsageEstimate,
        facts: _StepFacts,
        record: StepResult,
        span: Span | None,
        request_budget: str = "",
    ) -> Ticket:
        scopes, path = facts.scopes, facts.path
        request = pb.ReserveRequest(
            scopes=wire.scope_ids(scopes),
            estimate_usd=wire.wire_usd(estimate.cost_usd),
            estimate_tokens=estimate.tokens,
            idempotency_key=uuid.uuid4().hex,
            model=facts.model,
        )
        if request_budget:
            request.request_budget_id = request_budget
            request.service = self.service
        cheaper = self._cheaper_estimate(run, path, data, estimate)
        if cheaper is not None:
            request.downgrade_estimate_usd = wire.wire_usd(cheaper.cost_usd)
        if self._ttl_ms is not None:
            request.ttl.FromMilliseconds(self._ttl_ms)
        try:
            response = await self.calls.reserve(request)
        except Unreachable as exc:
            return self._unreachable(step, estimate, scopes, exc, record, span, request_budget)
        if self.leases is not None and not request_budget:
            self.leases.note_headroom(scopes, response.budget_info, wire.usd(response.reserved_usd))
        elif self.shared is not None and not request_budget:
            self.shared.note_headroom(scopes, response.budget_info, wire.usd(response.reserved_usd))
        return await self._decided(
            response, step, estimate, cheaper, path, scopes, record, span, request_budget or None
        )

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
        request_budget: str | None = None,
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
            request_budget=request_budget,
        )
        if decision == pb.DECISION_DENY:
            outcome.decision, outcome.mode, outcome.reason = "deny", "none", response.reason
            self._record(outcome, record, span)
            raise _denied(response.reason, "budget_denied", outcome)
        if decision == pb.DECISION_DOWNGRADE:
            outcome.reason = response.reason
            if path is None or cheaper is None or response.awaiting_downgrade_estimate:
                if response.reservation_id:
                    await asyncio.shield(self.calls.spawn(self.calls.release(response.reservation_id)))
                outcome.decision, outcome.mode, outcome.reservation_id = "no_downgrade_path", "none", None
                self._record(outcome, record, span)
                raise _denied(
                    f"{response.reason} {no_path_message(step, _model_label(step))}",
                    "no_downgrade_path",
                    outcome,
                )
            outcome.decision = "downgrade"
            outcome.downgraded_from, outcome.downgraded_to = path.from_label, path.to_label
            self._record(outcome, record, span)
            return Admission(path.step, cheaper, outcome.reservation_id, "reservation", outcome, scopes)
        if decision != pb.DECISION_ALLOW:
            raise ConfigError(f"the sidecar at {self.budget.target} answered an unknown decision {decision}")
        if outcome.warnings:
            outcome.decision = "warn"
        self._record(outcome, record, span)
        return Admission(step, estimate, outcome.reservation_id, "reservation", outcome, scopes)

    def _unreachable(
        self,
        step: Step,
        estimate: UsageEstimate,
        scopes: Scopes,
        exc: Unreachable,
        record: StepResult,
        span: Span | None,
        request_budget: str = "",
    ) -> Ticket:
        """The fail policy, for a step the sidecar could not decide."""
        policy = self.budget.fail_policy
        request = request_budget or None
        why = f"the budget sidecar at {self.budget.target} {exc.situation}"
        if span is not None:
            span.set_attribute("paymaster.sidecar.outcome", exc.kind)
        if policy == FAIL_CLOSED:
            outcome = BudgetOutcome(
                decision="fail_closed", mode="none", scopes=scopes, reason=why, request_budget=request
            )
            self._record(outcome, record, span)
            raise SidecarUnavailableError(
                f"{why[0].upper()}{why[1:]}; fail_policy='fail_closed' denies step {step.name!r} before it "
                f"runs. {exc.remedy}, or choose fail_policy='fail_open' or "
                "'local_only_limits' to keep running through outages."
            )
        if policy == FAIL_OPEN:
            usage_id = f"fail-open:{uuid.uuid4().hex}"
            outcome = BudgetOutcome(
                decision="fail_open", mode="fail_open", scopes=scopes, usage_id=usage_id, reason=why,
                request_budget=request,
            )  # fmt: skip
            self._record(outcome, record, span)
            record.warnings.append(f"{why}; ran under fail_open and will replay its spend")
            # The replay id stands in for a reservation id on the spans, so trace ingestion does not
            # charge this spend again once the replay has.
            return Admission(step, estimate, usage_id, "fail_open", outcome, scopes)
        outcome = BudgetOutcome(
            decision="local_only", mode="local_only", scopes=scopes, reason=why, request_budget=request
        )
        self._record(outcome, record, span)
        record.warnings.append(f"{why}; ran under the runner's own limits only (local_only_limits)")
        return Admission(step, estimate, None, "local_only", outcome, scopes)

    # ================================================================== helpers
    def _learn(self, step: Step) -> _StepFacts:
        scopes = self.base.merged(step.scopes)
        if scopes.is_empty:
            raise ConfigError(
                f"Step {step.name!r} has no scope ids for the budget sidecar: give "
                "SidecarBudget(scopes=Scopes(team=...)), Step(..., scopes=...), or set paymaster.team "
                "(or another paymaster.<scope>) in the OpenTelemetry resource"
            )
        model = agent_model(step.agent)
        if model is None:
            facts = pb.UsageFacts()
        else:
            ref = parse_model_ref(model[0], provider=model[1])
            facts = pb.UsageFacts(provider=ref.provider or "", model=ref.model)
        pool = None if self.leases is None else self.leases.pool(scopes)
        found = self._steps[id(step)] = _StepFacts(
            scopes, pool, find_cheaper_path(step, self.budget.downgrades), facts
        )
        return found

    def _cheaper_estimate(
        self, run: Any, path: CheaperPath | None, data: Any, estimate: UsageEstimate
    ) -> UsageEstimate | None:
        if path is None:
            return None
        cheaper, strategy = run.estimate(path.step, data)
        # Nothing is known of the cheaper path: hold what the step itself was expected to cost.
        return estimate if strategy == "minimal" else cheaper

    def _record(self, outcome: BudgetOutcome, record: StepResult, span: Span | None) -> None:
        record.metadata["budget"] = outcome
        if outcome.warnings:
            record.warnings.extend(outcome.warnings)
        self.tel.add(
            "paymaster.budget.decisions", 1, (("decision", outcome.decision), ("mode", outcome.mode))
        )
        if span is not None:
            span.set_attributes(outcome.attributes())


def _denied(message: str, code: str, outcome: BudgetOutcome) -> BudgetExceededError:
    return BudgetExceededError(
        message,
        code=code,
        budget_info=outcome.budget_info,
        deciding_budget_id=outcome.deciding_budget_id,
        reason=message,
    )


def _model_label(step: Step) -> str | None:
    found = agent_model(step.agent)
    return None if found is None else str(parse_model_ref(found[0], provider=found[1]))
