"""AxonFlow's cost-management REST endpoints, answered by Paymaster, under ``/api/v1``.

The paths, query parameters, JSON field names and shapes are those the ``axonflow`` Python SDK (9.x)
sends and reads for budgets, budget checks, status and alerts, usage summary, breakdown and records,
and pricing, so code written against AxonFlow runs unchanged with only its endpoint and credentials
changed. The answers are Paymaster's: a check evaluates every matching budget including workflow
budgets and says ``downgrade`` where a downgrade budget is exceeded; money is exact (AxonFlow's
shapes carry it as JSON numbers, so it is read from the number's text and written as an exact decimal
literal, never through a binary float). Every endpoint authorizes exactly like its native
counterpart (the same ``Operations``). ``docs/axonflow.md`` is the migration guide.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from collector_processor.api.http import convert
from collector_processor.api.http.app import Call, Endpoint, Param
from collector_processor.api.http.json import dumps, instant
from collector_processor.auth.policy import Action
from collector_processor.domain.budgets import (
    SCOPE_ORDER,
    Budget,
    BudgetDraft,
    BudgetPatch,
    OnExceed,
    Scope,
    ScopeSet,
)
from collector_processor.domain.money import micros_to_usd, parse_usd
from collector_processor.domain.periods import parse_period, zone
from collector_processor.domain.types import Alert, BudgetStatus, Decision
from collector_processor.domain.usage import Dimension, UsageQuery, UsageRecord, UsageReport
from collector_processor.errors import InvalidRequestError, NotFoundError
from paymaster.usage import ModelUsage

__all__ = ["ENDPOINTS"]

ScopeName = Literal["organization", "team", "agent", "workflow", "user"]
ActionName = Literal["warn", "block", "downgrade"]
_CALENDAR = ("daily", "weekly", "monthly", "quarterly", "yearly")
_GROUPS = {"provider": Dimension.PROVIDER, "model": Dimension.MODEL, "organization": Dimension.ORGANIZATION,
           "team": Dimension.TEAM, "agent": Dimension.AGENT, "workflow": Dimension.WORKFLOW,
           "user": Dimension.USER}  # fmt: skip
_CENT = Decimal("0.01")
_MICRO = Decimal("0.000001")


# -- bodies ------------------------------------------------------------------------------------------
class _AxIn(BaseModel):
    # AxonFlow's clients may send fields Paymaster does not use; they are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)


class CreateBudgetIn(_AxIn):
    id: str = ""
    name: str = ""
    scope: ScopeName | None = None
    scope_id: str | None = None
    limit_usd: Decimal | None = Field(default=None, description="A JSON number, read exactly.")
    period: str = ""
    on_exceed: ActionName | None = None
    alert_thresholds: list[int] = Field(default_factory=list, description="Empty: the sidecar's defaults.")
    enabled: bool = True


class UpdateBudgetIn(_AxIn):
    name: str | None = None
    limit_usd: Decimal | None = None
    on_exceed: ActionName | None = None
    alert_thresholds: list[int] | None = None
    enabled: bool | None = None


class BudgetCheckIn(_AxIn):
    org_id: str | None = None
    team_id: str | None = None
    agent_id: str | None = None
    workflow_id: str | None = None
    user_id: str | None = None
    estimate_usd: Decimal | None = Field(
        default=None, description="Paymaster: the estimate to test (default 0)."
    )


# -- answers -----------------------------------------------------------------------------------------
_NUM: dict[str, Any] = {"type": "number"}


class AxBudget(BaseModel):
    id: str
    name: str
    scope: ScopeName
    limit_usd: float
    period: str
    on_exceed: ActionName
    alert_thresholds: list[int]
    enabled: bool
    scope_id: str | None
    created_at: str
    updated_at: str


class AxBudgets(BaseModel):
    budgets: list[AxBudget]
    total: int


class AxStatus(BaseModel):
    budget: AxBudget
    scope_id: str
    used_usd: float
    reserved_usd: float
    remaining_usd: float
    percentage: float
    is_exceeded: bool
    is_blocked: bool
    period_start: str
    period_end: str


class AxAlert(BaseModel):
    id: str
    budget_id: str
    alert_type: Literal["threshold"]
    threshold: int
    percentage_reached: float
    amount_usd: float
    message: str
    created_at: str
    acknowledged: bool | None


class AxAlerts(BaseModel):
    alerts: list[AxAlert]
    count: int


class AxDecision(BaseModel):
    allowed: bool
    action: ActionName | None
    message: str | None
    budgets: list[AxBudget]


class AxSummary(BaseModel):
    total_cost_usd: float
    total_requests: int
    total_tokens_in: int
    total_tokens_out: int
    average_cost_per_request: float
    period: str
    period_start: str
    period_end: str


class AxBreakdownItem(BaseModel):
    group_by: str
    group_value: str
    cost_usd: float
    percentage: float
    request_count: int
    tokens_in: int
    tokens_out: int


class AxBreakdown(BaseModel):
    group_by: str
    total_cost_usd: float
    items: list[AxBreakdownItem]
    period: str
    period_start: str
    period_end: str


class AxRecord(BaseModel):
    id: str
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    request_id: str | None
    org_id: str | None
    team_id: str | None
    agent_id: str | None
    workflow_id: str | None
    user_id: str | None
    created_at: str


class AxRecords(BaseModel):
    records: list[AxRecord]
    total: int


class AxModelPricing(BaseModel):
    input_per_1k: float
    output_per_1k: float


class AxPricing(BaseModel):
    provider: str
    model: str
    pricing: AxModelPricing


class AxPricingList(BaseModel):
    pricing: list[AxPricing]


def _reply(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def budget(b: Budget) -> dict[str, Any]:
    return {
        "id": b.id,
        "name": b.name,
        "scope": b.scope.value,
        "limit_usd": b.limit_usd.quantize(_MICRO),
        "period": b.period.spec,
        "on_exceed": b.on_exceed.value,
        "alert_thresholds": list(b.alert_thresholds),
        "enabled": b.enabled,
        "scope_id": b.scope_id,
        "created_at": instant(b.created_ms),
        "updated_at": instant(b.updated_ms),
    }


def _money(value: Decimal | None, field: str) -> Decimal | None:
    return None if value is None else parse_usd(f"{value:f}", field)


# -- budgets ---------------------------------------------------------------------------------------
async def create_budget(call: Call) -> Response:
    m = convert.body(CreateBudgetIn, await call.body())
    draft = BudgetDraft(
        id=m.id,
        name=m.name,
        scope=Scope(m.scope) if m.scope else None,
        scope_id=m.scope_id,
        limit_usd=_money(m.limit_usd, "limit_usd"),
        period=m.period,
        on_exceed=OnExceed(m.on_exceed) if m.on_exceed else None,
        alert_thresholds=tuple(m.alert_thresholds) or None,
        enabled=m.enabled,
    )
    return _reply(budget(await call.ops.create_budget(call.principal, draft, call.actor)), 201)


async def get_budget(call: Call) -> Response:
    return _reply(budget(call.ops.get_budget(call.principal, call.path("id"))))


async def list_budgets(call: Call) -> Response:
    p = call.params
    name = p.get("scope", "")
    scope = convert.scope_named(name, "scope") if name else None
    limit = convert.integer(p, "limit", 50, 1, 500)
    offset = convert.integer(p, "offset", 0, 0, 10**9)
    found = call.ops.all_budgets(call.principal, scope=scope)
    return _reply({"budgets": [budget(b) for b in found[offset : offset + limit]], "total": len(found)})


async def update_budget(call: Call) -> Response:
    m = convert.body(UpdateBudgetIn, await call.body())
    patch = BudgetPatch(
        name=m.name,
        limit_usd=_money(m.limit_usd, "limit_usd"),
        on_exceed=OnExceed(m.on_exceed) if m.on_exceed else None,
        alert_thresholds=tuple(m.alert_thresholds) if m.alert_thresholds is not None else None,
        enabled=m.enabled,
    )
    updated = await call.ops.update_budget(call.principal, call.path("id"), patch, call.actor)
    return _reply(budget(updated))


async def delete_budget(call: Call) -> Response:
    await call.ops.delete_budget(call.principal, call.path("id"), call.actor)
    return Response(status_code=204)


async def budget_status(call: Call) -> Response:
    s: BudgetStatus = await call.ops.status(call.principal, call.path("id"), call.params.get("scope_id", ""))
    exceeded = s.exceeded
    return _reply(
        {
            "budget": budget(s.budget),
            "scope_id": s.scope_id,
            "used_usd": s.used_usd,
            "reserved_usd": s.reserved_usd,
            "remaining_usd": s.remaining_usd,
            "percentage": s.percentage,
            "is_exceeded": exceeded,
            "is_blocked": exceeded and s.budget.on_exceed is OnExceed.BLOCK,
            "period_start": instant(s.period_start_ms),
            "period_end": instant(s.period_end_ms),
        }
    )


def _alert(a: Alert) -> dict[str, Any]:
    return {
        "id": a.alert_id,
        "budget_id": a.budget_id,
        "alert_type": "threshold",
        "threshold": a.threshold_percent,
        "percentage_reached": a.percentage,
        "amount_usd": a.used_usd,
        "message": a.message,
        "created_at": instant(a.fired_ms),
        "acknowledged": None,
    }


async def budget_alerts(call: Call) -> Response:
    alerts = call.ops.budget_alerts(call.principal, call.path("id"))
    return _reply({"alerts": [_alert(a) for a in alerts], "count": len(alerts)})


async def check_budget(call: Call) -> Response:
    m = convert.body(BudgetCheckIn, await call.body())
    scopes = ScopeSet(
        organization=m.org_id or "", team=m.team_id or "", agent=m.agent_id or "",
        workflow=m.workflow_id or "", user=m.user_id or "",
    )  # fmt: skip
    estimate = _money(m.estimate_usd, "estimate_usd") or Decimal(0)
    outcome = await call.ops.check(call.principal, scopes, estimate)
    action: str | None = None
    if outcome.decision is Decision.DENY:
        action = "block"
    elif outcome.decision is Decision.DOWNGRADE:
        action = "downgrade"
    elif outcome.warnings:
        action = "warn"
    budgets = [budget(call.ops.ledger.get_budget(i.budget_id)) for i in _distinct(outcome.budget_info)]
    return _reply(
        {
            "allowed": outcome.decision is not Decision.DENY,
            "action": action,
            "message": outcome.reason or "; ".join(outcome.warnings) or None,
            "budgets": budgets,
        }
    )


def _distinct(infos: Any) -> list[Any]:
    seen: dict[str, Any] = {}
    for info in infos:
        seen.setdefault(info.budget_id, info)
    return list(seen.values())


# -- usage and pricing -------------------------------------------------------------------------------
def _period(call: Call) -> tuple[str, int, int]:
    name = call.params.get("period", "") or "monthly"
    if name not in _CALENDAR:
        raise InvalidRequestError("period", f"must be one of {', '.join(_CALENDAR)}, got {name[:60]!r}")
    ledger = call.ops.ledger
    now = ledger.clock.now_ms()
    window = parse_period(name).window(now, zone(ledger.settings.time_zone))
    return name, window.start_ms, min(window.end_ms, now + 1)


def _query(
    call: Call, start: int | None, end: int | None, group_by: tuple[Dimension, ...] = ()
) -> UsageQuery:
    p = call.params
    return UsageQuery(
        start_ms=start,
        end_ms=end,
        scopes=convert.scopes_from_query(p),
        provider=p.get("provider", ""),
        model=p.get("model", ""),
        group_by=group_by,
    )


async def usage_summary(call: Call) -> Response:
    name, start, end = _period(call)
    report: UsageReport = await call.ops.usage(call.principal, _query(call, start, end))
    t = report.total
    average = (t.cost_usd / t.records).quantize(_MICRO) if t.records else Decimal(0)
    return _reply(
        {
            "total_cost_usd": t.cost_usd,
            "total_requests": t.records,
            "total_tokens_in": t.input_tokens,
            "total_tokens_out": t.output_tokens,
            "average_cost_per_request": average,
            "period": name,
            "period_start": instant(start),
            "period_end": instant(end),
        }
    )


async def usage_breakdown(call: Call) -> Response:
    group = call.params.get("group_by", "")
    if group not in _GROUPS:
        raise InvalidRequestError("group_by", f"must be one of {', '.join(_GROUPS)}, got {group[:60]!r}")
    name, start, end = _period(call)
    report = await call.ops.usage(call.principal, _query(call, start, end, (_GROUPS[group],)))
    total = report.total.cost_usd
    items = [
        {
            "group_by": group,
            "group_value": row.key[0],
            "cost_usd": row.totals.cost_usd,
            "percentage": (row.totals.cost_usd * 100 / total).quantize(_CENT, ROUND_FLOOR)
            if total
            else Decimal(0),
            "request_count": row.totals.records,
            "tokens_in": row.totals.input_tokens,
            "tokens_out": row.totals.output_tokens,
        }
        for row in sorted(report.rows, key=lambda r: (-r.totals.cost_usd, r.key))
    ]
    return _reply(
        {
            "group_by": group,
            "total_cost_usd": total,
            "items": items,
            "period": name,
            "period_start": instant(start),
            "period_end": instant(end),
        }
    )


def _record(r: UsageRecord) -> dict[str, Any]:
    rid = r.id
    if rid[:1].isdigit() and ":" in rid:  # an owned usage id: "<length>:<owner>:<id>"
        length, _, rest = rid.partition(":")
        if length.isdigit() and rest[int(length) : int(length) + 1] == ":":
            rid = rest[int(length) + 1 :]
    s = r.scopes
    return {
        "id": rid,
        "provider": r.provider,
        "model": r.model,
        "tokens_in": r.input_tokens,
        "tokens_out": r.output_tokens,
        "cost_usd": micros_to_usd(r.cost_micros),
        "request_id": r.reservation_id or None,
        "org_id": s.organization or None,
        "team_id": s.team or None,
        "agent_id": s.agent or None,
        "workflow_id": s.workflow or None,
        "user_id": s.user or None,
        "created_at": instant(r.at_ms),
    }


async def usage_records(call: Call) -> Response:
    limit = convert.integer(call.params, "limit", 50, 1, 1000)
    offset = convert.integer(call.params, "offset", 0, 0, 10**6)
    records, total = await call.ops.usage_records(
        call.principal, _query(call, None, None), offset=offset, limit=limit
    )
    return _reply({"records": [_record(r) for r in records], "total": total})


async def pricing(call: Call) -> Response:
    call.ops.require(call.principal, Action.READ)
    calculator = call.listener.extra.get("calculator")
    provider, model = call.params.get("provider", ""), call.params.get("model", "")
    out = []
    if calculator is not None:
        for prov, models in sorted(calculator.cost.providers.items()):
            for name, prices in sorted(models.items()):
                if (provider and prov != provider) or (model and name != model):
                    continue
                if prices.prompt_tokens_per_1k is None or prices.completion_tokens_per_1k is None:
                    continue
                out.append(_price(prov, name, prices.prompt_tokens_per_1k, prices.completion_tokens_per_1k))
        if not out and model:
            out = _library_price(calculator, provider, model)
    return _reply({"pricing": out})


def _price(provider: str, model: str, per_in: Decimal, per_out: Decimal) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "pricing": {"input_per_1k": per_in, "output_per_1k": per_out},
    }


def _library_price(calculator: Any, provider: str, model: str) -> list[dict[str, Any]]:
    """A model without configured prices, priced per 1,000 tokens the way spend of it is priced."""
    try:
        ref = calculator.resolve(model, provider or None)
        per_in = calculator.price(ModelUsage(input_tokens=1000), model=model, provider=provider or None)
        per_out = calculator.price(ModelUsage(output_tokens=1000), model=model, provider=provider or None)
    except Exception:  # an unknown provider or model: nothing to list
        return []
    if per_in.cost_usd is None or per_out.cost_usd is None:
        raise NotFoundError(f"no price is known for {provider + ':' if provider else ''}{model[:80]}")
    return [_price(ref.provider, ref.model, per_in.cost_usd, per_out.cost_usd)]


# -- the table -------------------------------------------------------------------------------------
def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> Param:
    return Param(name, "query", schema or {"type": "string"}, description)


_ID = Param("id", "path", {"type": "string"}, required=True)
_PERIOD = _q("period", "daily, weekly, monthly (default), quarterly or yearly: the current one.",
             {"type": "string", "enum": list(_CALENDAR)})  # fmt: skip
_SCOPES = tuple(_q(s.value, f"Paymaster: only spend of this {s.value} id.") for s in SCOPE_ORDER)
_T = "axonflow"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("axonflow_create_budget", "POST", "/api/v1/budgets", create_budget, "CreateBudget",
             "AxonFlow: create a budget.", CreateBudgetIn, AxBudget, status=201, tag=_T),
    Endpoint("axonflow_list_budgets", "GET", "/api/v1/budgets", list_budgets, "ListBudgets",
             "AxonFlow: list budgets.", None, AxBudgets, tag=_T,
             params=(_q("scope", "Only this scope.", {"type": "string", "enum": [s.value for s in SCOPE_ORDER]}),
                     _q("limit", "1-500 (default 50).", {"type": "integer", "minimum": 1, "maximum": 500}),
                     _q("offset", "Skip this many.", {"type": "integer", "minimum": 0, "maximum": 10**9}))),
    Endpoint("axonflow_check_budget", "POST", "/api/v1/budgets/check", check_budget, "CheckBudget",
             "AxonFlow: a pre-flight decision over every matching budget.", BudgetCheckIn, AxDecision, tag=_T),
    Endpoint("axonflow_get_budget", "GET", "/api/v1/budgets/{id}", get_budget, "GetBudget",
             "AxonFlow: read a budget.", None, AxBudget, tag=_T, params=(_ID,)),
    Endpoint("axonflow_update_budget", "PUT", "/api/v1/budgets/{id}", update_budget, "UpdateBudget",
             "AxonFlow: change a budget.", UpdateBudgetIn, AxBudget, tag=_T, params=(_ID,)),
    Endpoint("axonflow_delete_budget", "DELETE", "/api/v1/budgets/{id}", delete_budget, "DeleteBudget",
             "AxonFlow: delete a budget.", None, None, status=204, tag=_T, params=(_ID,)),
    Endpoint("axonflow_budget_status", "GET", "/api/v1/budgets/{id}/status", budget_status, "GetBudgetStatus",
             "AxonFlow: a budget's standing now.", None, AxStatus, tag=_T,
             params=(_ID, _q("scope_id", "Paymaster: the entity, for a wildcard budget."))),
    Endpoint("axonflow_budget_alerts", "GET", "/api/v1/budgets/{id}/alerts", budget_alerts, "WatchAlerts",
             "AxonFlow: the retained alerts of a budget.", None, AxAlerts, tag=_T, params=(_ID,)),
    Endpoint("axonflow_usage_summary", "GET", "/api/v1/usage", usage_summary, "GetUsage",
             "AxonFlow: spend in the current period.", None, AxSummary, tag=_T, params=(_PERIOD, *_SCOPES)),
    Endpoint("axonflow_usage_breakdown", "GET", "/api/v1/usage/breakdown", usage_breakdown, "GetUsage",
             "AxonFlow: spend in the current period by one dimension.", None, AxBreakdown, tag=_T,
             params=(Param("group_by", "query", {"type": "string", "enum": list(_GROUPS)}, required=True),
                     _PERIOD, *_SCOPES)),
    Endpoint("axonflow_usage_records", "GET", "/api/v1/usage/records", usage_records, "GetUsage",
             "AxonFlow: recorded units of spend, newest first.", None, AxRecords, tag=_T,
             params=(_q("limit", "1-1000 (default 50).", {"type": "integer", "minimum": 1, "maximum": 1000}),
                     _q("offset", "Skip this many.", {"type": "integer", "minimum": 0, "maximum": 10**6}),
                     _q("provider", "Only this provider."), _q("model", "Only this model."), *_SCOPES)),
    Endpoint("axonflow_pricing", "GET", "/api/v1/pricing", pricing, None,
             "AxonFlow: prices per 1,000 input and output tokens.", None, AxPricingList, tag=_T,
             needs=Action.READ, params=(_q("provider", "Only this provider."), _q("model", "Only this model."))),
)  # fmt: skip
