"""The sidecar's /metrics endpoint, scraped over HTTP from a real sidecar driven over gRPC."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector_processor.api.server import create_sidecar
from collector_processor.config import parse_config
from collector_processor.domain.clock import ManualClock
from collector_processor.errors import StoreUnavailableError
from collector_processor.store import BudgetSpend, SqliteStore
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar, start_sidecar

METRICS = """
[metrics]
enabled = true
listen = "127.0.0.1:0"
refresh_seconds = 0
{extra}
[[budgets]]
id = "search-daily"
scope = "team"
scope_id = "search"
limit_usd = 10
period = "daily"
on_exceed = "block"
alert_thresholds = [50, 80, 100]
[[budgets]]
id = "per-user"
scope = "user"
limit_usd = 1
period = "daily"
on_exceed = "downgrade"
alert_thresholds = []
[[budgets]]
id = "acme-warn"
scope = "organization"
scope_id = "acme"
limit_usd = 2
period = "monthly"
on_exceed = "warn"
alert_thresholds = []
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(running: RunningSidecar) -> Samples:
    url = f"http://127.0.0.1:{running.sidecar.exporters.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def metered(tmp_path: Path, clock: ManualClock) -> Iterator[Callable[..., RunningSidecar]]:
    started: list[RunningSidecar] = []

    def start(extra: str = "", db: str = "sidecar.db") -> RunningSidecar:
        running = start_sidecar(tmp_path / db, clock, METRICS.format(extra=extra))
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.sidecar.stop(0)


def spend(
    running: RunningSidecar, usd: str, *, user: str = "ada", model: str = "gpt-4o", team: str = "search"
):
    scopes = pb.ScopeIds(organization="acme", team=team, user=user)
    reserved = running.stub.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd=usd))
    if reserved.reservation_id:
        facts = pb.UsageFacts(provider="openai", model=model, input_tokens=1000, output_tokens=200)
        running.stub.Commit(
            pb.CommitRequest(reservation_id=reserved.reservation_id, actual_usd=usd, usage=facts)
        )
    return reserved


def test_budget_gauges_report_each_budget_and_entity_in_the_current_period(metered, clock) -> None:
    """Limit, used, reserved, remaining, percentage, burn, projection, exhaustion and period come from the store."""
    running = metered()
    spend(running, "3")  # 12:00 on a daily budget: half the day gone
    running.stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1"))
    s = scrape(running)
    team = {"budget": "search-daily", "scope": "team", "scope_id": "search"}
    assert value(s, "paymaster_budget_limit_usd", **team) == 10
    assert value(s, "paymaster_budget_used_usd", **team) == 3
    assert value(s, "paymaster_budget_reserved_usd", **team) == 1
    assert value(s, "paymaster_budget_remaining_usd", **team) == 6
    assert value(s, "paymaster_budget_used_percent", **team) == 30
    assert value(s, "paymaster_budget_burn_rate_usd_per_hour", **team) == 0.25
    assert value(s, "paymaster_budget_projected_usd", **team) == 6
    assert value(s, "paymaster_budget_exhaustion_seconds", **team) == 24 * 3600  # $6 left at $0.25/h
    start = clock.now_ms() // 1000 - 12 * 3600
    assert value(s, "paymaster_budget_period_start_timestamp_seconds", **team) == start
    assert value(s, "paymaster_budget_period_end_timestamp_seconds", **team) == start + 86400
    user = {"budget": "per-user", "scope": "user", "scope_id": "ada"}
    assert value(s, "paymaster_budget_used_usd", **user) == 3  # a downgrade budget is a soft limit
    assert value(s, "paymaster_budget_used_percent", **user) == 300
    assert value(s, "paymaster_budget_remaining_usd", **user) == 0
    assert value(s, "paymaster_budget_exhaustion_seconds", **user) == 0
    assert value(s, "paymaster_budget_info", budget="per-user", name="per-user", scope="user", wildcard="true",
                 period="daily", action="downgrade", enabled="true", source="config") == 1  # fmt: skip
    assert value(s, "paymaster_reservations_active") == 1
    assert value(s, "paymaster_reservations_held_usd") == 1


def test_a_budget_that_is_not_burning_never_runs_out(metered) -> None:
    s = scrape(metered())
    labels = {"budget": "acme-warn", "scope": "organization", "scope_id": "acme"}
    assert value(s, "paymaster_budget_exhaustion_seconds", **labels) == float("inf")
    assert value(s, "paymaster_budget_used_usd", **labels) == 0
    assert not series(s, "paymaster_budget_used_usd").get(
        (("budget", "per-user"), ("scope", "user"), ("scope_id", "ada"))
    ), "a wildcard lists only entities with spend"


def test_decisions_are_counted_by_rpc_decision_and_deciding_budget(metered) -> None:
    running = metered()
    spend(running, "0.5")  # allow
    spend(running, "0.8")  # per-user would pass $1: downgrade (held, committed)
    spend(running, "0.9", user="bob")  # acme-warn passes $2: allowed with a warning
    spend(running, "20", user="cy")  # search-daily $10: deny
    running.stub.CheckBudget(pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="20"))
    s = scrape(running)
    decisions = series(s, "paymaster_decisions_total")
    assert decisions == {
        (("budget", ""), ("decision", "allow"), ("rpc", "reserve")): 1,
        (("budget", "per-user"), ("decision", "downgrade"), ("rpc", "reserve")): 1,
        (("budget", "acme-warn"), ("decision", "warn"), ("rpc", "reserve")): 1,
        (("budget", "search-daily"), ("decision", "deny"), ("rpc", "reserve")): 1,
        (("budget", "search-daily"), ("decision", "deny"), ("rpc", "check")): 1,
    }
    assert value(s, "paymaster_rpc_requests_total", method="Reserve", code="OK") == 4
    assert value(s, "paymaster_rpc_duration_seconds_count", method="Reserve") == 4
    assert value(s, "paymaster_rpc_duration_seconds_bucket", method="Reserve", le="+Inf") == 4
    assert value(s, "paymaster_commits_total", outcome="charged") == 3


def test_spend_is_counted_by_model_and_by_scope(metered) -> None:
    running = metered()
    spend(running, "0.25", model="gpt-4o")
    spend(running, "0.5", model="claude-sonnet-4", user="bob", team="ads")
    running.stub.RecordUsage(
        pb.RecordUsageRequest(usage_id="u-1", scopes=pb.ScopeIds(team="ads", agent="planner"), cost_usd="0.125",
                              total_tokens=10, usage=pb.UsageFacts(provider="anthropic", model="claude-sonnet-4"))
    )  # fmt: skip
    s = scrape(running)
    assert value(s, "paymaster_spend_usd_total", provider="openai", model="gpt-4o") == 0.25
    assert value(s, "paymaster_spend_usd_total", provider="openai", model="claude-sonnet-4") == 0.5
    assert value(s, "paymaster_spend_usd_total", provider="anthropic", model="claude-sonnet-4") == 0.125
    assert value(s, "paymaster_spend_tokens_total", provider="openai", model="gpt-4o", type="input") == 1000
    assert (
        value(s, "paymaster_spend_tokens_total", provider="anthropic", model="claude-sonnet-4", type="other")
        == 10
    )
    assert value(s, "paymaster_scope_spend_usd_total", scope="team", scope_id="ads") == 0.625
    assert value(s, "paymaster_scope_spend_usd_total", scope="organization", scope_id="acme") == 0.75
    assert value(s, "paymaster_scope_spend_usd_total", scope="agent", scope_id="planner") == 0.125
    assert value(s, "paymaster_scope_spend_tokens_total", scope="user", scope_id="bob") == 1200


def test_a_duplicate_commit_is_counted_as_a_commit_but_not_as_spend(metered) -> None:
    running = metered()
    reserved = running.stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1"))
    for _ in range(2):
        running.stub.Commit(pb.CommitRequest(reservation_id=reserved.reservation_id, actual_usd="1"))
    s = scrape(running)
    assert value(s, "paymaster_commits_total", outcome="duplicate") == 1
    assert value(s, "paymaster_spend_usd_total", provider="__none__", model="__none__") == 1


def test_alerts_fired_are_counted_by_budget_and_threshold(metered) -> None:
    running = metered()
    spend(running, "0.6", user="a")
    spend(running, "0.6", user="b")
    spend(running, "0.6", user="c")
    spend(running, "5", user="d")  # search-daily at 6.8 + 5 > 10: denied, no alert
    spend(running, "3", user="e")  # 9.8: the 80% threshold fires
    s = scrape(running)
    assert series(s, "paymaster_alerts_fired_total") == {
        (("budget", "search-daily"), ("threshold", "50")): 1,
        (("budget", "search-daily"), ("threshold", "80")): 1,
    }


def test_a_wildcard_budget_exports_its_biggest_spenders_up_to_the_cap(metered) -> None:
    running = metered("max_entities_per_budget = 2")
    for user, usd in (("a", "0.1"), ("b", "0.4"), ("c", "0.2"), ("d", "0.3")):
        spend(running, usd, user=user)
    s = scrape(running)
    listed = {dict(labels)["scope_id"] for labels in series(s, "paymaster_budget_used_usd") if
              dict(labels)["budget"] == "per-user"}  # fmt: skip
    assert listed == {"b", "d"}
    assert value(s, "paymaster_budget_entities", budget="per-user", scope="user") == 4
    assert value(s, "paymaster_budget_entities_dropped", budget="per-user", scope="user") == 2


def test_scope_ids_past_the_cap_are_counted_together(metered) -> None:
    running = metered("max_entities_per_scope = 2\nmax_models = 1")
    # Spending again once the caps are full: admitted ids keep their series, later ones stay pooled.
    for user in ("a", "b", "c", "d", "a", "c"):
        spend(running, "0.1", user=user, model=f"m-{user}")
    s = scrape(running)
    users = {dict(k)["scope_id"]: v for k, v in series(s, "paymaster_scope_spend_usd_total").items()
             if dict(k)["scope"] == "user"}  # fmt: skip
    assert users == {"a": pytest.approx(0.2), "b": 0.1, "__other__": pytest.approx(0.3)}
    models = series(s, "paymaster_spend_usd_total")
    assert models[(("model", "m-a"), ("provider", "openai"))] == pytest.approx(0.2)
    assert models[(("model", "__other__"), ("provider", "__other__"))] == pytest.approx(0.4)


def test_store_operations_are_timed(metered) -> None:
    running = metered()
    spend(running, "0.1")
    s = scrape(running)
    assert value(s, "paymaster_store_operation_seconds_count", operation="reserve") == 1
    assert value(s, "paymaster_store_operation_seconds_count", operation="commit") == 1
    assert value(s, "paymaster_store_operation_seconds_count", operation="budget_spend") >= 1


def test_refused_requests_are_counted_by_code(metered) -> None:
    running = metered()
    with pytest.raises(Exception, match="estimate_usd"):
        running.stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="x"), estimate_usd="-1"))
    s = scrape(running)
    assert value(s, "paymaster_rpc_requests_total", method="Reserve", code="INVALID_ARGUMENT") == 1
    assert not series(s, "paymaster_decisions_total")
    assert not series(s, "paymaster_store_errors_total"), "a refusal is not a store error"


def test_two_sidecars_in_one_process_keep_their_own_figures(metered) -> None:
    first, second = metered(db="one.db"), metered(db="two.db")
    spend(first, "0.1")
    assert value(scrape(first), "paymaster_rpc_requests_total", method="Reserve", code="OK") == 1
    assert not series(scrape(second), "paymaster_rpc_requests_total")


class UnreadableBudgets(SqliteStore):
    """A real store whose metrics read fails, as a cluster store does while its server is down."""

    def budget_spend(self, *, now_ms: int, max_entities: int) -> list[BudgetSpend]:
        raise StoreUnavailableError("the store is down")


def test_a_store_that_cannot_be_read_costs_the_budget_gauges_not_the_scrape(tmp_path, clock) -> None:
    config = parse_config(
        f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n[store]\npath = "{tmp_path / "s.db"}"\n'
        '[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n'
    )
    sidecar = create_sidecar(config, clock=clock, store=UnreadableBudgets(tmp_path / "s.db")).start()
    try:
        url = f"http://127.0.0.1:{sidecar.exporters.port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'paymaster_metrics_read_errors_total{read="budgets"} 1.0' in text
        assert 'paymaster_store_errors_total{kind="unavailable",operation="budget_spend"} 1.0' in text
        assert "paymaster_budget_used_usd" not in text
        assert "paymaster_build_info" in text
    finally:
        sidecar.stop(0)


def test_a_metrics_port_in_use_fails_start_naming_the_key(tmp_path, clock) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config(
            f'[server]\nlisten = "127.0.0.1:0"\n[store]\npath = "{tmp_path / "s.db"}"\n'
            f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n',
            source="cfg.toml",
        )
        with pytest.raises(ConfigError, match=f"cfg.toml: metrics.listen: cannot serve on 127.0.0.1:{port}"):
            create_sidecar(config, clock=clock).start()


def test_spend_that_names_no_model_has_one_label_in_usage_reports_and_in_metrics(metered) -> None:
    """An explicit cost with no model (a paid tool): ``__none__`` in ``usage --by provider,model``
    and on ``paymaster_spend_usd_total``, never a blank in one and ``unknown`` in the other."""
    running = metered()
    running.stub.RecordUsage(
        pb.RecordUsageRequest(usage_id="tool", scopes=pb.ScopeIds(team="search"), cost_usd="0.25")
    )
    running.stub.RecordUsage(
        pb.RecordUsageRequest(
            usage_id="chat", scopes=pb.ScopeIds(team="search"), cost_usd="0.5",
            usage=pb.UsageFacts(provider="openai", model="gpt-4o", input_tokens=10),
        )
    )  # fmt: skip
    report = running.stub.GetUsage(
        pb.GetUsageRequest(group_by=[pb.DIMENSION_PROVIDER, pb.DIMENSION_MODEL, pb.DIMENSION_TEAM])
    )
    assert [(tuple(r.key), r.totals.cost_usd) for r in report.rows] == [
        (("__none__", "__none__", "search"), "0.250000"),
        (("openai", "gpt-4o", "search"), "0.500000"),
    ]
    s = scrape(running)
    assert value(s, "paymaster_spend_usd_total", provider="__none__", model="__none__") == 0.25
    assert {labels for labels in series(s, "paymaster_spend_usd_total")} == {
        (("model", "__none__"), ("provider", "__none__")),
        (("model", "gpt-4o"), ("provider", "openai")),
    }
