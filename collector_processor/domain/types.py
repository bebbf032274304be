"""The ledger's vocabulary: the commands it accepts and the outcomes it returns, as plain dataclasses.

These are what the servicer translates protobuf messages into and out of, what a store implements its
atomic operations over, and what later receivers (OTLP) will feed the ledger; none of them knows
about protobuf or gRPC. Money is ``Decimal``; times are epoch milliseconds UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import TypeAlias

from collector_processor.domain.budgets import Budget, OnExceed, Scope, ScopeSet, Tier
from collector_processor.domain.money import micros_to_usd, percentage

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
    "SeriesItem",
    "UsageBatch",
    "UsageBatchOutcome",
    "UsageFacts",
    "UsageGroup",
    "UsageItem",
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
    tier: Tier | None = None
    """The highest tier the request reaches (after a charge: that committed spend is past); for a
    single-action budget, its one tier (``action`` at 100%) exactly when ``exceeded``."""
    tiers: tuple[Tier, ...] = ()
    """The budget's tiers; empty for a single-action budget."""

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
    deciding_tier: Tier | None = None
    """The tier of the deciding budget that decided."""


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
    owner: str = ""
    """The principal making it (empty where callers are not authenticated): its idempotency keys are
    its own, and only it may re-send, commit or release the reservation."""
    fingerprint: str = ""
    """What the request asked (``domain.idempotency``), filled by the ledger: a retry with the same
    key must ask the same."""
    request_budget: str = ""
    """A request budget (``domain.requests``) held to as well, with every ancestor of it."""
    service: str = ""
    """The service reserving (``service.name``), for a request budget's spend by service."""


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
    deciding_tier: Tier | None = None
    """The tier of the deciding budget that decided."""


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
    owner: str = ""
    """The principal committing; it must be the one that made the reservation."""


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
    owner: str = ""
    """The principal recording it: its usage ids are its own, and a reservation it names must be its own."""
    fingerprint: str = ""
    """What the request asked, filled by the ledger: a retry with the same usage id must ask the same."""
    request_budget: str = ""
    """A request budget charged as well (while it is open), with every ancestor of it; ignored when
    ``reservation_id`` names a reservation, which charges its own."""
    service: str = ""
    """The service that spent it, for a request budget's spend by service."""


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


UsageItem: TypeAlias = tuple[int, bytes, int, int, int, int, int, int, int, int]
"""One unit of usage in a ``UsageBatch``: ``(instant_ms, uid, group, cost_micros, input_tokens,
output_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens)``.

``(instant_ms, uid)`` is its idempotency key: ``instant_ms`` is when it happened (epoch ms, the same on
every retry, e.g. a span's end time) and ``uid`` up to 64 bytes that tell it apart from other usage of
that instant (e.g. trace id + span id). ``group`` indexes ``UsageBatch.groups``. A plain tuple, because
a batch carries thousands of them."""

SeriesItem: TypeAlias = tuple[bytes, int, bool, int, int, int, int, int, int, int]
"""One running total in a ``UsageBatch``: ``(series_id, group, baseline, cost_micros, input_tokens,
output_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens)``.

Amounts are cumulative since the series started (a cumulative OpenTelemetry counter or histogram sum);
``series_id`` (up to 64 bytes) names the series including its start. ``baseline``: if the store does
not know the series yet, record these totals without charging them (they may have been charged before
the series was forgotten)."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageGroup:
    """Who spent and on what, shared by the items of a batch that are charged together."""

    scopes: ScopeSet
    """Who it is for; at least one id."""
    provider: str = ""
    """``gen_ai.provider.name``"""
    model: str = ""
    """The model."""
    occurred_ms: int
    """When it happened: the group is charged to the period (or window bucket) of this instant."""
    request_budget: str = ""
    """A request budget charged as well (while it is open), with its ancestors."""
    service: str = ""
    """The service that spent it (``service.name``), for the request budget's spend by service."""


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageBatch:
    """Many units of usage recorded in one atomic operation: idempotent per item, charged per group.

    Every item and series names its group. The new usage of each group (items not recorded before,
    and the growth of each series over the largest totals recorded for it) is summed into one usage
    record and one charge of every budget matching the group's scopes, at ``occurred_ms``.
    """

    groups: tuple[UsageGroup, ...]
    """The groups items are charged in."""
    items: Sequence[UsageItem] = ()
    """Units of usage, each charged at most once; their keys must be distinct."""
    series: Sequence[SeriesItem] = ()
    """Running totals, each charged by how much it grew; their ids must be distinct."""


@dataclass(kw_only=True, slots=True)
class UsageBatchOutcome:
    """What recording a batch did, per group (in the order of ``UsageBatch.groups``)."""

    charged_items: tuple[int, ...]
    """Items (and series that grew) that charged something new, per group."""
    charged_micros: tuple[int, ...]
    """Micro-dollars charged, per group."""
    duplicates: int
    """Items recorded before, and series that did not grow (or were baselined): nothing charged."""
    alerts_fired: tuple[int, ...] = ()
    """Sequences of the alerts the batch fired."""


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
    tier: bool = False
    """The threshold is one of the budget's tiers, and ``action`` is that tier's."""
