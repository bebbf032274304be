"""Translation between the SDK's values and the budget API's messages (``paymaster.v1``).

Money goes out as plain decimal strings (never exponent notation) and comes back as ``Decimal``;
``BudgetInfo`` lines become the dictionaries ``BudgetExceededError.budget_info`` documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from paymaster._metering import MeasuredUsage
from paymaster.scopes import Scopes
from paymaster.v1 import budget_pb2 as pb

__all__ = [
    "ACTION_NAMES",
    "DECISION_NAMES",
    "budget_infos",
    "facts",
    "halting_budgets",
    "headroom",
    "request_budget_request",
    "scope_ids",
    "usd",
    "wire_usd",
]

DECISION_NAMES: Final = {
    pb.DECISION_ALLOW: "allow",
    pb.DECISION_DENY: "deny",
    pb.DECISION_DOWNGRADE: "downgrade",
}
ACTION_NAMES: Final = {
    pb.ON_EXCEED_WARN: "warn",
    pb.ON_EXCEED_BLOCK: "block",
    pb.ON_EXCEED_DOWNGRADE: "downgrade",
}
_ACTION_VALUES: Final = {name: value for value, name in ACTION_NAMES.items()}
SCOPE_NAMES: Final = {
    pb.SCOPE_ORGANIZATION: "organization",
    pb.SCOPE_TEAM: "team",
    pb.SCOPE_AGENT: "agent",
    pb.SCOPE_WORKFLOW: "workflow",
    pb.SCOPE_USER: "user",
    pb.SCOPE_REQUEST: "request",
}


def request_budget_request(
    *,
    request_id: str,
    name: str,
    parent_id: str,
    limit_usd: Decimal | None,
    fraction: Decimal | None,
    tiers: Sequence[tuple[int, str]],
    idle_ttl_s: float | None,
) -> Any:
    """An ``OpenRequestBudgetRequest``."""
    request = pb.OpenRequestBudgetRequest(
        id=request_id,
        name=name,
        parent_id=parent_id,
        limit_usd="" if limit_usd is None else wire_usd(limit_usd),
        fraction="" if fraction is None else wire_usd(fraction),
        tiers=[pb.Tier(at_percent=at, action=_ACTION_VALUES[action]) for at, action in tiers],
    )
    if idle_ttl_s is not None:
        request.idle_ttl.FromMilliseconds(int(idle_ttl_s * 1000))
    return request


def wire_usd(value: Decimal) -> str:
    """A plain decimal string (``0.0000001``, never ``1E-7``)."""
    return format(value, "f")


def usd(text: str) -> Decimal:
    """A wire amount as ``Decimal``; an empty or malformed one reads as zero (the sidecar never sends one)."""
    try:
        return Decimal(text) if text else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def scope_ids(scopes: Scopes) -> Any:
    return pb.ScopeIds(
        organization=scopes.organization or "",
        team=scopes.team or "",
        agent=scopes.agent or "",
        workflow=scopes.workflow or "",
        user=scopes.user or "",
    )


def facts(usage: MeasuredUsage | None) -> Any:
    if usage is None:
        return pb.UsageFacts()
    return pb.UsageFacts(
        provider=usage.provider or "",
        model=usage.model or "",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_creation_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def _when(ts: Any) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def budget_infos(lines: Iterable[Any]) -> list[dict[str, Any]]:
    """``BudgetInfo`` messages as the dictionaries ``BudgetExceededError.budget_info`` holds."""
    return [
        {
            "budget_id": i.budget_id,
            "budget_name": i.budget_name,
            "scope": SCOPE_NAMES.get(i.scope, "unspecified"),
            "scope_id": i.scope_id,
            "used_usd": usd(i.used_usd),
            "reserved_usd": usd(i.reserved_usd),
            "limit_usd": usd(i.limit_usd),
            "remaining_usd": usd(i.remaining_usd),
            "percentage": usd(i.percentage),
            "exceeded": i.exceeded,
            "action": ACTION_NAMES.get(i.action, "unspecified"),
            "period_start": _when(i.period_start),
            "period_end": _when(i.period_end),
            "tier": _tier(i.tier) if i.HasField("tier") else None,
            "tiers": [_tier(t) for t in i.tiers],
        }
        for i in lines
    ]


def _tier(t: Any) -> dict[str, Any]:
    return {"at": t.at_percent, "action": ACTION_NAMES.get(t.action, "unspecified")}


def block_level(line: Any) -> int | None:
    """The percentage of its limit past which a budget blocks: its first block tier, or 100 for a
    single-action block budget; ``None`` when it never blocks."""
    for tier in line.tiers:
        if tier.action == pb.ON_EXCEED_BLOCK:
            return int(tier.at_percent)
    if not line.tiers and line.action == pb.ON_EXCEED_BLOCK:
        return 100
    return None


def headroom(lines: Sequence[Any], held: Decimal = Decimal(0)) -> Decimal | None:
    """What every matching budget still has room for after ``held`` (this response's own hold);
    ``None`` when no budget matches (nothing limits the spend)."""
    if not lines:
        return None
    return min(usd(i.remaining_usd) for i in lines) - held


def halting_budgets(lines: Iterable[Any], pending: Decimal = Decimal(0)) -> list[Any]:
    """Block budgets a charge has taken past their limit (from a Commit or RecordUsage response);
    ``pending`` is spend of this run the sidecar holds as reserved but has not been charged yet."""
    out = []
    for i in lines:
        level = block_level(i)
        if level is None:
            continue
        if (level == 100 and i.exceeded) or (usd(i.used_usd) + pending) * 100 > usd(i.limit_usd) * level:
            out.append(i)
    return out


def describe_halt(line: Any, pending: Decimal = Decimal(0)) -> str:
    """``Block budget 'Team search' (team=search) exceeded: $0.30 used of its $0.25 limit``."""
    scope = SCOPE_NAMES.get(line.scope, "?")
    level = block_level(line)
    what = "Block budget" if not line.tiers else f"The block tier at {level}% of budget"
    if line.scope == pb.SCOPE_REQUEST:
        what = "Request budget" if not line.tiers else f"The block tier at {level}% of request budget"
    return (
        f"{what} {line.budget_name or line.budget_id!r} ({scope}={line.scope_id}) exceeded: "
        f"{_money(usd(line.used_usd) + pending)} used of its {_money(usd(line.limit_usd))} limit"
    )


def _money(value: Decimal) -> str:
    cents = value.quantize(Decimal("0.01"))
    return f"${cents}" if cents == value else f"${value.normalize():f}"
