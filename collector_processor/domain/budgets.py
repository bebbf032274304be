"""Budgets and scopes: the domain types an operator declares, and the rules that make them valid.

A budget limits spend for one entity of a scope (``team=search``), or, without a ``scope_id``, for
every entity of that scope separately (a wildcard: each team gets its own spend against the same
limit). Validation lives here, once, and names the field it refuses, so the gRPC API, the TOML
config and the CLI all report the same precise message.
"""

from __future__ import annotations

import itertools
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
    "TIER_ORDER",
    "Budget",
    "BudgetDraft",
    "BudgetPatch",
    "OnExceed",
    "Scope",
    "ScopeSet",
    "Tier",
    "apply_patch",
    "build_budget",
    "check_budget_id",
    "check_scope_id",
    "check_thresholds",
    "check_tiers",
    "decode_tiers",
    "encode_tiers",
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
    REQUEST = "request"
    """One request across every service it touches: the scope of request budgets only, which are
    opened per request and reached by their id (``domain.requests``); no spend names it as a scope id."""


SCOPE_ORDER: tuple[Scope, ...] = (Scope.ORGANIZATION, Scope.TEAM, Scope.AGENT, Scope.WORKFLOW, Scope.USER)
"""The scopes a unit of spend names ids for, in the order requests list them."""
_ORGANIZATION, _TEAM, _AGENT, _WORKFLOW, _USER = SCOPE_ORDER


class OnExceed(StrEnum):
    """What a request that would take a budget past its limit gets."""

    WARN = "warn"
    BLOCK = "block"
    DOWNGRADE = "downgrade"


TIER_ORDER: dict[OnExceed, int] = {OnExceed.WARN: 0, OnExceed.DOWNGRADE: 1, OnExceed.BLOCK: 2}
"""How strict each action is: a budget's tiers never get less strict as they rise."""
MAX_TIERS = 10


@dataclass(frozen=True, slots=True)
class Tier:
    """One step of a tiered budget: what a request that takes the budget past ``at`` percent of its
    limit gets. A budget without tiers acts as if it had one, ``Tier(100, on_exceed)``."""

    at: int
    """Percent of the limit, 1-1000."""
    action: OnExceed
    """What a request past it gets."""

    def __str__(self) -> str:
        return f"{self.action.value} at {self.at}%"


def encode_tiers(tiers: Iterable[Tier]) -> str:
    """``50:warn,80:downgrade,100:block``: how the stores keep a budget's tiers."""
    return ",".join(f"{t.at}:{t.action.value}" for t in tiers)


def decode_tiers(text: str) -> tuple[Tier, ...]:
    """The tiers ``encode_tiers`` wrote."""
    out = []
    for item in text.split(",") if text else ():
        at, action = item.split(":")
        out.append(Tier(int(at), OnExceed(action)))
    return tuple(out)


_SINGLE: dict[OnExceed, tuple[Tier, ...]] = {action: (Tier(100, action),) for action in OnExceed}


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
    """What a request past the limit gets; for a tiered budget, the action of its strictest tier."""
    alert_thresholds: tuple[int, ...]
    """Ascending percentages of the limit at which an alert fires once per period."""
    tiers: tuple[Tier, ...] = ()
    """Ordered tiers (ascending ``at``, never less strict as they rise); empty: one action,
    ``on_exceed`` at 100%."""
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

    @property
    def effective_tiers(self) -> tuple[Tier, ...]:
        """The tiers the decision rules apply: the budget's own, or ``on_exceed`` at 100%."""
        return self.tiers or _SINGLE[self.on_exceed]

    @property
    def alert_points(self) -> tuple[int, ...]:
        """The percentages at which an alert fires once per period: the thresholds and every tier."""
        if not self.tiers:
            return self.alert_thresholds
        return tuple(sorted({*self.alert_thresholds, *(t.at for t in self.tiers)}))

    def tier_at(self, percent: int) -> Tier | None:
        """The tier at ``percent``, if the budget has tiers and one is there."""
        for tier in self.tiers:
            if tier.at == percent:
                return tier
        return None

    def label(self, entity: str) -> str:
        """``'Search daily' (team=search)`` — how messages name the budget and the entity (a request
        budget named by its id alone: ``'rq_5f0c…'``)."""
        if self.scope is Scope.REQUEST and self.name == entity:
            return f"'{self.name}' (request)"
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
    """Required unless ``tiers`` are given (then it may only repeat the strictest tier's action)."""
    alert_thresholds: tuple[int, ...] | None = None
    """``None``: the sidecar's default thresholds."""
    tiers: tuple[Tier, ...] = ()
    """Ordered tiers instead of one action; empty: one action, ``on_exceed``."""
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
    tiers: tuple[Tier, ...] | None = None
    """New tiers; an empty tuple makes the budget single-action again (``on_exceed``, or the action
    of its strictest tier so far)."""
    enabled: bool | None = None
    """Enable or disable."""

    def is_empty(self) -> bool:
        return all(
            getattr(self, f) is None
            for f in ("name", "limit_usd", "on_exceed", "alert_thresholds", "tiers", "enabled")
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


def check_tiers(values: Iterable[Tier], field_name: str = "tiers") -> tuple[Tier, ...]:
    """Tiers in ascending order, each 1-1000 percent, no two at one percentage, and never less strict
    than the tier below (warn, then downgrade, then block)."""
    given = list(values)
    if len(given) > MAX_TIERS:
        raise InvalidRequestError(field_name, f"at most {MAX_TIERS} tiers, got {len(given)}")
    for i, tier in enumerate(given):
        at = tier.at
        if isinstance(at, bool) or not isinstance(at, int) or not 1 <= at <= 1000:
            raise InvalidRequestError(
                f"{field_name}[{i}].at", f"must be a whole percentage 1-1000, got {quote(at)}"
            )
        if not isinstance(tier.action, OnExceed):
            raise InvalidRequestError(f"{field_name}[{i}].action", "must be one of warn, downgrade, block")
    ordered = sorted(given, key=lambda t: t.at)
    for below, above in itertools.pairwise(ordered):
        if below.at == above.at:
            raise InvalidRequestError(
                field_name, f"two tiers at {above.at}%; each tier needs its own percentage"
            )
        if TIER_ORDER[above.action] < TIER_ORDER[below.action]:
            raise InvalidRequestError(
                field_name,
                f"the {above.action.value} tier at {above.at}% is less strict than the {below.action.value} tier "
                f"at {below.at}% below it; tiers go warn, then downgrade, then block as they rise",
            )
    return tuple(ordered)


def _tiered_action(tiers: tuple[Tier, ...], on_exceed: OnExceed | None, field_prefix: str) -> OnExceed | None:
    """The ``on_exceed`` of a budget with ``tiers``: its strictest tier's action (an ``on_exceed``
    given as well must say the same)."""
    if not tiers:
        return on_exceed
    top = tiers[-1].action
    if on_exceed is not None and on_exceed is not top:
        raise InvalidRequestError(
            f"{field_prefix}on_exceed",
            f"is {on_exceed.value}, but the strictest of the tiers is {top.value}; give tiers or on_exceed, "
            "or make them agree",
        )
    return top


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
        raise InvalidRequestError(
            f"{p}scope", "is required: one of " + ", ".join(s.value for s in SCOPE_ORDER)
        )
    if draft.scope is Scope.REQUEST:
        raise InvalidRequestError(
            f"{p}scope",
            "request budgets are opened per request (OpenRequestBudget, or request_budget() in the SDK), "
            "not created: choose one of " + ", ".join(s.value for s in SCOPE_ORDER),
        )
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
    tiers = check_tiers(draft.tiers, f"{p}tiers")
    on_exceed = _tiered_action(tiers, draft.on_exceed, p)
    if on_exceed is None:
        raise InvalidRequestError(
            f"{p}on_exceed", "is required: one of warn, block, downgrade (or give tiers)"
        )
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
        on_exceed=on_exceed,
        alert_thresholds=check_thresholds(thresholds, f"{p}alert_thresholds"),
        tiers=tiers,
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
    if patch.tiers is not None:
        tiers = check_tiers(patch.tiers)
        changes["tiers"] = tiers
        if tiers:
            changes["on_exceed"] = _tiered_action(tiers, patch.on_exceed, "")
        elif patch.on_exceed is not None:
            changes["on_exceed"] = patch.on_exceed
    elif patch.on_exceed is not None:
        if budget.tiers and patch.on_exceed is not budget.on_exceed:
            raise InvalidRequestError(
                "on_exceed",
                f"budget {quote(budget.id)} has tiers ({', '.join(map(str, budget.tiers))}); change its tiers, "
                "or send an empty tier list with on_exceed to make it single-action",
            )
        changes["on_exceed"] = patch.on_exceed
    if patch.alert_thresholds is not None:
        changes["alert_thresholds"] = check_thresholds(patch.alert_thresholds)
    if patch.enabled is not None:
        changes["enabled"] = patch.enabled
    return replace(budget, **changes)  # type: ignore[arg-type]
