"""Rules every store applies the same way, outside its atomic operations: who may change a budget,
which entity a status read is for, how a status and the answers to Check and Reserve are built from
a standing, how the budgets a config file declares are reconciled with the ones a store holds, and
how both stores refuse a total that would leave their exact range.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from collector_processor.domain.budgets import Budget
from collector_processor.domain.decisions import BudgetState, Plan, budget_infos, evaluate, projection
from collector_processor.domain.money import MAX_TOTAL_MICROS, micros_to_usd, percentage
from collector_processor.domain.requests import closed_plan
from collector_processor.domain.types import BudgetStatus, CheckOutcome, ReserveOutcome
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    PermissionDeniedError,
)
from collector_processor.store.index import LiveBudget
from paymaster.exceptions import quote

__all__ = [
    "ConfigSync",
    "check_fingerprint",
    "check_outcome",
    "deciding",
    "entity_for",
    "holds_fit",
    "not_owner",
    "plan_config_sync",
    "refuse_config",
    "reserve_outcome",
    "status_from_state",
    "total_out_of_range",
]


def total_out_of_range(budget_id: str | None, what: str = "spend") -> FailedPreconditionError:
    """The refusal of an operation that would take a total past ``MAX_TOTAL_MICROS`` (both stores)."""
    whose = f"budget {quote(budget_id)}" if budget_id else "a budget"
    return FailedPreconditionError(
        f"{whose} cannot take this amount: its {what} would pass {micros_to_usd(MAX_TOTAL_MICROS):,} "
        f"dollars (2^63 - 1 micro-dollars), the most the store counts exactly; nothing was written"
    )


def holds_fit(states: Sequence[BudgetState], hold: int) -> None:
    """Refuse a hold that would take what any budget holds past the store's exact range."""
    for s in states:
        if s.reserved + hold > MAX_TOTAL_MICROS:
            raise total_out_of_range(s.budget.id, "holds")


def deciding(plan: Plan) -> str:
    """The id of the budget that decided a reservation, or '' when none did (allow)."""
    return plan.verdict.deciding.budget.id if plan.verdict.deciding else ""


def reserve_outcome(
    plan: Plan, states: Sequence[BudgetState], reservation_id: str, expires_ms: int
) -> ReserveOutcome:
    """The answer to a Reserve from its plan and the standings it was decided on."""
    verdict = plan.verdict
    return ReserveOutcome(
        decision=plan.decision,
        reservation_id=reservation_id,
        reserved_usd=micros_to_usd(plan.hold),
        expires_ms=expires_ms,
        budget_info=budget_infos(states, verdict.exceeded, verdict.tiers),
        deciding_budget_id=deciding(plan),
        reason=verdict.reason,
        warnings=verdict.warnings,
        awaiting_downgrade_estimate=plan.awaiting_downgrade_estimate,
        deciding_tier=verdict.tier,
    )


def check_outcome(states: Sequence[BudgetState], estimate_micros: int, *, closed: str = "") -> CheckOutcome:
    """The answer to a CheckBudget: the decision a reservation of the estimate would get now
    (``closed``: the id of a request budget named that is not open, which denies)."""
    verdict = (
        closed_plan(states, closed, estimate_micros).verdict if closed else evaluate(states, estimate_micros)
    )
    return CheckOutcome(
        decision=verdict.decision,
        budget_info=budget_infos(states, verdict.exceeded, verdict.tiers),
        deciding_budget_id=verdict.deciding.budget.id if verdict.deciding else "",
        reason=verdict.reason,
        warnings=verdict.warnings,
        deciding_tier=verdict.tier,
    )


def refuse_config(budget: Budget, allow_config: bool, verb: str) -> None:
    if budget.declared_in_config and not allow_config:
        raise FailedPreconditionError(
            f"budget {quote(budget.id)} is declared in the sidecar's config file; it can only be {verb} there"
        )


def entity_for(live: LiveBudget, entity: str) -> str:
    budget = live.budget
    if budget.scope_id is None:
        if not entity:
            raise InvalidRequestError(
                "scope_id",
                f"is required: budget {quote(budget.id)} is a wildcard over every {budget.scope.value}",
            )
        return entity
    if entity and entity != budget.scope_id:
        raise InvalidRequestError(
            "scope_id",
            f"budget {quote(budget.id)} governs {budget.scope.value}={budget.scope_id}, not {quote(entity)}",
        )
    return budget.scope_id


def status_from_state(state: BudgetState, fired: Iterable[int], now_ms: int) -> BudgetStatus:
    burn, projected = projection(state, now_ms)
    return BudgetStatus(
        budget=state.budget,
        scope_id=state.entity,
        used_usd=micros_to_usd(state.used),
        reserved_usd=micros_to_usd(state.reserved),
        remaining_usd=micros_to_usd(max(state.limit - state.used - state.reserved, 0)),
        percentage=percentage(state.used, state.limit),
        exceeded=state.used >= state.limit,
        period_start_ms=state.window.start_ms,
        period_end_ms=state.window.end_ms,
        burn_rate_usd_per_hour=burn,
        projected_usd=projected,
        alerts_fired=tuple(sorted(fired)),
    )


@dataclass(kw_only=True, frozen=True, slots=True)
class ConfigSync:
    """What making the config-declared budgets exactly the declared ones takes, in order."""

    delete: tuple[Budget, ...]
    """Budgets to delete with their spend (removed from the file, or changed in meaning)."""
    insert: tuple[Budget, ...]
    """Budgets to create (new, or re-created after a change of meaning)."""
    replace: tuple[Budget, ...]
    """Budgets whose definition changes but whose spend carries over (generation kept)."""


def plan_config_sync(existing: Sequence[Budget], declared: Sequence[Budget], *, now_ms: int) -> ConfigSync:
    """Refuse (before anything is written) a declared id that an API budget holds, then plan the rest."""
    by_id = {b.id: b for b in existing}
    for budget in declared:
        old = by_id.get(budget.id)
        if old is not None and not old.declared_in_config:
            raise FailedPreconditionError(
                f"budget {quote(budget.id)} exists already, created through the API; delete it or declare another id"
            )
    delete: list[Budget] = []
    insert: list[Budget] = []
    update: list[Budget] = []
    for budget in declared:
        old = by_id.get(budget.id)
        if old is None:
            insert.append(budget)
        elif _meaning(old) != _meaning(budget):
            # A different scope, entity, period or zone is a different budget: its spend starts from zero.
            delete.append(old)
            insert.append(budget)
        elif _definition(old) != _definition(budget):
            update.append(
                replace(budget, generation=old.generation, created_ms=old.created_ms, updated_ms=now_ms)
            )
    names = {b.id for b in declared}
    delete.extend(old for old in existing if old.declared_in_config and old.id not in names)
    return ConfigSync(delete=tuple(delete), insert=tuple(insert), replace=tuple(update))


def _meaning(b: Budget) -> tuple[object, ...]:
    return (b.scope, b.scope_id, b.period.spec, b.time_zone)


def _definition(b: Budget) -> tuple[object, ...]:
    return (b.name, b.limit_usd, b.on_exceed, b.alert_thresholds, b.tiers, b.enabled)


def check_fingerprint(stored: str, asked: str, field: str, what: str) -> None:
    """Refuse a repeated idempotency key (or usage id) whose request differs from the first one's.
    Rows written before keys had fingerprints have none, and are taken as they are."""
    if stored and asked and stored != asked:
        raise AlreadyExistsError(
            f"{field}: was used by an earlier {what} with different scopes, amounts or facts; a retry must "
            "repeat the request exactly, and a new request needs a new key"
        )


def not_owner(reservation_id: str) -> PermissionDeniedError:
    """The refusal of a re-send, commit or release by a principal that did not make the reservation."""
    return PermissionDeniedError(
        f"reservation {reservation_id!r} was made by another principal; only its maker may commit, release "
        "or re-send it",
        "owner",
    )
