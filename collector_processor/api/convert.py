"""Translation between the ``paymaster.v1`` protobuf messages and the ledger's domain types.

This is the only sidecar module besides the servicer that imports generated code. Parsing names the
offending field in every error (``InvalidRequestError('budget.limit_usd', ...)``) so the servicer can
answer ``INVALID_ARGUMENT`` with a message a client can act on; formatting turns ``Decimal`` into the
six-place decimal strings of the wire format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from collector_processor.domain.budgets import (
    Budget,
    BudgetDraft,
    BudgetPatch,
    OnExceed,
    Scope,
    ScopeSet,
    Tier,
)
from collector_processor.domain.money import (
    format_micros,
    format_percentage,
    format_percentage_of,
    format_usd,
    parse_usd,
)
from collector_processor.domain.requests import OpenRequestCommand, RequestStatus
from collector_processor.domain.types import (
    Alert,
    BudgetInfo,
    BudgetStatus,
    CheckOutcome,
    CommitCommand,
    CommitOutcome,
    Decision,
    RecordUsageCommand,
    RecordUsageOutcome,
    ReleaseOutcome,
    ReservationState,
    ReserveCommand,
    ReserveOutcome,
    UsageFacts,
)
from collector_processor.domain.usage import Dimension, UsageQuery, UsageReport, UsageTotals
from collector_processor.errors import FailedPreconditionError, InvalidRequestError
from paymaster.v1 import budget_pb2 as pb

SCOPE_TO_PB = {
    Scope.ORGANIZATION: pb.SCOPE_ORGANIZATION,
    Scope.TEAM: pb.SCOPE_TEAM,
    Scope.AGENT: pb.SCOPE_AGENT,
    Scope.WORKFLOW: pb.SCOPE_WORKFLOW,
    Scope.USER: pb.SCOPE_USER,
    Scope.REQUEST: pb.SCOPE_REQUEST,
}
SCOPE_FROM_PB: dict[int, Scope] = {int(v): k for k, v in SCOPE_TO_PB.items()}
ACTION_TO_PB = {
    OnExceed.WARN: pb.ON_EXCEED_WARN,
    OnExceed.BLOCK: pb.ON_EXCEED_BLOCK,
    OnExceed.DOWNGRADE: pb.ON_EXCEED_DOWNGRADE,
}
ACTION_FROM_PB: dict[int, OnExceed] = {int(v): k for k, v in ACTION_TO_PB.items()}
DECISION_TO_PB = {
    Decision.ALLOW: pb.DECISION_ALLOW,
    Decision.DENY: pb.DECISION_DENY,
    Decision.DOWNGRADE: pb.DECISION_DOWNGRADE,
}
STATE_TO_PB = {
    ReservationState.HELD: pb.RESERVATION_STATE_HELD,
    ReservationState.COMMITTED: pb.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: pb.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: pb.RESERVATION_STATE_EXPIRED,
}
DIMENSION_FROM_PB = {getattr(pb, f"DIMENSION_{d.name}"): d for d in Dimension}


# -- small pieces ------------------------------------------------------------------------------------
def scope_from_pb(value: int, field: str, *, allow_unspecified: bool = False) -> Scope | None:
    if value == pb.SCOPE_UNSPECIFIED and allow_unspecified:
        return None
    try:
        return SCOPE_FROM_PB[value]
    except KeyError:
        raise InvalidRequestError(
            field, f"unknown scope {value}: expected organization, team, agent, workflow or user"
        ) from None


def action_from_pb(value: int, field: str) -> OnExceed:
    try:
        return ACTION_FROM_PB[value]
    except KeyError:
        raise InvalidRequestError(
            field, f"unknown action {value}: expected warn, block or downgrade"
        ) from None


def tiers_from_pb(items: Iterable[pb.Tier], field: str) -> tuple[Tier, ...]:
    """Tiers as sent (``check_tiers`` orders and checks them); an unknown action names its tier."""
    return tuple(
        Tier(t.at_percent, action_from_pb(t.action, f"{field}[{i}].action")) for i, t in enumerate(items)
    )


def tier_to_pb(tier: Tier) -> pb.Tier:
    return pb.Tier(at_percent=tier.at, action=ACTION_TO_PB[tier.action])


def scopes_from_pb(msg: pb.ScopeIds) -> ScopeSet:
    return ScopeSet(
        organization=msg.organization, team=msg.team, agent=msg.agent, workflow=msg.workflow, user=msg.user
    )


def facts_from_pb(msg: pb.UsageFacts) -> UsageFacts:
    return UsageFacts(
        provider=msg.provider,
        model=msg.model,
        input_tokens=msg.input_tokens,
        output_tokens=msg.output_tokens,
        cache_read_tokens=msg.cache_read_tokens,
        cache_creation_tokens=msg.cache_creation_tokens,
        reasoning_tokens=msg.reasoning_tokens,
    )


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


# The range google.protobuf.Timestamp defines: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def ts_to_ms(msg: timestamp_pb2.Timestamp, field: str) -> int:
    """Milliseconds since the epoch; ``field`` names a timestamp outside the range a Timestamp defines."""
    if not _MIN_SECONDS <= msg.seconds <= _MAX_SECONDS:
        raise InvalidRequestError(
            field, f"must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, got {msg.seconds} s"
        )
    if not 0 <= msg.nanos <= 999_999_999:
        raise InvalidRequestError(field, f"nanos must be 0 to 999,999,999, got {msg.nanos}")
    return int(msg.seconds * 1000 + msg.nanos // 1_000_000)


def ttl_ms(msg: duration_pb2.Duration, field: str) -> int:
    ms = int(msg.seconds * 1000 + msg.nanos // 1_000_000)
    if ms <= 0:
        raise InvalidRequestError(field, f"must be positive, got {msg.seconds}s {msg.nanos}ns")
    return ms


# -- budgets ---------------------------------------------------------------------------------------
def draft_from_pb(msg: pb.Budget) -> BudgetDraft:
    tiers = tiers_from_pb(msg.tiers, "budget.tiers")
    unspecified = msg.on_exceed == pb.ON_EXCEED_UNSPECIFIED and tiers
    return BudgetDraft(
        id=msg.id,
        name=msg.name,
        scope=scope_from_pb(msg.scope, "budget.scope"),
        scope_id=msg.scope_id if msg.HasField("scope_id") else None,
        limit_usd=parse_usd(msg.limit_usd, "budget.limit_usd"),
        period=msg.period,
        time_zone=msg.time_zone,
        on_exceed=None if unspecified else action_from_pb(msg.on_exceed, "budget.on_exceed"),
        alert_thresholds=tuple(msg.alert_thresholds) or None,
        tiers=tiers,
        enabled=msg.enabled if msg.HasField("enabled") else True,
    )


def patch_from_pb(msg: pb.UpdateBudgetRequest) -> BudgetPatch:
    return BudgetPatch(
        name=msg.name if msg.HasField("name") else None,
        limit_usd=parse_usd(msg.limit_usd, "limit_usd") if msg.HasField("limit_usd") else None,
        on_exceed=action_from_pb(msg.on_exceed, "on_exceed") if msg.HasField("on_exceed") else None,
        alert_thresholds=tuple(msg.alert_thresholds.percent) if msg.HasField("alert_thresholds") else None,
        tiers=tiers_from_pb(msg.tiers.tiers, "tiers") if msg.HasField("tiers") else None,
        enabled=msg.enabled if msg.HasField("enabled") else None,
    )


def budget_to_pb(b: Budget) -> pb.Budget:
    msg = pb.Budget(
        id=b.id,
        name=b.name,
        scope=SCOPE_TO_PB[b.scope],
        limit_usd=format_usd(b.limit_usd),
        period=b.period.spec,
        time_zone=b.time_zone,
        on_exceed=ACTION_TO_PB[b.on_exceed],
        alert_thresholds=b.alert_thresholds,
        enabled=b.enabled,
        declared_in_config=b.declared_in_config,
        created_at=ts(b.created_ms),
        updated_at=ts(b.updated_ms),
        tiers=[tier_to_pb(t) for t in b.tiers],
    )
    if b.scope_id is not None:
        msg.scope_id = b.scope_id
    return msg


# -- decisions and spend ---------------------------------------------------------------------------
def add_infos(target: Any, infos: Iterable[BudgetInfo]) -> None:
    """Append ``infos`` to a repeated ``BudgetInfo`` field (filling in place: this is on every call's path)."""
    for i in infos:
        msg = target.add(
            budget_id=i.budget_id,
            budget_name=i.budget_name,
            scope=SCOPE_TO_PB[i.scope],
            scope_id=i.scope_id,
            used_usd=format_micros(i.used_micros),
            reserved_usd=format_micros(i.reserved_micros),
            limit_usd=format_micros(i.limit_micros),
            remaining_usd=format_micros(i.remaining_micros),
            percentage=format_percentage_of(i.used_micros, i.limit_micros),
            exceeded=i.exceeded,
            action=ACTION_TO_PB[i.action],
        )
        _set_ts(msg.period_start, i.period_start_ms)
        _set_ts(msg.period_end, i.period_end_ms)
        if i.tier is not None:
            msg.tier.at_percent = i.tier.at
            msg.tier.action = ACTION_TO_PB[i.tier.action]
        if i.tiers:
            msg.tiers.extend(tier_to_pb(t) for t in i.tiers)


def _set_ts(msg: timestamp_pb2.Timestamp, ms: int) -> None:
    msg.seconds = ms // 1000
    if ms % 1000:
        msg.nanos = (ms % 1000) * 1_000_000


def check_to_pb(o: CheckOutcome) -> pb.CheckBudgetResponse:
    msg = pb.CheckBudgetResponse(
        decision=DECISION_TO_PB[o.decision],
        deciding_budget_id=o.deciding_budget_id,
        reason=o.reason,
        warn=bool(o.warnings),
        warnings=o.warnings,
    )
    if o.deciding_tier is not None:
        msg.deciding_tier.CopyFrom(tier_to_pb(o.deciding_tier))
    add_infos(msg.budget_info, o.budget_info)
    return msg


def reserve_from_pb(msg: pb.ReserveRequest, *, owner: str = "") -> ReserveCommand:
    return ReserveCommand(
        owner=owner,
        scopes=scopes_from_pb(msg.scopes),
        estimate_usd=parse_usd(msg.estimate_usd, "estimate_usd"),
        estimate_tokens=msg.estimate_tokens,
        ttl_ms=ttl_ms(msg.ttl, "ttl") if msg.HasField("ttl") else None,
        idempotency_key=msg.idempotency_key,
        downgrade_estimate_usd=(
            parse_usd(msg.downgrade_estimate_usd, "downgrade_estimate_usd")
            if msg.downgrade_estimate_usd
            else None
        ),
        downgrade_of=msg.downgrade_of,
        model=facts_from_pb(msg.model) if msg.HasField("model") else None,
        request_budget=msg.request_budget_id,
        service=msg.service,
    )


def reserve_to_pb(o: ReserveOutcome) -> pb.ReserveResponse:
    msg = pb.ReserveResponse(
        decision=DECISION_TO_PB[o.decision],
        reservation_id=o.reservation_id,
        reserved_usd=format_usd(o.reserved_usd),
        deciding_budget_id=o.deciding_budget_id,
        reason=o.reason,
        warn=bool(o.warnings),
        warnings=o.warnings,
        awaiting_downgrade_estimate=o.awaiting_downgrade_estimate,
        replayed=o.replayed,
    )
    if o.deciding_tier is not None:
        msg.deciding_tier.CopyFrom(tier_to_pb(o.deciding_tier))
    if o.expires_ms:
        _set_ts(msg.expires_at, o.expires_ms)
    add_infos(msg.budget_info, o.budget_info)
    return msg


def commit_from_pb(msg: pb.CommitRequest, *, owner: str = "") -> CommitCommand:
    return CommitCommand(
        owner=owner,
        reservation_id=msg.reservation_id,
        actual_usd=parse_usd(msg.actual_usd, "actual_usd"),
        actual_tokens=msg.actual_tokens,
        usage=facts_from_pb(msg.usage),
    )


def commit_to_pb(o: CommitOutcome) -> pb.CommitResponse:
    msg = pb.CommitResponse(
        charged_usd=format_usd(o.charged_usd),
        released_usd=format_usd(o.released_usd),
        duplicate=o.duplicate,
        late=o.late,
    )
    add_infos(msg.budget_info, o.budget_info)
    return msg


def release_to_pb(o: ReleaseOutcome) -> pb.ReleaseResponse:
    return pb.ReleaseResponse(released_usd=format_usd(o.released_usd), state=STATE_TO_PB[o.state])


def record_from_pb(msg: pb.RecordUsageRequest, *, owner: str = "") -> RecordUsageCommand:
    return RecordUsageCommand(
        owner=owner,
        usage_id=msg.usage_id,
        scopes=scopes_from_pb(msg.scopes),
        cost_usd=parse_usd(msg.cost_usd, "cost_usd"),
        total_tokens=msg.total_tokens,
        usage=facts_from_pb(msg.usage),
        occurred_ms=ts_to_ms(msg.occurred_at, "occurred_at") if msg.HasField("occurred_at") else None,
        reservation_id=msg.reservation_id,
        request_budget=msg.request_budget_id,
        service=msg.service,
    )


def record_to_pb(o: RecordUsageOutcome) -> pb.RecordUsageResponse:
    msg = pb.RecordUsageResponse(charged_usd=format_usd(o.charged_usd), duplicate=o.duplicate)
    add_infos(msg.budget_info, o.budget_info)
    return msg


# -- reports and alerts ----------------------------------------------------------------------------
def status_to_pb(s: BudgetStatus) -> pb.BudgetStatus:
    return pb.BudgetStatus(
        budget=budget_to_pb(s.budget),
        scope_id=s.scope_id,
        used_usd=format_usd(s.used_usd),
        reserved_usd=format_usd(s.reserved_usd),
        remaining_usd=format_usd(s.remaining_usd),
        percentage=format_percentage(s.percentage),
        exceeded=s.exceeded,
        period_start=ts(s.period_start_ms),
        period_end=ts(s.period_end_ms),
        burn_rate_usd_per_hour=format_usd(s.burn_rate_usd_per_hour),
        projected_usd=format_usd(s.projected_usd),
        alerts_fired=s.alerts_fired,
    )


# -- request budgets -------------------------------------------------------------------------------
def open_request_from_pb(msg: pb.OpenRequestBudgetRequest, *, owner: str = "") -> OpenRequestCommand:
    fraction = None
    if msg.fraction:
        fraction = parse_usd(msg.fraction, "fraction")  # the same exact-decimal rule as money
    return OpenRequestCommand(
        request_id=msg.id,
        name=msg.name,
        parent_id=msg.parent_id,
        limit_usd=parse_usd(msg.limit_usd, "limit_usd") if msg.limit_usd else None,
        fraction=fraction,
        tiers=tiers_from_pb(msg.tiers, "tiers"),
        idle_ttl_ms=ttl_ms(msg.idle_ttl, "idle_ttl") if msg.HasField("idle_ttl") else None,
        owner=owner,
    )


def request_to_pb(r: RequestStatus) -> pb.RequestBudget:
    b = r.budget
    msg = pb.RequestBudget(
        id=b.id,
        name=b.name,
        ancestor_ids=b.chain,
        limit_usd=format_micros(b.limit_micros),
        tiers=[tier_to_pb(t) for t in b.tiers],
        used_usd=format_micros(r.used_micros),
        reserved_usd=format_micros(r.reserved_micros),
        remaining_usd=format_micros(max(b.limit_micros - r.used_micros - r.reserved_micros, 0)),
        opened_at=ts(b.created_ms),
        expires_at=ts(r.expires_ms),
        by_service=[
            pb.ServiceSpend(service=name, used_usd=format_micros(used)) for name, used in r.by_service
        ],
        clamped=r.clamped,
    )
    msg.idle_ttl.FromMilliseconds(b.idle_ttl_ms)
    return msg


def request_status_to_pb(r: RequestStatus) -> pb.BudgetStatus:
    """A request budget's standing as a ``BudgetStatus`` (scope ``request``, period ``request``)."""
    state = r.state()
    budget = state.budget
    msg = pb.BudgetStatus(
        budget=budget_to_pb(budget),
        scope_id=budget.id,
        used_usd=format_micros(r.used_micros),
        reserved_usd=format_micros(r.reserved_micros),
        remaining_usd=format_micros(max(state.limit - r.used_micros - r.reserved_micros, 0)),
        percentage=format_percentage_of(r.used_micros, state.limit),
        exceeded=r.used_micros >= state.limit,
        period_start=ts(budget.created_ms),
        period_end=ts(r.expires_ms),
        burn_rate_usd_per_hour="0.000000",
        projected_usd=format_micros(r.used_micros),
        request=request_to_pb(r),
    )
    msg.budget.ClearField("updated_at")
    return msg


def usage_query_from_pb(msg: pb.GetUsageRequest) -> UsageQuery:
    group_by = []
    for i, value in enumerate(msg.group_by):
        if value not in DIMENSION_FROM_PB:
            raise InvalidRequestError(f"group_by[{i}]", f"unknown dimension {value}")
        group_by.append(DIMENSION_FROM_PB[value])
    return UsageQuery(
        start_ms=ts_to_ms(msg.start, "start") if msg.HasField("start") else None,
        end_ms=ts_to_ms(msg.end, "end") if msg.HasField("end") else None,
        scopes=scopes_from_pb(msg.scopes),
        provider=msg.provider,
        model=msg.model,
        group_by=tuple(group_by),
        time_zone=msg.time_zone,
    )


_MAX_INT64 = 2**63 - 1


def _totals_to_pb(t: UsageTotals) -> pb.UsageTotals:
    for name in ("input_tokens", "output_tokens", "total_tokens", "records"):
        if getattr(t, name) > _MAX_INT64:
            # The sums are exact; the wire's int64 cannot carry this one. A narrower report can.
            raise FailedPreconditionError(
                f"the report's {name} add up to {getattr(t, name):,}, past the int64 range of "
                "UsageTotals; ask for a shorter time range or a narrower filter"
            )
    return pb.UsageTotals(
        cost_usd=format_usd(t.cost_usd),
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
        total_tokens=t.total_tokens,
        records=t.records,
    )


def usage_to_pb(r: UsageReport) -> pb.GetUsageResponse:
    return pb.GetUsageResponse(
        total=_totals_to_pb(r.total),
        rows=[pb.UsageRow(key=row.key, totals=_totals_to_pb(row.totals)) for row in r.rows],
    )


def alert_to_pb(a: Alert) -> pb.Alert:
    return pb.Alert(
        sequence=a.sequence,
        alert_id=a.alert_id,
        kind=pb.ALERT_KIND_THRESHOLD,
        budget_id=a.budget_id,
        budget_name=a.budget_name,
        scope=SCOPE_TO_PB[a.scope],
        scope_id=a.scope_id,
        threshold_percent=a.threshold_percent,
        used_usd=format_usd(a.used_usd),
        limit_usd=format_usd(a.limit_usd),
        percentage=format_percentage(a.percentage),
        action=ACTION_TO_PB[a.action],
        period_start=ts(a.period_start_ms),
        period_end=ts(a.period_end_ms),
        fired_at=ts(a.fired_ms),
        message=a.message,
        tier=a.tier,
    )
