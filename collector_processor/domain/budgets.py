"""Budgets and scopes: the domain types an operator declares, and the rules that make them valid.

A budget limits spend for one entity of a scope (``team=search``), or, without a ``scope_id``, for
every entity of that scope separately (a wildcard: each team gets its own spend against the same
limit). Validation lives here, once, and names the field it refuses, so the gRPC API, the TOML
config and the CLI all report the same precise message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from collector_processor.domain.periods import Period, parse_period, zone
from collector_processor.errors import InvalidRequestError
from paymaster.exceptions import quote

__all__ = [
    "SCOPE_ORDER",
    "Budget",
    "BudgetDraft",
    "BudgetPatch",
    "OnExceed",
    "Scope",
    "ScopeSet",
    "apply_patch",
    "build_budget",
    "check_budget_id",
    "check_scope_id",
    "check_thresholds",
]

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_SCOPE_ID = 256


class Scope(StrEnum):
    """The kind of entity a unit of spend is attributed to."""

    ORGANIZATION = "organization"
    TEAM = "team"
    AGENT = "agent"
    WORKFLOW = "workflow"
    USER = "user"


SCOPE_ORDER: tuple[Scope, ...] = tuple(Scope)
_ORGANIZATION, _TEAM, _AGENT, _WORKFLOW, _USER = SCOPE_ORDER


class OnExceed(StrEnum):
    """What a request that would take a budget past its limit gets."""

    WARN = "warn"
    BLOCK = "block"
    DOWNGRADE = "downgrade"


@dataclass(kw_only=True, frozen=True, slots=True)
class ScopeSet:
    """The ids one unit of spend is attributed to; an empty string means "not given"."""

    organization: str = ""
    """``paymaster.organization``"""
    team: str = ""
    """``paymaster.team``"""
    agent: str = ""
    """``paymaster.agent``"""
    workflow: str = ""
    """``paymaster.workflow``"""
    user: str = ""
    """``paymaster.user``"""

    def pairs(self) -> list[tuple[Scope, str]]:
        """The given ids in scope order."""
        # Spelled out: this runs on every reservation, and enum lookups by name are slow.
        out = []
        if self.organization:
            out.append((_ORGANIZATION, self.organization))
        if self.team:
            out.append((_TEAM, self.team))
        if self.agent:
            out.append((_AGENT, self.agent))
        if self.workflow:
            out.append((_WORKFLOW, self.workflow))
        if self.user:
            out.append((_USER, self.user))
        return out

    def get(self, scope: Scope) -> str:
        return str(getattr(self, scope.value))

    def validate(self, field_name: str = "scopes", *, required: bool = True) -> ScopeSet:
        given = self.pairs()
        for scope, value in given:
            if len(value) > MAX_SCOPE_ID or not value.isprintable():
                check_scope_id(value, f"{field_name}.{scope.value}")
        if required and not given:
            raise InvalidRequestError(
                field_name, "at least one of organization, team, agent, workflow, user is required"
            )
        return self


@dataclass(kw_only=True, frozen=True, slots=True)
class Budget:
    """A validated budget as the ledger holds it."""

    id: str
    """Unique id."""
    name: str
    """Shown to operators in decisions and alerts."""
    scope: Scope
    """The kind of entity governed."""
    scope_id: str | None
    """The entity governed; ``None`` makes a wildcard (each entity of ``scope`` has its own spend)."""
    limit_usd: Decimal
    """Limit per period, >= 0."""
    period: Period
    """Calendar period or rolling window."""
    time_zone: str
    """IANA zone that calendar periods are aligned in."""
    on_exceed: OnExceed
    """What a request past the limit gets."""
    alert_thresholds: tuple[int, ...]
    """Ascending percentages of the limit at which an alert fires once per period."""
    enabled: bool = True
    """Disabled budgets decide nothing and alert nothing, but keep counting spend."""
    declared_in_config: bool = False
    """Declared in sidecar.toml: the API may not change it."""
    generation: int = 0
    """Distinguishes a budget from an earlier one with the same id that was deleted; set by the store."""
    created_ms: int = 0
    """When it was created, epoch milliseconds."""
    updated_ms: int = 0
    """When it last changed, epoch milliseconds."""

    @property
    def is_wildcard(self) -> bool:
        return self.scope_id is None

    def label(self, entity: str) -> str:
        """``'Search daily' (team=search)`` — how messages name the budget and the entity."""
        return f"'{self.name}' ({self.scope.value}={entity})"


@dataclass(kw_only=True, frozen=True, slots=True)
class BudgetDraft:
    """A budget as a caller proposes it; ``Ledger.create_budget`` fills defaults and validates it."""

    id: str = ""
    """Empty: generated."""
    name: str = ""
    """Empty: the id."""
    scope: Scope | None = None
    """Required."""
    scope_id: str | None = None
    """``None``: a wildcard."""
    limit_usd: Decimal | None = None
    """Required, >= 0."""
    period: str = ""
    """Required: ``'daily'`` .. ``'yearly'`` or ``'rolling_<N>m|h|d'``."""
    time_zone: str = ""
    """Empty: the sidecar's default."""
    on_exceed: OnExceed | None = None
    """Required."""
    alert_thresholds: tuple[int, ...] | None = None
    """``None``: the sidecar's default thresholds."""
    enabled: bool = True
    """Whether it takes part in decisions."""
    declared_in_config: bool = False
    """Set for budgets loaded from sidecar.toml."""


@dataclass(kw_only=True, frozen=True, slots=True)
class BudgetPatch:
    """The fields of a budget an update changes; ``None`` leaves a field as it is."""

    name: str | None = None
    """New display name."""
    limit_usd: Decimal | None = None
    """New limit, >= 0."""
    on_exceed: OnExceed | None = None
    """New action."""
    alert_thresholds: tuple[int, ...] | None = None
    """New thresholds; an empty tuple turns threshold alerts off."""
    enabled: bool | None = None
    """Enable or disable."""

    def is_empty(self) -> bool:
        return all(
            getattr(self, f) is None
            for f in ("name", "limit_usd", "on_exceed", "alert_thresholds", "enabled")
        )


def check_budget_id(value: str, field_name: str = "id") -> str:
    if not _ID.fullmatch(value):
        raise InvalidRequestError(
            field_name, f"must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {quote(value)}"
        )
    return value


def check_scope_id(value: str, field_name: str = "scope_id") -> str:
    if not value or len(value) > MAX_SCOPE_ID or not value.isprintable():
        raise InvalidRequestError(
            field_name, f"must be 1-{MAX_SCOPE_ID} printable characters, got {quote(value)}"
        )
    return value


def check_thresholds(values: Iterable[int], field_name: str = "alert_thresholds") -> tuple[int, ...]:
    out = sorted(values)
    for value in out:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidRequestError(
                field_name, f"each threshold must be a whole percentage 1-1000, got {quote(value)}"
            )
    if len(set(out)) != len(out):
        raise InvalidRequestError(field_name, f"thresholds must be unique, got {out}")
    return tuple(out)


def build_budget(
    draft: BudgetDraft,
    *,
    default_time_zone: str,
    default_thresholds: tuple[int, ...],
    generated_id: str,
    now_ms: int,
    field_prefix: str = "budget.",
) -> Budget:
    """Validate ``draft`` and fill its defaults; every error names ``field_prefix + field``."""
    p = field_prefix
    budget_id = check_budget_id(draft.id or generated_id, f"{p}id")
    if draft.scope is None:
        raise InvalidRequestError(f"{p}scope", "is required: one of " + ", ".join(s.value for s in Scope))
    if draft.scope_id is not None:
        check_scope_id(draft.scope_id, f"{p}scope_id")
    if draft.limit_usd is None:
        raise InvalidRequestError(f"{p}limit_usd", "is required (an exact decimal string such as '50')")
    if draft.limit_usd < 0:
        raise InvalidRequestError(f"{p}limit_usd", f"must not be negative, got '{draft.limit_usd}'")
    if not draft.period:
        raise InvalidRequestError(f"{p}period", "is required, e.g. 'monthly' or 'rolling_24h'")
    try:
        period = parse_period(draft.period)
    except ValueError as exc:
        raise InvalidRequestError(f"{p}period", str(exc)) from None
    tz_name = draft.time_zone or default_time_zone
    try:
        zone(tz_name)
    except ValueError as exc:
        raise InvalidRequestError(f"{p}time_zone", str(exc)) from None
    if draft.on_exceed is None:
        raise InvalidRequestError(f"{p}on_exceed", "is required: one of warn, block, downgrade")
    thresholds = default_thresholds if draft.alert_thresholds is None else draft.alert_thresholds
    name = draft.name.strip() or budget_id
    if len(name) > 256 or not name.isprintable():
        raise InvalidRequestError(f"{p}name", "must be at most 256 printable characters")
    return Budget(
        id=budget_id,
        name=name,
        scope=draft.scope,
        scope_id=draft.scope_id,
        limit_usd=draft.limit_usd,
        period=period,
        time_zone=tz_name,
        on_exceed=draft.on_exceed,
        alert_thresholds=check_thresholds(thresholds, f"{p}alert_thresholds"),
        enabled=draft.enabled,
        declared_in_config=draft.declared_in_config,
        created_ms=now_ms,
        updated_ms=now_ms,
    )


def apply_patch(budget: Budget, patch: BudgetPatch, *, now_ms: int) -> Budget:
    """``budget`` with ``patch`` applied and validated."""
    changes: dict[str, object] = {"updated_ms": now_ms}
    if patch.name is not None:
        name = patch.name.strip()
        if not name or len(name) > 256 or not name.isprintable():
            raise InvalidRequestError("name", "must be 1-256 printable characters")
        changes["name"] = name
    if patch.limit_usd is not None:
        if patch.limit_usd < 0:
            raise InvalidRequestError("limit_usd", f"must not be negative, got '{patch.limit_usd}'")
        changes["limit_usd"] = patch.limit_usd
    if patch.on_exceed is not None:
        changes["on_exceed"] = patch.on_exceed
    if patch.alert_thresholds is not None:
        changes["alert_thresholds"] = check_thresholds(patch.alert_thresholds)
    if patch.enabled is not None:
        changes["enabled"] = patch.enabled
    return replace(budget, **changes)  # type: ignore[arg-type]
