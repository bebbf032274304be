"""Every RPC of the budget API, called by every role (and by nobody), once naming a scope inside the
caller's grants and once outside, on both stores: the status code is exactly what the trust model says.

The callers: ``admin``, ``spender``, ``reader`` and ``ingester`` tokens granted ``team=search`` and
``user=*``; ``none`` sends no credentials. Inside means team ``search``, outside team ``billing``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from collector_processor.auth.policy import RPC_ACTIONS, Action
from collector_processor.domain.clock import ManualClock
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.auth.conftest import Caller, start_authed
from tests.sidecar.conftest import START, RunningSidecar, StoreFactory, pb_budget

OK, DENIED, UNKNOWN, UNAUTH = (
    grpc.StatusCode.OK,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
)
ROLE_ACTIONS = {
    "admin": {Action.MANAGE_BUDGETS, Action.READ, Action.MANAGE_TOKENS, Action.READ_AUDIT},
    "spender": {Action.SPEND},
    "reader": {Action.READ},
    "ingester": set(),
}
OUTSIDE = {
    "CreateBudget": DENIED, "GetBudget": UNKNOWN, "ListBudgets": OK, "UpdateBudget": UNKNOWN,
    "DeleteBudget": UNKNOWN, "CheckBudget": DENIED, "Reserve": DENIED, "Commit": DENIED, "Release": DENIED,
    "RecordUsage": DENIED, "GetBudgetStatus": UNKNOWN, "GetUsage": DENIED, "WatchAlerts": OK,
    "CreateToken": DENIED, "ListTokens": OK, "RevokeToken": UNKNOWN, "ListAuditEvents": OK,
    # A request budget names no scope: "outside" is a child of one another principal opened, which its
    # id (the capability) lets any spender open (docs/security.md, "Request budgets").
    "OpenRequestBudget": OK,
}  # fmt: skip
TEAM = {"inside": "search", "outside": "billing"}


def expected(rpc: str, who: str, side: str) -> grpc.StatusCode:
    if who == "none":
        return UNAUTH
    if RPC_ACTIONS[rpc] not in ROLE_ACTIONS[who]:
        return DENIED
    return OK if side == "inside" else OUTSIDE[rpc]


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def sidecar(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("rpc-access")
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    backing = StoreFactory(backend=request.param, path=tmp / "ledger.db", redis_url=url)
    running = start_authed(backing, ManualClock(START), tmp)
    root = Caller(running, "root")
    for team in TEAM.values():
        root("CreateBudget", pb_budget(f"b-{team}", scope_id=team, limit="1000", on_exceed=pb.ON_EXCEED_WARN))
    yield running
    running.channel.close()
    running.sidecar.stop(0)


def scopes(side: str) -> pb.ScopeIds:
    return pb.ScopeIds(team=TEAM[side], user="u1")


def reservation(sidecar: RunningSidecar, who: str, side: str) -> str:
    """A reservation the caller made itself inside; one made by someone else outside."""
    maker = who if side == "inside" and RPC_ACTIONS["Reserve"] in ROLE_ACTIONS.get(who, set()) else "root"
    reply = Caller(sidecar, maker)("Reserve", pb.ReserveRequest(scopes=scopes(side), estimate_usd="0.01"))
    return str(reply.reservation_id)


def request_for(rpc: str, sidecar: RunningSidecar, who: str, side: str) -> Any:
    team, root = TEAM[side], Caller(sidecar, "root")
    unique = uuid.uuid4().hex[:8]
    match rpc:
        case "CreateBudget":
            return pb_budget(f"new-{unique}", scope_id=team)
        case "GetBudget":
            return pb.GetBudgetRequest(id=f"b-{team}")
        case "ListBudgets":
            return pb.ListBudgetsRequest(scope=pb.SCOPE_TEAM, scope_id=team)
        case "UpdateBudget":
            return pb.UpdateBudgetRequest(id=f"b-{team}", name=f"renamed {unique}")
        case "DeleteBudget":
            root("CreateBudget", pb_budget(f"gone-{unique}", scope_id=team))
            return pb.DeleteBudgetRequest(id=f"gone-{unique}")
        case "CheckBudget":
            return pb.CheckBudgetRequest(scopes=scopes(side), estimate_usd="0.01")
        case "Reserve":
            return pb.ReserveRequest(scopes=scopes(side), estimate_usd="0.01")
        case "Commit":
            return pb.CommitRequest(reservation_id=reservation(sidecar, who, side), actual_usd="0.01")
        case "Release":
            return pb.ReleaseRequest(reservation_id=reservation(sidecar, who, side))
        case "RecordUsage":
            return pb.RecordUsageRequest(usage_id=f"u-{unique}", scopes=scopes(side), cost_usd="0.01")
        case "GetBudgetStatus":
            return pb.GetBudgetStatusRequest(budget_id=f"b-{team}")
        case "GetUsage":
            return pb.GetUsageRequest(scopes=pb.ScopeIds(team=team))
        case "WatchAlerts":
            return pb.WatchAlertsRequest(budget_ids=[f"b-{team}"])
        case "CreateToken":
            return pb.CreateTokenRequest(name=f"t-{unique}", roles=["spender"], grants=[f"team={team}"])
        case "ListTokens":
            return pb.ListTokensRequest()
        case "RevokeToken":
            made = root(
                "CreateToken",
                pb.CreateTokenRequest(name=f"r-{unique}", roles=["reader"], grants=[f"team={team}"]),
            )
            return pb.RevokeTokenRequest(id=made.token.id)
        case "ListAuditEvents":
            return pb.ListAuditEventsRequest()
        case "OpenRequestBudget":
            if side == "inside":
                return pb.OpenRequestBudgetRequest(limit_usd="1")
            parent = Caller(sidecar, "root")("OpenRequestBudget", pb.OpenRequestBudgetRequest(limit_usd="1"))
            return pb.OpenRequestBudgetRequest(parent_id=parent.id, fraction="0.5")
    raise AssertionError(rpc)


def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return OK


def watch_status(sidecar: RunningSidecar, who: str, request: Any) -> grpc.StatusCode:
    """A stream that is refused ends at once; one that is served stays open once positioned."""
    call = Caller(sidecar, who)("WatchAlerts", request)
    call.initial_metadata()
    time.sleep(0.05)
    if call.done():
        return call.code()  # type: ignore[no-any-return]
    call.cancel()
    return OK


@pytest.mark.parametrize("side", ["inside", "outside"])
@pytest.mark.parametrize("who", ["admin", "spender", "reader", "ingester", "none"])
@pytest.mark.parametrize("rpc", sorted(RPC_ACTIONS))
def test_every_rpc_answers_every_role_as_the_model_says(
    sidecar: RunningSidecar, rpc: str, who: str, side: str
) -> None:
    request = request_for(rpc, sidecar, who, side)
    if rpc == "WatchAlerts":
        got = watch_status(sidecar, who, request)
    else:
        got = status_of(lambda: Caller(sidecar, who)(rpc, request))
    assert got == expected(rpc, who, side), f"{rpc} as {who}, {side}"


def test_health_checks_stay_open_without_credentials(sidecar: RunningSidecar, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(sidecar.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_credentials_like_the_api(sidecar: RunningSidecar) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(sidecar.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ServerReflectionInfo(iter([ask]), timeout=5))
    assert info.value.code() == UNAUTH
    replies = list(
        stub.ServerReflectionInfo(
            iter([ask]), timeout=5, metadata=[("authorization", "Bearer " + "test-reader-token-" + "x" * 24)]
        )
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert "paymaster.v1.BudgetService" in names
