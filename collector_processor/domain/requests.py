"""Request budgets: a limit on what one request may cost, across every service it touches.

A request budget is opened where a request enters (a user question that fans out into an agent
tree over several services). Its id travels with the request in OpenTelemetry baggage, and every
Reserve, commit, recorded usage and OTLP span that names it is held to it *in addition to* the
budgets of its own scopes: it can only deny more, never admit what a period budget refuses. It has no
period: its spend is the request's, from the moment it is opened until it has been idle (nothing
reserved, committed or charged against it) for its idle TTL, when it expires and is forgotten.

A request budget may be opened inside another (a sub-agent's share of its parent's money). Its limit
is at most what the parent has left when it is opened (``fraction`` of it, or ``limit``, whichever is
smaller), and everything that holds on or charges the child holds on and charges every ancestor too,
so a denial names which one decided. The rules here are pure: the stores read the standing of a
request's budgets inside their atomic operation and decide with ``decisions`` like for any budget —
a request budget *is* a budget to the decision rules (scope ``request``, block at 100% unless it has
tiers).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from collector_processor.domain.budgets import Budget, OnExceed, Scope, Tier
from collector_processor.domain.decisions import BudgetState, Plan, Verdict, exceeds
from collector_processor.domain.money import micros_to_usd
from collector_processor.domain.periods import Period, Window
from collector_processor.domain.types import Decision
from collector_processor.errors import InvalidRequestError
from paymaster.exceptions import quote

__all__ = [
    "MAX_DEPTH",
    "MAX_SERVICES",
    "OTHER_SERVICES",
    "REQUEST_PERIOD",
    "OpenRequestCommand",
    "RequestBudget",
    "RequestDraft",
    "RequestStatus",
    "by_service",
    "check_request_id",
    "check_service",
    "child_limit",
    "closed_plan",
    "generate_request_id",
    "not_open",
    "opened",
    "renewed_expiry",
    "request_state",
]

REQUEST_PERIOD = Period(spec="request", unit=None, window_ms=0)
"""The "period" of a request budget: the request's life (never parsed from a budget's definition)."""
MAX_DEPTH = 8
"""Request budgets nest at most this deep (a root and seven generations of children)."""
MAX_SERVICES = 64
"""Services whose spend a request budget keeps apart; the rest is summed under ``OTHER_SERVICES``."""
OTHER_SERVICES = "(other services)"
MAX_SERVICE = 128
_ID = re.compile(r"[A-Za-z0-9._:-]{16,128}")
_SINGLE_BLOCK = (Tier(100, OnExceed.BLOCK),)


def generate_request_id() -> str:
    """``rq_`` and 128 random bits: unguessable, since the id is what lets a service charge it."""
    return f"rq_{secrets.token_hex(16)}"


def check_request_id(value: str, field: str = "request_budget_id") -> str:
    """16-128 characters of ``A-Z a-z 0-9 . _ : -``: long enough that a generated one cannot be guessed,
    and a caller's own must not be short either."""
    if not _ID.fullmatch(value):
        raise InvalidRequestError(
            field, f"must be 16-128 characters of A-Z a-z 0-9 . _ : -, got {quote(value)}"
        )
    return value


def check_service(value: str, field: str = "service") -> str:
    """The service a unit of spend came from (``service.name``): at most 128 printable characters."""
    if len(value) > MAX_SERVICE or not value.isprintable():
        raise InvalidRequestError(field, f"must be at most {MAX_SERVICE} printable characters")
    return value


@dataclass(kw_only=True, frozen=True, slots=True)
class RequestBudget:
    """An open request budget's definition: fixed from the moment it is opened."""

    id: str
    """Its id, which travels in baggage (``paymaster.request_budget``)."""
    name: str
    """Shown in decisions (the id when none was given)."""
    chain: tuple[str, ...] = ()
    """Its ancestors, parent first; empty for a request's own budget."""
    limit_micros: int
    """The limit, micro-dollars (a child's is at most its parent's remainder when it was opened)."""
    tiers: tuple[Tier, ...] = ()
    """Ordered tiers; empty: block at 100%."""
    owner: str = ""
    """The principal that opened it."""
    created_ms: int
    """When it was opened; with the id it names this incarnation (an id reopened after it expired is
    another budget, and holds of the old one never touch it)."""
    idle_ttl_ms: int
    """It expires once nothing has been reserved, committed or charged against it for this long."""

    @property
    def parent_id(self) -> str:
        return self.chain[0] if self.chain else ""

    @property
    def depth(self) -> int:
        return len(self.chain)

    def as_budget(self) -> Budget:
        """What the decision rules see: a budget of scope ``request`` for this one entity."""
        return Budget(
            id=self.id,
            name=self.name,
            scope=Scope.REQUEST,
            scope_id=self.id,
            limit_usd=micros_to_usd(self.limit_micros),
            period=REQUEST_PERIOD,
            time_zone="UTC",
            on_exceed=self.tiers[-1].action if self.tiers else OnExceed.BLOCK,
            alert_thresholds=(),
            tiers=self.tiers,
            created_ms=self.created_ms,
        )


@dataclass(kw_only=True, frozen=True, slots=True)
class RequestStatus:
    """A request budget's standing now."""

    budget: RequestBudget
    """Its definition."""
    used_micros: int
    """Committed spend over its life."""
    reserved_micros: int
    """Held by reservations in flight."""
    expires_ms: int
    """When it expires unless something reserves against it or is charged to it first."""
    by_service: tuple[tuple[str, int], ...] = ()
    """Committed spend per service, most first."""
    clamped: bool = False
    """On opening: the asked limit was cut to what the parent had left."""

    def state(self) -> BudgetState:
        return request_state(self.budget, self.used_micros, self.reserved_micros, self.expires_ms)


def request_state(budget: RequestBudget, used: int, reserved: int, end_ms: int) -> BudgetState:
    """A request budget's standing as the decision rules take it. Its window runs from when it was
    opened to ``end_ms``: the instant of measurement in a decision's answer (as for a rolling window),
    its expiry in a status read."""
    return BudgetState(
        budget=budget.as_budget(),
        entity=budget.id,
        limit=budget.limit_micros,
        used=used,
        reserved=reserved,
        window=Window(budget.created_ms, end_ms),
    )


def child_limit(
    parent: BudgetState, *, limit_micros: int | None, fraction: Decimal | None
) -> tuple[int, bool]:
    """The limit of a request budget opened inside ``parent``: ``limit`` or ``fraction`` of what the
    parent has left (its limit less spend and holds), the smaller of those given, and never more than
    that remainder. Returns it and whether the parent's remainder cut it."""
    remaining = max(parent.limit - parent.used - parent.reserved, 0)
    asked: list[int] = []
    if limit_micros is not None:
        asked.append(limit_micros)
    if fraction is not None:
        asked.append(int((Decimal(remaining) * fraction).to_integral_value(rounding=ROUND_FLOOR)))
    wanted = min(asked) if asked else remaining
    return min(wanted, remaining), wanted > remaining


def renewed_expiry(current_ms: int, now_ms: int, idle_ttl_ms: int, hold_until_ms: int = 0) -> int:
    """When a request budget expires after activity at ``now_ms``: its idle TTL from now, and never
    before a hold placed on it (``hold_until_ms``) has run out — a step longer than the idle TTL does
    not lose its request budget mid-flight."""
    return max(current_ms, now_ms + idle_ttl_ms, hold_until_ms)


def closed_plan(states: Sequence[BudgetState], request_id: str, estimate: int) -> Plan:
    """The denial of a reservation naming a request budget that is not open (it expired, or this ledger
    never opened it): a request held to a limit never runs unlimited because the limit went away."""
    gone = Budget(
        id=request_id,
        name=request_id,
        scope=Scope.REQUEST,
        scope_id=request_id,
        limit_usd=Decimal(0),
        period=REQUEST_PERIOD,
        time_zone="UTC",
        on_exceed=OnExceed.BLOCK,
        alert_thresholds=(),
    )
    reason = (
        f"Denied by request budget {quote(request_id)}: it is not open on this sidecar's ledger (it expired "
        "after its idle TTL, or was never opened here). Open a new request budget for the request, or check "
        "that every service of the request reaches a sidecar that shares one ledger."
    )
    verdict = Verdict(
        decision=Decision.DENY,
        exceeded=tuple(exceeds(s, estimate) for s in states),
        deciding=BudgetState(
            budget=gone, entity=request_id, limit=0, used=0, reserved=0, window=Window(0, 0)
        ),
        reason=reason,
        warnings=(),
        tier=_SINGLE_BLOCK[0],
    )
    return Plan(decision=Decision.DENY, hold=0, verdict=verdict)


@dataclass(kw_only=True, frozen=True, slots=True)
class OpenRequestCommand:
    """Open a request budget (``OpenRequestBudget``)."""

    request_id: str = ""
    """Its id; empty: generated (``rq_`` and 128 random bits)."""
    name: str = ""
    """Shown in decisions; empty: the id."""
    parent_id: str = ""
    """Open it inside this (open) request budget."""
    limit_usd: Decimal | None = None
    """The limit; required without a parent. A child's is at most what its parent has left."""
    fraction: Decimal | None = None
    """For a child: at most this share (0 < fraction <= 1) of what the parent has left."""
    tiers: tuple[Tier, ...] = ()
    """Ordered tiers; empty: block at 100%."""
    idle_ttl_ms: int | None = None
    """Its idle TTL; ``None``: the ledger's default."""
    owner: str = ""
    """The principal opening it."""


@dataclass(kw_only=True, frozen=True, slots=True)
class RequestDraft:
    """A request budget as a caller asks for it, validated by the ledger; the store opens it."""

    id: str
    """Its id (generated by the ledger when the caller gave none)."""
    name: str
    """Shown in decisions; the id when empty."""
    parent_id: str = ""
    """Open it inside this request budget."""
    limit_micros: int | None = None
    """The limit; required without a parent."""
    fraction: Decimal | None = None
    """For a child: at most this share of what the parent has left (0 < fraction <= 1)."""
    tiers: tuple[Tier, ...] = ()
    """Ordered tiers; empty: block at 100%."""
    owner: str = ""
    """The principal opening it."""
    idle_ttl_ms: int
    """Its idle TTL."""
    fingerprint: str = ""
    """What was asked: opening the same id again with the same fingerprint returns it (a retry)."""


def opened(draft: RequestDraft, parent: RequestStatus | None, now_ms: int) -> tuple[RequestBudget, bool]:
    """The request budget ``draft`` opens (inside ``parent``, open now, if it names one), and whether
    the parent's remainder cut its limit. Refuses nesting deeper than ``MAX_DEPTH``."""
    chain: tuple[str, ...] = ()
    if parent is None:
        assert draft.limit_micros is not None  # the ledger requires a limit without a parent
        limit, clamped = draft.limit_micros, False
    else:
        if parent.budget.depth + 1 >= MAX_DEPTH:
            raise InvalidRequestError(
                "parent_id",
                f"request budgets nest at most {MAX_DEPTH} deep; {quote(parent.budget.id)} is at the limit",
            )
        limit, clamped = child_limit(parent.state(), limit_micros=draft.limit_micros, fraction=draft.fraction)
        chain = (parent.budget.id, *parent.budget.chain)
    budget = RequestBudget(
        id=draft.id,
        name=draft.name or draft.id,
        chain=chain,
        limit_micros=limit,
        tiers=draft.tiers,
        owner=draft.owner,
        created_ms=now_ms,
        idle_ttl_ms=draft.idle_ttl_ms,
    )
    return budget, clamped


def not_open(request_id: str, field: str = "request_budget_id") -> str:
    """Why a request budget cannot be read or opened inside: the words of a ``NOT_FOUND``."""
    return (
        f"{field}: request budget {quote(request_id)} is not open (it expired after its idle TTL, or was "
        "never opened on this sidecar's ledger)"
    )


def by_service(rows: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """Spend per service, most first (ties by name)."""
    return tuple(sorted(rows, key=lambda r: (-r[1], r[0])))
