"""Who may call the sidecar, as the stores keep it: issued tokens and the audit log of every change.

A token is stored by its id with the SHA-256 of its secret, never the secret itself; its roles and
grants are kept as the words an admin wrote (``spender``, ``team=search``) and read back by the
``auth`` package. The audit log records who changed what (budgets and tokens), when, from which
address, and the state before and after, as JSON text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from collector_processor.domain.budgets import Budget

__all__ = ["Actor", "AuditEvent", "TokenRecord", "budget_record"]


@dataclass(kw_only=True, frozen=True, slots=True)
class TokenRecord:
    """One issued bearer token, without its secret."""

    id: str
    """Public id: the part of the token between ``pmt_`` and the secret; names it in listings."""
    name: str
    """What the admin called it (``ci-runner``); the principal's name in the audit log and metrics."""
    secret_sha256: str
    """Hex SHA-256 of the whole token; the token itself is shown once, at creation."""
    roles: tuple[str, ...]
    """Role names."""
    grants: tuple[str, ...]
    """Scope grants as written (``team=search``, ``agent=support-*``, ``*``)."""
    trust_reported_cost: bool
    """Whether costs carried on its OTLP spans are believed."""
    created_ms: int
    """When it was issued."""
    created_by: str
    """The principal that issued it."""
    expires_ms: int | None = None
    """When it stops working; ``None``: never."""
    revoked_ms: int | None = None
    """When it was revoked; ``None`` while it is live."""

    def live(self, now_ms: int) -> bool:
        """Neither revoked nor expired at ``now_ms``."""
        return self.revoked_ms is None and (self.expires_ms is None or now_ms < self.expires_ms)


@dataclass(kw_only=True, frozen=True, slots=True)
class Actor:
    """Who asked for a change: the principal's name and the address it called from."""

    principal: str
    address: str = ""


@dataclass(kw_only=True, frozen=True, slots=True)
class AuditEvent:
    """One change to budgets or tokens."""

    sequence: int
    """Position in the log (assigned by the store; 0 before it is written)."""
    at_ms: int
    """When it happened."""
    principal: str
    """Who made it."""
    address: str
    """The peer address it came from (``ipv4:10.0.0.7:51234``), or empty."""
    action: str
    """``budget.create``, ``budget.update``, ``budget.delete``, ``token.create``, ``token.revoke``."""
    target: str
    """What it changed: a budget id or a token id."""
    scope: str
    """The scope of the budget changed (empty for tokens), to filter the log by grants."""
    scope_id: str
    """Its scope id (empty for a wildcard budget or a token)."""
    before: str
    """The state before, as JSON (empty for a creation)."""
    after: str
    """The state after, as JSON (empty for a deletion)."""


def budget_record(budget: Budget) -> str:
    """A budget as the audit log keeps it: its definition as JSON (amounts as exact strings)."""
    record: dict[str, object] = {
        "id": budget.id,
        "name": budget.name,
        "scope": budget.scope.value,
        "scope_id": budget.scope_id,
        "limit_usd": str(budget.limit_usd),
        "period": budget.period.spec,
        "time_zone": budget.time_zone,
        "on_exceed": budget.on_exceed.value,
        "alert_thresholds": list(budget.alert_thresholds),
        "enabled": budget.enabled,
        "declared_in_config": budget.declared_in_config,
    }
    if budget.tiers:  # a single-action budget's record reads as it always has
        record["tiers"] = [{"at": t.at, "action": t.action.value} for t in budget.tiers]
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
