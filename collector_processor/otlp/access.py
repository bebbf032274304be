"""OTLP ingestion under the same trust model as the budget API: whose money an export may charge.

An export comes from a principal (the ``ingester`` role, authenticated by the listener's gate). A span
or a token metric point attributed to scopes outside its grants is not charged: it is counted
(``forbidden``) and named in the export's ``partial_success``, and the rest of the export is charged
as usual. A cost carried on a span is believed only from a principal granted ``trust_reported_cost``;
other spans are priced from their tokens (``TraceProcessor.process(trust_cost=...)``). Where the
listener does not authenticate, every sender is ``anonymous`` and nothing here applies.
"""

from __future__ import annotations

from collections.abc import Callable

from collector_processor.auth.principal import Principal
from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.types import UsageGroup, UsageItem
from collector_processor.otlp.traces import TracePlan

__all__ = ["forbidden_message", "permitted_for", "screen_trace_plan"]

_MAX_PROBLEMS = 5


def permitted_for(principal: Principal) -> Callable[[ScopeSet], bool] | None:
    """The test a span's scopes must pass for ``principal`` (``None``: everything passes)."""
    grants = principal.grants
    if grants.unrestricted:
        return None
    return lambda scopes: grants.outside(scopes) is None


def forbidden_message(scopes: ScopeSet) -> str:
    named = ", ".join(f"{scope.value}={scope_id[:80]!r}" for scope, scope_id in scopes.pairs())
    return f"attributed to {named or 'no scope'}, outside the sender's grants: not charged"


def screen_trace_plan(plan: TracePlan, permitted: Callable[[ScopeSet], bool]) -> None:
    """Take the items of groups outside the grants out of a ``TracePlan`` (counted ``forbidden``,
    named among its problems), and number the remaining groups afresh."""
    groups = plan.groups
    allowed = [permitted(g.scopes) for g in groups]
    if all(allowed):
        return
    renumber: dict[int, int] = {}
    kept_groups: list[UsageGroup] = []
    kept_unattributed: list[bool] = []
    for g, ok in enumerate(allowed):
        if ok:
            renumber[g] = len(kept_groups)
            kept_groups.append(groups[g])
            kept_unattributed.append(plan.unattributed[g])
    items: list[UsageItem] = []
    for item in plan.items:
        at, uid, g, *figures = item
        if g in renumber:
            items.append((at, uid, renumber[g], *figures))  # type: ignore[arg-type]
            continue
        plan.outcomes["forbidden"] += 1
        if len(plan.problems) < _MAX_PROBLEMS:
            plan.problems.append(forbidden_message(groups[g].scopes))
    plan.groups, plan.unattributed, plan.items = kept_groups, kept_unattributed, items
