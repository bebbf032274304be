"""End to end: governed pipelines against a real sidecar *process* on loopback — the cookbook's
scenarios under a team budget, runners in separate processes sharing it, downgrades priced at the
cheaper model, the sidecar killed mid-run under each fail policy, and cancellation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from paymaster import (
    FAIL_CLOSED,
    FAIL_OPEN,
    LOCAL_ONLY_LIMITS,
    BudgetExceededError,
    ExecutorCore,
    LeasePolicy,
    Pipeline,
    Runner,
    Scopes,
    SidecarBudget,
    SidecarUnavailableError,
    Step,
    StepConfig,
    UsageLimitExceededError,
    UsageLimits,
)
from paymaster.config import load_config
from paymaster.pricing import PricingMeter
from tests.sdk.agents import CostlyAgent, MetricOutput
from tests.sdk.sidecar_support import ROOT, Admin, SidecarProcess, wait_until
from tests.sdk.test_cookbook import governed_loop

pytestmark = pytest.mark.slow

MODES = {"per-step": None, "leases": LeasePolicy(slice_usd="0.05")}
_teams = iter(range(10_000))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarProcess, Admin]]:
    """One sidecar process for the tests that do not kill it; each test uses its own team."""
    proc = SidecarProcess(tmp_path_factory.mktemp("sidecar")).start()
    admin = Admin(proc.address)
    yield proc, admin
    admin.close()
    proc.stop()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[tuple[SidecarProcess, Admin]]:
    """A sidecar process of this test's own, to kill."""
    proc = SidecarProcess(tmp_path).start()
    admin = Admin(proc.address)
    yield proc, admin
    admin.close()
    proc.stop()


def team_budget(admin: Admin, limit: str, **kwargs: Any) -> str:
    team = f"team-{next(_teams)}"
    admin.budget(team, limit, scope_id=team, **kwargs)
    return team


def budget(address: str, team: str, **kwargs: Any) -> SidecarBudget:
    kwargs.setdefault("journal_dir", None)
    return SidecarBudget(address, scopes=Scopes(team=team), **kwargs)


# ------------------------------------------------------------------------------ the cookbook
@pytest.mark.parametrize("lease", MODES.values(), ids=MODES.keys())
def test_runaway_loop_halts_after_three_iterations_at_thirty_cents(
    shared: tuple[SidecarProcess, Admin], lease: LeasePolicy | None
) -> None:
    proc, admin = shared
    team = team_budget(admin, "0.25")
    # The cookbook's figures, those of a runner that does not learn (by default the third call
    # would be denied before it ran, as the next test's declared estimate does).
    with budget(proc.address, team, lease=lease) as b, pytest.raises(BudgetExceededError) as info:
        Runner(governed_loop(), budget=b, executor=ExecutorCore(learned=None)).run(0)
    err = info.value
    assert str(err) == f"Block budget '{team}' (team={team}) exceeded: $0.30 used of its $0.25 limit"
    assert err.result is not None
    loop = err.result.step_history[0]
    assert loop.attempts == 3 and loop.output is None
    assert err.result.total_cost_usd == Decimal("0.30")
    assert admin.status(team) == (Decimal("0.3"), Decimal(0))


@pytest.mark.parametrize("lease", MODES.values(), ids=MODES.keys())
def test_declared_estimate_denies_the_third_iteration_before_it_runs(
    shared: tuple[SidecarProcess, Admin], lease: LeasePolicy | None
) -> None:
    proc, admin = shared
    team = team_budget(admin, "0.25")
    with budget(proc.address, team, lease=lease) as b, pytest.raises(BudgetExceededError) as info:
        Runner(governed_loop(StepConfig(expected_cost_usd=0.1)), budget=b).run(0)
    result = info.value.result
    assert result is not None and result.total_cost_usd == Decimal("0.20")
    (denied,) = [s for s in result.walk() if s.denied]
    assert denied.attempts == 0 and denied.cost_usd == 0 and denied.denial_code == "budget_denied"
    assert denied.feedback is not None and denied.feedback.startswith(
        f"denied before it ran: Denied by block budget '{team}' (team={team}): used $0.20"
    )
    assert admin.status(team) == (Decimal("0.2"), Decimal(0))


@pytest.mark.parametrize("lease", MODES.values(), ids=MODES.keys())
def test_parallel_breach_cancels_the_slow_branch_and_releases_its_hold(
    shared: tuple[SidecarProcess, Admin], lease: LeasePolicy | None
) -> None:
    proc, admin = shared
    team = team_budget(admin, "0.10")
    slow = CostlyAgent(cost=0.01, delay=5)
    branches = {
        "fast_expensive": Step("fast_expensive", CostlyAgent(cost=0.15, delay=0.05)),
        "slow_cheap": Step("slow_cheap", slow, config=StepConfig(expected_cost_usd="0.02")),
    }
    with budget(proc.address, team, lease=lease) as b, pytest.raises(BudgetExceededError) as info:
        Runner(Step.parallel("parallel_cancellation", branches), budget=b).run("input")
    result = info.value.result
    assert result is not None and result.total_cost_usd == Decimal("0.15")
    by_name = {br.name: br for br in result.step_history[0].step_history}
    assert by_name["slow_cheap"].cancelled and by_name["slow_cheap"].cost_usd == 0
    assert slow.cancelled == 1 and slow.finished == 0
    assert admin.status(team) == (Decimal("0.15"), Decimal(0))


@pytest.mark.parametrize("lease", MODES.values(), ids=MODES.keys())
def test_loop_around_parallel_halts_with_the_spend_it_really_made(
    shared: tuple[SidecarProcess, Admin], lease: LeasePolicy | None
) -> None:
    proc, admin = shared
    team = team_budget(admin, "0.5")
    # The local quota decides both branches' reservations before either spends. Against the sidecar
    # the order is the network's: the agents take a moment, so both reservations are in before the
    # first commit, as they are locally (a commit first would deny the other branch's zero estimate
    # on the used-up budget: $0.50).
    inner = Step.parallel(
        "inner_parallel",
        {
            "a": Step("a", CostlyAgent(cost=0.1, delay=0.02)),
            "b": Step("b", CostlyAgent(cost=0.1, delay=0.02)),
        },
    )
    outer = Step.loop_until(
        name="outer_loop",
        loop_body_pipeline=Pipeline.from_step(inner),
        exit_condition_callable=lambda _out, _ctx: False,
        iteration_input_mapper=lambda _out, _ctx, _i: 0,
        max_loops=10,
    )
    with budget(proc.address, team, lease=lease) as b, pytest.raises(BudgetExceededError) as info:
        Runner(outer, budget=b, executor=ExecutorCore(learned=None)).run(0)
    result = info.value.result
    assert result is not None and result.step_history[0].attempts == 3
    assert result.total_cost_usd == Decimal("0.6")
    assert admin.status(team) == (Decimal("0.6"), Decimal(0))


# ------------------------------------------------------------------------------ two processes
def run_process(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.runner_process", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def last_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("lease", [None, "0.05"], ids=["per-step", "leases"])
def test_two_runner_processes_sharing_a_team_budget_never_overspend_it_together(
    shared: tuple[SidecarProcess, Admin], tmp_path: Path, lease: str | None
) -> None:
    proc, admin = shared
    team = team_budget(admin, "1.5")
    barrier = tmp_path / "go"
    extra = ["--lease", lease] if lease else []
    args = [proc.address, team, "--cost", "0.01", "--delay", "0.001", "--barrier", str(barrier), *extra]
    runners = [run_process(*args) for _ in range(2)]
    for runner in runners:  # both connected and waiting: start them together
        assert runner.stdout is not None and json.loads(runner.stdout.readline()) == {"ready": True}
    barrier.touch()
    results = [last_json(r) for r in runners]
    spent = sum(Decimal(r["total"]) for r in results)
    assert {r["code"] for r in results} == {"budget_denied"}
    assert all(r["ran"] > 0 for r in results), results
    used, reserved = admin.status(team)
    assert used == spent and reserved == 0
    assert spent <= Decimal("1.5")
    assert spent > Decimal("1.5") - Decimal("0.01") * 2  # the last to stop could not fit one more call


def test_a_runner_process_that_dies_holding_a_lease_gives_it_back_at_its_ttl(
    shared: tuple[SidecarProcess, Admin],
) -> None:
    proc, admin = shared
    team = team_budget(admin, "10")
    runner = run_process(proc.address, team, "--lease", "0.5", "--ttl", "1", "--die-after", "20")
    runner.communicate(timeout=60)
    assert runner.returncode == -9
    used, reserved = admin.status(team)
    assert used == 0 and reserved == Decimal("0.5")  # the slice it was spending from, uncommitted
    assert wait_until(lambda: admin.status(team)[1] == 0, timeout_s=15)


# ------------------------------------------------------------------------------ downgrade
def test_downgrade_switches_to_the_cheaper_model_and_the_spend_lands_at_its_price(
    shared: tuple[SidecarProcess, Admin],
) -> None:
    proc, admin = shared
    team = team_budget(admin, "0.05", on_exceed="downgrade")
    config = load_config(ROOT / "tests" / "sdk" / "data" / "downgrade.toml")

    class Model:
        model_id = "openai:gpt-4o"

        async def run(self, data: Any) -> Any:
            return {"usage": {"input_tokens": 1000, "output_tokens": 1000}}

    loop = Step.loop_until(
        name="l",
        loop_body_pipeline=Step("draft", Model(), config=StepConfig(expected_cost_usd="0.02")),
        exit_condition_callable=lambda o, c: False,
        max_loops=5,
    )
    with budget(proc.address, team, config=config) as b:
        result = Runner(loop, budget=b, meter=PricingMeter(config=config)).run(0)
    models = [s.model for s in result.walk() if s.kind == "agent"]
    assert models == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"]
    assert admin.usage_by_model(team=team) == {"gpt-4o": Decimal("0.04"), "gpt-4o-mini": Decimal("0.00225")}
    assert admin.status(team) == (Decimal("0.04225"), Decimal(0))


# ------------------------------------------------------------------------------ the sidecar killed
class KillsAt:
    """Costs ``cost`` a call; SIGKILLs the sidecar while its ``at``-th call runs."""

    def __init__(self, proc: SidecarProcess, at: int, cost: str = "0.01") -> None:
        self.proc, self.at, self.cost, self.calls = proc, at, cost, 0

    async def run(self, data: Any) -> MetricOutput:
        self.calls += 1
        if self.calls == self.at:
            self.proc.kill()
        return MetricOutput(value=data, cost_usd=self.cost)  # type: ignore[arg-type]


def killing_loop(agent: KillsAt, times: int = 30) -> Step:
    return Step.loop_until(
        name="loop",
        loop_body_pipeline=Step("call", agent, config=StepConfig(expected_cost_usd=agent.cost)),
        exit_condition_callable=lambda o, c: False,
        max_loops=times,
    )


@pytest.mark.parametrize("lease", MODES.values(), ids=MODES.keys())
def test_fail_open_keeps_running_and_replays_every_cent_once_the_sidecar_is_back(
    own: tuple[SidecarProcess, Admin], tmp_path: Path, lease: LeasePolicy | None
) -> None:
    proc, admin = own
    admin.budget("team", "100", scope_id="search")
    with SidecarBudget(
        proc.address,
        scopes=Scopes(team="search"),
        fail_policy=FAIL_OPEN,
        lease=lease,
        journal_dir=tmp_path / "journal",
        deadline_s=2.0,
        breaker_reset_s=0.1,
    ) as b:
        result = Runner(killing_loop(KillsAt(proc, at=10)), budget=b).run(0)
        assert result.total_cost_usd == Decimal("0.30")
        decisions = [s.budget.decision for s in result.walk() if s.kind == "agent" and s.budget]
        assert "fail_open" in decisions and len(decisions) == 30
        assert b.journal.pending_usd() > 0
        proc.start()
        assert b.flush(timeout_s=20) == 0
    assert admin.status("team") == (Decimal("0.30"), Decimal(0))


def test_fail_closed_denies_at_the_first_step_the_sidecar_cannot_decide(
    own: tuple[SidecarProcess, Admin],
) -> None:
    proc, admin = own
    admin.budget("team", "100", scope_id="search")
    agent = KillsAt(proc, at=10)
    with budget(proc.address, "search", fail_policy=FAIL_CLOSED, deadline_s=2.0, breaker_reset_s=0.1) as b:
        with pytest.raises(SidecarUnavailableError) as info:
            Runner(killing_loop(agent), budget=b).run(0)
        result = info.value.result
        assert result is not None
        assert (
            agent.calls == 10
        )  # the tenth call ran (it was admitted before the kill); the eleventh was denied
        assert result.total_cost_usd == Decimal("0.10")
        (denied,) = [s for s in result.walk() if s.denied]
        assert denied.denial_code == "sidecar_unavailable"
        # The tenth call's commit could not land: it is kept, and lands when the sidecar is back.
        (pending,) = b.pending_usage()
        assert pending.reason == "commit_failed"
        proc.start()
        assert b.flush(timeout_s=20) == 0
    assert admin.status("team") == (Decimal("0.10"), Decimal(0))


def test_local_only_limits_carries_on_within_the_runners_limits_and_replays_nothing_new(
    own: tuple[SidecarProcess, Admin],
) -> None:
    proc, admin = own
    admin.budget("team", "100", scope_id="search")
    agent = KillsAt(proc, at=10)
    with budget(
        proc.address, "search", fail_policy=LOCAL_ONLY_LIMITS, deadline_s=2.0, breaker_reset_s=0.1
    ) as b:
        with pytest.raises(UsageLimitExceededError) as info:
            Runner(killing_loop(agent), budget=b, usage_limits=UsageLimits(total_cost_usd_limit="0.2")).run(0)
        assert str(info.value) == (
            "step 'call' was not run: its estimate $0.01 would take spend from $0.20 to $0.21, "
            "over the run's cost limit of $0.20"
        )
        result = info.value.result
        assert result is not None and result.total_cost_usd == Decimal("0.20")
        steps = [s for s in result.walk() if s.kind == "agent" and s.budget]
        assert [s.budget.decision for s in steps if s.budget][10:] == ["local_only"] * 10
        proc.start()
        assert b.flush(timeout_s=20) == 0  # the tenth call's commit, kept when the sidecar died
    assert admin.status("team") == (Decimal("0.10"), Decimal(0))


# ------------------------------------------------------------------------------ the example
def test_the_readme_example_runs_against_a_sidecar_and_is_denied(
    shared: tuple[SidecarProcess, Admin],
) -> None:
    proc, _admin = shared
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "sidecar_demo.py"),
            "--target",
            proc.address,
            "--team",
            "readme",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    assert "created budget 'readme-daily'" in out.stdout
    assert "DENIED by the sidecar" in out.stdout
    assert "Denied by block budget 'readme-daily' (team=readme)" in out.stdout
