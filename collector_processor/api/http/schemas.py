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
    "ReserveIn",
    "ReserveOut",
    "ScopesIn",
    "StatusOut",
    "UsageFactsIn",
    "UsageOut",
]

ScopeName = Literal["organization", "team", "agent", "workflow", "user"]
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


class BudgetIn(_In):
    """A budget to create. ``scope``, ``limit_usd``, ``period`` and ``on_exceed`` are required."""

    id: str = Field(default="", description="1-128 characters of [A-Za-z0-9._:-]; generated when empty.")
    name: str = Field(default="", description="Defaults to the id.")
    scope: ScopeName | None = None
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
    enabled: bool = True


class BudgetPatchIn(_In):
    """The fields to change; ``alert_thresholds: []`` turns threshold alerts off."""

    name: str | None = None
    limit_usd: str | None = Field(default=None, json_schema_extra=MONEY)
    on_exceed: ActionName | None = None
    alert_thresholds: list[int] | None = None
    enabled: bool | None = None


class CheckIn(_In):
    scopes: ScopesIn = ScopesIn()
    estimate_usd: str = _money("The estimate to test; empty means zero.")


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


# -- responses ---------------------------------------------------------------------------------------
def _m(description: str = "") -> Any:
    return Field(description=description, json_schema_extra=_MONEY_OUT)


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
    updated_at: str = Field(json_schema_extra=_INSTANT)


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


Decision = Literal["allow", "deny", "downgrade"]


class CheckOut(_Out):
    decision: Decision
    budget_info: list[BudgetInfoOut]
    deciding_budget_id: str
    reason: str
    warn: bool
    warnings: list[str]


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
