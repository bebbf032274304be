"""Requests of the HTTP API into the ledger's commands: JSON bodies and query strings in, domain out.

Bodies are parsed with every JSON number kept as the exact decimal it spells (never a binary float)
and validated by the models of ``schemas``; a body that does not fit is refused naming the field
(``scopes.team: must be a string, got 5``), and what the values mean is checked by the same domain
rules as over gRPC (``estimate_usd: must not be negative, got '-1'``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from collector_processor.api.http import schemas as s
from collector_processor.api.http.json import parse_instant
from collector_processor.domain.budgets import (
    SCOPE_ORDER,
    BudgetDraft,
    BudgetPatch,
    OnExceed,
    Scope,
    ScopeSet,
    Tier,
)
from collector_processor.domain.money import parse_usd
from collector_processor.domain.requests import OpenRequestCommand
from collector_processor.domain.types import CommitCommand, RecordUsageCommand, ReserveCommand, UsageFacts
from collector_processor.domain.usage import Dimension, UsageQuery
from collector_processor.errors import InvalidRequestError

__all__ = [
    "body",
    "commit",
    "draft",
    "integer",
    "open_request",
    "patch",
    "record",
    "reserve",
    "scope_named",
    "scopes",
    "scopes_from_query",
    "usage_query",
]

M = TypeVar("M", bound=BaseModel)
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "model_type": "an object",
    "dict_type": "an object",
}
_MAX_SHOWN = 60


def load(raw: bytes) -> Any:
    """The JSON value of a body, numbers as exact decimals; an empty body is ``{}``."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError("body", f"is not valid JSON: {str(exc)[:120]}") from None


def body(model: type[M], raw: bytes | Any) -> M:
    """``raw`` (JSON text, or its parsed value) validated as ``model``; the first problem is refused
    naming its field."""
    value = load(raw) if isinstance(raw, bytes) else raw
    if not isinstance(value, dict):
        raise InvalidRequestError("body", f"must be a JSON object, got {_kind(value)}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _refusal(exc) from None


def _refusal(exc: ValidationError) -> InvalidRequestError:
    error = exc.errors(include_url=False)[0]
    where = ""
    for part in error["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    where = where or "body"
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return InvalidRequestError(where, "unknown field (check the spelling)")
    if kind == "missing":
        return InvalidRequestError(where, "is required")
    if kind in _TYPE_WORDS:
        hint = " (an exact decimal such as '0.25')" if where.endswith("_usd") else ""
        return InvalidRequestError(where, f"must be {_TYPE_WORDS[kind]}{hint}, got {_shown(value)}")
    if kind == "greater_than_equal" and error.get("ctx", {}).get("ge") == 0:
        return InvalidRequestError(where, f"must not be negative, got {_shown(value)}")
    if kind in ("less_than_equal", "greater_than"):
        bound = error.get("ctx", {}).get("le" if kind == "less_than_equal" else "gt")
        words = "must be at most" if kind == "less_than_equal" else "must be more than"
        shown_bound = int(bound) if isinstance(bound, int | float) and float(bound).is_integer() else bound
        return InvalidRequestError(where, f"{words} {shown_bound}, got {_shown(value)}")
    if kind == "literal_error":
        return InvalidRequestError(where, f"must be one of {error['ctx']['expected']}, got {_shown(value)}")
    return InvalidRequestError(where, f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_shown(value)}")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value) if isinstance(value, int | float | Decimal) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# -- pieces ------------------------------------------------------------------------------------------
def scopes(m: s.ScopesIn) -> ScopeSet:
    return ScopeSet(organization=m.organization, team=m.team, agent=m.agent, workflow=m.workflow, user=m.user)


def facts(m: s.UsageFactsIn) -> UsageFacts:
    return UsageFacts(
        provider=m.provider,
        model=m.model,
        input_tokens=m.input_tokens,
        output_tokens=m.output_tokens,
        cache_read_tokens=m.cache_read_tokens,
        cache_creation_tokens=m.cache_creation_tokens,
        reasoning_tokens=m.reasoning_tokens,
    )


def integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within ``low..high``."""
    text = params.get(name)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 20:
        raise InvalidRequestError(name, f"must be a whole number from {low} to {high}, got {_shown(text)}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidRequestError(name, f"must be a whole number from {low} to {high}, got {value}")
    return value


def scopes_from_query(params: Mapping[str, str]) -> ScopeSet:
    return ScopeSet(**{scope.value: params.get(scope.value, "") for scope in SCOPE_ORDER})


def scope_named(name: str, field: str) -> Scope:
    """A scope that budgets govern, by its word (``request`` is reached by a request budget's id)."""
    for scope in SCOPE_ORDER:
        if scope.value == name:
            return scope
    raise InvalidRequestError(
        field, f"unknown scope {_shown(name)}: expected organization, team, agent, workflow or user"
    )


def tiers(items: list[s.TierIn] | None) -> tuple[Tier, ...] | None:
    """Tiers as sent (``check_tiers`` orders and checks them, naming the tier it refuses)."""
    return None if items is None else tuple(Tier(t.at_percent, OnExceed(t.action)) for t in items)


def _seconds_ms(value: float | None, field: str) -> int | None:
    if value is None:
        return None
    ms = round(value * 1000)
    if ms <= 0:
        raise InvalidRequestError(field, f"must be at least 0.001, got {value}")
    return ms


# -- commands ----------------------------------------------------------------------------------------
def draft(m: s.BudgetIn) -> BudgetDraft:
    return BudgetDraft(
        id=m.id,
        name=m.name,
        scope=Scope(m.scope) if m.scope is not None else None,
        scope_id=m.scope_id,
        limit_usd=parse_usd(m.limit_usd, "limit_usd") if m.limit_usd is not None else None,
        period=m.period,
        time_zone=m.time_zone,
        on_exceed=OnExceed(m.on_exceed) if m.on_exceed is not None else None,
        alert_thresholds=tuple(m.alert_thresholds) if m.alert_thresholds is not None else None,
        tiers=tiers(m.tiers) or (),
        enabled=m.enabled,
    )


def patch(m: s.BudgetPatchIn) -> BudgetPatch:
    return BudgetPatch(
        name=m.name,
        limit_usd=parse_usd(m.limit_usd, "limit_usd") if m.limit_usd is not None else None,
        on_exceed=OnExceed(m.on_exceed) if m.on_exceed is not None else None,
        alert_thresholds=tuple(m.alert_thresholds) if m.alert_thresholds is not None else None,
        tiers=tiers(m.tiers),
        enabled=m.enabled,
    )


def reserve(m: s.ReserveIn, *, owner: str, idempotency_header: str | None = None) -> ReserveCommand:
    key = m.idempotency_key
    if idempotency_header is not None:
        if key and key != idempotency_header:
            raise InvalidRequestError(
                "idempotency_key", "differs from the Idempotency-Key header; send one of them"
            )
        key = idempotency_header
    ttl = _seconds_ms(m.ttl_seconds, "ttl_seconds")
    return ReserveCommand(
        owner=owner,
        scopes=scopes(m.scopes),
        estimate_usd=parse_usd(m.estimate_usd, "estimate_usd"),
        estimate_tokens=m.estimate_tokens,
        ttl_ms=ttl,
        idempotency_key=key,
        downgrade_estimate_usd=(
            parse_usd(m.downgrade_estimate_usd, "downgrade_estimate_usd")
            if m.downgrade_estimate_usd
            else None
        ),
        downgrade_of=m.downgrade_of,
        model=facts(m.model) if m.model is not None else None,
        request_budget=m.request_budget_id,
        service=m.service,
    )


def commit(reservation_id: str, m: s.CommitIn, *, owner: str) -> CommitCommand:
    return CommitCommand(
        owner=owner,
        reservation_id=reservation_id,
        actual_usd=parse_usd(m.actual_usd, "actual_usd"),
        actual_tokens=m.actual_tokens,
        usage=facts(m.usage),
    )


def record(m: s.RecordIn, *, owner: str) -> RecordUsageCommand:
    return RecordUsageCommand(
        owner=owner,
        usage_id=m.usage_id,
        scopes=scopes(m.scopes),
        cost_usd=parse_usd(m.cost_usd, "cost_usd"),
        total_tokens=m.total_tokens,
        usage=facts(m.usage),
        occurred_ms=parse_instant(m.occurred_at, "occurred_at") if m.occurred_at is not None else None,
        reservation_id=m.reservation_id,
        request_budget=m.request_budget_id,
        service=m.service,
    )


def open_request(m: s.RequestBudgetIn, *, owner: str) -> OpenRequestCommand:
    return OpenRequestCommand(
        request_id=m.id,
        name=m.name,
        parent_id=m.parent_id,
        limit_usd=parse_usd(m.limit_usd, "limit_usd") if m.limit_usd else None,
        fraction=parse_usd(m.fraction, "fraction") if m.fraction else None,
        tiers=tiers(m.tiers) or (),
        idle_ttl_ms=_seconds_ms(m.idle_ttl_seconds, "idle_ttl_seconds"),
        owner=owner,
    )


_DIMENSIONS = {d.value: d for d in Dimension}


def usage_query(params: Mapping[str, str], group_by: list[str]) -> UsageQuery:
    """``GET /v1/usage``: ``start``, ``end``, the scope ids, ``provider``, ``model``, ``group_by``
    (repeated or comma-separated) and ``time_zone``."""
    dims = []
    names = [n.strip() for value in group_by for n in value.split(",") if n.strip()]
    for i, name in enumerate(names):
        dim = _DIMENSIONS.get(name)
        if dim is None:
            raise InvalidRequestError(
                f"group_by[{i}]", f"unknown dimension {_shown(name)}: one of {', '.join(_DIMENSIONS)}"
            )
        dims.append(dim)
    start, end = params.get("start"), params.get("end")
    return UsageQuery(
        start_ms=parse_instant(start, "start") if start else None,
        end_ms=parse_instant(end, "end") if end else None,
        scopes=scopes_from_query(params),
        provider=params.get("provider", ""),
        model=params.get("model", ""),
        group_by=tuple(dims),
        time_zone=params.get("time_zone", ""),
    )
