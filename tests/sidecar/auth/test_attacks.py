"""The attacks that worked on a sidecar without trust, each tried again against one with ``[auth]``
on, on both stores: tenants of team ``search`` (and nobody at all) going after team ``billing``."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import grpc
import pytest

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.auth.conftest import Caller
from tests.sidecar.conftest import RunningSidecar, pb_budget

DENIED, UNKNOWN, UNAUTH = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
)
BILLING = pb.ScopeIds(team="billing")


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


@pytest.fixture
def billing(authed: RunningSidecar, as_: Callable[[str], Caller]) -> Caller:
    """Team billing's own spender, a $5 block budget for billing, and some billing spend."""
    root = as_("root")
    root("CreateBudget", pb_budget("b-billing", scope_id="billing", limit="5", thresholds=(50,)))
    made = root(
        "CreateToken", pb.CreateTokenRequest(name="billing-app", roles=["spender"], grants=["team=billing"])
    )
    spender = Caller(authed, "billing-app")
    spender.running = authed

    def call(method: str, request: object, **kwargs: object) -> object:
        return getattr(authed.stub, method)(
            request, metadata=[("authorization", f"Bearer {made.secret}")], timeout=10, **kwargs
        )

    spender.__call__ = call  # type: ignore[method-assign]
    return spender


def billing_call(billing: Caller, method: str, request: object) -> object:
    return billing.__call__(method, request)  # type: ignore[call-arg]


def used(as_: Callable[[str], Caller], budget: str = "b-billing") -> Decimal:
    return Decimal(as_("root")("GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id=budget)).used_usd)


def test_nobody_without_credentials_can_touch_anything(
    authed: RunningSidecar, as_: Callable[[str], Caller]
) -> None:
    nobody = as_("none")
    assert code_of(lambda: nobody("CreateBudget", pb_budget("x", scope_id="billing", limit="0"))) == UNAUTH
    assert (
        code_of(
            lambda: nobody("RecordUsage", pb.RecordUsageRequest(usage_id="u", scopes=BILLING, cost_usd="1"))
        )
        == UNAUTH
    )
    assert code_of(lambda: list(nobody("WatchAlerts", pb.WatchAlertsRequest(after_sequence=0)))) == UNAUTH
    bad = [("authorization", "Bearer forged-" + "f" * 40)]
    with pytest.raises(grpc.RpcError) as info:
        authed.stub.ListBudgets(pb.ListBudgetsRequest(), metadata=bad, timeout=5)
    assert info.value.code() == UNAUTH and "forged" not in (info.value.details() or "")


def test_a_team_admin_cannot_block_change_or_delete_another_teams_budget(
    billing: Caller, as_: Callable[[str], Caller]
) -> None:
    admin = as_("admin")  # admin of team search
    zero = pb_budget("b-kill", scope_id="billing", limit="0")
    assert code_of(lambda: admin("CreateBudget", zero)) == DENIED
    raise_limit = pb.UpdateBudgetRequest(id="b-billing", limit_usd="0")
    assert code_of(lambda: admin("UpdateBudget", raise_limit)) == UNKNOWN
    disable = pb.UpdateBudgetRequest(id="b-billing", enabled=False)
    assert code_of(lambda: admin("UpdateBudget", disable)) == UNKNOWN
    assert code_of(lambda: admin("DeleteBudget", pb.DeleteBudgetRequest(id="b-billing"))) == UNKNOWN
    every_team = pb_budget("b-all", scope_id=None, limit="0")
    assert code_of(lambda: admin("CreateBudget", every_team)) == DENIED  # a wildcard reaches billing too
    budget = as_("root")("GetBudget", pb.GetBudgetRequest(id="b-billing"))
    assert Decimal(budget.limit_usd) == 5 and budget.enabled


def test_a_spender_cannot_charge_another_team(billing: Caller, as_: Callable[[str], Caller]) -> None:
    spender = as_("spender")
    before = used(as_)
    charge = pb.RecordUsageRequest(usage_id="steal-1", scopes=BILLING, cost_usd="1000000")
    assert code_of(lambda: spender("RecordUsage", charge)) == DENIED
    hold = pb.ReserveRequest(
        scopes=pb.ScopeIds(team="search", user="u1", organization="acme"), estimate_usd="1"
    )
    assert code_of(lambda: spender("Reserve", hold)) == DENIED  # organization=acme is not granted
    assert used(as_) == before


def test_a_reader_sees_only_its_teams_usage_and_alerts(
    authed: RunningSidecar, billing: Caller, as_: Callable[[str], Caller]
) -> None:
    root = as_("root")
    root("CreateBudget", pb_budget("b-search", scope_id="search", limit="5", thresholds=(50,)))
    reader = as_("reader")
    stream = reader("WatchAlerts", pb.WatchAlertsRequest(after_sequence=0))
    stream.initial_metadata()
    model = pb.UsageFacts(provider="openai", model="gpt-4o")
    for team, usage_id in (("billing", "ub"), ("search", "us")):
        root(
            "RecordUsage",
            pb.RecordUsageRequest(
                usage_id=usage_id,
                scopes=pb.ScopeIds(team=team, user=f"{team}-user"),
                cost_usd="3",
                usage=model,
            ),
        )
    report = reader("GetUsage", pb.GetUsageRequest(group_by=[pb.DIMENSION_TEAM, pb.DIMENSION_USER]))
    assert [tuple(r.key) for r in report.rows] == [("search", "search-user")]
    assert report.total.cost_usd == "3.000000"
    assert code_of(lambda: reader("GetUsage", pb.GetUsageRequest(scopes=BILLING))) == DENIED
    listed = reader("ListBudgets", pb.ListBudgetsRequest())
    assert [b.id for b in listed.budgets] == ["b-search"]
    assert (
        code_of(lambda: reader("GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id="b-billing")))
        == UNKNOWN
    )
    first = next(iter(stream))
    assert first.budget_id == "b-search"  # billing's alert fired first, and was not sent
    stream.cancel()
    everything = root("ListAuditEvents", pb.ListAuditEventsRequest())
    assert {e.target for e in everything.events} >= {"b-billing", "b-search"}


def test_an_idempotency_key_of_another_tenant_is_not_its_reservation(
    billing: Caller, as_: Callable[[str], Caller]
) -> None:
    as_("root")("UpdateBudget", pb.UpdateBudgetRequest(id="b-billing", limit_usd="0"))
    search = as_("spender")
    mine = search(
        "Reserve",
        pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1", idempotency_key="k-1"),
    )
    assert mine.decision == pb.DECISION_ALLOW
    theirs = billing_call(
        billing, "Reserve", pb.ReserveRequest(scopes=BILLING, estimate_usd="1", idempotency_key="k-1")
    )
    assert theirs.decision == pb.DECISION_DENY  # billing's own $0 budget decides, not search's answer
    assert theirs.reservation_id != mine.reservation_id
    # a Commit of another principal's reservation is refused, and so is a Release
    commit = pb.CommitRequest(reservation_id=mine.reservation_id, actual_usd="1")
    assert code_of(lambda: billing_call(billing, "Commit", commit)) == DENIED
    release = pb.ReleaseRequest(reservation_id=mine.reservation_id)
    assert code_of(lambda: billing_call(billing, "Release", release)) == DENIED
    # the same key with a different request from its owner is refused, never answered with the first
    other = pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="2", idempotency_key="k-1")
    with pytest.raises(grpc.RpcError) as info:
        search("Reserve", other)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency_key" in (info.value.details() or "")
    again = search(
        "Reserve",
        pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1", idempotency_key="k-1"),
    )
    assert again.reservation_id == mine.reservation_id  # a true retry still replays


def test_a_usage_id_of_another_tenant_does_not_make_a_charge_a_duplicate(
    billing: Caller, as_: Callable[[str], Caller]
) -> None:
    search = as_("spender")
    search(
        "RecordUsage", pb.RecordUsageRequest(usage_id="u-1", scopes=pb.ScopeIds(team="search"), cost_usd="1")
    )
    before = used(as_)
    reply = billing_call(
        billing, "RecordUsage", pb.RecordUsageRequest(usage_id="u-1", scopes=BILLING, cost_usd="2")
    )
    assert not reply.duplicate
    assert used(as_) == before + 2
    with pytest.raises(grpc.RpcError) as info:  # its owner reusing it for other spend
        search(
            "RecordUsage",
            pb.RecordUsageRequest(usage_id="u-1", scopes=pb.ScopeIds(team="search"), cost_usd="5"),
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert search(
        "RecordUsage", pb.RecordUsageRequest(usage_id="u-1", scopes=pb.ScopeIds(team="search"), cost_usd="1")
    ).duplicate


def test_every_denial_is_counted_by_principal_and_reason_without_secrets(
    authed: RunningSidecar, billing: Caller, as_: Callable[[str], Caller]
) -> None:
    spender = as_("spender")
    for _ in range(2):
        code_of(
            lambda: spender("RecordUsage", pb.RecordUsageRequest(usage_id="x", scopes=BILLING, cost_usd="1"))
        )
    code_of(
        lambda: as_("reader")(
            "Reserve", pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1")
        )
    )
    code_of(lambda: as_("none")("ListBudgets", pb.ListBudgetsRequest()))
    deadline = time.monotonic() + 2
    counters = authed.sidecar.metrics.snapshot().counters["paymaster_auth_denied_total"]
    while time.monotonic() < deadline and len(counters) < 3:
        counters = authed.sidecar.metrics.snapshot().counters["paymaster_auth_denied_total"]
    by = {dict(k)["principal"] + "/" + dict(k)["reason"]: v for k, v in counters.items()}
    assert by["spender/scope"] == 2 and by["reader/role"] == 1 and by["/missing"] == 1
