"""``SidecarBudget.request_budget``: one limit for a whole request, whatever runners and services its
steps run in. Against a real sidecar on a loopback port: runners of different teams inside one request
budget share it, the denial names it, nested request budgets are charged together, the id is in the
baggage and on the spans, and an unreachable sidecar is handled by the fail policy."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry import baggage

from paymaster import (
    FAIL_OPEN,
    BudgetExceededError,
    ConfigError,
    LeasePolicy,
    Runner,
    Scopes,
    SidecarBudget,
    SidecarUnavailableError,
    Step,
    StepConfig,
    current_request_budget,
)
from paymaster.processor import ReservationSpanProcessor
from paymaster.v1 import budget_pb2 as pb

from .agents import FixedMetricAgent
from .conftest import InProcessSidecar
from .sidecar_support import free_port
from .test_telemetry import Providers

KEY = "paymaster.request_budget"


def _budget(side: InProcessSidecar, team: str, **kwargs: Any) -> SidecarBudget:
    kwargs.setdefault("journal_dir", None)
    kwargs.setdefault("deadline_s", 5.0)
    return SidecarBudget(side.address, scopes=Scopes(team=team), **kwargs)


def _runner(budget: SidecarBudget, cost: str, steps: int, **kwargs: Any) -> Runner:
    made = [
        Step(f"s{i}", FixedMetricAgent(cost=cost), config=StepConfig(expected_cost_usd=cost))
        for i in range(steps)
    ]
    pipeline = made[0]
    for step in made[1:]:
        pipeline = pipeline >> step  # type: ignore[assignment]
    return Runner(pipeline, budget=budget, **kwargs)


def _request_status(side: InProcessSidecar, request_id: str) -> pb.BudgetStatus:
    return side.admin.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=request_id), timeout=5)


def test_two_teams_runners_share_one_request_budget_and_stop_at_it(sidecar: InProcessSidecar) -> None:
    otel = Providers()
    otel.tracer_provider.add_span_processor(ReservationSpanProcessor())
    with _budget(sidecar, "planner") as planner, _budget(sidecar, "retrieval") as retrieval:
        with planner.request_budget(limit_usd="0.10", name="question 42") as request:
            assert current_request_budget() == request.id and request.granted_usd == Decimal("0.1")
            _runner(planner, "0.03", 2, tracer_provider=otel.tracer_provider).run(0)
            with pytest.raises(BudgetExceededError) as denied:
                _runner(retrieval, "0.03", 3, tracer_provider=otel.tracer_provider).run(0)
        assert current_request_budget() is None  # the id leaves the context with the block
    assert denied.value.deciding_budget_id == request.id
    assert denied.value.reason.startswith(f"Denied by request budget 'question 42' (request={request.id})")
    history = denied.value.result.step_history  # type: ignore[union-attr]
    assert [s.budget.decision for s in history] == ["allow", "deny"]
    assert history[0].budget.request_budget == request.id
    status = _request_status(sidecar, request.id)
    assert status.used_usd == "0.090000" and status.reserved_usd == "0.000000"
    assert {s.service for s in status.request.by_service} == {""}  # no service.name in these providers
    spans = otel.spans.get_finished_spans()
    steps = [s for s in spans if s.name.startswith("invoke_agent")]
    assert steps and all(s.attributes[KEY] == request.id for s in steps)
    assert all(s.attributes.get(KEY) == request.id for s in spans if s.name.startswith("paymaster.run"))


def test_a_nested_request_budget_is_a_child_and_its_denial_names_it(sidecar: InProcessSidecar) -> None:
    with _budget(sidecar, "planner") as budget, budget.request_budget(limit_usd="1") as outer:
        with budget.request_budget(fraction="0.1", name="sub-agent") as inner:
            assert inner.parent_id == outer.id and inner.granted_usd == Decimal("0.1")
            with pytest.raises(BudgetExceededError) as denied:
                _runner(budget, "0.04", 3).run(0)
        assert current_request_budget() == outer.id
        _runner(budget, "0.2", 1).run(0)
    assert denied.value.deciding_budget_id == inner.id
    assert _request_status(sidecar, inner.id).used_usd == "0.080000"
    assert _request_status(sidecar, outer.id).used_usd == "0.280000"


def test_steps_under_a_request_budget_take_their_own_reservations_not_leases(
    sidecar: InProcessSidecar,
) -> None:
    with _budget(sidecar, "planner", lease=LeasePolicy(slice_usd="1")) as budget:
        result = _runner(budget, "0.01", 3).run(0)
        assert {s.budget.mode for s in result.step_history} == {"lease"}
        with budget.request_budget(limit_usd="0.5") as request:
            result = _runner(budget, "0.01", 3).run(0)
    assert {s.budget.mode for s in result.step_history} == {"reservation"}
    assert _request_status(sidecar, request.id).used_usd == "0.030000"


def test_async_with_opens_it_from_a_running_loop(sidecar: InProcessSidecar) -> None:
    async def main() -> str:
        with _budget(sidecar, "planner") as budget:
            async with budget.request_budget(limit_usd="0.05") as request:
                assert baggage.get_baggage(KEY) == request.id
                await _runner(budget, "0.02", 2).run_async(0)
            return str(request.id)

    request_id = asyncio.run(main())
    assert _request_status(sidecar, request_id).used_usd == "0.040000"


def test_an_id_of_the_callers_own_is_used_and_reopening_it_is_a_retry(sidecar: InProcessSidecar) -> None:
    with _budget(sidecar, "planner") as budget:
        with budget.request_budget(limit_usd="0.5", request_id="trace-4bf92f3577b34da6") as request:
            _runner(budget, "0.1", 1).run(0)
        with budget.request_budget(limit_usd="0.5", request_id="trace-4bf92f3577b34da6"):
            _runner(budget, "0.1", 1).run(0)
    assert request.id == "trace-4bf92f3577b34da6"
    assert _request_status(sidecar, request.id).used_usd == "0.200000"


def test_an_unreachable_sidecar_is_decided_by_the_fail_policy() -> None:
    target = f"127.0.0.1:{free_port()}"
    closed = SidecarBudget(target, scopes=Scopes(team="t"), journal_dir=None, deadline_s=0.2)
    refused = pytest.raises(
        SidecarUnavailableError, match="does not run a request without its request budget"
    )
    with closed, refused, closed.request_budget(limit_usd="1"):
        pass
    open_ = SidecarBudget(
        target, scopes=Scopes(team="t"), journal_dir=None, deadline_s=0.2, fail_policy=FAIL_OPEN
    )
    with open_, open_.request_budget(limit_usd="1") as request:
        assert request.id is None and current_request_budget() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "request_budget: give limit_usd"),
        ({"limit_usd": "1", "fraction": "1.5"}, "request_budget: fraction must be above 0 and at most 1"),
        ({"limit_usd": "-1"}, "request_budget:"),
        ({"limit_usd": "1", "idle_ttl_s": 0}, "request_budget: idle_ttl_s must be in (0, 604800]"),
        ({"limit_usd": "1", "tiers": [(50, "maybe")]}, "request_budget: a tier's action must be one of"),
        (
            {"limit_usd": "1", "tiers": [(0, "warn")]},
            "request_budget: a tier's percentage must be a whole number",
        ),
    ],
)
def test_bad_arguments_are_refused_before_calling(
    sidecar: InProcessSidecar, kwargs: dict[str, Any], message: str
) -> None:
    budget = _budget(sidecar, "planner")
    with budget, pytest.raises(ConfigError) as refused, budget.request_budget(**kwargs):
        pass
    assert str(refused.value).startswith(message)


def test_a_refused_request_budget_is_a_config_error_naming_the_field(sidecar: InProcessSidecar) -> None:
    budget = _budget(sidecar, "planner")
    with (
        budget,
        pytest.raises(ConfigError) as refused,
        budget.request_budget(limit_usd="1", request_id="short"),
    ):
        pass
    assert "refused to open a request budget: INVALID_ARGUMENT: id: must be 16-128 characters" in str(
        refused.value
    )
