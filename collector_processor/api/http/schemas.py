"""The bodies of the HTTP API, as pydantic models: requests are validated with them at the edge, and
the OpenAPI document's schemas are generated from them (responses too, so the document says exactly
what ``api/http/json.py`` writes).

Requests are strict (a string is never a number, ``true`` is never ``1``) and refuse unknown fields,
so a misspelt key is an error rather than a default. What a value means (an amount, an id, a period)
is checked by the same domain rules as over gRPC, so both speak the same error messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MONEY",
    "AlertOut",
    "AlertsOut",
    "BudgetIn",
    "BudgetInfoOut",
    "BudgetListOut",
    "BudgetOut",
    "BudgetPatchIn",
    "CheckIn",
    "CheckOut",
    "CommitIn",
    "CommitOut",
    "ErrorOut",
    "RecordIn",
    "RecordOut",
    "ReleaseOut",
    "RequestBudgetIn",
    "RequestBudgetOut",
    "ReserveIn",
    "ReserveOut",
    "ScopesIn",
    "StatusOut",
    "TierIn",
    "TierOut",
    "UsageFactsIn",
    "UsageOut",
]

SpendScopeName = Literal["organization", "team", "agent", "workflow", "user"]
"""The scopes spend names ids for and period budgets govern."""
ScopeName = Literal["organization", "team", "agent", "workflow", "user", "request"]
"""Every scope an answer may name: ``request`` is a request budget's."""
ActionName = Literal["warn", "block", "downgrade"]
MONEY: dict[str, Any] = {
    "pattern": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$",
    "examples": ["0.25"],
}
"""An exact decimal dollar amount, as a string."""
_MONEY_OUT: dict[str, Any] = {"pattern": r"^-?[0-9]+\.[0-9]{6}$", "examples": ["12.500000"]}
_PERCENT_OUT: dict[str, Any] = {"pattern": r"^[0-9]+\.[0-9]{2}$", "examples": ["82.35"]}
_INSTANT: dict[str, Any] = {"format": "date-time", "examples": ["2025-03-14T12:00:00Z"]}
_MAX_INT64 = 2**63 - 1
_REQUEST_ID = "16-128 characters of [A-Za-z0-9._:-]"


def _money(description: str, default: str = "") -> Any:
    return Field(default=default, description=description, json_schema_extra=MONEY)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------------------
class ScopesIn(_In):
    """The ids a unit of spend is attributed to, one per scope; empty or absent means not given."""

    organization: str = ""
    team: str = ""
    agent: str = ""
    workflow: str = ""
    user: str = ""


class UsageFactsIn(_In):
    """Model and token facts of a call (OpenTelemetry GenAI names)."""

    provider: str = ""
    model: str = ""
    input_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    output_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    cache_read_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    cache_creation_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    reasoning_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)


class TierIn(_In):
    """One step of a tiered budget: what a request past ``at_percent`` of the limit gets."""

    at_percent: int = Field(ge=1, le=1000, description="Percent of the limit, 1-1000.")
    action: ActionName


_TIERS = (
    "Ordered tiers instead of one action (at most 10, rising, never less strict as they rise); "
    "each also alerts once per period."
)


class BudgetIn(_In):
    """A budget to create. ``scope``, ``limit_usd``, ``period`` and ``on_exceed`` (or ``tiers``) are
    required."""

    id: str = Field(default="", description="1-128 characters of [A-Za-z0-9._:-]; generated when empty.")
    name: str = Field(default="", description="Defaults to the id.")
    scope: SpendScopeName | None = None
    scope_id: str | None = Field(
        default=None, description="Absent or null: every entity of the scope, each apart."
    )
    limit_usd: str | None = Field(default=None, json_schema_extra=MONEY)
    period: str = Field(
        default="", description="daily, weekly, monthly, quarterly, yearly or rolling_<N>m|h|d."
    )
    time_zone: str = ""
    on_exceed: ActionName | None = None
    alert_thresholds: list[int] | None = Field(
        default=None, description="Percentages 1-1000; absent: the defaults."
    )
    tiers: list[TierIn] | None = Field(default=None, description=_TIERS)
    enabled: bool = True


class BudgetPatchIn(_In):
    """The fields to change; ``alert_thresholds: []`` turns threshold alerts off."""

    name: str | None = None
    limit_usd: str | None = Field(default=None, json_schema_extra=MONEY)
    on_exceed: ActionName | None = None
    alert_thresholds: list[int] | None = None
    tiers: list[TierIn] | None = Field(
        default=None, description="A replacement list of tiers; [] makes the budget single-action again."
    )
    enabled: bool | None = None


_REQUEST_BUDGET = (
    "An open request budget to hold this to as well, with its ancestors (POST /v1/requests); the "
    "SDK takes it from the OpenTelemetry baggage entry paymaster.request_budget."
)
_SERVICE = "The service (its OpenTelemetry service.name), for the request budget's spend by service."


class CheckIn(_In):
    scopes: ScopesIn = ScopesIn()
    estimate_usd: str = _money("The estimate to test; empty means zero.")
    request_budget_id: str = Field(default="", description=_REQUEST_BUDGET)


class ReserveIn(_In):
    scopes: ScopesIn = ScopesIn()
    estimate_usd: str = _money("Required.")
    estimate_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    ttl_seconds: float | None = Field(
        default=None, gt=0, le=2_592_000, description="Absent: the sidecar's default TTL (at most 30 days)."
    )
    idempotency_key: str = Field(default="", description="Or the Idempotency-Key header.")
    downgrade_estimate_usd: str = _money("The cheaper path's estimate, used on a downgrade.")
    downgrade_of: str = ""
    model: UsageFactsIn | None = None
    request_budget_id: str = Field(default="", description=_REQUEST_BUDGET)
    service: str = Field(default="", description=_SERVICE)


class CommitIn(_In):
    actual_usd: str = _money("Required.")
    actual_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    usage: UsageFactsIn = UsageFactsIn()


class RecordIn(_In):
    usage_id: str = ""
    scopes: ScopesIn = ScopesIn()
    cost_usd: str = _money("Required.")
    total_tokens: int = Field(default=0, ge=0, le=_MAX_INT64)
    usage: UsageFactsIn = UsageFactsIn()
    occurred_at: str | None = Field(default=None, json_schema_extra=_INSTANT)
    reservation_id: str = ""
    request_budget_id: str = Field(
        default="", description="A request budget charged as well (ignored with a reservation_id)."
    )
    service: str = Field(default="", description=_SERVICE)


class RequestBudgetIn(_In):
    """A request budget to open: a limit on what one request may cost across every service it touches."""

    id: str = Field(default="", description=f"{_REQUEST_ID}; generated when empty. Keep it unguessable.")
    name: str = Field(default="", description="Shown in decisions; defaults to the id.")
    parent_id: str = Field(default="", description="Open it inside this open request budget.")
    limit_usd: str = _money("Required without a parent; with one, at most its remainder.")
    fraction: str = Field(
        default="",
        description="With a parent: at most this share of what it has left, in (0, 1].",
        json_schema_extra=MONEY,
    )
    tiers: list[TierIn] = Field(default_factory=list, description="Ordered tiers; empty: block at 100%.")
    idle_ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=2_592_000,
        description="How long it stays open without activity; absent: the sidecar's default.",
    )


# -- responses ---------------------------------------------------------------------------------------
def _m(description: str = "") -> Any:
    return Field(description=description, json_schema_extra=_MONEY_OUT)


class TierOut(_Out):
    at_percent: int
    action: ActionName


class BudgetOut(_Out):
    id: str
    name: str
    scope: ScopeName
    scope_id: str | None
    limit_usd: str = _m()
    period: str
    time_zone: str
    on_exceed: ActionName
    alert_thresholds: list[int]
    enabled: bool
    declared_in_config: bool
    created_at: str = Field(json_schema_extra=_INSTANT)
    updated_at: str | None = Field(
        json_schema_extra=_INSTANT, description="Null for a request budget shown as a budget."
    )
    tiers: list[TierOut]


class BudgetListOut(_Out):
    budgets: list[BudgetOut]
    next_page_token: str


class BudgetInfoOut(_Out):
    budget_id: str
    budget_name: str
    scope: ScopeName
    scope_id: str
    used_usd: str = _m()
    reserved_usd: str = _m()
    limit_usd: str = _m()
    remaining_usd: str = _m()
    percentage: str = Field(json_schema_extra=_PERCENT_OUT)
    exceeded: bool
    action: ActionName
    period_start: str = Field(json_schema_extra=_INSTANT)
    period_end: str = Field(json_schema_extra=_INSTANT)
    tier: TierOut | None = Field(description="The highest tier reached; null when none.")
    tiers: list[TierOut]


Decision = Literal["allow", "deny", "downgrade"]


class CheckOut(_Out):
    decision: Decision
    budget_info: list[BudgetInfoOut]
    deciding_budget_id: str
    reason: str
    warn: bool
    warnings: list[str]
    deciding_tier: TierOut | None


class ReserveOut(_Out):
    decision: Decision
    reservation_id: str
    reserved_usd: str = _m()
    expires_at: str | None = Field(json_schema_extra=_INSTANT)
    budget_info: list[BudgetInfoOut]
    deciding_budget_id: str
    reason: str
    warn: bool
    warnings: list[str]
    awaiting_downgrade_estimate: bool
    replayed: bool
    deciding_tier: TierOut | None


class CommitOut(_Out):
    charged_usd: str = _m()
    released_usd: str = _m()
    duplicate: bool
    late: bool
    budget_info: list[BudgetInfoOut]


class ReleaseOut(_Out):
    released_usd: str = _m()
    state: Literal["held", "committed", "released", "expired"]


class RecordOut(_Out):
    charged_usd: str = _m()
    duplicate: bool
    budget_info: list[BudgetInfoOut]


class ServiceSpendOut(_Out):
    service: str
    used_usd: str = _m()


class RequestBudgetOut(_Out):
    id: str
    name: str
    ancestor_ids: list[str] = Field(description="Its ancestors, parent first.")
    limit_usd: str = _m()
    tiers: list[TierOut]
    used_usd: str = _m()
    reserved_usd: str = _m()
    remaining_usd: str = _m()
    opened_at: str = Field(json_schema_extra=_INSTANT)
    expires_at: str = Field(json_schema_extra=_INSTANT)
    idle_ttl: float = Field(description="Seconds.")
    by_service: list[ServiceSpendOut]
    clamped: bool = Field(description="On opening: the asked limit was cut to the parent's remainder.")


class StatusOut(_Out):
    budget: BudgetOut
    scope_id: str
    used_usd: str = _m()
    reserved_usd: str = _m()
    remaining_usd: str = _m()
    percentage: str = Field(json_schema_extra=_PERCENT_OUT)
    exceeded: bool
    period_start: str = Field(json_schema_extra=_INSTANT)
    period_end: str = Field(json_schema_extra=_INSTANT)
    burn_rate_usd_per_hour: str = _m()
    projected_usd: str = _m()
    alerts_fired: list[int]
    request: RequestBudgetOut | None = Field(description="Set for a request budget.")


class UsageTotalsOut(_Out):
    cost_usd: str = _m()
    input_tokens: int
    output_tokens: int
    total_tokens: int
    records: int


class UsageRowOut(_Out):
    key: list[str]
    totals: UsageTotalsOut


class UsageOut(_Out):
    total: UsageTotalsOut
    rows: list[UsageRowOut]


class AlertOut(_Out):
    sequence: int
    alert_id: str
    kind: Literal["threshold"]
    budget_id: str
    budget_name: str
    scope: ScopeName
    scope_id: str
    threshold_percent: int
    used_usd: str = _m()
    limit_usd: str = _m()
    percentage: str = Field(json_schema_extra=_PERCENT_OUT)
    action: ActionName
    period_start: str = Field(json_schema_extra=_INSTANT)
    period_end: str = Field(json_schema_extra=_INSTANT)
    fired_at: str = Field(json_schema_extra=_INSTANT)
    message: str
    tier: bool = Field(description="The threshold is one of the budget's tiers and action is that tier's.")


class AlertsOut(_Out):
    alerts: list[AlertOut]
    next_after_sequence: int = Field(description="Pass as after_sequence to continue.")


class ErrorBody(_Out):
    code: Literal[
        "invalid_argument", "unauthenticated", "permission_denied", "not_found", "already_exists",
        "failed_precondition", "resource_exhausted", "unavailable", "internal",
    ]  # fmt: skip
    message: str
    field: str | None = None


class ErrorOut(_Out):
    error: ErrorBody
