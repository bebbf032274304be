"""The concurrency invariants hold across worker processes exactly as across replicas, on both stores: 64
clients over connections spread on two workers never push a block budget past its limit, alerts fire
once per threshold and reach every WatchAlerts stream and the dispatcher once, and a worker killed
with SIGKILL under load is replaced with nothing it acknowledged lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.conftest import StoreFactory, pb_budget
from tests.sidecar.workers.conftest import OWN_CONNECTION, Workers, start_workers

pytestmark = pytest.mark.slow

D = Decimal
SCOPES = pb.ScopeIds(organization="acme", team="search")
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)


async def _call(stub: Any, method: str, request: Any) -> Any:
    """The call, again on a transport failure (a new connection lands on a live worker)."""
    for attempt in range(60):
        try:
            return await getattr(stub, method)(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRIED or attempt == 59:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("not reached")


def test_64_clients_on_two_workers_never_push_a_block_budget_past_its_limit(workers: Workers) -> None:
    workers.stub().CreateBudget(pb_budget("org", pb.SCOPE_ORGANIZATION, "acme", "50"))
    limit, estimate, actual = D(50), D("0.30"), D("0.25")
    samples: list[Decimal] = []
    granted: list[str] = []

    async def main() -> None:
        channels = [grpc.aio.insecure_channel(workers.address, options=OWN_CONNECTION) for _ in range(65)]
        stubs = [budget_pb2_grpc.BudgetServiceStub(c) for c in channels]
        done = asyncio.Event()

        async def client(stub: Any, index: int) -> None:
            n = 0
            while True:
                n += 1
                request = pb.ReserveRequest(
                    scopes=SCOPES, estimate_usd=str(estimate), idempotency_key=f"c{index}-{n}"
                )
                reply = await _call(stub, "Reserve", request)
                if reply.decision == pb.DECISION_ALLOW:
                    granted.append(reply.reservation_id)
                    commit = pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd=str(actual))
                    await _call(stub, "Commit", commit)
                    continue
                status = await _call(stub, "GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id="org"))
                if D(status.used_usd) + estimate > limit:  # nothing more can be granted, ever
                    return
                await asyncio.sleep(0.001)

        async def sampler(stub: Any) -> None:
            while not done.is_set():
                status = await _call(stub, "GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id="org"))
                samples.append(D(status.used_usd) + D(status.reserved_usd))

        watcher = asyncio.ensure_future(sampler(stubs[64]))
        await asyncio.gather(*(client(stubs[i], i) for i in range(64)))
        done.set()
        await watcher
        for channel in channels:
            await channel.close()

    asyncio.run(main())
    assert len(samples) > 10 and max(samples) <= limit
    status = workers.stub().GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="org"))
    assert status.reserved_usd == "0.000000"
    assert len(granted) == len(set(granted)) == 199  # 199 x 0.25 = 49.75; a 0.30 estimate no longer fits
    assert D(status.used_usd) == actual * 199
    served = workers.served("Reserve")
    assert len(served) == 2 and all(count > 0 for count in served.values()), served


def test_alerts_fire_once_per_threshold_and_reach_every_worker_and_the_dispatcher_once(
    backing: StoreFactory, tmp_path: Path
) -> None:
    # Streams and the dispatcher poll the store only twice a minute: what reaches them sooner was
    # relayed by the supervisor from the worker that fired it.
    running = start_workers(backing, tmp_path, poll_s=30)
    try:
        running.stub().CreateBudget(
            pb_budget("warn", limit="10", on_exceed=pb.ON_EXCEED_WARN, thresholds=(30, 60, 90))
        )
        streams = []
        for stub in running.stubs_on_each_worker().values():
            stream = stub.WatchAlerts(pb.WatchAlertsRequest(), timeout=20)
            stream.initial_metadata()  # positioned: everything from here on is delivered
            streams.append(stream)

        async def spend() -> None:  # 40 commits of $0.25 over 16 connections, all at once
            channels = [grpc.aio.insecure_channel(running.address, options=OWN_CONNECTION) for _ in range(16)]
            stubs = [budget_pb2_grpc.BudgetServiceStub(c) for c in channels]

            async def one(i: int) -> None:
                stub = stubs[i % 16]
                reply = await _call(stub, "Reserve", pb.ReserveRequest(scopes=SCOPES, estimate_usd="0.25"))
                await _call(
                    stub, "Commit", pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd="0.25")
                )

            await asyncio.gather(*(one(i) for i in range(40)))
            for channel in channels:
                await channel.close()

        asyncio.run(spend())
        for stream in streams:  # every worker's watchers see every alert, whichever worker fired it
            assert [next(stream).threshold_percent for _ in range(3)] == [30, 60, 90]
            stream.cancel()
        deadline = time.monotonic() + 10
        while len(_alert_records(running)) < 3:
            assert time.monotonic() < deadline, "the dispatcher did not deliver the alerts"
            time.sleep(0.05)
        time.sleep(0.5)
        delivered = sorted(
            r.log_record.attributes["paymaster.alert.threshold_percent"] for r in _alert_records(running)
        )  # type: ignore[index]
        assert delivered == [30, 60, 90]  # once each, by the one dispatcher of the host
        status = running.stub().GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="warn"))
        assert list(status.alerts_fired) == [30, 60, 90] and status.used_usd == "10.000000"
    finally:
        running.close()


def _alert_records(running: Workers) -> list[Any]:
    return [
        r for r in running.logs.get_finished_logs() if r.log_record.event_name == "paymaster.budget.alert"
    ]


def test_a_worker_killed_under_load_is_replaced_and_nothing_acknowledged_is_lost(workers: Workers) -> None:
    admin = workers.stub()
    admin.CreateBudget(pb_budget("org", pb.SCOPE_ORGANIZATION, "acme", "100000", on_exceed=pb.ON_EXCEED_WARN))
    victim = workers.supervisor.pids()[0]
    acknowledged: dict[str, Decimal] = defaultdict(Decimal)
    counts = {"pairs": 0, "retried": 0}
    seconds = 4.0

    async def main() -> None:
        channels = [grpc.aio.insecure_channel(workers.address, options=OWN_CONNECTION) for _ in range(32)]
        stubs = [budget_pb2_grpc.BudgetServiceStub(c) for c in channels]
        stop_at = time.monotonic() + seconds

        async def client(stub: Any, index: int) -> None:
            rng = random.Random(index)
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                estimate = D(rng.randint(1_000, 20_000)) / 1_000_000
                request = pb.ReserveRequest(
                    scopes=SCOPES,
                    estimate_usd=str(estimate),
                    idempotency_key=f"k{index}-{n}",
                    ttl={"seconds": 2},
                )
                reply = await _call(stub, "Reserve", request)
                actual = (estimate * D(rng.randint(0, 100)) / 100).quantize(D("0.000001"))
                done = await _call(
                    stub,
                    "Commit",
                    pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd=str(actual)),
                )
                assert D(done.charged_usd) == actual
                acknowledged["org"] += actual
                counts["pairs"] += 1

        async def killer() -> None:
            await asyncio.sleep(seconds * 0.4)
            os.kill(victim, signal.SIGKILL)

        await asyncio.gather(*(client(stubs[i], i) for i in range(32)), killer())
        for channel in channels:
            await channel.close()

    asyncio.run(main())
    assert counts["pairs"] > 100
    deadline = time.monotonic() + 30
    while workers.supervisor.serving() < 2 or workers.supervisor.pids()[0] == victim:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.05)
    assert workers.supervisor.restarts == 1
    status = admin.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="org"))
    assert D(status.used_usd) == acknowledged["org"]
    usage = admin.GetUsage(pb.GetUsageRequest(scopes=pb.ScopeIds(organization="acme")))
    assert D(usage.total.cost_usd) == acknowledged["org"]
