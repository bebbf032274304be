"""A runner held to a tiered budget: as spend climbs, its steps are warned, then downgraded, then
denied, each naming the tier; a commit past a block tier halts the run, also above 100%."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from paymaster import BudgetExceededError, Runner, Scopes, SidecarBudget, Step, StepConfig
from paymaster.v1 import budget_pb2 as pb

from .agents import FixedMetricAgent
from .conftest import InProcessSidecar


def _tiered(side: InProcessSidecar, tiers: list[tuple[int, int]], limit: str = "1") -> None:
    budget = pb.Budget(
        id="tiered", scope=pb.SCOPE_TEAM, scope_id="search", limit_usd=limit, period="daily",
        tiers=[pb.Tier(at_percent=at, action=action) for at, action in tiers],
    )  # fmt: skip
    side.admin.stub.CreateBudget(pb.CreateBudgetRequest(budget=budget), timeout=5)


def _budget(side: InProcessSidecar) -> SidecarBudget:
    return SidecarBudget(side.address, scopes=Scopes(team="search"), journal_dir=None, deadline_s=5.0)


def _step(name: str, cost: str, **kwargs: Any) -> Step:
    return Step(name, FixedMetricAgent(cost=cost), config=StepConfig(expected_cost_usd=cost), **kwargs)


def test_steps_climb_the_tiers_warned_downgraded_then_denied(sidecar: InProcessSidecar) -> None:
    _tiered(sidecar, [(50, pb.ON_EXCEED_WARN), (80, pb.ON_EXCEED_DOWNGRADE), (100, pb.ON_EXCEED_BLOCK)])
    with _budget(sidecar) as budget:
        cheap = _step("mini", "0.05")
        steps = [_step("a", "0.45"), _step("b", "0.2"), _step("c", "0.2", downgrade=cheap), _step("d", "0.4")]
        runner = Runner(steps[0] >> steps[1] >> steps[2] >> steps[3], budget=budget)
        with pytest.raises(BudgetExceededError) as denied:
            runner.run(0)
    history = denied.value.result.step_history  # type: ignore[union-attr]
    outcomes = [s.budget.decision for s in history]
    assert outcomes == ["allow", "warn", "downgrade", "deny"]
    assert "reached its warn tier at 50%" in history[1].budget.warnings[0]
    assert "the downgrade tier at 80% of budget 'tiered'" in (history[2].budget.reason or "")
    assert denied.value.deciding_budget_id == "tiered"
    assert "the block tier at 100% of budget 'tiered'" in denied.value.reason
    line = denied.value.budget_info[0]
    assert line["tiers"] == [
        {"at": 50, "action": "warn"},
        {"at": 80, "action": "downgrade"},
        {"at": 100, "action": "block"},
    ]
    assert sidecar.admin.status("tiered") == (Decimal("0.70"), Decimal(0))


def test_a_commit_past_a_block_tier_above_100_percent_halts_the_run(sidecar: InProcessSidecar) -> None:
    _tiered(sidecar, [(100, pb.ON_EXCEED_WARN), (150, pb.ON_EXCEED_BLOCK)])
    with _budget(sidecar) as budget:
        # Each step is estimated low and costs more: the overrun is charged, and the block tier halts.
        steps = [
            Step(f"s{i}", FixedMetricAgent(cost="0.6"), config=StepConfig(expected_cost_usd="0.01"))
            for i in range(4)
        ]
        runner = Runner(steps[0] >> steps[1] >> steps[2] >> steps[3], budget=budget)
        with pytest.raises(BudgetExceededError) as halted:
            runner.run(0)
    assert halted.value.code == "budget_exceeded"
    assert str(halted.value).startswith(
        "The block tier at 150% of budget 'tiered' (team=search) exceeded: $1.80"
    )
    assert len(halted.value.result.step_history) == 3  # type: ignore[union-attr]  # 1.20 was only a warning
