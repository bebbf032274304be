"""The decision rules, as pure functions over the standing of each matching budget.

A store loads the standing of every budget a request matches inside its atomic operation, calls
``plan_reservation`` (or ``evaluate``), and applies the plan. Keeping the rules free of I/O means the
SQLite store and a clustered store decide identically, and the rules are tested without a server.

Rules: a budget *would be exceeded* when ``used + reserved + estimate > limit``, or when it is used up
and the estimate is zero (a zero estimate must not slip through an exhausted budget). Any block budget
that would be exceeded denies; otherwise any downgrade budget that would be exceeded downgrades;
warn budgets only warn.

Tiers generalise the rule. A budget's tiers are ordered steps ``(at percent, action)``; a request
*reaches* a tier when ``(used + reserved + estimate) * 100 > at * limit`` (``>=`` for a zero
estimate), and the highest tier it reaches gives the budget's action for that request. A budget
without tiers has exactly one, its ``on_exceed`` at 100%, which is the rule above word for word. Then,
as before: any budget whose reached tier blocks denies, else any whose tier downgrades downgrades, and
warn tiers only warn. The decision names the tier that decided (``Verdict.tier``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from collector_processor.domain.budgets import Budget, OnExceed, Scope, Tier
from collector_processor.domain.clock import ms_to_datetime
from collector_processor.domain.money import micros_to_usd
from collector_processor.domain.periods import Window
from collector_processor.domain.types import BudgetInfo, Decision

_HOUR_MS = 3_600_000
_BLOCK, _WARN, _DOWNGRADE = OnExceed.BLOCK, OnExceed.WARN, OnExceed.DOWNGRADE
_ALLOW, _DENY, _DOWNGRADE_DECISION = Decision.ALLOW, Decision.DENY, Decision.DOWNGRADE

__all__ = [
    "BudgetState",
    "Plan",
    "Verdict",
    "alert_message",
    "budget_infos",
    "charged_infos",
    "crossed_thresholds",
    "estimate_infos",
    "evaluate",
    "exceeds",
    "plan_reservation",
    "projection",
    "reached_tier",
    "tier_by_spend",
]


@dataclass(kw_only=True, slots=True)
class BudgetState:
    """One matching budget's standing for one entity, in micro-dollars, read inside a store transaction."""

    budget: Budget
    """The budget."""
    entity: str
    """The entity the request named for the budget's scope."""
    limit: int
    """The limit, micro-dollars."""
    used: int
    """Committed spend in the current period or window."""
    reserved: int
    """Held by reservations in flight."""
    window: Window
    """The period or window measured."""


@dataclass(kw_only=True, slots=True)
class Verdict:
    """The evaluation of one estimate against a list of states."""

    decision: Decision
    """allow, deny or downgrade."""
    exceeded: tuple[bool, ...]
    """Per state: would this estimate take it past its limit."""
    deciding: BudgetState | None
    """The budget that denied or downgraded."""
    reason: str
    """Why, for an operator."""
    warnings: tuple[str, ...]
    """One sentence per exceeded warn budget."""
    tiers: tuple[Tier | None, ...] = ()
    """Per state: the highest tier this estimate reaches (``None``: none); empty when none reaches any."""
    tier: Tier | None = None
    """The tier of the deciding budget that decided (for a single-action budget, its one tier)."""


@dataclass(kw_only=True, slots=True)
class Plan:
    """What a reservation will do: the decision and the amount to hold on every matching budget."""

    decision: Decision
    """allow, deny or downgrade."""
    hold: int
    """Micro-dollars to hold; 0 for deny."""
    verdict: Verdict
    """The evaluation the plan rests on (of the held amount)."""
    awaiting_downgrade_estimate: bool = False
    """Downgrade without a cheaper estimate: the full estimate is held until the caller re-sends one."""


def exceeds(state: BudgetState, estimate: int) -> bool:
    projected = state.used + state.reserved + estimate
    return projected > state.limit or (estimate == 0 and projected >= state.limit)


def _past(projected: int, limit: int, at: int, zero: bool) -> bool:
    """``projected`` is past ``at`` percent of ``limit`` (or reaches it, for a zero estimate)."""
    lhs, rhs = projected * 100, at * limit
    return lhs > rhs or (zero and lhs >= rhs)


def reached_tier(state: BudgetState, estimate: int) -> Tier | None:
    """The highest tier of the state's budget that ``used + reserved + estimate`` reaches."""
    projected = state.used + state.reserved + estimate
    reached = None
    for tier in state.budget.effective_tiers:  # ascending: past a tier means past every one below it
        if not _past(projected, state.limit, tier.at, estimate == 0):
            break
        reached = tier
    return reached


def tier_by_spend(budget: Budget, used: int, limit: int) -> Tier | None:
    """The highest tier committed spend ``used`` is past (as ``exceeded`` in a charge's answer: strictly)."""
    reached = None
    for tier in budget.effective_tiers:
        if not _past(used, limit, tier.at, False):
            break
        reached = tier
    return reached


def _tiers_of(
    states: Sequence[BudgetState], flags: tuple[bool, ...], estimate: int
) -> tuple[Tier | None, ...]:
    # A single-action budget reaches its one tier exactly when it would be exceeded: no arithmetic twice.
    return tuple(
        reached_tier(s, estimate) if s.budget.tiers else (s.budget.effective_tiers[0] if flag else None)
        for s, flag in zip(states, flags, strict=True)
    )


def evaluate(states: Sequence[BudgetState], estimate: int, *, on_cheaper_path: bool = False) -> Verdict:
    """Apply the decision rules to ``estimate``. ``on_cheaper_path``: the caller already downgraded."""
    flags = tuple(exceeds(s, estimate) for s in states)
    tiered = any(s.budget.tiers for s in states)
    if not tiered and not any(flags):
        return _allowed(states, flags, estimate, on_cheaper_path)
    tiers = _tiers_of(states, flags, estimate)
    if not any(tiers):
        return _allowed(states, flags, estimate, on_cheaper_path)
    reached = [(s, t) for s, t in zip(states, tiers, strict=True) if t is not None]
    blockers = [(s, t) for s, t in reached if t.action is _BLOCK]
    warnings = tuple(_warning(s, t, estimate) for s, t in reached if t.action is _WARN)
    if blockers:
        state, tier = blockers[0]
        return Verdict(
            decision=_DENY,
            exceeded=flags,
            deciding=state,
            reason=_deny_reason(state, tier, estimate, len(blockers) - 1),
            warnings=warnings,
            tiers=tiers,
            tier=tier,
        )
    downgraders = [(s, t) for s, t in reached if t.action is _DOWNGRADE]
    if downgraders:
        state, tier = downgraders[0]
        return Verdict(
            decision=_DOWNGRADE_DECISION,
            exceeded=flags,
            deciding=state,
            reason=_downgrade_reason(state, tier, estimate, on_cheaper_path),
            warnings=warnings,
            tiers=tiers,
            tier=tier,
        )
    return _allowed(states, flags, estimate, on_cheaper_path, warnings, tiers)


def _allowed(
    states: Sequence[BudgetState],
    flags: tuple[bool, ...],
    estimate: int,
    on_cheaper_path: bool,
    warnings: tuple[str, ...] = (),
    tiers: tuple[Tier | None, ...] = (),
) -> Verdict:
    if on_cheaper_path:
        reason = f"Running the cheaper path at {_usd(estimate)}; it fits every matching budget."
        return Verdict(
            decision=_DOWNGRADE_DECISION,
            exceeded=flags,
            deciding=None,
            reason=reason,
            warnings=warnings,
            tiers=tiers,
        )
    reason = (
        f"Within all {len(states)} matching budget(s)."
        if states
        else "No enabled budget matches these scopes."
    )
    return Verdict(
        decision=_ALLOW,
        exceeded=flags,
        deciding=None,
        reason=reason,
        warnings=warnings,
        tiers=tiers,
    )


def plan_reservation(
    states: Sequence[BudgetState], estimate: int, *, downgrade_estimate: int | None, resend: bool
) -> Plan:
    """Decide a reservation, including both halves of the downgrade exchange (see the proto)."""
    if resend:
        verdict = evaluate(states, estimate, on_cheaper_path=True)
        hold = 0 if verdict.decision is _DENY else estimate
        return Plan(decision=verdict.decision, hold=hold, verdict=verdict)
    verdict = evaluate(states, estimate)
    if verdict.decision is _DENY:
        return Plan(decision=_DENY, hold=0, verdict=verdict)
    if verdict.decision is _ALLOW:
        return Plan(decision=_ALLOW, hold=estimate, verdict=verdict)
    if downgrade_estimate is None:
        return Plan(
            decision=_DOWNGRADE_DECISION, hold=estimate, verdict=verdict, awaiting_downgrade_estimate=True
        )
    cheaper = evaluate(states, downgrade_estimate, on_cheaper_path=True)
    if cheaper.decision is _DENY:
        return Plan(decision=_DENY, hold=0, verdict=cheaper)
    reason = f"{verdict.reason} Holding the cheaper path's estimate {_usd(downgrade_estimate)}."
    return Plan(
        decision=_DOWNGRADE_DECISION,
        hold=downgrade_estimate,
        verdict=Verdict(
            decision=_DOWNGRADE_DECISION,
            exceeded=cheaper.exceeded,
            deciding=verdict.deciding,
            reason=reason,
            warnings=cheaper.warnings,
            tiers=cheaper.tiers,
            tier=verdict.tier,
        ),
    )


def budget_infos(
    states: Sequence[BudgetState],
    exceeded: Sequence[bool],
    tiers: Sequence[Tier | None] = (),
) -> tuple[BudgetInfo, ...]:
    """Each state as a request sees it; ``tiers`` (per state, the tier reached) when any was."""
    if not tiers:
        return tuple(_info(s, flag, None) for s, flag in zip(states, exceeded, strict=True))
    return tuple(_info(s, flag, t) for s, flag, t in zip(states, exceeded, tiers, strict=True))


def estimate_infos(states: Sequence[BudgetState], estimate: int) -> tuple[BudgetInfo, ...]:
    """Each state as a request of ``estimate`` would see it (a replayed answer's standing now)."""
    return tuple(_info(s, exceeds(s, estimate), reached_tier(s, estimate)) for s in states)


def charged_infos(states: Sequence[BudgetState]) -> tuple[BudgetInfo, ...]:
    """The standing of budgets after a charge: exceeded when spend is past the limit, and the tier
    committed spend has reached."""
    return tuple(_info(s, s.used > s.limit, tier_by_spend(s.budget, s.used, s.limit)) for s in states)


def _info(s: BudgetState, exceeded: bool, tier: Tier | None) -> BudgetInfo:
    b = s.budget
    return BudgetInfo(
        budget_id=b.id,
        budget_name=b.name,
        scope=b.scope,
        scope_id=s.entity,
        used_micros=s.used,
        reserved_micros=s.reserved,
        limit_micros=s.limit,
        exceeded=exceeded,
        action=b.on_exceed,
        period_start_ms=s.window.start_ms,
        period_end_ms=s.window.end_ms,
        tier=tier,
        tiers=b.tiers,
    )


def crossed_thresholds(thresholds: Sequence[int], used: int, limit: int) -> list[int]:
    """The thresholds (percent) that committed spend ``used`` has reached."""
    return [t for t in thresholds if used * 100 >= t * limit]


_CONSEQUENCE = {
    OnExceed.WARN: "requests past it are admitted with a warning",
    OnExceed.DOWNGRADE: "requests past it are downgraded",
    OnExceed.BLOCK: "requests past it are denied",
}


def alert_message(budget: Budget, entity: str, threshold: int, used: int, limit: int, window: Window) -> str:
    tier = budget.tier_at(threshold)
    if tier is not None:
        return (
            f"Budget {budget.label(entity)} reached its {tier.action.value} tier at {threshold}% of its "
            f"{_usd(limit)} {_limit_words(budget)}: {_usd(used)} spent {_period_words(budget, window)}; "
            f"{_CONSEQUENCE[tier.action]}."
        )
    return (
        f"Budget {budget.label(entity)} reached {threshold}% of its {_usd(limit)} {_limit_words(budget)}: "
        f"{_usd(used)} spent {_period_words(budget, window)}; on_exceed={budget.on_exceed.value}."
    )


def _limit_words(budget: Budget) -> str:
    return "request limit" if budget.scope is Scope.REQUEST else f"{budget.period.spec} limit"


def _tier_words(s: BudgetState, tier: Tier | None) -> str:
    """How a reason names what decided: the budget, and for a tiered one the tier."""
    if tier is None or not s.budget.tiers:
        return ""
    return f"the {tier.action.value} tier at {tier.at}% of "


def _deny_reason(s: BudgetState, tier: Tier | None, estimate: int, others: int) -> str:
    also = f" ({others} other block budget(s) would be exceeded too)" if others else ""
    kind = "budget" if s.budget.tiers else "block budget"
    if s.budget.scope is Scope.REQUEST:
        kind = "request budget"
        fix = (
            "Open the request with a larger limit, send a smaller estimate, or end the request here: "
            "a request budget does not reset"
        )
    else:
        fix = (
            f"Raise its limit (paymaster budgets update {s.budget.id} --limit ...), send a smaller estimate, "
            f"or {_wait_words(s.budget, s.window)}"
        )
    return (
        f"Denied by {_tier_words(s, tier)}{kind} {s.budget.label(s.entity)}{also}: "
        f"{_figures(s, estimate, tier)} {_period_words(s.budget, s.window)}. {fix}."
    )


def _downgrade_reason(s: BudgetState, tier: Tier | None, estimate: int, on_cheaper_path: bool) -> str:
    head = (
        f"Downgrade asked by {_tier_words(s, tier)}budget {s.budget.label(s.entity)}: "
        f"{_figures(s, estimate, tier)} {_period_words(s.budget, s.window)}."
    )
    if on_cheaper_path:
        return f"{head} The cheaper path is admitted past the limit; pair the budget with a block budget for a hard cap."
    return (
        f"{head} Run the cheaper path and re-send its estimate with downgrade_of, or release the reservation."
    )


def _warning(s: BudgetState, tier: Tier, estimate: int) -> str:
    if s.budget.tiers:
        return (
            f"Budget {s.budget.label(s.entity)} reached its warn tier at {tier.at}%: "
            f"{_figures(s, estimate, tier)} {_period_words(s.budget, s.window)}."
        )
    return f"Warn budget {s.budget.label(s.entity)} would be exceeded: {_figures(s, estimate)} {_period_words(s.budget, s.window)}."


def _figures(s: BudgetState, estimate: int, tier: Tier | None = None) -> str:
    total = s.used + s.reserved + estimate
    head = f"used {_usd(s.used)} + reserved {_usd(s.reserved)} + estimate {_usd(estimate)} = {_usd(total)}"
    if tier is not None and s.budget.tiers:
        relation = "exceeds" if total * 100 > tier.at * s.limit else "reaches"
        level = Decimal(s.limit * tier.at).scaleb(-2).quantize(Decimal(1), rounding=ROUND_CEILING)
        return f"{head} {relation} {tier.at}% of the limit {_usd(s.limit)} ({_usd(int(level))})"
    relation = "exceeds" if total > s.limit else "reaches"
    return f"{head} {relation} the limit {_usd(s.limit)}"


def _period_words(budget: Budget, window: Window) -> str:
    if budget.scope is Scope.REQUEST:
        return "over the request's life"
    if budget.period.is_rolling:
        return f"in the {budget.period.spec} window"
    start = ms_to_datetime(window.start_ms).strftime("%Y-%m-%d %H:%M")
    end = ms_to_datetime(window.end_ms).strftime("%Y-%m-%d %H:%M")
    return f"in the {budget.period.spec} period {start} to {end} UTC ({budget.time_zone})"


def _wait_words(budget: Budget, window: Window) -> str:
    if budget.period.is_rolling:
        return "wait until older spend leaves the window"
    return f"wait for the reset at {ms_to_datetime(window.end_ms).strftime('%Y-%m-%d %H:%M')} UTC"


def _usd(micros: int) -> str:
    value = micros_to_usd(micros)
    cents = value.quantize(Decimal("0.01"))
    return f"${cents}" if cents == value else f"${value.normalize():f}"


def projection(state: BudgetState, now_ms: int) -> tuple[Decimal, Decimal]:
    """Burn rate per hour and spend at period end if it holds; exact decimals rounded up to micro-dollars.

    The burn rate is committed spend per hour since the period started (a rolling window: over the
    window), and a rolling window projects its current spend."""
    used = Decimal(state.used)
    micro = Decimal(1)
    if state.budget.period.is_rolling:
        window = state.window.end_ms - state.window.start_ms
        burn = (used * _HOUR_MS / window).quantize(micro, rounding=ROUND_CEILING)
        return micros_to_usd(int(burn)), micros_to_usd(state.used)
    elapsed = max(now_ms - state.window.start_ms, 1000)  # a second in, not a division by zero
    length = state.window.end_ms - state.window.start_ms
    burn = (used * _HOUR_MS / elapsed).quantize(micro, rounding=ROUND_CEILING)
    projected = (used * length / elapsed).quantize(micro, rounding=ROUND_CEILING)
    return micros_to_usd(int(burn)), micros_to_usd(int(projected))
