"""Differential: whatever the pipeline, the SDK mode and the outages, the sidecar holds exactly what the
SDK reports spent — to the micro-dollar.

Hypothesis draws pipelines (agent steps, sequences, loops, parallel branches under shared and split
quotas; agents that report an explicit cost or token usage priced by ``paymaster.toml``, some calling
an instrumented model client whose own ``chat`` span records the same call, some failing before they
succeed, some with a cheaper path), budgets that deny, halt or downgrade, run limits that halt, and
where the sidecar goes down and comes back mid-run. Each runs against a real sidecar (in this process,
restarted on the same ports and store for an outage; SQLite and a real redis-server) in every SDK
mode — per-step reservations, leases, leases across runs (three runs at once, in three threads,
drawing from the slices one ``SidecarBudget`` holds), downgrades, ``fail_open`` (a journal replayed
later), ``fail_closed``, ``local_only_limits`` and no budget at all — with OTLP ingestion on (the SDK's spans
exported by its real OTLP exporter as each step ends, with the reservation span processor installed)
and off; and half of them inside a request budget (opened by the SDK, or — with no budget at all — by
an upstream service that only puts its id in the baggage), some large, some small enough to deny; its
steps never draw from a lease (not even the shared ones: the three runs share the request budget).
Afterwards the sidecar's committed total for the run's team, and the request budget's, must each equal:

* with ingestion on, the SDK's reported total (``result.total_cost_usd``, summed over the runs);
* with ingestion off, the part the SDK charged itself (steps run under a reservation, a lease or
  ``fail_open``): spend the SDK charges nobody for, with nobody ingesting its spans, is charged nowhere.

The same runs, with OTLP ingestion on, against a sidecar of two worker processes (``server.workers = 2``,
on both stores): a step's Reserve, its Commit and its spans may each reach another worker, and the
module checks at its end that every worker answered some of each.

Every amount is a whole number of micro-dollars (prices too), so "equal" is exact. Pipelines where two
split parallels would split one quota at once are not drawn: the SDK refuses them before any spend.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider

from paymaster import (
    FAIL_CLOSED,
    FAIL_OPEN,
    LOCAL_ONLY_LIMITS,
    LeasePolicy,
    Pipeline,
    Runner,
    Scopes,
    SidecarBudget,
    Step,
    StepConfig,
    UsageLimitExceededError,
    UsageLimits,
)
from paymaster.config import PaymasterConfig, parse_config
from paymaster.pricing import PricingMeter
from paymaster.result import PipelineResult
from paymaster.v1 import budget_pb2 as pb
from tests.e2e.live_sidecar import PRICES, LiveSidecar, SpanPipe, traced
from tests.sdk.agents import MetricOutput
from tests.sidecar.redisserver import RedisServer

pytestmark = pytest.mark.slow

MODES = (
    "reserve",
    "lease",
    "shared_lease",
    "downgrade",
    "fail_open",
    "fail_closed",
    "local_only",
    "no_budget",
)
SHARED_RUNS = 3
"""Runs at once in ``shared_lease`` mode, each in its own thread and event loop."""
OUTAGES = {"fail_open", "fail_closed", "local_only"}
SDK_CHARGED = {"reservation", "lease", "fail_open"}
"""Step modes (``StepResult.budget.mode``) whose spend the SDK charges itself."""
MICRO = Decimal("0.000001")
SDK_CONFIG: PaymasterConfig = parse_config(PRICES + '\n[downgrade]\n"openai:gpt-4o" = "openai:gpt-4o-mini"\n')


# ---------------------------------------------------------------------------------------- sidecars
def one_per_store(tmp_path_factory: pytest.TempPathFactory, workers: int) -> Iterator[dict[str, LiveSidecar]]:
    """A running sidecar of ``workers`` processes on SQLite and one on a real redis-server of its own."""
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    lite = tmp_path_factory.mktemp(f"sqlite-{workers}")
    live = {
        "sqlite": LiveSidecar(lite, store=f'path = "{lite / "sidecar.db"}"', workers=workers),
        "redis": LiveSidecar(
            tmp_path_factory.mktemp(f"redis-{workers}"),
            store=f'kind = "redis"\nurl = "{redis.url}"\nnamespace = "diff{workers}-{uuid.uuid4().hex[:8]}"',
            workers=workers,
        ),
    }
    for side in live.values():
        side.start()
    yield live
    for side in live.values():
        side.close()
    redis.stop()


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveSidecar]]:
    """One sidecar per store for the module (each example has a team of its own), OTLP on."""
    yield from one_per_store(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def worker_sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveSidecar]]:
    """The same per store, served by two worker processes (``server.workers = 2``): the SDK's calls and
    its OTLP exports land on either worker, an outage stops and restarts the whole supervisor."""
    yield from one_per_store(tmp_path_factory, 2)


# ---------------------------------------------------------------------------------------- pipelines
@dataclass(frozen=True)
class Call:
    """One agent step."""

    micros: int | None
    """Explicit cost in micro-dollars; ``None``: token usage priced at gpt-4o (2 and 8 micros a token)."""
    tokens: tuple[int, int]
    declared: int | None
    """Declared estimate (``StepConfig.expected_cost_usd``) in micro-dollars."""
    instrumented: bool
    """The agent calls an instrumented client: a ``chat`` span with the call's GenAI usage."""
    failures: int
    """Attempts that raise before one succeeds (the step retries that often)."""
    delay: bool
    cheaper: bool
    """Has a cheaper path (``Step(downgrade=...)``; token agents also have the config's mapping)."""


@dataclass(frozen=True)
class Seq:
    parts: tuple[Any, ...]


@dataclass(frozen=True)
class Loop:
    body: Any
    times: int


@dataclass(frozen=True)
class Par:
    branches: tuple[Any, ...]
    quota: str


calls = st.builds(
    Call,
    micros=st.none() | st.integers(0, 3000),
    tokens=st.tuples(st.integers(0, 200), st.integers(0, 100)),
    declared=st.none() | st.integers(0, 3000),
    instrumented=st.booleans(),
    failures=st.sampled_from([0, 0, 0, 1]),
    delay=st.booleans(),
    cheaper=st.booleans(),
)
nodes = st.recursive(
    calls,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Seq(tuple(xs))),
        st.builds(Loop, inner, st.integers(1, 3)),
        st.builds(
            Par, st.lists(inner, min_size=2, max_size=3).map(tuple), st.sampled_from(["shared", "split"])
        ),
    ),
    max_leaves=6,
)


def splits(node: Any) -> int:
    """Split parallels that would split the quota ``node`` runs on (not one of their own parts)."""
    if isinstance(node, Call):
        return 0
    if isinstance(node, Seq):
        return sum(map(splits, node.parts))
    if isinstance(node, Loop):
        return splits(node.body)
    return 1 if node.quota == "split" else sum(map(splits, node.branches))


def concurrent_splits(node: Any) -> bool:
    """Two split parallels splitting one quota at once, in sibling branches of a shared parallel: the
    SDK refuses to build that pipeline (``ConfigError``, tests/sdk/test_parallel.py), so these are not
    drawn."""
    if isinstance(node, Call):
        return False
    if isinstance(node, Seq):
        return any(map(concurrent_splits, node.parts))
    if isinstance(node, Loop):
        return concurrent_splits(node.body)
    if node.quota == "shared" and sum(1 for b in node.branches if splits(b)) >= 2:
        return True
    return any(map(concurrent_splits, node.branches))


pipelines = (
    st.lists(nodes, min_size=2, max_size=4)
    .map(lambda xs: Seq(tuple(xs)))
    .filter(lambda p: not concurrent_splits(p))
)


@dataclass(frozen=True)
class Scenario:
    pipeline: Any
    lease: LeasePolicy | None
    block_usd: str | None
    """A block budget on the team."""
    downgrade_usd: str
    """The downgrade budget's limit (downgrade mode)."""
    run_limit_usd: str | None
    down_at: int
    """The agent call at which the sidecar goes down (modes with outages)."""
    down_for: int | None
    """Agent calls until it is back; ``None``: back only after the run."""
    request_usd: str | None
    """Run inside a request budget of this limit."""


scenarios = st.builds(
    Scenario,
    pipeline=pipelines,
    lease=st.none()
    | st.builds(
        lambda s, shared: LeasePolicy(slice_usd=s, shared=shared),
        st.sampled_from(["0.0005", "0.002", "0.02"]),
        st.booleans(),
    ),
    block_usd=st.sampled_from([None, "0.002", "0.01", "1"]),
    downgrade_usd=st.sampled_from(["0", "0.001", "0.004"]),
    run_limit_usd=st.sampled_from([None, None, "0.003", "0.02"]),
    down_at=st.integers(1, 4),
    down_for=st.none() | st.integers(1, 4),
    request_usd=st.sampled_from([None, None, "0.004", "1"]),
)


class World:
    """What every agent of one run shares: the call counter that takes the sidecar down and back."""

    def __init__(
        self, live: LiveSidecar, provider: TracerProvider, down_at: int | None, down_for: int | None
    ):
        self.live = live
        self.tracer = provider.get_tracer("model-client")
        self.calls = 0
        self.down_at = down_at
        self.up_at = None if down_at is None or down_for is None else down_at + down_for
        self.went_down = False

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.down_at and self.live.up:
            self.live.stop()
            self.went_down = True
        elif self.calls == self.up_at and not self.live.up:
            self.live.start()


class Agent:
    """Reports ``call``'s cost; ``model_id`` for token agents (priced, and mapped by ``[downgrade]``)."""

    def __init__(self, call: Call, world: World, *, scale: int = 1) -> None:
        self.call = call
        self.world = world
        self.scale = scale
        self.attempts = 0
        if call.micros is None:
            self.model_id = "openai:gpt-4o"

    async def run(self, data: Any) -> Any:
        self.world.tick()
        self.attempts += 1
        call = self.call
        if call.delay:
            await asyncio.sleep(0.002)
        tokens_in, tokens_out = call.tokens
        if call.instrumented:
            model = getattr(self, "model_id", "openai:gpt-4o").split(":")[1]
            attributes = {"gen_ai.provider.name": "openai", "gen_ai.request.model": model,
                          "gen_ai.usage.input_tokens": tokens_in, "gen_ai.usage.output_tokens": tokens_out}  # fmt: skip
            with self.world.tracer.start_as_current_span(f"chat {model}", attributes=attributes):
                pass
        if self.attempts % (call.failures + 1):
            raise RuntimeError(f"attempt {self.attempts} failed")
        if call.micros is None:
            return {"usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}
        return MetricOutput(
            value=data, cost_usd=str(call.micros // self.scale * MICRO), token_counts=tokens_in
        )


def build(node: Any, world: World, names: Iterator[int]) -> Step | Pipeline:
    if isinstance(node, Call):
        name = f"s{next(names)}"
        config = StepConfig(
            expected_cost_usd=None if node.declared is None else node.declared * MICRO,
            max_retries=node.failures,
        )
        cheaper = Agent(node, world, scale=2) if node.cheaper else None
        return Step(name, Agent(node, world), config=config, downgrade=cheaper)
    if isinstance(node, Seq):
        return Pipeline([s for part in node.parts for s in Pipeline.coerce(build(part, world, names)).steps])
    if isinstance(node, Loop):
        exits = itertools.count(1)
        times = node.times
        return Step.loop_until(
            name=f"loop{next(names)}",
            loop_body_pipeline=build(node.body, world, names),
            exit_condition_callable=lambda out, ctx: next(exits) % times == 0,
            max_loops=times,
        )
    assert isinstance(node, Par)
    branches = {f"b{i}": build(b, world, names) for i, b in enumerate(node.branches)}
    return Step.parallel(f"par{next(names)}", branches, quota=node.quota)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- the run
def run_once(
    live: LiveSidecar, mode: str, ingestion: bool, scenario: Scenario, team: str
) -> tuple[list[PipelineResult], World, str | None]:
    """Run the scenario's pipeline in ``mode`` (``SHARED_RUNS`` times at once in ``shared_lease``),
    inside the scenario's request budget if it has one, then bring the sidecar back, replay the journal
    and export the spans still waiting: after this, every path that will ever charge has charged."""
    pipe = SpanPipe(live) if ingestion else None
    provider = traced(team, pipe)
    outage = mode in OUTAGES
    world = World(live, provider, scenario.down_at if outage else None, scenario.down_for)
    budget = None
    if mode != "no_budget":
        if scenario.block_usd is not None:
            live.budget(f"{team}-block", team, scenario.block_usd)
        if mode == "downgrade":
            live.budget(f"{team}-soft", team, scenario.downgrade_usd, on_exceed=pb.ON_EXCEED_DOWNGRADE)
        policy = {"fail_open": FAIL_OPEN, "local_only": LOCAL_ONLY_LIMITS}.get(mode, FAIL_CLOSED)
        budget = SidecarBudget(
            live.address,
            scopes=Scopes(team=team),
            fail_policy=policy,  # type: ignore[arg-type]
            lease=lease_for(mode, scenario),
            journal_dir=live.workdir / "journals" / team,  # durable: written off the event loop
            deadline_s=2.0,
            retries=1,
            backoff_s=0.01,
            breaker_failures=2,
            breaker_reset_s=0.05,
            config=SDK_CONFIG,
        )
    limit = scenario.run_limit_usd or ("1" if mode == "local_only" else None)

    def run(world: World, within: context.Context | None) -> PipelineResult:
        """One run, in ``within`` (the request budget's baggage) when given."""
        runner = Runner(
            build(scenario.pipeline, world, itertools.count()),
            budget=budget,
            usage_limits=UsageLimits(total_cost_usd_limit=limit),
            meter=PricingMeter(config=SDK_CONFIG),
            tracer_provider=provider,
        )
        token = None if within is None else context.attach(within)
        try:
            return runner.run(0)
        except UsageLimitExceededError as exc:
            assert exc.result is not None
            return exc.result
        finally:
            if token is not None:
                context.detach(token)

    def runs(within: context.Context | None) -> list[PipelineResult]:
        if mode != "shared_lease":
            return [run(world, within)]
        worlds = [World(live, provider, None, None) for _ in range(SHARED_RUNS)]
        with ThreadPoolExecutor(SHARED_RUNS) as pool:  # each thread starts from its own empty context
            results = list(pool.map(run, worlds, [within] * SHARED_RUNS))
        world.calls = sum(w.calls for w in worlds)
        return results

    request_id = None
    if scenario.request_usd is None:
        results = runs(None)
    elif budget is not None:
        with budget.request_budget(limit_usd=scenario.request_usd) as request:
            request_id = request.id
            results = runs(context.get_current())
    else:  # an upstream service opened it; this process only has its id in the baggage
        opened = live.stub.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd=scenario.request_usd))
        request_id = opened.id
        results = runs(baggage.set_baggage("paymaster.request_budget", request_id))
    if not live.up:
        live.start()
    if budget is not None:
        assert budget.flush(timeout_s=30) == 0, "the journal was not replayed"
        budget.close()
        if budget.shared_leases is not None:
            # close() commits the shared slices; one it could not commit then (the sidecar just back,
            # the breaker still open) stays in the journal directory for the next process: be it.
            with SidecarBudget(live.address, journal_dir=live.workdir / "journals" / team) as heir:
                assert heir.flush(timeout_s=30) == 0, "the shared slices' commits were not replayed"
    provider.force_flush()
    provider.shutdown()
    return results, world, request_id


def lease_for(mode: str, scenario: Scenario) -> LeasePolicy | None:
    """Per-step reservations only in ``reserve``, always leases in ``lease`` (shared ones in
    ``shared_lease``), any of them in the others."""
    if mode == "reserve":
        return None
    if mode == "lease":
        return scenario.lease or LeasePolicy(slice_usd="0.002")
    if mode == "shared_lease":
        return LeasePolicy(slice_usd=scenario.lease.slice_usd if scenario.lease else "0.002", shared=True)
    return scenario.lease  # the other modes, with or without (shared or not)


def check(live: LiveSidecar, mode: str, ingestion: bool, scenario: Scenario) -> None:
    team = f"t-{uuid.uuid4().hex[:12]}"
    note(f"team {team}")
    results, world, request_id = run_once(live, mode, ingestion, scenario, team)
    steps = [s for result in results for s in result.walk() if s.kind == "agent"]
    costs = [s.cost_usd or Decimal(0) for s in steps]
    modes = [s.budget.mode if s.budget else None for s in steps]
    note(f"steps: {list(zip([s.name for s in steps], costs, modes, strict=True))}")
    note(f"sidecar went down: {world.went_down}; agent calls: {world.calls}")
    reported = sum((result.total_cost_usd for result in results), Decimal(0))
    assert reported == sum(costs, Decimal(0))
    by_sdk = sum((c for c, m in zip(costs, modes, strict=True) if m in SDK_CHARGED), Decimal(0))
    expected = reported if ingestion else by_sdk
    assert live.charged(team) == expected, f"the SDK reported ${reported}, ${by_sdk} of it charged by itself"
    if request_id is not None:
        # Inside a request budget every step is reserved on its own, under any lease policy.
        assert "lease" not in modes, "a step inside a request budget drew from a lease"
        status = live.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=request_id), timeout=5)
        assert Decimal(status.used_usd) == expected, f"request budget {request_id}"
        if not world.went_down:
            assert Decimal(status.reserved_usd) == 0
    if not world.went_down and scenario.block_usd is not None and mode != "no_budget":
        assert live.reserved(f"{team}-block") == 0  # nothing left held once the run is over


def differential(live: LiveSidecar, mode: str, ingestion: bool, *, examples: int) -> None:
    """``examples`` scenarios drawn by Hypothesis, each checked against ``live`` (restarted if an outage
    left it down)."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios)
    def one(scenario: Scenario) -> None:
        if not live.up:
            live.start()
        check(live, mode, ingestion, scenario)

    one()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("ingestion", [True, False], ids=["otlp", "no-otlp"])
@pytest.mark.parametrize("mode", MODES)
def test_the_sidecar_holds_exactly_what_the_sdk_reports(
    sidecars: dict[str, LiveSidecar], mode: str, ingestion: bool, store: str
) -> None:
    differential(sidecars[store], mode, ingestion, examples=8 if mode in OUTAGES else 5)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("mode", MODES)
def test_two_workers_hold_exactly_what_the_sdk_reports(
    worker_sidecars: dict[str, LiveSidecar], mode: str, store: str
) -> None:
    """The same differential against a sidecar of two worker processes, OTLP ingestion on: a step's
    Reserve, its Commit and its spans may each reach another worker, and each is still charged once."""
    differential(worker_sidecars[store], mode, True, examples=4)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_two_workers_both_served_the_differential(
    worker_sidecars: dict[str, LiveSidecar], store: str
) -> None:
    """After the examples above (run this module whole): every worker answered Reserves and Commits and
    received spans, so the totals above were kept across workers, not by one of them alone."""
    live = worker_sidecars[store]
    live.tally()
    assert {kind: live.spread[kind] for kind in ("Reserve", "Commit", "spans")} == {
        "Reserve": {0, 1},
        "Commit": {0, 1},
        "spans": {0, 1},
    }, live.spread
