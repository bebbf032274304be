"""Tiered budgets through the API, the config file and the command line: created, decided, named in
the answer and in the alerts, changed, and refused with the field named when malformed."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from collector_processor.config import parse_config
from collector_processor.domain.clock import ManualClock
from paymaster.cli import main
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar, StoreFactory, start_sidecar

TEAM = pb.ScopeIds(team="search")
LADDER = [
    pb.Tier(at_percent=50, action=pb.ON_EXCEED_WARN),
    pb.Tier(at_percent=80, action=pb.ON_EXCEED_DOWNGRADE),
    pb.Tier(at_percent=100, action=pb.ON_EXCEED_BLOCK),
]


def _create(server: RunningSidecar, budget_id: str = "tiered", **fields: object) -> pb.Budget:
    budget = pb.Budget(
        id=budget_id,
        scope=pb.SCOPE_TEAM,
        scope_id="search",
        limit_usd="1",
        period="daily",
        tiers=LADDER,
        **fields,
    )  # type: ignore[arg-type]
    return server.stub.CreateBudget(pb.CreateBudgetRequest(budget=budget))  # type: ignore[no-any-return]


def test_a_tiered_budget_is_created_decided_and_named_over_grpc(server: RunningSidecar) -> None:
    created = _create(server)
    assert list(created.tiers) == LADDER and created.on_exceed == pb.ON_EXCEED_BLOCK
    warned = server.stub.Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd="0.6"))
    assert warned.decision == pb.DECISION_ALLOW and warned.warn and not warned.HasField("deciding_tier")
    assert warned.budget_info[0].tier == pb.Tier(at_percent=50, action=pb.ON_EXCEED_WARN)
    assert list(warned.budget_info[0].tiers) == LADDER
    downgraded = server.stub.Reserve(
        pb.ReserveRequest(scopes=TEAM, estimate_usd="0.3", downgrade_estimate_usd="0.1")
    )
    assert downgraded.decision == pb.DECISION_DOWNGRADE and downgraded.reserved_usd == "0.100000"
    assert downgraded.deciding_tier == pb.Tier(at_percent=80, action=pb.ON_EXCEED_DOWNGRADE)
    assert "the downgrade tier at 80% of budget 'tiered'" in downgraded.reason
    checked = server.stub.CheckBudget(pb.CheckBudgetRequest(scopes=TEAM, estimate_usd="0.4"))
    assert checked.decision == pb.DECISION_DENY
    assert checked.deciding_tier == pb.Tier(at_percent=100, action=pb.ON_EXCEED_BLOCK)


def test_a_single_action_budget_answers_as_before(server: RunningSidecar) -> None:
    server.stub.CreateBudget(
        pb.CreateBudgetRequest(
            budget=pb.Budget(
                id="plain", scope=pb.SCOPE_TEAM, scope_id="search", limit_usd="1", period="daily",
                on_exceed=pb.ON_EXCEED_BLOCK,
            )
        )
    )  # fmt: skip
    allowed = server.stub.Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd="0.5"))
    info = allowed.budget_info[0]
    assert not info.HasField("tier") and not info.tiers and not allowed.HasField("deciding_tier")
    assert server.stub.GetBudget(pb.GetBudgetRequest(id="plain")).tiers == []


def test_tiers_are_changed_and_removed_through_update(server: RunningSidecar) -> None:
    _create(server)
    fewer = server.stub.UpdateBudget(pb.UpdateBudgetRequest(id="tiered", tiers=pb.Tiers(tiers=LADDER[:2])))
    assert list(fewer.tiers) == LADDER[:2] and fewer.on_exceed == pb.ON_EXCEED_DOWNGRADE
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.UpdateBudget(pb.UpdateBudgetRequest(id="tiered", on_exceed=pb.ON_EXCEED_WARN))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("on_exceed: budget 'tiered' has tiers")
    single = server.stub.UpdateBudget(
        pb.UpdateBudgetRequest(id="tiered", tiers=pb.Tiers(), on_exceed=pb.ON_EXCEED_WARN)
    )
    assert not single.tiers and single.on_exceed == pb.ON_EXCEED_WARN


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([pb.Tier(at_percent=0, action=pb.ON_EXCEED_WARN)], "budget.tiers[0].at: must be a whole percentage 1-1000"),
        ([pb.Tier(at_percent=50, action=9)], "budget.tiers[0].action: unknown action 9"),
        (
            [pb.Tier(at_percent=50, action=pb.ON_EXCEED_BLOCK), pb.Tier(at_percent=90, action=pb.ON_EXCEED_WARN)],
            "budget.tiers: the warn tier at 90% is less strict than the block tier at 50% below it",
        ),
    ],
)  # fmt: skip
def test_malformed_tiers_are_refused_naming_the_field(
    server: RunningSidecar, tiers: list[pb.Tier], message: str
) -> None:
    budget = pb.Budget(id="bad", scope=pb.SCOPE_TEAM, limit_usd="1", period="daily", tiers=tiers)
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.CreateBudget(pb.CreateBudgetRequest(budget=budget))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(message)


def test_a_budget_on_the_request_scope_cannot_be_created(server: RunningSidecar) -> None:
    budget = pb.Budget(
        id="r", scope=pb.SCOPE_REQUEST, limit_usd="1", period="daily", on_exceed=pb.ON_EXCEED_BLOCK
    )
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.CreateBudget(pb.CreateBudgetRequest(budget=budget))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request budgets are opened per request" in refused.value.details()


def test_tiers_alert_with_their_action_on_the_watch_stream(server: RunningSidecar) -> None:
    _create(server)
    watch = server.stub.WatchAlerts(pb.WatchAlertsRequest(after_sequence=0))
    server.stub.RecordUsage(pb.RecordUsageRequest(usage_id="u1", scopes=TEAM, cost_usd="0.85"))
    first, second = next(watch), next(watch)
    watch.cancel()
    assert (first.threshold_percent, first.tier, first.action) == (50, True, pb.ON_EXCEED_WARN)
    assert (second.threshold_percent, second.tier, second.action) == (80, True, pb.ON_EXCEED_DOWNGRADE)
    assert "reached its downgrade tier at 80%" in second.message


def test_the_config_file_declares_tiers(backing: StoreFactory, clock: ManualClock) -> None:
    running = start_sidecar(
        backing,
        clock,
        """
        [[budgets]]
        id = "search-daily"
        scope = "team"
        scope_id = "search"
        limit_usd = 1
        period = "daily"
        tiers = [{at = 50, action = "warn"}, {at = 80, action = "downgrade"}, {at = 100, action = "block"}]
        """,
    )
    try:
        budget = running.stub.GetBudget(pb.GetBudgetRequest(id="search-daily"))
        assert list(budget.tiers) == LADDER and budget.declared_in_config
    finally:
        running.channel.close()
        running.sidecar.stop(0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('tiers = [{at = 80, action = "warn"}, {at = 50, action = "block"}]',
         "budgets[0].tiers: the warn tier at 80% is less strict than the block tier at 50% below it"),
        ('tiers = [{at = 50, action = "maybe"}]', "budgets[0].tiers[0].action"),
        ("", "budgets[0].on_exceed: is required"),
    ],
)  # fmt: skip
def test_bad_tiers_in_the_file_are_refused_naming_the_key(tmp_path: Path, entry: str, message: str) -> None:
    from collector_processor.api.server import create_sidecar

    text = (
        f'[store]\npath = "{tmp_path / "x.db"}"\n[[budgets]]\nid = "b"\nscope = "team"\nlimit_usd = 1\n'
        f'period = "daily"\n{entry}\n'
    )
    with pytest.raises(ConfigError) as refused:
        create_sidecar(parse_config(text, source="sidecar.toml")).store.close()
    assert str(refused.value).startswith(f"sidecar.toml: {message}"), str(refused.value)


def test_the_command_line_writes_and_shows_tiers(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--target", server.address, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(
        "budgets", "create", "--id", "t", "--scope", "team", "--scope-id", "search", "--limit", "1",
        "--period", "daily", "--tiers", "50:warn,80:downgrade,100:block",
    )  # fmt: skip
    assert code == 0 and "50:warn,80:downgrade,100:block" in out
    code, out, _ = run("budgets", "update", "t", "--tiers", "100:warn,150:block")
    assert code == 0 and "100:warn,150:block" in out
    code, out, _ = run("budgets", "update", "t", "--tiers", "", "--on-exceed", "downgrade")
    assert code == 0 and "downgrade" in out and ":" not in out.splitlines()[-1].split()[6]
    code, _, err = run(
        "budgets", "create", "--scope", "team", "--limit", "1", "--period", "daily", "--tiers", "50-warn"
    )
    assert code == 2 and "--tiers: expected PERCENT:ACTION items" in err
    code, _, err = run("budgets", "create", "--scope", "team", "--limit", "1", "--period", "daily")
    assert code == 2 and "give --on-exceed or --tiers" in err
