"""Three sidecar processes on one real redis-server behave as one ledger, even when one is SIGKILLed.

64 concurrent clients reserve and commit random amounts through any replica, across a shared budget
and separate ones, abandon reservations at random, and retry whatever a dying replica left unanswered
on another one (a Reserve with its idempotency key, a Commit as is). Afterwards committed spend equals
what the clients saw acknowledged, block budgets never held more than their limit at any sampled
instant, the abandoned reservations' TTLs gave every hold back, and alerts fired once across replicas.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.conftest import pb_budget
from tests.sidecar.redisserver import RedisServer

pytestmark = pytest.mark.slow

CLIENTS = 64
SECONDS = 8.0
TTL_S = 1
D = Decimal
# Block budgets and their limits: one shared by most clients, the rest separate per group.
BLOCK = {
    "org-acme": D(4),
    "org-beta": D("1.5"),
    "team-t0": D("1.5"),
    "team-t1": D("1.5"),
    "team-t2": D("1.5"),
    "team-t3": D("1.5"),
}


class Replica:
    """``python -m collector_processor --config ...`` in a child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector_processor", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def wait_listening(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if match is None:
            self.stop()
            raise AssertionError(f"a replica did not start: {line!r}; see {self.log.name}")
        self.address = match.group(1)
        return self.address

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@contextmanager
def three_replicas(folder: Path, redis_url: str, extra_toml: str = "") -> Iterator[list[Replica]]:
    """Three sidecar processes on one Redis namespace, listening; stopped when the block ends."""
    config = folder / "sidecar.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n{extra_toml}\n'
        f'[store]\nkind = "redis"\nurl = "{redis_url}"\nnamespace = "cluster-{uuid.uuid4().hex[:8]}"\n'
        "[ledger]\nsweep_interval_seconds = 0.2\n[alerts]\notel_logs = false\npoll_interval_seconds = 0.1\n"
    )
    started = [Replica(config, folder / f"replica-{i}.log") for i in range(3)]
    try:
        for replica in started:
            replica.wait_listening()
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Replica]]:
    with three_replicas(tmp_path, redis_server.url) as started:
        yield started


class Load:
    """What the clients saw: acknowledged spend per budget, and the sampled standing of block budgets."""

    def __init__(self) -> None:
        self.acknowledged: dict[str, Decimal] = defaultdict(Decimal)
        self.samples: dict[str, list[Decimal]] = defaultdict(list)
        self.granted = self.denied = self.abandoned = self.released = self.retried = 0


def _budgets_of(index: int) -> tuple[pb.ScopeIds, list[str]]:
    org = "beta" if index >= 48 else "acme"
    team = f"t{index % 4}"
    return pb.ScopeIds(organization=org, team=team, workflow="digest"), [f"org-{org}", f"team-{team}", "warn"]


async def _run_load(addresses: list[str], kill: Replica, load: Load) -> None:
    channels = {a: grpc.aio.insecure_channel(a) for a in addresses}
    stubs = {a: budget_pb2_grpc.BudgetServiceStub(c) for a, c in channels.items()}
    alive = list(addresses)
    stop_at = time.monotonic() + SECONDS

    async def call(method: str, request: object, rng: random.Random) -> object:
        """The call on a random live replica; on a transport failure, again on another one."""
        last: Exception | None = None
        for attempt in range(4):
            address = rng.choice(alive)
            try:
                return await getattr(stubs[address], method)(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise
                last = exc
                load.retried += attempt == 0
                await asyncio.sleep(0.05)
        raise AssertionError(f"{method} failed on every replica: {last}")

    async def client(index: int) -> None:
        rng = random.Random(index)
        scopes, budgets = _budgets_of(index)
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            estimate = D(rng.randint(1_000, 20_000)) / 1_000_000  # $0.001 .. $0.02
            request = pb.ReserveRequest(
                scopes=scopes,
                estimate_usd=str(estimate),
                ttl={"seconds": TTL_S},
                idempotency_key=f"c{index}-{n}",
            )
            reply = await call("Reserve", request, rng)
            if reply.decision == pb.DECISION_DENY:  # type: ignore[attr-defined]
                load.denied += 1
                await asyncio.sleep(0.01)
                continue
            load.granted += 1
            rid = reply.reservation_id  # type: ignore[attr-defined]
            roll = rng.random()
            if roll < 0.15:
                load.abandoned += 1  # the client "crashes": only the TTL gives this hold back
                continue
            if roll < 0.25:
                await call("Release", pb.ReleaseRequest(reservation_id=rid), rng)
                load.released += 1
                continue
            actual = (estimate * D(rng.randint(0, 100)) / 100).quantize(D("0.000001"))
            done = await call("Commit", pb.CommitRequest(reservation_id=rid, actual_usd=str(actual)), rng)
            charged = D(done.charged_usd)  # type: ignore[attr-defined]
            assert charged == actual
            for budget in budgets:
                load.acknowledged[budget] += charged

    async def sampler() -> None:
        rng = random.Random(-1)
        while time.monotonic() < stop_at:
            for budget, _ in BLOCK.items():
                status = await call("GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id=budget), rng)
                load.samples[budget].append(D(status.used_usd) + D(status.reserved_usd))  # type: ignore[attr-defined]
            await asyncio.sleep(0.005)

    async def killer() -> None:
        await asyncio.sleep(SECONDS * 0.4)
        alive.remove(kill.address)
        kill.kill()

    try:
        await asyncio.gather(*(client(i) for i in range(CLIENTS)), sampler(), killer())
    finally:
        for channel in channels.values():
            await channel.close()


def test_three_replicas_share_one_ledger_without_overspend_through_a_sigkill(replicas: list[Replica]) -> None:
    first, second, victim = replicas
    admin = budget_pb2_grpc.BudgetServiceStub(grpc.insecure_channel(first.address))
    other = budget_pb2_grpc.BudgetServiceStub(grpc.insecure_channel(second.address))
    # Budgets created through different replicas are enforced by all of them at once.
    for i, (budget, limit) in enumerate(BLOCK.items()):
        scope = pb.SCOPE_ORGANIZATION if budget.startswith("org") else pb.SCOPE_TEAM
        (admin if i % 2 else other).CreateBudget(
            pb_budget(budget, scope, budget.split("-", 1)[1], str(limit))
        )
    other.CreateBudget(
        pb_budget("warn", pb.SCOPE_WORKFLOW, "digest", "2", on_exceed=pb.ON_EXCEED_WARN, thresholds=(50, 100))
    )

    load = Load()
    asyncio.run(_run_load([r.address for r in replicas], victim, load))
    assert victim.proc.returncode == -signal.SIGKILL
    assert load.granted > 200 and load.denied > 0 and load.abandoned > 0  # the limits were reached

    for budget, limit in BLOCK.items():
        assert len(load.samples[budget]) > 20
        assert max(load.samples[budget]) <= limit, budget

    # Once the TTLs have passed, the survivors' sweeps have given every abandoned hold back.
    deadline = time.monotonic() + 20
    while True:
        statuses = {
            b: admin.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id=b)) for b in [*BLOCK, "warn"]
        }
        if all(s.reserved_usd == "0.000000" for s in statuses.values()):
            break
        assert time.monotonic() < deadline, {b: s.reserved_usd for b, s in statuses.items()}
        time.sleep(0.1)
    for budget, status in statuses.items():
        assert D(status.used_usd) == load.acknowledged[budget], budget
        if budget in BLOCK:
            assert D(status.used_usd) <= BLOCK[budget]
    # The warn budget crossed both thresholds: each fired exactly once across the three replicas.
    assert list(statuses["warn"].alerts_fired) == [50, 100]
    stream = other.WatchAlerts(pb.WatchAlertsRequest(after_sequence=0, budget_ids=["warn"]), timeout=1.5)
    seen = []
    with pytest.raises(grpc.RpcError) as ended:
        for alert in stream:
            seen.append(alert.threshold_percent)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert seen == [50, 100]
