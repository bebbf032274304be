"""The JSON vocabulary of the HTTP API: the ledger's answers as JSON objects, and the JSON writer.

One word for each thing, the same everywhere the sidecar speaks JSON: scopes and actions lower-case
(``organization``, ``team``, ``warn``, ``block``, ``downgrade``), decisions ``allow`` / ``deny`` /
``downgrade``, reservation states ``held`` / ``committed`` / ``released`` / ``expired``, money as exact
decimal strings with six places (``"12.500000"``), percentages with two (``"82.35"``), instants as
RFC 3339 UTC (``"2025-03-14T12:00:00Z"``, milliseconds when there are any). Field names are the
proto's (``estimate_usd``, ``budget_info``). Everything here is pure: domain types in, ``dict`` out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from collector_processor.domain.budgets import Budget, Tier
from collector_processor.domain.money import (
    format_micros,
    format_percentage,
    format_percentage_of,
    format_usd,
)
from collector_processor.domain.requests import RequestStatus
from collector_processor.domain.types import (
    Alert,
    BudgetInfo,
    BudgetStatus,
    CheckOutcome,
    CommitOutcome,
    RecordUsageOutcome,
    ReleaseOutcome,
    ReserveOutcome,
)
from collector_processor.domain.usage import UsageReport, UsageTotals
from collector_processor.errors import InvalidRequestError

__all__ = [
    "alert",
    "budget",
    "check",
    "commit",
    "dumps",
    "error",
    "instant",
    "parse_instant",
    "record",
    "release",
    "request",
    "request_status",
    "reserve",
    "status",
    "tier",
    "usage",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant(ms: int) -> str:
    """RFC 3339 in UTC: ``2025-03-14T12:00:00Z``, with ``.123`` when the milliseconds are not zero."""
    seconds, millis = divmod(ms, 1000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def parse_instant(text: str, field: str) -> int:
    """Epoch milliseconds of an RFC 3339 instant with an offset (``Z`` or ``+02:00``)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        shown = text if len(text) <= 64 else text[:61] + "..."
        raise InvalidRequestError(
            field, f"must be an RFC 3339 instant with an offset, e.g. 2025-03-14T12:00:00Z, got {shown!r}"
        )
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def tier(t: Tier | None) -> dict[str, Any] | None:
    return None if t is None else {"at_percent": t.at, "action": t.action.value}


def budget(b: Budget) -> dict[str, Any]:
    return {
        "id": b.id,
        "name": b.name,
        "scope": b.scope.value,
        "scope_id": b.scope_id,
        "limit_usd": format_usd(b.limit_usd),
        "period": b.period.spec,
        "time_zone": b.time_zone,
        "on_exceed": b.on_exceed.value,
        "alert_thresholds": list(b.alert_thresholds),
        "enabled": b.enabled,
        "declared_in_config": b.declared_in_config,
        "created_at": instant(b.created_ms),
        "updated_at": instant(b.updated_ms),
        "tiers": [tier(t) for t in b.tiers],
    }


def infos(items: Iterable[BudgetInfo]) -> list[dict[str, Any]]:
    return [
        {
            "budget_id": i.budget_id,
            "budget_name": i.budget_name,
            "scope": i.scope.value,
            "scope_id": i.scope_id,
            "used_usd": format_micros(i.used_micros),
            "reserved_usd": format_micros(i.reserved_micros),
            "limit_usd": format_micros(i.limit_micros),
            "remaining_usd": format_micros(i.remaining_micros),
            "percentage": format_percentage_of(i.used_micros, i.limit_micros),
            "exceeded": i.exceeded,
            "action": i.action.value,
            "period_start": instant(i.period_start_ms),
            "period_end": instant(i.period_end_ms),
            "tier": tier(i.tier),
            "tiers": [tier(t) for t in i.tiers],
        }
        for i in items
    ]


def check(o: CheckOutcome) -> dict[str, Any]:
    return {
        "decision": o.decision.value,
        "budget_info": infos(o.budget_info),
        "deciding_budget_id": o.deciding_budget_id,
        "reason": o.reason,
        "warn": bool(o.warnings),
        "warnings": list(o.warnings),
        "deciding_tier": tier(o.deciding_tier),
    }


def reserve(o: ReserveOutcome) -> dict[str, Any]:
    return {
        "decision": o.decision.value,
        "reservation_id": o.reservation_id,
        "reserved_usd": format_usd(o.reserved_usd),
        "expires_at": instant(o.expires_ms) if o.expires_ms else None,
        "budget_info": infos(o.budget_info),
        "deciding_budget_id": o.deciding_budget_id,
        "reason": o.reason,
        "warn": bool(o.warnings),
        "warnings": list(o.warnings),
        "awaiting_downgrade_estimate": o.awaiting_downgrade_estimate,
        "replayed": o.replayed,
        "deciding_tier": tier(o.deciding_tier),
    }


def commit(o: CommitOutcome) -> dict[str, Any]:
    return {
        "charged_usd": format_usd(o.charged_usd),
        "released_usd": format_usd(o.released_usd),
        "duplicate": o.duplicate,
        "late": o.late,
        "budget_info": infos(o.budget_info),
    }


def release(o: ReleaseOutcome) -> dict[str, Any]:
    return {"released_usd": format_usd(o.released_usd), "state": o.state.name.lower()}


def record(o: RecordUsageOutcome) -> dict[str, Any]:
    return {
        "charged_usd": format_usd(o.charged_usd),
        "duplicate": o.duplicate,
        "budget_info": infos(o.budget_info),
    }


def status(s: BudgetStatus) -> dict[str, Any]:
    return {
        "budget": budget(s.budget),
        "scope_id": s.scope_id,
        "used_usd": format_usd(s.used_usd),
        "reserved_usd": format_usd(s.reserved_usd),
        "remaining_usd": format_usd(s.remaining_usd),
        "percentage": format_percentage(s.percentage),
        "exceeded": s.exceeded,
        "period_start": instant(s.period_start_ms),
        "period_end": instant(s.period_end_ms),
        "burn_rate_usd_per_hour": format_usd(s.burn_rate_usd_per_hour),
        "projected_usd": format_usd(s.projected_usd),
        "alerts_fired": list(s.alerts_fired),
        "request": None,
    }


def request(r: RequestStatus) -> dict[str, Any]:
    """An open request budget (``RequestBudget``), with its spend by service."""
    b = r.budget
    return {
        "id": b.id,
        "name": b.name,
        "ancestor_ids": list(b.chain),
        "limit_usd": format_micros(b.limit_micros),
        "tiers": [tier(t) for t in b.tiers],
        "used_usd": format_micros(r.used_micros),
        "reserved_usd": format_micros(r.reserved_micros),
        "remaining_usd": format_micros(max(b.limit_micros - r.used_micros - r.reserved_micros, 0)),
        "opened_at": instant(b.created_ms),
        "expires_at": instant(r.expires_ms),
        "idle_ttl": b.idle_ttl_ms / 1000,
        "by_service": [{"service": name, "used_usd": format_micros(used)} for name, used in r.by_service],
        "clamped": r.clamped,
    }


def request_status(r: RequestStatus) -> dict[str, Any]:
    """A request budget's standing as a budget status: scope ``request``, period ``request``, from when
    it was opened to when it expires, with ``request`` holding the request budget itself."""
    state = r.state()
    shown = budget(state.budget)
    shown["updated_at"] = None
    return {
        "budget": shown,
        "scope_id": state.budget.id,
        "used_usd": format_micros(r.used_micros),
        "reserved_usd": format_micros(r.reserved_micros),
        "remaining_usd": format_micros(max(state.limit - r.used_micros - r.reserved_micros, 0)),
        "percentage": format_percentage_of(r.used_micros, state.limit),
        "exceeded": r.used_micros >= state.limit,
        "period_start": instant(state.budget.created_ms),
        "period_end": instant(r.expires_ms),
        "burn_rate_usd_per_hour": "0.000000",
        "projected_usd": format_micros(r.used_micros),
        "alerts_fired": [],
        "request": request(r),
    }


def totals(t: UsageTotals) -> dict[str, Any]:
    return {
        "cost_usd": format_usd(t.cost_usd),
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "total_tokens": t.total_tokens,
        "records": t.records,
    }


def usage(r: UsageReport) -> dict[str, Any]:
    return {
        "total": totals(r.total),
        "rows": [{"key": list(row.key), "totals": totals(row.totals)} for row in r.rows],
    }


def alert(a: Alert) -> dict[str, Any]:
    return {
        "sequence": a.sequence,
        "alert_id": a.alert_id,
        "kind": "threshold",
        "budget_id": a.budget_id,
        "budget_name": a.budget_name,
        "scope": a.scope.value,
        "scope_id": a.scope_id,
        "threshold_percent": a.threshold_percent,
        "used_usd": format_usd(a.used_usd),
        "limit_usd": format_usd(a.limit_usd),
        "percentage": format_percentage(a.percentage),
        "action": a.action.value,
        "period_start": instant(a.period_start_ms),
        "period_end": instant(a.period_end_ms),
        "fired_at": instant(a.fired_ms),
        "message": a.message,
        "tier": a.tier,
    }


def error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The body of every refusal: ``code`` is the gRPC status name in lower case (``invalid_argument``)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return {"error": body}


def dumps(value: Any) -> bytes:
    """JSON text in UTF-8. A ``Decimal`` is written as the exact number literal it holds (the
    AxonFlow-compatible shapes carry money as JSON numbers), never through a binary float."""
    return _write(value).encode("utf-8")


def _write(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_write(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_write(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return f"{value:f}"
    return json.dumps(value, ensure_ascii=False)
