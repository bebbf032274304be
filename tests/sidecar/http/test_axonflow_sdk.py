"""AxonFlow's own SDK (``axonflow`` 9.x from PyPI) against a real sidecar, unchanged.

The two examples of AxonFlow's cost-management documentation, as docs/axonflow.md quotes them, run
with only the endpoint and the credentials changed; then every budget, usage and pricing method of
the SDK is called and its answer compared with what the sidecar holds (read over gRPC). The SDK's
telemetry is off (``AXONFLOW_TELEMETRY=off``) and every name it resolves must be a loopback one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from collector_processor.domain.clock import ManualClock
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import START, RunningSidecar, StoreFactory, start_sidecar
from tests.sidecar.http.conftest import HTTP_ON, base_url

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[3] / "docs" / "axonflow.md"
TOKEN = "platform-team-token-" + "p" * 28
ROOT = "root-token-" + "r" * 32
PRICES = '[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = 0.0025\ncompletion_tokens_per_1k = 0.01\n'


def example(name: str) -> str:
    """The Python block of docs/axonflow.md whose info string names ``name``."""
    found = re.search(rf"```python {name}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert found is not None, name
    return found.group(1)


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Telemetry off, and any name resolved that is not loopback refused and remembered."""
    monkeypatch.setenv("AXONFLOW_TELEMETRY", "off")
    elsewhere: list[str] = []
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1"):
            elsewhere.append(name)
            raise socket.gaierror(f"only loopback in this test, not {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    yield elsewhere
    assert elsewhere == [], f"the SDK tried to reach {elsewhere}"


@pytest.fixture(params=["sqlite", "redis"])
def sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningSidecar]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    backing = StoreFactory(backend=request.param, path=tmp_path / "ledger.db", redis_url=url)
    (tmp_path / "tokens.toml").write_text(
        f'[[tokens]]\nname = "platform-team"\ntoken = "{TOKEN}"\nroles = ["admin", "reader", "spender"]\n'
        'grants = ["team=platform", "agent=code-reviewer", "agent=summarizer"]\n'
        f'[[tokens]]\nname = "root"\ntoken = "{ROOT}"\nroles = ["admin", "reader", "spender"]\ngrants = ["*"]\n'
    )
    (tmp_path / "prices.toml").write_text(PRICES)
    running = start_sidecar(
        backing,
        ManualClock(START),
        f'{HTTP_ON}[auth]\nenabled = true\ntokens_file = "{tmp_path / "tokens.toml"}"\n'
        f'[receivers.otlp.pricing]\nconfig = "{tmp_path / "prices.toml"}"\n',
    )
    yield running
    running.channel.close()
    running.sidecar.stop(0)


def grpc(running: RunningSidecar, method: str, request: Any) -> Any:
    return getattr(running.stub, method)(request, metadata=[("authorization", f"Bearer {ROOT}")], timeout=10)


def run_example(name: str, running: RunningSidecar) -> str:
    """Run the documented example with the sidecar's endpoint and the token; what it printed."""
    code = example(name)
    code = code.replace('"http://localhost:8080"', repr(base_url(running))).replace(
        '"replace-me"', repr(TOKEN)
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, f"docs/axonflow.md ({name})", "exec"), namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        asyncio.run(namespace["main"]())
    return out.getvalue()


def test_the_documented_examples_run_unchanged_but_for_endpoint_and_credentials(
    sidecar: RunningSidecar, loopback_only: list[str]
) -> None:
    assert run_example("create-budget", sidecar) == ""
    budget = grpc(sidecar, "GetBudget", pb.GetBudgetRequest(id="platform-monthly"))
    assert (budget.name, budget.scope, budget.scope_id, budget.period) == (
        "Platform Team Monthly Budget", pb.SCOPE_TEAM, "platform", "monthly",
    )  # fmt: skip
    assert Decimal(budget.limit_usd) == Decimal(5000)
    assert (budget.on_exceed, list(budget.alert_thresholds)) == (pb.ON_EXCEED_WARN, [50, 80, 100])

    assert run_example("check-budget", sidecar) == "safe to continue\n"
    grpc(sidecar, "CreateBudget", pb.CreateBudgetRequest(budget=pb.Budget(
        id="reviewer-cap", scope=pb.SCOPE_AGENT, scope_id="code-reviewer", limit_usd="0", period="daily",
        on_exceed=pb.ON_EXCEED_BLOCK)))  # fmt: skip
    printed = run_example("check-budget", sidecar)
    assert printed.startswith("block "), printed
    assert "reviewer-cap" in printed


def test_every_budget_usage_and_pricing_method_returns_what_the_sidecar_holds(
    sidecar: RunningSidecar, loopback_only: list[str]
) -> None:
    asyncio.run(every_method(sidecar))


async def every_method(sidecar: RunningSidecar) -> None:
    from axonflow import (
        AxonFlow,
        BudgetCheckRequest,
        BudgetOnExceed,
        BudgetPeriod,
        BudgetScope,
        CreateBudgetRequest,
        ListBudgetsOptions,
        ListUsageRecordsOptions,
        UpdateBudgetRequest,
    )
    from axonflow.exceptions import AxonFlowError

    async with AxonFlow(endpoint=base_url(sidecar), client_id="platform-team", client_secret=TOKEN) as client:
        created = await client.create_budget(CreateBudgetRequest(
            id="reviewer-daily", name="Reviewer daily", scope=BudgetScope.AGENT, scope_id="code-reviewer",
            limit_usd=50.0, period=BudgetPeriod.DAILY, on_exceed=BudgetOnExceed.BLOCK, alert_thresholds=[80, 100],
        ))  # fmt: skip
        held = grpc(sidecar, "GetBudget", pb.GetBudgetRequest(id="reviewer-daily"))
        assert (created.id, created.scope, created.scope_id, created.period) == (
            held.id,
            "agent",
            held.scope_id,
            "daily",
        )
        assert Decimal(str(created.limit_usd)) == Decimal(held.limit_usd) == 50
        assert (await client.get_budget("reviewer-daily")) == created

        await client.create_budget(CreateBudgetRequest(
            id="platform-weekly", name="Platform weekly", scope=BudgetScope.TEAM, scope_id="platform",
            limit_usd=700.0, period=BudgetPeriod.WEEKLY, on_exceed=BudgetOnExceed.WARN,
        ))  # fmt: skip
        listed = await client.list_budgets()
        assert [b.id for b in listed.budgets] == ["platform-weekly", "reviewer-daily"] and listed.total == 2
        agents = await client.list_budgets(ListBudgetsOptions(scope=BudgetScope.AGENT, limit=1))
        assert [b.id for b in agents.budgets] == ["reviewer-daily"] and agents.total == 1
        second = await client.list_budgets(ListBudgetsOptions(limit=1, offset=1))
        assert [b.id for b in second.budgets] == ["reviewer-daily"]

        updated = await client.update_budget(
            "reviewer-daily", UpdateBudgetRequest(limit_usd=60.0, name="Reviewer")
        )
        assert (updated.name, updated.limit_usd) == ("Reviewer", 60.0)
        assert Decimal(grpc(sidecar, "GetBudget", pb.GetBudgetRequest(id="reviewer-daily")).limit_usd) == 60

        # $48.50 of spend by the reviewer on gpt-4o: past 80 % of $60.
        grpc(sidecar, "RecordUsage", pb.RecordUsageRequest(
            usage_id="call-1", scopes=pb.ScopeIds(team="platform", agent="code-reviewer"), cost_usd="48.5",
            usage=pb.UsageFacts(provider="openai", model="gpt-4o", input_tokens=1200, output_tokens=300)))  # fmt: skip
        grpc(sidecar, "RecordUsage", pb.RecordUsageRequest(
            usage_id="call-2", scopes=pb.ScopeIds(team="platform", agent="summarizer"), cost_usd="1.25",
            usage=pb.UsageFacts(provider="openai", model="gpt-4o-mini", input_tokens=100, output_tokens=50)))  # fmt: skip

        status = await client.get_budget_status("reviewer-daily")
        held_status = grpc(sidecar, "GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id="reviewer-daily"))
        assert Decimal(str(status.used_usd)) == Decimal(held_status.used_usd) == Decimal("48.5")
        assert Decimal(str(status.remaining_usd)) == Decimal(held_status.remaining_usd) == Decimal("11.5")
        assert status.percentage == float(held_status.percentage) == 80.83
        assert (status.is_exceeded, status.is_blocked) == (False, False)

        alerts = await client.get_budget_alerts("reviewer-daily")
        assert alerts.count == 1 and alerts.alerts is not None
        assert (alerts.alerts[0].threshold, alerts.alerts[0].amount_usd) == (80, 48.5)

        decision = await client.check_budget(BudgetCheckRequest(team_id="platform", agent_id="code-reviewer"))
        assert decision.allowed and decision.budgets is not None
        assert {b.id for b in decision.budgets} == {"platform-weekly", "reviewer-daily"}

        summary = await client.get_usage_summary("daily")
        total = grpc(sidecar, "GetUsage", pb.GetUsageRequest()).total
        assert Decimal(str(summary.total_cost_usd)) == Decimal(total.cost_usd) == Decimal("49.75")
        assert (summary.total_requests, summary.total_tokens_in, summary.total_tokens_out) == (2, 1300, 350)
        assert summary.period == "daily"

        breakdown = await client.get_usage_breakdown("agent", "daily")
        assert [(i.group_value, i.cost_usd, i.request_count) for i in breakdown.items or []] == [
            ("code-reviewer", 48.5, 1), ("summarizer", 1.25, 1),
        ]  # fmt: skip

        records = await client.list_usage_records(ListUsageRecordsOptions(limit=10, model="gpt-4o"))
        assert records.total == 1 and records.records is not None
        (record,) = records.records
        assert (record.id, record.model, record.cost_usd, record.tokens_in) == (
            "call-1",
            "gpt-4o",
            48.5,
            1200,
        )
        assert (record.team_id, record.agent_id) == ("platform", "code-reviewer")
        every = await client.list_usage_records()
        assert every.total == 2 and [r.id for r in every.records or []] == ["call-2", "call-1"]

        pricing = await client.get_pricing("openai", "gpt-4o")
        assert [(p.provider, p.model, p.pricing.input_per_1k, p.pricing.output_per_1k) for p in pricing.pricing] == [
            ("openai", "gpt-4o", 0.0025, 0.01),
        ]  # fmt: skip
        assert len((await client.get_pricing()).pricing) == 1

        await client.delete_budget("platform-weekly")
        with pytest.raises(AxonFlowError, match="404"):
            await client.get_budget("platform-weekly")

    async with AxonFlow(endpoint=base_url(sidecar), client_id="someone-else", client_secret=TOKEN) as client:
        with pytest.raises(AxonFlowError, match="401"):
            await client.get_budget("reviewer-daily")
