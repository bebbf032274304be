"""The ledger's vocabulary: the commands it accepts and the outcomes it returns, as plain dataclasses.

These are what the servicer translates protobuf messages into and out of, what a store implements its
atomic operations over, and what later receivers (OTLP) will feed the ledger; none of them knows
about protobuf or gRPC. Money is ``Decimal``; times are epoch milliseconds UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, StrEnum

from collector_processor.budgets import Budget, OnExceed, Scope, ScopeSet
from collector_processor.money import micros_to_usd, percentage

__all__ = [
    "Alert",
    "BudgetInfo",
    "BudgetStatus",
    "CheckOutcome",
    "CommitCommand",
    "CommitOutcome",
    "Decision",
    "RecordUsageCommand",
    "RecordUsageOutcome",
    "ReleaseOutcome",
    "ReservationState",
    "ReserveCommand",
    "ReserveOutcome",
    "UsageFacts",
]


class Decision(StrEnum):
    """The answer to a check or a reservation."""

    ALLOW = "allow"
    DENY = "deny"
    DOWNGRADE = "downgrade"


class ReservationState(IntEnum):
    """The life of a reservation; the integer is what the store keeps."""

    HELD = 1
    COMMITTED = 2
    RELEASED = 3
    EXPIRED = 4


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageFacts:
    """Model and token facts of a call, after the OpenTelemetry GenAI semantic conventions."""

    provider: str = ""
    """``gen_ai.provider.name``"""
    model: str = ""
    """``gen_ai.request.model``"""
    input_tokens: int = 0
    """``gen_ai.usage.input_tokens``"""
    output_tokens: int = 0
    """``gen_ai.usage.output_tokens``"""
    cache_read_tokens: int = 0
    """Input tokens read from the prompt cache."""
    cache_creation_tokens: int = 0
    """Input tokens written to the prompt cache."""
    reasoning_tokens: int = 0
    """Output tokens spent on reasoning."""


@dataclass(kw_only=True, slots=True)
class BudgetInfo:
    """One matching budget as a request sees it, for the budget's current period and the request's entity.

    Amounts are kept as exact integer micro-dollars (every response carries several of these, and
    formatting integers is cheap) and read as ``Decimal`` through the ``*_usd`` properties.
    """

    budget_id: str
    """The budget."""
    budget_name: str
    """Its display name."""
    scope: Scope
    """Its scope."""
    scope_id: str
    """The entity (the request's id for ``scope``)."""
    used_micros: int
    """Committed spend in the period."""
    reserved_micros: int
    """Held by reservations in flight, not counting the one being made."""
    limit_micros: int
    """The limit."""
    exceeded: bool
    """The request would take the budget past its limit (or, after a charge, spend is past it)."""
    action: OnExceed
    """The budget's ``on_exceed``."""
    period_start_ms: int
    """Start of the period (or window)."""
    period_end_ms: int
    """When the period resets; for a rolling window, the instant of measurement."""

    @property
    def remaining_micros(self) -> int:
        """``limit - used - reserved``, never below zero."""
        return max(self.limit_micros - self.used_micros - self.reserved_micros, 0)

    @property
    def used_usd(self) -> Decimal:
        return micros_to_usd(self.used_micros)

    @property
    def reserved_usd(self) -> Decimal:
        return micros_to_usd(self.reserved_micros)

    @property
    def limit_usd(self) -> Decimal:
        return micros_to_usd(self.limit_micros)

    @property
    def remaining_usd(self) -> Decimal:
        return micros_to_usd(self.remaining_micros)

    @property
    def percentage(self) -> Decimal:
        """Committed spend as a percentage of the limit, two places rounded down."""
        return percentage(self.used_micros, self.limit_micros)


@dataclass(kw_only=True, slots=True)
class CheckOutcome:
    """What a reservation would be answered now."""

    decision: Decision
    """allow, deny or downgrade."""
    budget_info: tuple[BudgetInfo, ...]
    """Every enabled matching budget, in scope order then by id."""
    deciding_budget_id: str = ""
    """The budget that denied or downgraded; empty for allow."""
    reason: str = ""
    """Why, for an operator: the budget, its figures, when it resets, what to change."""
    warnings: tuple[str, ...] = ()
    """One sentence per warn budget that would be exceeded."""


@dataclass(kw_only=True, frozen=True, slots=True)
class ReserveCommand:
    """Reserve an estimate against every matching budget, atomically."""

    scopes: ScopeSet
    """Who the spend is for; may be empty only for a downgrade re-send."""
    estimate_usd: Decimal
    """The estimate to hold, >= 0."""
    ttl_ms: int | None = None
    """How long the reservation holds unless committed or released; ``None``: the ledger's default."""
    estimate_tokens: int = 0
    """Estimated tokens, recorded."""
    idempotency_key: str = ""
    """Retries with the same key get the first answer."""
    downgrade_estimate_usd: Decimal | None = None
    """The cheaper path's estimate, used when the decision is downgrade."""
    downgrade_of: str = ""
    """Re-send the cheaper estimate for this reservation, which is awaiting one."""
    model: UsageFacts | None = None
    """The model the caller intends to call."""


@dataclass(kw_only=True, slots=True)
class ReserveOutcome:
    """The answer to a reservation."""

    decision: Decision
    """allow, deny or downgrade."""
    reservation_id: str
    """Empty for deny."""
    reserved_usd: Decimal
    """What is held on every matching budget."""
    expires_ms: int
    """When the hold is released unless committed; 0 for deny."""
    budget_info: tuple[BudgetInfo, ...]
    """Every enabled matching budget."""
    deciding_budget_id: str = ""
    """The budget that denied or downgraded."""
    reason: str = ""
    """Why, for an operator."""
    warnings: tuple[str, ...] = ()
    """Warn budgets that would be exceeded."""
    awaiting_downgrade_estimate: bool = False
    """Downgrade decided without a cheaper estimate: re-send one with ``downgrade_of``."""
    replayed: bool = False
    """This answer repeats an earlier one."""


@dataclass(kw_only=True, frozen=True, slots=True)
class CommitCommand:
    """Replace a reservation with what the call really cost."""

    reservation_id: str
    """The reservation."""
    actual_usd: Decimal
    """What it cost, >= 0."""
    actual_tokens: int = 0
    """Total tokens; 0 means input + output of ``usage``."""
    usage: UsageFacts = UsageFacts()
    """Model and token facts."""


@dataclass(kw_only=True, slots=True)
class CommitOutcome:
    """What a commit did."""

    charged_usd: Decimal
    """Charged to every matching budget."""
    released_usd: Decimal
    """The hold given back."""
    duplicate: bool
    """The reservation had been committed before; nothing changed."""
    late: bool
    """The reservation had expired or been released; the spend was charged anyway."""
    budget_info: tuple[BudgetInfo, ...]
    """Every budget charged, after the charge."""
    alerts_fired: tuple[int, ...] = ()
    """Sequences of the alerts this commit fired."""
    scopes: ScopeSet | None = None
    """The reservation's scopes, which were charged (``None``: the store does not say)."""
    usage: UsageFacts | None = None
    """The facts recorded with the spend: the commit's, with the reservation's model where it named none."""


@dataclass(kw_only=True, slots=True)
class ReleaseOutcome:
    """What a release did."""

    released_usd: Decimal
    """Given back by this call."""
    state: ReservationState
    """The reservation's state afterwards."""


@dataclass(kw_only=True, frozen=True, slots=True)
class RecordUsageCommand:
    """Charge spend that had no reservation, idempotently."""

    usage_id: str
    """Unique id of this unit of spend."""
    scopes: ScopeSet
    """Who it is for."""
    cost_usd: Decimal
    """What it cost, >= 0."""
    occurred_ms: int | None = None
    """When it happened (charged to that period); ``None``: now."""
    total_tokens: int = 0
    """Total tokens; 0 means input + output of ``usage``."""
    usage: UsageFacts = UsageFacts()
    """Model and token facts."""
    reservation_id: str = ""
    """A reservation this spend belongs to: committed instead of charged twice."""


@dataclass(kw_only=True, slots=True)
class RecordUsageOutcome:
    """What recording usage did."""

    charged_usd: Decimal
    """Charged to every matching budget (zero for a duplicate)."""
    duplicate: bool
    """Seen before; nothing changed."""
    budget_info: tuple[BudgetInfo, ...]
    """Every budget charged, after the charge."""
    alerts_fired: tuple[int, ...] = ()
    """Sequences of the alerts this recording fired."""
    scopes: ScopeSet | None = None
    """The scopes charged: the command's, or those of the reservation it named (``None``: not said)."""
    usage: UsageFacts | None = None
    """The facts recorded with the spend."""


@dataclass(kw_only=True, frozen=True, slots=True)
class BudgetStatus:
    """A budget's standing for one entity in its current period."""

    budget: Budget
    """The budget."""
    scope_id: str
    """The entity."""
    used_usd: Decimal
    """Committed spend in the period."""
    reserved_usd: Decimal
    """Held by reservations in flight."""
    remaining_usd: Decimal
    """``limit - used - reserved``, never below zero."""
    percentage: Decimal
    """Committed spend as a percentage of the limit."""
    exceeded: bool
    """Committed spend has reached the limit."""
    period_start_ms: int
    """Start of the period (or window)."""
    period_end_ms: int
    """When it resets (for a rolling window: now)."""
    burn_rate_usd_per_hour: Decimal
    """Committed spend per hour since the period started (rolling: over the window)."""
    projected_usd: Decimal
    """Spend at period end if the burn rate holds."""
    alerts_fired: tuple[int, ...]
    """Thresholds fired in this period."""


@dataclass(kw_only=True, frozen=True, slots=True)
class Alert:
    """A threshold crossing, as kept in the store's alert log."""

    sequence: int
    """Position in the alert log."""
    alert_id: str
    """Stable id of the crossing, for de-duplicating deliveries."""
    budget_id: str
    """The budget."""
    budget_name: str
    """Its display name."""
    scope: Scope
    """Its scope."""
    scope_id: str
    """The entity."""
    threshold_percent: int
    """The threshold crossed."""
    used_usd: Decimal
    """Committed spend when it fired."""
    limit_usd: Decimal
    """The limit then."""
    percentage: Decimal
    """``used`` as a percentage of ``limit``, two places rounded down."""
    action: OnExceed
    """The budget's ``on_exceed``."""
    period_start_ms: int
    """Start of the period it fired in."""
    period_end_ms: int
    """End of that period."""
    fired_ms: int
    """When it fired."""
    message: str
    """One sentence for a human."""
