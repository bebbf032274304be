"""Answers of the Redis store, built from what its functions return with the shared decision rules.

A function returns the standing it decided on; ``plan_reservation`` turns that into the decision, the
hold and every word of the answer, exactly as the SQLite store builds its own, and ``agree`` refuses
to answer should the function and the rules ever differ. A replayed reservation's words are rebuilt
from the standing stored with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.decisions import BudgetState, Plan, plan_reservation
from collector_processor.domain.requests import request_state
from collector_processor.store.index import BudgetIndex
from collector_processor.store.redis.codec import parse_hold_key
from collector_processor.store.redis.requests import RequestBook, parse_request_key

__all__ = ["agree", "snapshot_plan", "unpack_scopes"]


def agree(plan: Plan, reply: Sequence[Any]) -> None:
    """The script and ``decisions.plan_reservation`` must have reached the same decision and hold."""
    ours = (plan.decision.value, str(plan.hold), "1" if plan.awaiting_downgrade_estimate else "0")
    theirs = (reply[1], reply[2], reply[3])
    if ours != theirs:
        raise RuntimeError(
            f"the Redis script decided {theirs} where the decision rules decide {ours}; this is a bug"
        )


def unpack_scopes(packed: str) -> ScopeSet:
    o, t, a, w, u = packed.split("\x1e")
    return ScopeSet(organization=o, team=t, agent=a, workflow=w, user=u)


def snapshot_plan(index: BudgetIndex, row: dict[str, str], requests: RequestBook) -> Plan:
    """The plan a reservation was decided with, from the standing stored with it: when, the estimate,
    the cheaper path's, whether it was a downgrade re-send, and each budget's used, reserved, limit
    (request budgets' too, while this replica can still read their definitions)."""
    keys = [k for k in row.get("holds", "").split("\n") if k]
    at, estimate, cheaper, resend, numbers = row["snap"].split("\x1e")
    figures = numbers.split()
    at_ms = int(at)
    states = []
    for i, key in enumerate(keys):
        if len(figures) < 3 * i + 3:
            break
        request = parse_request_key(key)
        if request is not None:
            found = requests.get(request[0])
            if found is not None and found.created_ms == request[1]:
                used, reserved, _ = (int(v) for v in figures[3 * i : 3 * i + 3])
                states.append(request_state(found, used, reserved, at_ms))
            continue
        bid, generation, entity = parse_hold_key(key)
        live = index.get(bid)
        if live is None or live.budget.generation != generation or len(figures) < 3 * i + 3:
            continue  # deleted or re-created since: its words can no longer be rebuilt
        used, reserved, limit = (int(v) for v in figures[3 * i : 3 * i + 3])
        states.append(
            BudgetState(
                budget=live.budget, entity=entity, limit=limit, used=used, reserved=reserved,
                window=live.budget.period.window(at_ms, live.tz),
            )
        )  # fmt: skip
    return plan_reservation(
        states, int(estimate), downgrade_estimate=int(cheaper) if cheaper else None, resend=resend == "1"
    )
