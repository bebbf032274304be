"""Request budgets and tiered budgets over HTTP/JSON: opened, held to, denied by and read the same as
over gRPC, in the same words (``paymaster.vocabulary.to_json`` of the gRPC answer) — on both stores."""

from __future__ import annotations

from typing import Any

from paymaster.v1 import budget_pb2 as pb
from paymaster.vocabulary import to_json
from tests.sidecar.auth.conftest import Caller
from tests.sidecar.conftest import RunningSidecar, pb_budget
from tests.sidecar.http.conftest import Http

TIERS = [
    {"at_percent": 50, "action": "warn"},
    {"at_percent": 80, "action": "downgrade"},
    {"at_percent": 100, "action": "block"},
]


def without(answer: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in names}


def test_a_tiered_budget_is_created_patched_and_decides_by_its_tiers(http_sidecar: RunningSidecar) -> None:
    root, grpc_root = Http(http_sidecar), Caller(http_sidecar, "root")
    body = {"id": "tiered", "scope": "team", "scope_id": "search", "limit_usd": "10", "period": "daily"}
    created = root("POST", "/v1/budgets", json={**body, "tiers": TIERS})
    assert created.status_code == 201, created.text
    assert created.json()["tiers"] == TIERS and created.json()["on_exceed"] == "block"
    assert created.json() == to_json(grpc_root("GetBudget", pb.GetBudgetRequest(id="tiered")))

    # 6 of 10 dollars passes the warn tier: allowed with a warning, the tier named on the budget's info.
    reply = root("POST", "/v1/reservations", json={"scopes": {"team": "search"}, "estimate_usd": "6"}).json()
    assert reply["decision"] == "allow" and reply["warn"] is True
    assert reply["budget_info"][0]["tier"] == {"at_percent": 50, "action": "warn"}
    assert reply["deciding_tier"] is None
    # 3 more would pass 80%: a downgrade, decided by that tier.
    check = root("POST", "/v1/check", json={"scopes": {"team": "search"}, "estimate_usd": "3"}).json()
    assert (check["decision"], check["deciding_budget_id"]) == ("downgrade", "tiered")
    assert check["deciding_tier"] == {"at_percent": 80, "action": "downgrade"}
    over_grpc = to_json(
        grpc_root("CheckBudget", pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="3"))
    )
    assert check == over_grpc

    # An empty list makes it single-action again; tiers that get less strict are refused by name.
    back = root("PATCH", "/v1/budgets/tiered", json={"tiers": [], "on_exceed": "warn"})
    assert (back.status_code, back.json()["tiers"], back.json()["on_exceed"]) == (200, [], "warn")
    worse = root(
        "PATCH", "/v1/budgets/tiered",
        json={"tiers": [{"at_percent": 50, "action": "block"}, {"at_percent": 90, "action": "warn"}]},
    )  # fmt: skip
    assert worse.status_code == 400 and worse.json()["error"]["field"].startswith("tiers")
    bad = root(
        "POST", "/v1/budgets", json={**body, "id": "t2", "tiers": [{"at_percent": 0, "action": "warn"}]}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "tiers[0].at_percent"


def test_a_request_budget_is_opened_held_to_and_read_over_http(http_sidecar: RunningSidecar) -> None:
    spender, reader = Http(http_sidecar, "spender"), Http(http_sidecar, "reader")
    grpc_reader = Caller(http_sidecar, "reader")
    Caller(http_sidecar, "root")(
        "CreateBudget", pb_budget("b-search", scope_id="search", limit="100", on_exceed=pb.ON_EXCEED_BLOCK)
    )
    opened = spender("POST", "/v1/requests", json={"limit_usd": "0.50", "name": "question 1"})
    assert opened.status_code == 201, opened.text
    request = opened.json()
    assert request["id"].startswith("rq_") and request["limit_usd"] == "0.500000"
    assert (request["used_usd"], request["remaining_usd"], request["ancestor_ids"]) == (
        "0.000000",
        "0.500000",
        [],
    )
    rid = request["id"]

    # A child asking for more than the parent has is cut to the parent's remainder, and says so; one
    # of at most half the parent's remainder (or $1, the smaller) is not cut.
    greedy = spender("POST", "/v1/requests", json={"parent_id": rid, "limit_usd": "1"}).json()
    assert (greedy["limit_usd"], greedy["clamped"]) == ("0.500000", True)
    child = spender("POST", "/v1/requests", json={"parent_id": rid, "fraction": "0.5", "limit_usd": "1"})
    assert child.status_code == 201, child.text
    assert (child.json()["limit_usd"], child.json()["ancestor_ids"], child.json()["clamped"]) == (
        "0.250000", [rid], False,
    )  # fmt: skip
    kid = child.json()["id"]

    spend = {
        "scopes": {"team": "search"},
        "estimate_usd": "0.20",
        "request_budget_id": kid,
        "service": "planner",
    }
    held = spender("POST", "/v1/reservations", json=spend).json()
    assert held["decision"] == "allow"
    assert [(i["scope"], i["scope_id"]) for i in held["budget_info"]] == [
        ("team", "search"), ("request", kid), ("request", rid),
    ]  # fmt: skip
    committed = spender(
        "POST", f"/v1/reservations/{held['reservation_id']}/commit", json={"actual_usd": "0.20"}
    )
    assert committed.json()["charged_usd"] == "0.200000"

    # The child has 0.05 left: a 0.10 step is denied by it, naming it; the parent still has 0.30.
    denied = spender("POST", "/v1/reservations", json={**spend, "estimate_usd": "0.10"}).json()
    assert (denied["decision"], denied["deciding_budget_id"]) == ("deny", kid)
    assert denied["deciding_tier"] == {"at_percent": 100, "action": "block"}
    recorded = spender(
        "POST", "/v1/usage",
        json={"usage_id": "u-1", "scopes": {"team": "search"}, "cost_usd": "0.05", "request_budget_id": rid,
              "service": "summarizer"},
    )  # fmt: skip
    assert recorded.status_code == 200 and recorded.json()["charged_usd"] == "0.050000"

    status = reader("GET", f"/v1/requests/{rid}/status")
    assert status.status_code == 200, status.text
    shown = status.json()
    assert (shown["budget"]["scope"], shown["budget"]["period"], shown["used_usd"]) == (
        "request",
        "request",
        "0.250000",
    )
    assert shown["request"]["by_service"] == [
        {"service": "planner", "used_usd": "0.200000"}, {"service": "summarizer", "used_usd": "0.050000"},
    ]  # fmt: skip
    assert shown == to_json(grpc_reader("GetBudgetStatus", pb.GetBudgetStatusRequest(request_budget_id=rid)))

    assert reader("GET", "/v1/requests/rq_0123456789abcdef0123/status").status_code == 404
    assert reader("POST", "/v1/requests", json={"limit_usd": "1"}).status_code == 403
    not_open = spender(
        "POST", "/v1/reservations", json={**spend, "request_budget_id": "rq_never_opened_here_00"}
    )
    assert not_open.json()["decision"] == "deny" and "rq_never_opened_here_00" in not_open.json()["reason"]
    for body, field in (
        ({"limit_usd": "-1"}, "limit_usd"),
        ({"parent_id": rid, "fraction": "1.5"}, "fraction"),
        ({"id": "short", "limit_usd": "1"}, "id"),
        ({"limit_usd": "1", "idle_ttl_seconds": 0}, "idle_ttl_seconds"),
        ({"limit_usd": "1", "colour": "red"}, "colour"),
    ):
        refused = spender("POST", "/v1/requests", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"]["field"] == field, (body, refused.text)


def test_the_request_budget_answer_is_the_grpc_one(http_sidecar: RunningSidecar) -> None:
    spender, grpc_spender = Http(http_sidecar, "spender"), Caller(http_sidecar, "spender")
    over_http = spender("POST", "/v1/requests", json={"limit_usd": "2", "tiers": TIERS}).json()
    over_grpc = to_json(
        grpc_spender(
            "OpenRequestBudget",
            pb.OpenRequestBudgetRequest(
                limit_usd="2",
                tiers=[
                    pb.Tier(at_percent=50, action=pb.ON_EXCEED_WARN),
                    pb.Tier(at_percent=80, action=pb.ON_EXCEED_DOWNGRADE),
                    pb.Tier(at_percent=100, action=pb.ON_EXCEED_BLOCK),
                ],
            ),
        )
    )
    # Two request budgets: their ids and the instants they were opened and expire at differ; nothing else.
    instants = ("id", "name", "opened_at", "expires_at")
    assert without(over_http, *instants) == without(over_grpc, *instants)
    assert set(over_http) == set(over_grpc)
