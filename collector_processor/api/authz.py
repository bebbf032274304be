"""What the budget API asks of the caller before each method: the role, then the scopes it names.

Thin glue between the servicer and the rules in ``auth.policy``: each check reads the principal the
gate identified for the call and raises the sidecar's own errors, which the servicer maps to gRPC
codes (``PERMISSION_DENIED`` naming the scope the caller named, ``NOT_FOUND`` for a budget it may not
see, exactly as if it did not exist).
"""

from __future__ import annotations

from typing import Any

from collector_processor.auth.policy import Action, authorize, authorize_scopes
from collector_processor.auth.principal import Principal
from collector_processor.auth.rpc import current_principal
from collector_processor.domain.access import Actor
from collector_processor.domain.budgets import Budget, Scope, ScopeSet
from collector_processor.domain.types import Alert
from collector_processor.errors import NotFoundError, PermissionDeniedError

__all__ = [
    "actor",
    "may_see_alert",
    "may_see_budget",
    "require",
    "require_manage",
    "require_scopes",
    "require_visible",
]


def require(action: Action, principal: Principal | None = None) -> Principal:
    """The caller (``principal``, or the gRPC call's), if its roles allow ``action``."""
    principal = principal or current_principal()
    denial = authorize(principal, action)
    if denial is not None:
        raise PermissionDeniedError(denial.message, denial.reason)
    return principal


def require_scopes(principal: Principal, scopes: ScopeSet, field: str = "scopes") -> None:
    """Every id ``scopes`` names is inside the caller's grants."""
    denial = authorize_scopes(principal, scopes, field)
    if denial is not None:
        raise PermissionDeniedError(denial.message, denial.reason)


def may_see_budget(principal: Principal, budget: Budget) -> bool:
    """A budget is visible when its target is granted, or (a wildcard budget) when any grant reaches
    its scope: it applies to the caller's own ids too."""
    grants = principal.grants
    if budget.scope_id is None:
        return grants.sees_scope(budget.scope)
    return grants.covers(budget.scope, budget.scope_id)


def require_visible(principal: Principal, budget: Budget) -> Budget:
    if not may_see_budget(principal, budget):
        raise NotFoundError(f"budget {budget.id!r} does not exist")
    return budget


def require_manage(principal: Principal, scope: Scope, scope_id: str | None, field: str) -> None:
    """The caller may create or change a budget of this target: its id is granted (a wildcard budget
    needs ``<scope>=*``)."""
    if principal.grants.covers_target(scope, scope_id):
        return
    target = f"{scope.value}={scope_id}" if scope_id is not None else f"{scope.value}=* (every {scope.value})"
    raise PermissionDeniedError(
        f"{field}: {principal.name} is not granted {target[:120]} (its grants: {principal.grants})"
    )


def may_see_alert(principal: Principal, alert: Alert) -> bool:
    """An alert is about one entity (``scope_id``): visible when that id is granted."""
    return principal.grants.covers(alert.scope, alert.scope_id)


def actor(principal: Principal, context: Any) -> Actor:
    """Who is asking, for the audit log: the principal and its peer address."""
    try:
        peer = str(context.peer() or "")
    except Exception:
        peer = ""
    return Actor(principal=principal.name, address=peer)
