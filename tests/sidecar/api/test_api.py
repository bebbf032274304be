"""The budget API on a real server on a free loopback port: decisions, the downgrade exchange, CRUD,
status, usage, health and reflection."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar, pb_budget, rpc_error

SCOPE_FIELDS = {
    pb.SCOPE_ORGANIZATION: "organization",
    pb.SCOPE_TEAM: "team",
    pb.SCOPE_AGENT: "agent",
    pb.SCOPE_WORKFLOW: "workflow",
    pb.SCOPE_USER: "user",
}
ALL = pb.ScopeIds(organization="acme", team="search", agent="summarizer", workflow="digest", user="ada")


def reserve(
    server: RunningSidecar, estimate: str, scopes: pb.ScopeIds = ALL, **kwargs: object
) -> pb.ReserveResponse:
    return server.stub.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd=estimate, **kwargs))  # type: ignore[arg-type]


def spend(server: RunningSidecar, amount: str, scopes: pb.ScopeIds = ALL) -> None:
    r = reserve(server, amount, scopes)
    assert r.decision != pb.DECISION_DENY, r.reason
    server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd=amount))


@pytest.mark.parametrize("scope", list(SCOPE_FIELDS))
@pytest.mark.parametrize(
    ("action", "decision"),
    [
        (pb.ON_EXCEED_WARN, pb.DECISION_ALLOW),
        (pb.ON_EXCEED_BLOCK, pb.DECISION_DENY),
        (pb.ON_EXCEED_DOWNGRADE, pb.DECISION_DOWNGRADE),
    ],
)
def test_decision_matrix_each_action_on_each_scope(
    server: RunningSidecar, scope: int, action: int, decision: int
) -> None:
    entity = getattr(ALL, SCOPE_FIELDS[scope])
    server.stub.CreateBudget(pb_budget("b", scope, entity, "1", on_exceed=action))
    first = reserve(server, "0.6")
    assert first.decision == pb.DECISION_ALLOW and not first.warn
    assert [(i.budget_id, i.scope_id, i.reserved_usd) for i in first.budget_info] == [
        ("b", entity, "0.000000")
    ]
    second = reserve(server, "0.6")
    assert second.decision == decision
    (info,) = second.budget_info
    assert info.exceeded and info.action == action
    assert (info.used_usd, info.reserved_usd, info.limit_usd, info.remaining_usd) == (
        "0.000000",
        "0.600000",
        "1.000000",
        "0.400000",
    )
    if action == pb.ON_EXCEED_WARN:
        assert second.warn and "Warn budget 'b'" in second.warnings[0]
    else:
        assert second.deciding_budget_id == "b" and f"({SCOPE_FIELDS[scope]}={entity})" in second.reason
    # Another entity of the same scope is not governed by this budget.
    other = pb.ScopeIds(**{SCOPE_FIELDS[scope]: "someone-else"})
    assert reserve(server, "5", other).budget_info == []


def test_several_budgets_at_once_the_strictest_action_decides(server: RunningSidecar) -> None:
    server.stub.CreateBudget(
        pb_budget("org-warn", pb.SCOPE_ORGANIZATION, "acme", "1", on_exceed=pb.ON_EXCEED_WARN)
    )
    server.stub.CreateBudget(
        pb_budget("team-down", pb.SCOPE_TEAM, "search", "2", on_exceed=pb.ON_EXCEED_DOWNGRADE)
    )
    server.stub.CreateBudget(pb_budget("user-block", pb.SCOPE_USER, None, "3", on_exceed=pb.ON_EXCEED_BLOCK))
    warned = reserve(server, "1.5")
    assert (warned.decision, warned.warn) == (pb.DECISION_ALLOW, True)
    assert [i.budget_id for i in warned.budget_info] == ["org-warn", "team-down", "user-block"]
    downgraded = reserve(server, "1")
    assert (downgraded.decision, downgraded.deciding_budget_id) == (pb.DECISION_DOWNGRADE, "team-down")
    denied = reserve(server, "1")
    assert (denied.decision, denied.deciding_budget_id, denied.reservation_id) == (
        pb.DECISION_DENY,
        "user-block",
        "",
    )
    # A wildcard user budget: another user still has all of its own.
    bob = pb.ScopeIds(user="bob")
    assert reserve(server, "2.9", bob).decision == pb.DECISION_ALLOW


def test_downgrade_exchange_with_the_cheaper_estimate_up_front(server: RunningSidecar) -> None:
    server.stub.CreateBudget(pb_budget("soft", limit="1", on_exceed=pb.ON_EXCEED_DOWNGRADE))
    server.stub.CreateBudget(pb_budget("hard", limit="1.5"))
    spend(server, "0.9")
    r = reserve(server, "0.4", downgrade_estimate_usd="0.05")
    assert (r.decision, r.reserved_usd, r.awaiting_downgrade_estimate) == (
        pb.DECISION_DOWNGRADE,
        "0.050000",
        False,
    )
    assert "Holding the cheaper path's estimate $0.05" in r.reason
    too_dear = reserve(server, "0.4", downgrade_estimate_usd="0.7")  # the block budget still applies
    assert (too_dear.decision, too_dear.deciding_budget_id) == (pb.DECISION_DENY, "hard")
    done = server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="0.04"))
    assert done.charged_usd == "0.040000"


def test_downgrade_exchange_by_re_sending_the_cheaper_estimate(server: RunningSidecar) -> None:
    server.stub.CreateBudget(pb_budget("soft", limit="1", on_exceed=pb.ON_EXCEED_DOWNGRADE))
    spend(server, "0.9")
    first = reserve(server, "0.4")
    assert (first.decision, first.awaiting_downgrade_estimate, first.reserved_usd) == (
        pb.DECISION_DOWNGRADE,
        True,
        "0.400000",
    )
    resent = server.stub.Reserve(pb.ReserveRequest(estimate_usd="0.05", downgrade_of=first.reservation_id))
    assert (resent.decision, resent.reservation_id, resent.reserved_usd) == (
        pb.DECISION_DOWNGRADE,
        first.reservation_id,
        "0.050000",
    )
    assert not resent.awaiting_downgrade_estimate
    status = server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="soft"))
    assert status.reserved_usd == "0.050000"  # the full estimate was swapped for the cheaper one
    again = server.stub.Reserve(pb.ReserveRequest(estimate_usd="0.05", downgrade_of=first.reservation_id))
    assert again.replayed and again.reservation_id == first.reservation_id
    err = rpc_error(
        lambda: server.stub.Reserve(pb.ReserveRequest(estimate_usd="0.06", downgrade_of=first.reservation_id))
    )
    assert (
        err.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "not awaiting a downgrade estimate" in err.details()
    )
    server.stub.Commit(pb.CommitRequest(reservation_id=first.reservation_id, actual_usd="0.05"))
    assert server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="soft")).used_usd == "0.950000"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="-0.01")),
            "estimate_usd: must not be negative",
        ),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="ten")),
            "estimate_usd: must be a decimal number",
        ),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="NaN")),
            "estimate_usd: must be finite",
        ),
        (lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL)), "estimate_usd: is required"),
        (lambda s: s.Reserve(pb.ReserveRequest(estimate_usd="1")), "scopes: at least one of"),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="1", estimate_tokens=-5)),
            "estimate_tokens: must not be negative",
        ),
        (
            lambda s: s.Reserve(
                pb.ReserveRequest(scopes=ALL, estimate_usd="1", ttl=duration_pb2.Duration(seconds=-1))
            ),
            "ttl: must be positive",
        ),
        (
            lambda s: s.Reserve(
                pb.ReserveRequest(scopes=ALL, estimate_usd="1", ttl=duration_pb2.Duration(seconds=7200))
            ),
            "ttl: must be positive and at most 3600s",
        ),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="a\x00b"), estimate_usd="1")),
            "scopes.team: must be 1-256 printable",
        ),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="1", downgrade_estimate_usd="-2")),
            "downgrade_estimate_usd: must not be negative",
        ),
        (
            lambda s: s.Commit(pb.CommitRequest(reservation_id="x", actual_usd="-1")),
            "actual_usd: must not be negative",
        ),
        (lambda s: s.Commit(pb.CommitRequest(actual_usd="1")), "reservation_id: is required"),
        (
            lambda s: s.Commit(
                pb.CommitRequest(reservation_id="x", actual_usd="1", usage=pb.UsageFacts(output_tokens=-1))
            ),
            "usage.output_tokens: must not be negative",
        ),
        (
            lambda s: s.RecordUsage(pb.RecordUsageRequest(usage_id="u", scopes=ALL, cost_usd="-3")),
            "cost_usd: must not be negative",
        ),
        (lambda s: s.RecordUsage(pb.RecordUsageRequest(scopes=ALL, cost_usd="3")), "usage_id: is required"),
        (
            lambda s: s.CheckBudget(pb.CheckBudgetRequest(scopes=ALL, estimate_usd="1e400")),
            "estimate_usd: must be at most",
        ),
        (lambda s: s.CreateBudget(pb_budget("b", scope=9)), "budget.scope: unknown scope 9"),
        (
            lambda s: s.CreateBudget(pb_budget("b", scope=pb.SCOPE_UNSPECIFIED)),
            "budget.scope: unknown scope 0",
        ),
        (
            lambda s: s.CreateBudget(pb_budget("b", period="fortnightly")),
            "budget.period: unknown period 'fortnightly'",
        ),
        (lambda s: s.CreateBudget(pb_budget("b", limit="-5")), "budget.limit_usd: must not be negative"),
        (
            lambda s: s.CreateBudget(pb_budget("b", on_exceed=pb.ON_EXCEED_UNSPECIFIED)),
            "budget.on_exceed: unknown action 0",
        ),
        (
            lambda s: s.CreateBudget(pb_budget("b", time_zone="Mars/Base")),
            "budget.time_zone: unknown time zone",
        ),
        (
            lambda s: s.CreateBudget(pb_budget("b", thresholds=(0,))),
            "budget.alert_thresholds: each threshold",
        ),
        (lambda s: s.CreateBudget(pb_budget("bad id!")), "budget.id: must be 1-128 characters"),
        (lambda s: s.UpdateBudget(pb.UpdateBudgetRequest(id="b")), "update: names no field to change"),
        (lambda s: s.ListBudgets(pb.ListBudgetsRequest(scope=42)), "scope: unknown scope 42"),
        (
            lambda s: s.ListBudgets(pb.ListBudgetsRequest(page_size=501)),
            "page_size: must be between 1 and 500",
        ),
        (lambda s: s.ListBudgets(pb.ListBudgetsRequest(page_token="!!")), "page_token: is not a token"),
        (
            lambda s: s.GetUsage(pb.GetUsageRequest(group_by=[pb.DIMENSION_DAY, pb.DIMENSION_MONTH])),
            "group_by: at most one period",
        ),
        (lambda s: s.GetUsage(pb.GetUsageRequest(group_by=[99])), "group_by[0]: unknown dimension 99"),
        (lambda s: s.GetUsage(pb.GetUsageRequest(time_zone="Nowhere")), "time_zone: unknown time zone"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    server: RunningSidecar, call: object, field: str
) -> None:
    err = rpc_error(lambda: call(server.stub))  # type: ignore[operator]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field), err.details()
    # The server is still there for the next caller.
    assert server.stub.ListBudgets(pb.ListBudgetsRequest()).budgets is not None


def test_requests_that_are_not_protobuf_are_invalid_argument_naming_their_type(
    server: RunningSidecar,
) -> None:
    service = pb.DESCRIPTOR.services_by_name["BudgetService"]
    corrupt = b"\x0a\xff\xff\xff\x0f not a message"
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.server_streaming:
            call = server.channel.unary_stream(path)
            err = rpc_error(lambda: list(call(corrupt, timeout=10)))  # noqa: B023
        else:
            err = rpc_error(lambda: server.channel.unary_unary(path)(corrupt, timeout=10))  # noqa: B023
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, err.code(), err.details())
        assert err.details().startswith("request: cannot be decoded"), err.details()
        assert method.input_type.full_name in err.details(), err.details()
    # Nothing was harmed: the next well-formed request is served.
    assert server.stub.ListBudgets(pb.ListBudgetsRequest()).budgets is not None


def test_unknown_ids_conflicts_and_wrong_states_get_their_status(server: RunningSidecar) -> None:
    assert (
        rpc_error(lambda: server.stub.GetBudget(pb.GetBudgetRequest(id="nope"))).code()
        == grpc.StatusCode.NOT_FOUND
    )
    err = rpc_error(lambda: server.stub.Commit(pb.CommitRequest(reservation_id="nope", actual_usd="1")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "reservation 'nope' is unknown" in err.details()
    server.stub.CreateBudget(pb_budget("b"))
    assert (
        rpc_error(lambda: server.stub.CreateBudget(pb_budget("b"))).code() == grpc.StatusCode.ALREADY_EXISTS
    )
    r = reserve(server, "1")
    server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="1"))
    err = rpc_error(lambda: server.stub.Release(pb.ReleaseRequest(reservation_id=r.reservation_id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    wildcard = pb_budget("w", pb.SCOPE_USER, None)
    server.stub.CreateBudget(wildcard)
    err = rpc_error(lambda: server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="w")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(
        "scope_id: is required"
    )


def test_commit_twice_over_the_api_charges_once(server: RunningSidecar) -> None:
    server.stub.CreateBudget(pb_budget("b"))
    r = reserve(server, "0.5")
    request = pb.CommitRequest(
        reservation_id=r.reservation_id,
        actual_usd="0.45",
        usage=pb.UsageFacts(provider="openai", model="gpt-4o-mini", input_tokens=900, output_tokens=100),
    )
    first, second = server.stub.Commit(request), server.stub.Commit(request)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.charged_usd == second.charged_usd == "0.450000"
    assert first.budget_info[0].used_usd == "0.450000"
    assert server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="b")).used_usd == "0.450000"


def test_budget_crud_and_pagination(server: RunningSidecar) -> None:
    for i in range(5):
        server.stub.CreateBudget(pb_budget(f"b{i}", pb.SCOPE_TEAM if i % 2 else pb.SCOPE_USER, f"e{i}"))
    generated = server.stub.CreateBudget(
        pb.CreateBudgetRequest(
            budget=pb.Budget(
                scope=pb.SCOPE_AGENT, limit_usd="3", period="weekly", on_exceed=pb.ON_EXCEED_WARN
            )
        )
    )
    assert generated.id.startswith("b-") and generated.name == generated.id and generated.enabled
    assert list(generated.alert_thresholds) == [80, 100]  # the sidecar's defaults
    assert not generated.HasField("scope_id")  # a wildcard
    page = server.stub.ListBudgets(pb.ListBudgetsRequest(page_size=2))
    ids = [b.id for b in page.budgets]
    while page.next_page_token:
        page = server.stub.ListBudgets(pb.ListBudgetsRequest(page_size=2, page_token=page.next_page_token))
        ids += [b.id for b in page.budgets]
    assert ids == sorted(["b0", "b1", "b2", "b3", "b4", generated.id])
    teams = server.stub.ListBudgets(pb.ListBudgetsRequest(scope=pb.SCOPE_TEAM))
    assert [b.id for b in teams.budgets] == ["b1", "b3"]
    updated = server.stub.UpdateBudget(
        pb.UpdateBudgetRequest(
            id="b1",
            limit_usd="20.50",
            on_exceed=pb.ON_EXCEED_WARN,
            alert_thresholds=pb.AlertThresholds(percent=[90, 50]),
            enabled=False,
        )
    )
    assert (updated.limit_usd, updated.on_exceed, list(updated.alert_thresholds), updated.enabled) == (
        "20.500000",
        pb.ON_EXCEED_WARN,
        [50, 90],
        False,
    )
    assert server.stub.GetBudget(pb.GetBudgetRequest(id="b1")) == updated
    server.stub.DeleteBudget(pb.DeleteBudgetRequest(id="b1"))
    assert (
        rpc_error(lambda: server.stub.GetBudget(pb.GetBudgetRequest(id="b1"))).code()
        == grpc.StatusCode.NOT_FOUND
    )


def test_status_reports_the_period_and_projects_spend_from_the_burn_rate(server: RunningSidecar) -> None:
    server.stub.CreateBudget(pb_budget("b", limit="10", period="daily"))
    spend(server, "3")  # at 12:00, half the day gone
    held = reserve(server, "1")
    status = server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="b", scope_id="search"))
    assert (status.used_usd, status.reserved_usd, status.remaining_usd, status.percentage) == (
        "3.000000",
        "1.000000",
        "6.000000",
        "30.00",
    )
    assert status.period_start.ToJsonString() == "2025-03-14T00:00:00Z"
    assert status.period_end.ToJsonString() == "2025-03-15T00:00:00Z"
    assert (status.burn_rate_usd_per_hour, status.projected_usd) == ("0.250000", "6.000000")
    assert held.expires_at.ToJsonString() == "2025-03-14T12:05:00Z"  # the default TTL
    err = rpc_error(
        lambda: server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="b", scope_id="other"))
    )
    assert err.details().startswith("scope_id: budget 'b' governs team=search")


def test_usage_breaks_spend_down_by_scope_model_provider_and_period(server: RunningSidecar) -> None:
    for user, model, cost in (
        ("ada", "gpt-4o", "0.30"),
        ("bob", "gpt-4o-mini", "0.02"),
        ("ada", "gpt-4o-mini", "0.01"),
    ):
        r = reserve(server, "1", pb.ScopeIds(team="search", user=user))
        facts = pb.UsageFacts(provider="openai", model=model, input_tokens=100, output_tokens=10)
        server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd=cost, usage=facts))
    server.stub.RecordUsage(
        pb.RecordUsageRequest(
            usage_id="trace-1",
            scopes=pb.ScopeIds(team="ads"),
            cost_usd="1.5",
            usage=pb.UsageFacts(provider="anthropic", model="claude"),
        )
    )
    by_user = server.stub.GetUsage(
        pb.GetUsageRequest(group_by=[pb.DIMENSION_USER], scopes=pb.ScopeIds(team="search"))
    )
    assert [(list(r.key), r.totals.cost_usd, r.totals.records) for r in by_user.rows] == [
        (["ada"], "0.310000", 2),
        (["bob"], "0.020000", 1),
    ]
    assert (by_user.total.cost_usd, by_user.total.input_tokens, by_user.total.total_tokens) == (
        "0.330000",
        300,
        330,
    )
    by_provider_model = server.stub.GetUsage(
        pb.GetUsageRequest(group_by=[pb.DIMENSION_PROVIDER, pb.DIMENSION_MODEL])
    )
    assert [list(r.key) for r in by_provider_model.rows] == [
        ["anthropic", "claude"],
        ["openai", "gpt-4o"],
        ["openai", "gpt-4o-mini"],
    ]
    by_month = server.stub.GetUsage(
        pb.GetUsageRequest(group_by=[pb.DIMENSION_TEAM, pb.DIMENSION_MONTH], time_zone="Asia/Tokyo")
    )
    assert [(list(r.key), r.totals.cost_usd) for r in by_month.rows] == [
        (["ads", "2025-03"], "1.500000"),
        (["search", "2025-03"], "0.330000"),
    ]


def test_health_and_reflection_are_served_on_the_same_port(server: RunningSidecar) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "paymaster.v1.BudgetService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    reflected = ProtoReflectionDescriptorDatabase(server.channel)
    assert "paymaster.v1.BudgetService" in reflected.get_services()
    assert reflected.FindFileContainingSymbol("paymaster.v1.ReserveRequest").package == "paymaster.v1"
