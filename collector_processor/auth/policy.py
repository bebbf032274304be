"""The authorization rules: one pure function from (principal, action, scopes) to allowed or a denial.

Authentication happens at the edge (a token, a client certificate); every decision about what an
authenticated principal may do is taken here, so the budget API, the OTLP receivers and ``/metrics``
refuse alike and the rules are tested as a table without a server. A denial's message says what was
refused and why without revealing what the caller may not see: a budget outside the grants is
answered as if it did not exist (``NOT_FOUND``), a scope id the caller named itself is named back
(``PERMISSION_DENIED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from collector_processor.auth.principal import Principal, Role
from collector_processor.domain.budgets import Scope, ScopeSet

__all__ = [
    "RPC_ACTIONS",
    "Action",
    "Denial",
    "authorize",
    "authorize_scopes",
    "authorize_target",
]


class Action(StrEnum):
    """What a call asks to do."""

    MANAGE_BUDGETS = "manage_budgets"
    READ = "read"
    SPEND = "spend"
    INGEST = "ingest"
    MANAGE_TOKENS = "manage_tokens"
    READ_AUDIT = "read_audit"
    SCRAPE_METRICS = "scrape_metrics"


_ROLES_FOR: dict[Action, frozenset[Role]] = {
    Action.MANAGE_BUDGETS: frozenset({Role.ADMIN}),
    Action.READ: frozenset({Role.READER, Role.ADMIN}),
    Action.SPEND: frozenset({Role.SPENDER}),
    Action.INGEST: frozenset({Role.INGESTER}),
    Action.MANAGE_TOKENS: frozenset({Role.ADMIN}),
    Action.READ_AUDIT: frozenset({Role.ADMIN}),
    Action.SCRAPE_METRICS: frozenset({Role.READER, Role.ADMIN}),
}

RPC_ACTIONS: dict[str, Action] = {
    "CreateBudget": Action.MANAGE_BUDGETS,
    "UpdateBudget": Action.MANAGE_BUDGETS,
    "DeleteBudget": Action.MANAGE_BUDGETS,
    "GetBudget": Action.READ,
    "ListBudgets": Action.READ,
    "GetBudgetStatus": Action.READ,
    "GetUsage": Action.READ,
    "WatchAlerts": Action.READ,
    "CheckBudget": Action.SPEND,
    "Reserve": Action.SPEND,
    "Commit": Action.SPEND,
    "Release": Action.SPEND,
    "RecordUsage": Action.SPEND,
    "OpenRequestBudget": Action.SPEND,
    "CreateToken": Action.MANAGE_TOKENS,
    "ListTokens": Action.MANAGE_TOKENS,
    "RevokeToken": Action.MANAGE_TOKENS,
    "ListAuditEvents": Action.READ_AUDIT,
}
"""The action of every method of the budget API (a test checks it names exactly the proto's RPCs)."""


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a call was refused: ``reason`` is a fixed word for the metrics, ``message`` is for the caller."""

    reason: str
    message: str
    not_found: bool = False
    """Answer as if the thing did not exist (it is outside the caller's grants)."""


def authorize(principal: Principal, action: Action) -> Denial | None:
    """Whether ``principal``'s roles allow ``action`` at all."""
    allowed = _ROLES_FOR[action]
    if principal.roles & allowed:
        return None
    needs = " or ".join(sorted(r.value for r in allowed))
    has = ", ".join(sorted(r.value for r in principal.roles)) or "none"
    return Denial(
        "role",
        f"{principal.name!s} may not {action.value.replace('_', ' ')}: it needs the role {needs} (it has {has})",
    )


def authorize_scopes(principal: Principal, scopes: ScopeSet, field: str = "scopes") -> Denial | None:
    """Whether every id ``scopes`` names is inside the grants (the request names them itself)."""
    outside = principal.grants.outside(scopes)
    if outside is None:
        return None
    scope, scope_id = outside
    shown = scope_id if len(scope_id) <= 80 else scope_id[:77] + "..."
    return Denial(
        "scope",
        f"{field}.{scope.value}: {principal.name} is not granted {scope.value}={shown!r} "
        f"(its grants: {principal.grants})",
    )


def authorize_target(principal: Principal, scope: Scope, scope_id: str | None, what: str) -> Denial | None:
    """Whether a budget of ``scope``/``scope_id`` is inside the grants; outside, it is "not found"."""
    if principal.grants.covers_target(scope, scope_id):
        return None
    return Denial("scope", f"{what} is unknown", not_found=True)
