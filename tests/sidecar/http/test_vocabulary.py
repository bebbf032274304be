"""One JSON vocabulary: what the HTTP API answers is what ``paymaster.vocabulary.to_json`` (the CLI's
``--json``) makes of the gRPC answer to the same question, field for field and word for word."""

from __future__ import annotations

from typing import Any

from paymaster.v1 import budget_pb2 as pb
from paymaster.vocabulary import to_json
from tests.sidecar.auth.conftest import Caller
from tests.sidecar.conftest import RunningSidecar, pb_budget
from tests.sidecar.http.conftest import Http


def without(answer: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in names}


def test_budgets_reservations_and_status_read_the_same_over_http_and_grpc(
    http_sidecar: RunningSidecar,
) -> None:
    grpc_root, http_root = Caller(http_sidecar, "root"), Http(http_sidecar)
    grpc_root(
        "CreateBudget", pb_budget("b-search", scope_id="search", limit="12.5", on_exceed=pb.ON_EXCEED_WARN)
    )
    assert http_root("GET", "/v1/budgets/b-search").json() == to_json(
        grpc_root("GetBudget", pb.GetBudgetRequest(id="b-search"))
    )
    over_grpc = to_json(
        grpc_root("Reserve", pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1"))
    )
    over_http = http_root(
        "POST", "/v1/reservations", json={"scopes": {"team": "search"}, "estimate_usd": "1"}
    ).json()
    # Two reservations, so their ids, expiries and the money the first one holds differ; nothing else.
    assert set(over_http) == set(over_grpc)
    assert without(over_http, "reservation_id", "expires_at", "budget_info") == without(
        over_grpc, "reservation_id", "expires_at", "budget_info"
    )
    assert [set(i) for i in over_http["budget_info"]] == [set(i) for i in over_grpc["budget_info"]]
    assert over_http["budget_info"][0]["scope"] == "team" and over_http["decision"] == "allow"
    status = to_json(grpc_root("GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id="b-search")))
    assert http_root("GET", "/v1/budgets/b-search/status").json() == status
