"""Leases: a slice reserved in one call, spent locally step by step, topped up, committed with what
was really spent — and the same halting as per-step reservations."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from paymaster import (
    BudgetExceededError,
    LeasePolicy,
    Pipeline,
    Runner,
    Scopes,
    SidecarBudget,
    Step,
    StepConfig,
)

from .agents import FixedMetricAgent
from .conftest import InProcessSidecar
from .sidecar_support import loop_of
from .test_telemetry import Providers


def leased(side: InProcessSidecar, slice_usd: str = "0.05", **kwargs: Any) -> SidecarBudget:
    return SidecarBudget(
        side.address,
        scopes=Scopes(team="search"),
        journal_dir=None,
        lease=LeasePolicy(slice_usd=slice_usd, **kwargs),
        deadline_s=5.0,  # a live sidecar on a loaded machine must never miss it
    )


def test_a_hot_loop_reserves_once_per_slice_and_commits_what_it_spent(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    sidecar.admin.budget("search-daily", "100")
    budget = leased(sidecar, "0.05")
    result = otel.runner(
        loop_of(FixedMetricAgent(cost="0.001"), times=200, expected="0.001"), budget=budget
    ).run(0)
    assert result.success is False  # the loop never meets its exit condition
    assert result.total_cost_usd == Decimal("0.200")
    assert sidecar.admin.status("search-daily") == (Decimal("0.2"), Decimal(0))
    calls = otel.points("paymaster.sidecar.calls")
    # 200 steps x $0.001 use four $0.05 slices; each next slice is taken in the background when the
    # one in use runs low, so a fifth was ready when the run ended, and was given back unspent.
    assert calls[(("outcome", "ok"), ("rpc", "Reserve"))] == 5
    assert calls[(("outcome", "ok"), ("rpc", "Commit"))] == 4
    assert calls[(("outcome", "ok"), ("rpc", "Release"))] == 1
    leases = otel.points("paymaster.budget.leases")
    assert leases == {(("event", "acquired"),): 5, (("event", "committed"),): 4, (("event", "released"),): 1}
    steps = [s for s in result.walk() if s.kind == "agent"]
    assert {s.budget.mode for s in steps if s.budget} == {"lease"}
    assert len({s.budget.reservation_id for s in steps if s.budget}) == 4
    spans = otel.finished("invoke_agent call")
    assert spans[0].attributes is not None and spans[0].attributes["paymaster.budget.mode"] == "lease"
    assert spans[0].attributes["paymaster.reservation_id"] == steps[0].budget.reservation_id  # type: ignore[union-attr]
    budget.close()


@pytest.mark.parametrize("expected", [None, "0.1"], ids=["no-estimate", "declared-estimate"])
def test_near_the_limit_leases_halt_exactly_where_per_step_reservations_do(
    sidecar: InProcessSidecar, expected: str | None
) -> None:
    outcomes = []
    for i, lease in enumerate([None, LeasePolicy(slice_usd="0.3")]):
        sidecar.admin.budget(f"b{i}", "1", scope_id=f"team{i}")
        budget = SidecarBudget(
            sidecar.address, scopes=Scopes(team=f"team{i}"), journal_dir=None, lease=lease, deadline_s=5.0
        )
        with pytest.raises(BudgetExceededError) as info:
            Runner(loop_of(FixedMetricAgent(cost="0.1"), expected=expected), budget=budget).run(0)
        result = info.value.result
        assert result is not None
        calls = [s for s in result.walk() if s.kind == "agent"]
        outcomes.append((info.value.code, result.total_cost_usd, len(calls), calls[-1].denied))
        assert sidecar.admin.status(f"b{i}")[1] == Decimal(0)
        budget.close()
    assert outcomes[0] == outcomes[1]
    # Ten steps spend the dollar; the eleventh is denied before it runs (a zero estimate does not
    # slip through a used-up budget either).
    assert outcomes[0] == ("budget_denied", Decimal("1.0"), 11, True)


def test_a_step_that_overruns_its_slice_is_charged_at_once_and_halts_past_a_block_budget(
    sidecar: InProcessSidecar,
) -> None:
    sidecar.admin.budget("search-daily", "0.5")
    budget = leased(sidecar, "0.2")
    pipe = Pipeline.from_step(
        Step("small", FixedMetricAgent(cost="0.05"), config=StepConfig(expected_cost_usd="0.05"))
    )
    pipe = pipe >> Step("huge", FixedMetricAgent(cost="0.6"), config=StepConfig(expected_cost_usd="0.05"))
    with pytest.raises(BudgetExceededError) as info:
        Runner(pipe, budget=budget).run(0)
    assert (
        str(info.value) == "Block budget 'search-daily' (team=search) exceeded: $0.65 used of its $0.50 limit"
    )
    assert info.value.code == "budget_exceeded"
    assert sidecar.admin.status("search-daily") == (Decimal("0.65"), Decimal(0))
    budget.close()


def test_a_lease_spent_on_several_models_keeps_the_sidecars_report_by_model_exact(
    sidecar: InProcessSidecar,
) -> None:
    sidecar.admin.budget("search-daily", "10")

    class Priced:
        def __init__(self, model: str, cost: str) -> None:
            self.model_id, self.cost = model, cost

        async def run(self, data: Any) -> Any:
            return type("Out", (), {"cost_usd": self.cost, "token_counts": 10})()

    budget = leased(sidecar, "1")
    pipe = Pipeline.from_step(Step("a", Priced("openai:gpt-4o", "0.03"))) >> Step(
        "b", Priced("openai:gpt-4o-mini", "0.001")
    )
    loop = Step.loop_until(
        name="l", loop_body_pipeline=pipe, exit_condition_callable=lambda o, c: False, max_loops=5
    )
    Runner(loop, budget=budget).run(0)
    assert sidecar.admin.usage_by_model(team="search") == {
        "gpt-4o": Decimal("0.15"),
        "gpt-4o-mini": Decimal("0.005"),
    }
    assert sidecar.admin.status("search-daily") == (Decimal("0.155"), Decimal(0))
    budget.close()


def test_a_stale_lease_is_committed_and_replaced(sidecar: InProcessSidecar, otel: Providers) -> None:
    sidecar.admin.budget("search-daily", "10")
    budget = leased(sidecar, "5", ttl_s=60, max_age_s=0.000001)
    result = otel.runner(loop_of(FixedMetricAgent(cost="0.01"), times=3, expected="0.01"), budget=budget).run(
        0
    )
    steps = [s for s in result.walk() if s.kind == "agent"]
    assert len({s.budget.reservation_id for s in steps if s.budget}) == 3
    assert sidecar.admin.status("search-daily") == (Decimal("0.03"), Decimal(0))
    budget.close()


def test_parallel_branches_share_one_lease_and_take_one_slice_at_a_time(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    sidecar.admin.budget("search-daily", "10")
    budget = leased(sidecar, "1")
    par = Step.parallel(
        "fan",
        {
            f"b{i}": Step(f"b{i}", FixedMetricAgent(cost="0.01"), config=StepConfig(expected_cost_usd="0.01"))
            for i in range(20)
        },
    )
    result = otel.runner(par, budget=budget).run(0)
    assert result.total_cost_usd == Decimal("0.2")
    assert otel.points("paymaster.sidecar.calls")[(("outcome", "ok"), ("rpc", "Reserve"))] == 1
    assert sidecar.admin.status("search-daily") == (Decimal("0.2"), Decimal(0))
    budget.close()


def test_a_lease_that_would_warn_falls_back_to_per_step_decisions(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-soft", "0.5", on_exceed="warn")
    budget = leased(sidecar, "1")
    result = Runner(loop_of(FixedMetricAgent(cost="0.1"), times=6, expected="0.1"), budget=budget).run(0)
    steps = [s for s in result.walk() if s.kind == "agent"]
    assert [s.budget.decision for s in steps if s.budget] == ["allow"] * 5 + ["warn"]
    assert [s.budget.mode for s in steps if s.budget] == ["reservation"] * 6
    assert sidecar.admin.status("search-soft") == (Decimal("0.6"), Decimal(0))
    budget.close()
