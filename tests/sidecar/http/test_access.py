"""Every operation of the HTTP API, called by every role (and by nobody), once naming a scope inside
the caller's grants and once outside, on both stores: the status is exactly what the trust model
says, and the same as the gRPC method it stands for (``tests/sidecar/auth/test_rpc_access.py``).

The callers and grants are those of the gRPC table: tokens granted ``team=search`` and ``user=*``;
inside means team ``search``, outside team ``billing``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from collector_processor.api.http import ENDPOINTS
from collector_processor.api.http.app import Endpoint
from collector_processor.domain.clock import ManualClock
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.auth.conftest import Caller, start_authed
from tests.sidecar.auth.test_rpc_access import OUTSIDE, ROLE_ACTIONS, TEAM
from tests.sidecar.conftest import START, RunningSidecar, StoreFactory, pb_budget
from tests.sidecar.http.conftest import HTTP_ON, base_url, headers

GRPC_TO_HTTP = {
    "OK": 200, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "UNAUTHENTICATED": 401,
}  # fmt: skip
CREATED = {
    "create_budget": 201,
    "axonflow_create_budget": 201,
    "delete_budget": 204,
    "axonflow_delete_budget": 204,
    "open_request_budget": 201,
}
BY_NAME = {e.name: e for e in ENDPOINTS}
OUTSIDE_HTTP = {"axonflow_budget_alerts": 404, "open_request_budget": 200, "request_status": 200}
"""Where the HTTP operation's outside differs from its gRPC method's: a budget outside the grants reads
as if it did not exist, as GetBudget answers; a request budget names no scope (its id is the
capability to use it), so there is no outside."""


def expected(endpoint: Endpoint, who: str, side: str) -> int:
    ok = CREATED.get(endpoint.name, 200)
    if endpoint.open:
        return ok
    if who == "none":
        return 401
    if endpoint.action is not None and endpoint.action not in ROLE_ACTIONS[who]:
        return 403
    if side == "inside" or endpoint.rpc is None:
        return ok
    outside = OUTSIDE_HTTP.get(endpoint.name) or GRPC_TO_HTTP[OUTSIDE[endpoint.rpc].name]
    return ok if outside == 200 else outside


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def sidecar(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("http-access")
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    backing = StoreFactory(backend=request.param, path=tmp / "ledger.db", redis_url=url)
    running = start_authed(backing, ManualClock(START), tmp, HTTP_ON)
    root = Caller(running, "root")
    for team in TEAM.values():
        root("CreateBudget", pb_budget(f"b-{team}", scope_id=team, limit="1000", on_exceed=pb.ON_EXCEED_WARN))
    yield running
    running.channel.close()
    running.sidecar.stop(0)


def scopes(side: str) -> dict[str, str]:
    return {"team": TEAM[side], "user": "u1"}


def reservation(sidecar: RunningSidecar, who: str, side: str) -> str:
    """A reservation the caller made itself inside; one made by someone else outside."""
    maker = who if side == "inside" and who == "spender" else "root"
    reply = Caller(sidecar, maker)(
        "Reserve", pb.ReserveRequest(scopes=pb.ScopeIds(**scopes(side)), estimate_usd="0.01")
    )
    return str(reply.reservation_id)


def request_for(name: str, sidecar: RunningSidecar, who: str, side: str) -> tuple[str, dict[str, Any]]:
    """The path and the request's keyword arguments."""
    team, root = TEAM[side], Caller(sidecar, "root")
    unique = uuid.uuid4().hex[:8]
    budget = {"scope": "team", "scope_id": team, "limit_usd": "5", "period": "daily", "on_exceed": "block"}
    match name:
        case "create_budget":
            return "/v1/budgets", {"json": {"id": f"new-{unique}", **budget}}
        case "axonflow_create_budget":
            return "/api/v1/budgets", {
                "json": {"id": f"ax-{unique}", "name": "n", **budget, "limit_usd": 5.0}
            }
        case "list_budgets":
            return "/v1/budgets", {"params": {"scope": "team", "scope_id": team}}
        case "axonflow_list_budgets":
            return "/api/v1/budgets", {"params": {"scope": "team"}}
        case (
            "get_budget"
            | "axonflow_get_budget"
            | "budget_status"
            | "axonflow_budget_status"
            | "axonflow_budget_alerts"
        ):
            prefix = "/api/v1" if name.startswith("axonflow") else "/v1"
            suffix = {
                "budget_status": "/status",
                "axonflow_budget_status": "/status",
                "axonflow_budget_alerts": "/alerts",
            }
            return f"{prefix}/budgets/b-{team}{suffix.get(name, '')}", {}
        case "update_budget":
            return f"/v1/budgets/b-{team}", {"json": {"name": f"renamed {unique}"}}
        case "axonflow_update_budget":
            return f"/api/v1/budgets/b-{team}", {"json": {"name": f"renamed {unique}"}}
        case "delete_budget" | "axonflow_delete_budget":
            root("CreateBudget", pb_budget(f"gone-{unique}", scope_id=team))
            prefix = "/api/v1" if name.startswith("axonflow") else "/v1"
            return f"{prefix}/budgets/gone-{unique}", {}
        case "check":
            return "/v1/check", {"json": {"scopes": scopes(side), "estimate_usd": "0.01"}}
        case "axonflow_check_budget":
            return "/api/v1/budgets/check", {"json": {"team_id": team, "user_id": "u1"}}
        case "reserve":
            return "/v1/reservations", {"json": {"scopes": scopes(side), "estimate_usd": "0.01"}}
        case "commit":
            return f"/v1/reservations/{reservation(sidecar, who, side)}/commit", {
                "json": {"actual_usd": "0.01"}
            }
        case "release":
            return f"/v1/reservations/{reservation(sidecar, who, side)}/release", {}
        case "record_usage":
            return "/v1/usage", {
                "json": {"usage_id": f"u-{unique}", "scopes": scopes(side), "cost_usd": "0.01"}
            }
        case "get_usage":
            return "/v1/usage", {"params": {"team": team}}
        case "axonflow_usage_summary" | "axonflow_usage_records":
            return "/api/v1/usage" + ("/records" if name.endswith("records") else ""), {
                "params": {"team": team}
            }
        case "axonflow_usage_breakdown":
            return "/api/v1/usage/breakdown", {"params": {"group_by": "model", "team": team}}
        case "poll_alerts" | "stream_alerts":
            return "/v1/alerts" + ("/stream" if name == "stream_alerts" else ""), {
                "params": {"budget_id": f"b-{team}"}
            }
        case "axonflow_pricing":
            return "/api/v1/pricing", {}
        case "open_request_budget":
            return "/v1/requests", {"json": {"limit_usd": "0.50", "name": f"q-{unique}"}}
        case "request_status":
            opened = root("OpenRequestBudget", pb.OpenRequestBudgetRequest(limit_usd="0.50"))
            return f"/v1/requests/{opened.id}/status", {}
        case "openapi" | "health":
            return BY_NAME[name].path, {}
    raise AssertionError(name)


def status_of(sidecar: RunningSidecar, endpoint: Endpoint, who: str, side: str) -> int:
    path, kwargs = request_for(endpoint.name, sidecar, who, side)
    with httpx.Client(base_url=base_url(sidecar), timeout=10, headers=headers(who)) as client:
        if endpoint.streaming:
            with client.stream(endpoint.method, path, **kwargs) as response:
                return response.status_code
        return client.request(endpoint.method, path, **kwargs).status_code


@pytest.mark.parametrize("side", ["inside", "outside"])
@pytest.mark.parametrize("who", ["admin", "spender", "reader", "ingester", "none"])
@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_operation_answers_every_role_as_the_model_says(
    sidecar: RunningSidecar, name: str, who: str, side: str
) -> None:
    endpoint = BY_NAME[name]
    assert status_of(sidecar, endpoint, who, side) == expected(endpoint, who, side), (
        f"{name} as {who}, {side}"
    )


def test_every_operation_of_the_grpc_service_but_tokens_and_audit_has_an_http_route() -> None:
    from collector_processor.auth.policy import RPC_ACTIONS

    covered = {e.rpc for e in ENDPOINTS if e.rpc is not None}
    assert set(RPC_ACTIONS) - covered == {"CreateToken", "ListTokens", "RevokeToken", "ListAuditEvents"}


def test_every_endpoint_needs_an_action_or_credentials() -> None:
    """Only the health check is open; every other endpoint passes the gate, and all but the
    document check a role."""
    assert {e.name for e in ENDPOINTS if e.open} == {"health"}
    assert {e.name for e in ENDPOINTS if e.action is None and not e.open} == {"openapi"}
