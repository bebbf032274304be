"""Who may open, charge and read a request budget, on both stores: any spender may open one, possession
of its id is what lets another service's spender charge it, and naming one never lets a tenant spend
outside its own grants — a request budget only ever adds a limit."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.auth.conftest import Caller
from tests.sidecar.conftest import pb_budget


def _status(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_another_tenants_request_budget_is_charged_only_for_the_callers_own_scopes(
    as_: Callable[[str], Caller],
) -> None:
    root, spender = as_("root"), as_("spender")  # spender: team=search, user=*
    root("CreateBudget", pb_budget("billing-daily", scope_id="billing", limit="100"))
    opened = root("OpenRequestBudget", pb.OpenRequestBudgetRequest(limit_usd="0.10"))
    # Inside its grants, with the id it was handed: held to the request budget too.
    held = spender(
        "Reserve",
        pb.ReserveRequest(
            scopes=pb.ScopeIds(team="search"), estimate_usd="0.08", request_budget_id=opened.id
        ),
    )
    assert held.decision == pb.DECISION_ALLOW and [i.budget_id for i in held.budget_info] == [opened.id]
    denied = spender(
        "Reserve",
        pb.ReserveRequest(
            scopes=pb.ScopeIds(team="search"), estimate_usd="0.05", request_budget_id=opened.id
        ),
    )
    assert denied.decision == pb.DECISION_DENY and denied.deciding_budget_id == opened.id
    # Outside its grants, the request budget changes nothing: refused for the scope, as without it.
    with pytest.raises(grpc.RpcError) as refused:
        spender(
            "Reserve",
            pb.ReserveRequest(
                scopes=pb.ScopeIds(team="billing"), estimate_usd="0.01", request_budget_id=opened.id
            ),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "scopes.team: spender is not granted team='billing'" in refused.value.details()
    for rpc, request in (
        ("RecordUsage", pb.RecordUsageRequest(usage_id="u1", scopes=pb.ScopeIds(team="billing"), cost_usd="1",
                                              request_budget_id=opened.id)),
        ("CheckBudget", pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="billing"), request_budget_id=opened.id)),
    ):  # fmt: skip
        assert (
            _status(lambda rpc=rpc, request=request: spender(rpc, request))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    # Nothing reached billing's budget.
    assert (
        root("GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id="billing-daily")).used_usd == "0.000000"
    )


def test_opening_is_a_spenders_and_reading_a_readers(as_: Callable[[str], Caller]) -> None:
    opened = as_("spender")("OpenRequestBudget", pb.OpenRequestBudgetRequest(limit_usd="1", name="q-42"))
    assert opened.id.startswith("rq_") and len(opened.id) == 35 and opened.name == "q-42"
    for who in ("reader", "ingester", "admin", "none"):
        code = _status(
            lambda who=who: as_(who)("OpenRequestBudget", pb.OpenRequestBudgetRequest(limit_usd="1"))
        )
        assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), who
    status = as_("reader")("GetBudgetStatus", pb.GetBudgetStatusRequest(request_budget_id=opened.id))
    assert status.request.id == opened.id and status.budget.scope == pb.SCOPE_REQUEST
    assert (
        _status(
            lambda: as_("spender")("GetBudgetStatus", pb.GetBudgetStatusRequest(request_budget_id=opened.id))
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_request_budgets_are_never_listed_among_budgets(as_: Callable[[str], Caller]) -> None:
    root = as_("root")
    root("OpenRequestBudget", pb.OpenRequestBudgetRequest(limit_usd="1"))
    listed = root("ListBudgets", pb.ListBudgetsRequest())
    assert all(b.scope != pb.SCOPE_REQUEST for b in listed.budgets)
    assert not root("ListBudgets", pb.ListBudgetsRequest(scope=pb.SCOPE_REQUEST)).budgets


def test_an_unknown_id_reads_as_not_open(as_: Callable[[str], Caller]) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        as_("root")("GetBudgetStatus", pb.GetBudgetStatusRequest(request_budget_id="rq_guessed_0000000000"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "is not open" in refused.value.details()
