"""The decision rules, as pure functions over the standing of each matching budget.

A store loads the standing of every budget a request matches inside its atomic operation, calls
``plan_reservation`` (or ``evaluate``), and applies the plan. Keeping the rules free of I/O means the
SQLite store and a clustered store decide identically, and the rules are tested without a server.

Rules: a budget *would be exceeded* when ``used + reserved + estimate > limit``, or when it is used up
and the estimate is zero (a zero estimate must not slip through an exhausted budget). Any block budget
that would be exceeded denies; otherwise any downgrade budget that would be exceeded downgrades;
warn budgets only warn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from collector_processor.domain.budgets import Budget, OnExceed
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
    "crossed_thresholds",
    "evaluate",
    "exceeds",
    "plan_reservation",
    "projection",
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


def evaluate(states: Sequence[BudgetState], estimate: int, *, on_cheaper_path: bool = False) -> Verdict:
    """Apply the decision rules to ``estimate``. ``on_cheaper_path``: the caller already downgraded."""
    flags = tuple(exceeds(s, estimate) for s in states)
    if not any(flags):
        return _allowed(states, flags, estimate, on_cheaper_path)
    over = [s for s, flag in zip(states, flags, strict=True) if flag]
    blockers = [s for s in over if s.budget.on_exceed is _BLOCK]
    warnings = tuple(_warning(s, estimate) for s in over if s.budget.on_exceed is _WARN)
    if blockers:
        return Verdict(
            decision=_DENY,
            exceeded=flags,
            deciding=blockers[0],
            reason=_deny_reason(blockers[0], estimate, len(blockers) - 1),
            warnings=warnings,
        )
    downgraders = [s for s in over if s.budget.on_exceed is _DOWNGRADE]
    if downgraders:
        return Verdict(
            decision=_DOWNGRADE_DECISION,
            exceeded=flags,
            deciding=downgraders[0],
            reason=_downgrade_reason(downgraders[0], estimate, on_cheaper_path),
            warnings=warnings,
        )
    return _allowed(states, flags, estimate, on_cheaper_path, warnings)


def _allowed(
    states: Sequence[BudgetState],
    flags: tuple[bool, ...],
    estimate: int,
    on_cheaper_path: bool,
    warnings: tuple[str, ...] = (),
) -> Verdict:
    if on_cheaper_path:
        reason = f"Running the cheaper path at {_usd(estimate)}; it fits every matching budget."
        return Verdict(
            decision=_DOWNGRADE_DECISION, exceeded=flags, deciding=None, reason=reason, warnings=warnings
        )
    reason = (
        f"Within all {len(states)} matching budget(s)."
        if states
        else "No enabled budget matches these scopes."
    )
    return Verdict(decision=_ALLOW, exceeded=flags, deciding=None, reason=reason, warnings=warnings)


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
        ),
    )


def budget_infos(states: Sequence[BudgetState], exceeded: Sequence[bool]) -> tuple[BudgetInfo, ...]:
    return tuple(_info(s, flag) for s, flag in zip(states, exceeded, strict=True))


def _info(s: BudgetState, exceeded: bool) -> BudgetInfo:
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
    )


def crossed_thresholds(thresholds: Sequence[int], used: int, limit: int) -> list[int]:
    """The thresholds (percent) that committed spend ``used`` has reached."""
    return [t for t in thresholds if used * 100 >= t * limit]


def alert_message(budget: Budget, entity: str, threshold: int, used: int, limit: int, window: Window) -> str:
    return (
        f"Budget {budget.label(entity)} reached {threshold}% of its {_usd(limit)} {budget.period.spec} limit: "
        f"{_usd(used)} spent {_period_words(budget, window)}; on_exceed={budget.on_exceed.value}."
    )


def _deny_reason(s: BudgetState, estimate: int, others: int) -> str:
    also = f" ({others} other block budget(s) would be exceeded too)" if others else ""
    return (
        f"Denied by block budget {s.budget.label(s.entity)}{also}: {_figures(s, estimate)} "
        f"{_period_words(s.budget, s.window)}. Raise its limit (paymaster budgets update {s.budget.id} "
        f"--limit ...), send a smaller estimate, or {_wait_words(s.budget, s.window)}."
    )


def _downgrade_reason(s: BudgetState, estimate: int, on_cheaper_path: bool) -> str:
    head = f"Downgrade asked by budget {s.budget.label(s.entity)}: {_figures(s, estimate)} {_period_words(s.budget, s.window)}."
    if on_cheaper_path:
        return f"{head} The cheaper path is admitted past the limit; pair the budget with a block budget for a hard cap."
    return (
        f"{head} Run the cheaper path and re-send its estimate with downgrade_of, or release the reservation."
    )


def _warning(s: BudgetState, estimate: int) -> str:
    return f"Warn budget {s.budget.label(s.entity)} would be exceeded: {_figures(s, estimate)} {_period_words(s.budget, s.window)}."


def _figures(s: BudgetState, estimate: int) -> str:
    total = s.used + s.reserved + estimate
    relation = "exceeds" if total > s.limit else "reaches"
    return (
        f"used {_usd(s.used)} + reserved {_usd(s.reserved)} + estimate {_usd(estimate)} = {_usd(total)} "
        f"{relation} the limit {_usd(s.limit)}"
    )


def _period_words(budget: Budget, window: Window) -> str:
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
