"""Request budgets through the API and the command line, on both stores: opened (and nested) over
gRPC, named by Reserve, CheckBudget and RecordUsage, read with GetBudgetStatus and
``paymaster budgets status --request``, and refused with the field named when malformed."""

from __future__ import annotations

import json

import grpc
import pytest

from paymaster.cli import main
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar

PLANNER, RETRIEVAL = pb.ScopeIds(team="planner"), pb.ScopeIds(team="retrieval")


def _spend(server: RunningSidecar, scopes: pb.ScopeIds, amount: str, request_id: str, service: str) -> None:
    held = server.stub.Reserve(
        pb.ReserveRequest(scopes=scopes, estimate_usd=amount, request_budget_id=request_id, service=service)
    )
    assert held.decision == pb.DECISION_ALLOW, held.reason
    server.stub.Commit(pb.CommitRequest(reservation_id=held.reservation_id, actual_usd=amount))


def test_a_request_budget_over_grpc(server: RunningSidecar) -> None:
    opened = server.stub.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="0.10", name="question 7"))
    assert opened.id.startswith("rq_") and opened.limit_usd == "0.100000" and opened.used_usd == "0.000000"
    assert opened.idle_ttl.ToMilliseconds() == 600_000 and opened.expires_at.ToMilliseconds() > 0
    _spend(server, PLANNER, "0.03", opened.id, "planner")
    _spend(server, RETRIEVAL, "0.05", opened.id, "retrieval")
    server.stub.RecordUsage(
        pb.RecordUsageRequest(
            usage_id="late-1",
            scopes=RETRIEVAL,
            cost_usd="0.01",
            request_budget_id=opened.id,
            service="summarizer",
        )
    )
    denied = server.stub.Reserve(
        pb.ReserveRequest(scopes=PLANNER, estimate_usd="0.02", request_budget_id=opened.id)
    )
    assert denied.decision == pb.DECISION_DENY and denied.deciding_budget_id == opened.id
    assert denied.reason.startswith(f"Denied by request budget 'question 7' (request={opened.id})")
    line = denied.budget_info[-1]
    assert (line.scope, line.budget_id, line.used_usd) == (pb.SCOPE_REQUEST, opened.id, "0.090000")
    checked = server.stub.CheckBudget(
        pb.CheckBudgetRequest(scopes=PLANNER, estimate_usd="0.01", request_budget_id=opened.id)
    )
    assert checked.decision == pb.DECISION_ALLOW
    status = server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=opened.id))
    assert (status.budget.scope, status.budget.period, status.used_usd) == (
        pb.SCOPE_REQUEST,
        "request",
        "0.090000",
    )
    assert [(s.service, s.used_usd) for s in status.request.by_service] == [
        ("retrieval", "0.050000"), ("planner", "0.030000"), ("summarizer", "0.010000"),
    ]  # fmt: skip


def test_a_nested_request_budget_over_grpc(server: RunningSidecar) -> None:
    parent = server.stub.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="1"))
    child = server.stub.OpenRequestBudget(
        pb.OpenRequestBudgetRequest(parent_id=parent.id, limit_usd="5", name="sub-agent")
    )
    assert child.clamped and child.limit_usd == "1.000000" and list(child.ancestor_ids) == [parent.id]
    _spend(server, PLANNER, "0.4", child.id, "sub")
    parent_status = server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=parent.id))
    assert parent_status.used_usd == "0.400000"


@pytest.mark.parametrize(
    ("opening", "message"),
    [
        (pb.OpenRequestBudgetRequest(), "limit_usd: is required for a request budget without a parent_id"),
        (pb.OpenRequestBudgetRequest(limit_usd="-1"), "limit_usd: must not be negative"),
        (pb.OpenRequestBudgetRequest(id="abc", limit_usd="1"), "id: must be 16-128 characters"),
        (pb.OpenRequestBudgetRequest(parent_id="rq_0000000000000000", fraction="2"), "fraction: must be above 0 and at most 1"),
        (pb.OpenRequestBudgetRequest(limit_usd="1", tiers=[pb.Tier(at_percent=0, action=pb.ON_EXCEED_WARN)]),
         "tiers[0].at: must be a whole percentage 1-1000"),
    ],
)  # fmt: skip
def test_malformed_openings_are_refused_naming_the_field(
    server: RunningSidecar, opening: pb.OpenRequestBudgetRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.OpenRequestBudget(opening)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(message), refused.value.details()


def test_a_reserve_naming_a_malformed_request_budget_is_refused(server: RunningSidecar) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.Reserve(pb.ReserveRequest(scopes=PLANNER, estimate_usd="0.01", request_budget_id="short"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("request_budget_id: must be 16-128 characters")
    with pytest.raises(grpc.RpcError) as both:
        server.stub.GetBudgetStatus(
            pb.GetBudgetStatusRequest(budget_id="x", request_budget_id="rq_0000000000000000")
        )
    assert both.value.details().startswith(
        "request_budget_id: give a budget_id (and scope_id) or a request_budget_id"
    )


def test_the_command_line_shows_a_live_request_by_service(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    opened = server.stub.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="0.5", name="q-9"))
    _spend(server, PLANNER, "0.1", opened.id, "planner")
    _spend(server, RETRIEVAL, "0.2", opened.id, "retrieval")
    assert main(["--target", server.address, "budgets", "status", "--request", opened.id]) == 0
    out = capsys.readouterr().out
    assert f"request budget   {opened.id} (q-9)" in out
    assert "used USD         0.300000" in out and "remaining USD    0.200000" in out
    services = out.split("\n\n")[1].splitlines()
    assert services[0].split() == ["SERVICE", "USED", "USD"]
    assert [line.split() for line in services[2:]] == [["retrieval", "0.200000"], ["planner", "0.100000"]]
    assert main(["--target", server.address, "--json", "budgets", "status", "--request", opened.id]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["request"]["by_service"][0] == {"service": "retrieval", "used_usd": "0.200000"}
    assert main(["--target", server.address, "budgets", "status", "--request", "rq_nobody_00000000000"]) == 1
    assert (
        "NOT_FOUND: request_budget_id: request budget 'rq_nobody_00000000000' is not open"
        in capsys.readouterr().err
    )


def test_decisions_of_request_budgets_are_counted_under_one_label(server: RunningSidecar) -> None:
    """A request budget's id is one per request: as a metric label it would grow without bound."""
    for _ in range(3):
        opened = server.stub.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="0.01"))
        denied = server.stub.Reserve(
            pb.ReserveRequest(scopes=PLANNER, estimate_usd="1", request_budget_id=opened.id)
        )
        assert denied.deciding_budget_id == opened.id
    series = server.sidecar.metrics.snapshot().counters["paymaster_decisions_total"]
    budgets = {dict(key)["budget"] for key in series}
    assert budgets == {"(request budget)"}
    assert sum(series.values()) == 3
