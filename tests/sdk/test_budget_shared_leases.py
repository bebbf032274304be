"""Leases across runs (``LeasePolicy(shared=True)``): one ``SidecarBudget`` holds a slice per scope set
that every run draws from — concurrently, from many threads and event loops — with the same
accounting as per-run leases, committed when exhausted, when old (also while idle) and on close."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from paymaster import (
    FAIL_OPEN,
    BudgetExceededError,
    LeasePolicy,
    Runner,
    Scopes,
    SidecarBudget,
    Step,
    StepConfig,
)
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2 as pb

from .agents import CostlyAgent, FixedMetricAgent
from .conftest import InProcessSidecar
from .test_telemetry import Providers


def shared(side: InProcessSidecar, slice_usd: str = "1", **kwargs: Any) -> SidecarBudget:
    return SidecarBudget(
        side.address,
        scopes=Scopes(team="search"),
        journal_dir=None,
        lease=LeasePolicy(slice_usd=slice_usd, shared=True, **kwargs),
        deadline_s=5.0,
        **({"fail_policy": kwargs.pop("fail_policy")} if "fail_policy" in kwargs else {}),
    )


def one_step(cost: str = "0.01") -> Step:
    return Step("answer", FixedMetricAgent(cost=cost), config=StepConfig(expected_cost_usd=cost))


def test_many_one_step_runs_share_one_slice_and_the_close_commits_exactly_what_they_spent(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    sidecar.admin.budget("search-daily", "100")
    budget = shared(sidecar, "1")
    runner = otel.runner(one_step("0.01"), budget=budget)
    results = [runner.run(0) for _ in range(50)]
    # One Reserve for fifty runs, and nothing committed yet: the slice is the budget's, not a run's.
    calls = otel.points("paymaster.sidecar.calls")
    assert calls == {(("outcome", "ok"), ("rpc", "Reserve")): 1}
    assert sidecar.admin.status("search-daily") == (Decimal(0), Decimal(1))
    ids = {r.step_history[0].budget.reservation_id for r in results}  # type: ignore[union-attr]
    assert len(ids) == 1 and all(r.step_history[0].budget.mode == "lease" for r in results)  # type: ignore[union-attr]
    budget.close()
    assert sidecar.admin.status("search-daily") == (Decimal("0.50"), Decimal(0))
    assert otel.points("paymaster.budget.leases") == {
        (("event", "acquired"),): 1,
        (("event", "committed"),): 1,
    }


def test_runs_in_many_threads_and_event_loops_draw_concurrently_and_nothing_is_lost(
    sidecar: InProcessSidecar,
) -> None:
    sidecar.admin.budget("search-daily", "1000")
    budget = shared(sidecar, "0.05")  # small slices: many are taken and committed under load
    errors: list[BaseException] = []
    totals: list[Decimal] = []
    lock = threading.Lock()

    def thread(index: int) -> None:
        runner = Runner(one_step("0.003"), budget=budget)

        async def many() -> None:
            results = await asyncio.gather(*(runner.run_async(0) for _ in range(20)))
            with lock:
                totals.extend(r.total_cost_usd for r in results)

        try:
            asyncio.run(many())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(totals) == 160
    budget.close()
    used, reserved = sidecar.admin.status("search-daily")
    assert used == sum(totals) == Decimal("0.480") and reserved == 0


def test_an_old_slice_is_committed_while_no_run_draws_from_it(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "10")
    budget = shared(sidecar, "5", ttl_s=60, max_age_s=0.2)
    Runner(one_step("0.02"), budget=budget).run(0)
    deadline = time.monotonic() + 10
    while sidecar.admin.status("search-daily") != (Decimal("0.02"), Decimal(0)):
        assert time.monotonic() < deadline, sidecar.admin.status("search-daily")
        time.sleep(0.02)
    Runner(one_step("0.02"), budget=budget).run(0)  # a fresh slice for the next run
    budget.close()
    assert sidecar.admin.status("search-daily") == (Decimal("0.04"), Decimal(0))


def test_a_step_past_the_slice_is_charged_at_once_and_halts_its_run_past_a_block_budget(
    sidecar: InProcessSidecar,
) -> None:
    sidecar.admin.budget("search-daily", "0.5")
    budget = shared(sidecar, "0.2")
    Runner(one_step("0.05"), budget=budget).run(0)
    huge = Step("huge", FixedMetricAgent(cost="0.6"), config=StepConfig(expected_cost_usd="0.05"))
    with pytest.raises(BudgetExceededError) as info:
        Runner(huge, budget=budget).run(0)
    assert info.value.code == "budget_exceeded"
    assert sidecar.admin.status("search-daily") == (Decimal("0.65"), Decimal(0))
    budget.close()
    assert sidecar.admin.status("search-daily") == (Decimal("0.65"), Decimal(0))


def test_near_the_limit_runs_go_back_to_per_step_decisions(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "0.25")
    budget = shared(sidecar, "1")  # a slice larger than the budget is never taken
    outcomes = []
    for _ in range(3):
        try:
            result = Runner(one_step("0.1"), budget=budget).run(0)
            outcomes.append(result.step_history[0].budget.mode)  # type: ignore[union-attr]
        except BudgetExceededError as exc:
            outcomes.append(exc.code)
    assert outcomes == ["reservation", "reservation", "budget_denied"]
    budget.close()
    assert sidecar.admin.status("search-daily") == (Decimal("0.2"), Decimal(0))


def test_a_cancelled_run_gives_its_draw_back(sidecar: InProcessSidecar) -> None:
    sidecar.admin.budget("search-daily", "10")
    budget = shared(sidecar, "1")
    Runner(one_step("0.01"), budget=budget).run(0)  # warm
    slow = Runner(
        Step("slow", CostlyAgent(cost="0.5", delay=5), config=StepConfig(expected_cost_usd="0.5")),
        budget=budget,
    )

    async def cancelled() -> None:
        task = asyncio.ensure_future(slow.run_async(0))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    lease = budget.shared_leases.pools[Scopes(team="search")].current  # type: ignore[union-attr]
    assert lease is not None and lease.inflight == 0 and lease.free == Decimal("0.99")
    budget.close()
    assert sidecar.admin.status("search-daily") == (Decimal("0.01"), Decimal(0))


def test_without_a_sidecar_the_fail_policy_decides_and_a_shared_lease_needs_a_bool(tmp_path: Any) -> None:
    budget = SidecarBudget(
        "127.0.0.1:9",
        scopes=Scopes(team="search"),
        journal_dir=None,
        lease=LeasePolicy(slice_usd="1", shared=True),
        fail_policy=FAIL_OPEN,
        deadline_s=0.2,
        retries=0,
    )
    result = Runner(one_step("0.01"), budget=budget).run(0)
    assert result.step_history[0].budget.mode == "fail_open"  # type: ignore[union-attr]
    assert len(budget.pending_usage()) == 1
    budget.close()
    with pytest.raises(ConfigError, match="shared must be True or False"):
        LeasePolicy(shared="yes")  # type: ignore[arg-type]


def test_a_step_inside_a_request_budget_is_reserved_on_its_own_not_drawn_from_the_shared_slice(
    sidecar: InProcessSidecar,
) -> None:
    sidecar.admin.budget("search-daily", "100")
    budget = shared(sidecar, "1")
    runner = Runner(one_step("0.01"), budget=budget)
    warm = runner.run(0)  # the slice is taken and warm
    assert warm.step_history[0].budget.mode == "lease"  # type: ignore[union-attr]
    with budget.request_budget(limit_usd="0.05") as request:
        inside = [runner.run(0) for _ in range(3)]
    for result in inside:  # each step reserved against the request budget and committed at once
        outcome = result.step_history[0].budget
        assert outcome is not None and outcome.mode == "reservation", outcome
        assert outcome.reservation_id != warm.step_history[0].budget.reservation_id  # type: ignore[union-attr]
    status = sidecar.admin.stub.GetBudgetStatus(
        pb.GetBudgetStatusRequest(request_budget_id=request.id), timeout=5
    )
    assert Decimal(status.used_usd) == Decimal("0.03") and Decimal(status.reserved_usd) == 0
    assert runner.run(0).step_history[0].budget.mode == "lease"  # type: ignore[union-attr]  # outside again
    budget.close()
    assert sidecar.admin.status("search-daily") == (Decimal("0.05"), Decimal(0))
