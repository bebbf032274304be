"""The budget API's operations for the HTTP listener: authorize, call the ledger, count.

Each method is what the gRPC servicer's method of the same name does, on domain types and with the
caller's principal passed in: the same role check and scope grants (``api/authz.py`` over
``auth/policy.py``), the same owner for idempotency keys and usage ids, the same audit actor, the
same group commit (a ``Batcher`` on the HTTP listener's event loop) and the same decision, commit
and spend metrics. Both the native routes and the AxonFlow-compatible ones call these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

from collector_processor.api import authz
from collector_processor.api.batching import Batcher
from collector_processor.auth.policy import RPC_ACTIONS, Action
from collector_processor.auth.principal import Principal
from collector_processor.domain.access import Actor
from collector_processor.domain.budgets import (
    Budget,
    BudgetDraft,
    BudgetPatch,
    Scope,
    ScopeSet,
    check_budget_id,
)
from collector_processor.domain.requests import OpenRequestCommand, RequestStatus
from collector_processor.domain.types import (
    Alert,
    BudgetStatus,
    CheckOutcome,
    CommitCommand,
    CommitOutcome,
    RecordUsageCommand,
    RecordUsageOutcome,
    ReleaseOutcome,
    ReserveCommand,
    ReserveOutcome,
)
from collector_processor.domain.usage import UsageQuery, UsageRecord, UsageReport
from collector_processor.errors import PermissionDeniedError
from collector_processor.ledger import Ledger
from collector_processor.telemetry.service_metrics import ServiceMetrics

__all__ = ["Operations"]

_MAX_SEQUENCE = 2**63 - 1


class Operations:
    """The operations of the budget API on one event loop (``batcher`` belongs to that loop)."""

    def __init__(
        self,
        ledger: Ledger,
        batcher: Batcher,
        metrics: ServiceMetrics,
        *,
        on_denied: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self._batcher = batcher
        self._metrics = metrics
        self._on_denied = on_denied or (lambda listener, principal, reason: None)

    def denied(self, principal: Principal, exc: Exception) -> None:
        """Count a refusal by the rules (``paymaster_auth_denied_total{listener="http"}``)."""
        if isinstance(exc, PermissionDeniedError):
            self._on_denied("http", principal.name, exc.reason)

    # -- budgets ---------------------------------------------------------------------------------
    async def create_budget(self, p: Principal, draft: BudgetDraft, actor: Actor) -> Budget:
        authz.require(RPC_ACTIONS["CreateBudget"], p)
        if draft.scope is not None:
            authz.require_manage(p, draft.scope, draft.scope_id, "scope_id")
        return await self._batcher.run(lambda: self.ledger.create_budget(draft, actor=actor))

    def get_budget(self, p: Principal, budget_id: str) -> Budget:
        authz.require(RPC_ACTIONS["GetBudget"], p)
        return authz.require_visible(p, self.ledger.get_budget(budget_id))

    def list_budgets(
        self, p: Principal, *, scope: Scope | None, scope_id: str | None, page_size: int, page_token: str
    ) -> tuple[list[Budget], str]:
        authz.require(RPC_ACTIONS["ListBudgets"], p)
        budgets, token = self.ledger.list_budgets(
            scope=scope, scope_id=scope_id, page_size=page_size, page_token=page_token
        )
        return [b for b in budgets if authz.may_see_budget(p, b)], token

    def all_budgets(self, p: Principal, *, scope: Scope | None) -> list[Budget]:
        """Every budget the caller may see, in id order (AxonFlow's listing counts and offsets them)."""
        out, token = [], ""
        while True:
            page, token = self.list_budgets(p, scope=scope, scope_id=None, page_size=500, page_token=token)
            out.extend(page)
            if not token:
                return out

    async def update_budget(self, p: Principal, budget_id: str, patch: BudgetPatch, actor: Actor) -> Budget:
        authz.require(RPC_ACTIONS["UpdateBudget"], p)
        check_budget_id(budget_id)
        self._managed(p, budget_id)
        return await self._batcher.run(lambda: self.ledger.update_budget(budget_id, patch, actor=actor))

    async def delete_budget(self, p: Principal, budget_id: str, actor: Actor) -> None:
        authz.require(RPC_ACTIONS["DeleteBudget"], p)
        self._managed(p, budget_id)
        await self._batcher.run(lambda: self.ledger.delete_budget(budget_id, actor=actor))

    def _managed(self, p: Principal, budget_id: str) -> None:
        if p.grants.unrestricted:
            return
        budget = authz.require_visible(p, self.ledger.get_budget(budget_id))
        authz.require_manage(p, budget.scope, budget.scope_id, "id")

    # -- decisions and spend ---------------------------------------------------------------------
    async def check(
        self, p: Principal, scopes: ScopeSet, estimate: Decimal, request_budget: str = ""
    ) -> CheckOutcome:
        authz.require(RPC_ACTIONS["CheckBudget"], p)
        authz.require_scopes(p, scopes)
        outcome = await self._batcher.run(
            lambda: self.ledger.check(scopes, estimate, request_budget=request_budget)
        )
        self._metrics.checked(outcome)
        return outcome

    async def reserve(self, p: Principal, command: ReserveCommand) -> ReserveOutcome:
        authz.require(RPC_ACTIONS["Reserve"], p)
        authz.require_scopes(p, command.scopes)
        outcome = await self._batcher.run(lambda: self.ledger.reserve(command))
        self._metrics.reserved(outcome)
        return outcome

    async def commit(self, p: Principal, command: CommitCommand) -> CommitOutcome:
        authz.require(RPC_ACTIONS["Commit"], p)
        outcome = await self._batcher.run(lambda: self.ledger.commit(command))
        self._metrics.committed(command, outcome)
        return outcome

    async def release(self, p: Principal, reservation_id: str) -> ReleaseOutcome:
        owner = authz.require(RPC_ACTIONS["Release"], p).owner
        return await self._batcher.run(lambda: self.ledger.release(reservation_id, owner=owner))

    async def record_usage(self, p: Principal, command: RecordUsageCommand) -> RecordUsageOutcome:
        authz.require(RPC_ACTIONS["RecordUsage"], p)
        authz.require_scopes(p, command.scopes)
        outcome = await self._batcher.run(lambda: self.ledger.record_usage(command))
        self._metrics.recorded(command, outcome)
        return outcome

    async def open_request_budget(self, p: Principal, command: OpenRequestCommand) -> RequestStatus:
        # A spender may open one: it names no scope, so no grant is involved, and it can only deny
        # more (docs/security.md, "Request budgets").
        authz.require(RPC_ACTIONS["OpenRequestBudget"], p)
        return await self._batcher.run(lambda: self.ledger.open_request_budget(command))

    # -- reports and alerts ----------------------------------------------------------------------
    async def request_status(self, p: Principal, request_id: str) -> RequestStatus:
        """A live request budget's standing (GetBudgetStatus with a request_budget_id): its id is the
        capability, as over gRPC."""
        authz.require(RPC_ACTIONS["GetBudgetStatus"], p)
        return await self._batcher.run(lambda: self.ledger.request_status(request_id))

    async def status(self, p: Principal, budget_id: str, scope_id: str) -> BudgetStatus:
        authz.require(RPC_ACTIONS["GetBudgetStatus"], p)
        if not p.grants.unrestricted:
            budget = authz.require_visible(p, self.ledger.get_budget(budget_id))
            if budget.scope_id is None and scope_id:
                authz.require_scopes(p, ScopeSet(**{budget.scope.value: scope_id}), "scope_id")
            elif budget.scope_id is None:
                authz.require_manage(p, budget.scope, None, "scope_id")
        return await self._batcher.run(lambda: self.ledger.budget_status(budget_id, scope_id))

    async def usage(self, p: Principal, query: UsageQuery) -> UsageReport:
        authz.require(RPC_ACTIONS["GetUsage"], p)
        authz.require_scopes(p, query.scopes)
        visible = None if p.grants.unrestricted else p.grants.sees
        # A report may scan a lot of history: off the loop, on the store's reader connection.
        return await asyncio.to_thread(lambda: self.ledger.usage(query, visible=visible))

    async def usage_records(
        self, p: Principal, query: UsageQuery, *, offset: int, limit: int
    ) -> tuple[list[UsageRecord], int]:
        authz.require(RPC_ACTIONS["GetUsage"], p)
        authz.require_scopes(p, query.scopes)
        visible = None if p.grants.unrestricted else p.grants.sees
        return await asyncio.to_thread(
            lambda: self.ledger.usage_records(query, offset=offset, limit=limit, visible=visible)
        )

    def watch(self, p: Principal, budget_ids: list[str]) -> None:
        """May the caller watch alerts (of these budgets)?"""
        authz.require(RPC_ACTIONS["WatchAlerts"], p)
        for budget_id in budget_ids:
            check_budget_id(budget_id, "budget_id")

    def visible_alerts(self, p: Principal, alerts: list[Alert]) -> list[Alert]:
        if p.grants.unrestricted:
            return alerts
        return [a for a in alerts if authz.may_see_alert(p, a)]

    def budget_alerts(self, p: Principal, budget_id: str) -> list[Alert]:
        """Every retained alert of a budget the caller may see."""
        self.get_budget(p, budget_id)
        out: list[Alert] = []
        cursor = 0
        while True:
            batch = self.ledger.store.alerts_after(cursor, limit=500, budget_ids=[budget_id])
            out.extend(self.visible_alerts(p, batch))
            if len(batch) < 500:
                return out
            cursor = batch[-1].sequence

    def require(self, p: Principal, action: Action) -> Principal:
        return authz.require(action, p)
