"""The SDK's channels to the sidecar: the first calls of an event loop go through the one shared
synchronous channel; a loop that keeps calling gets a ``grpc.aio`` channel of its own, on which no
call starts a gRPC thread; the short runs of ``Runner.run`` (a new loop each) share one connection;
and every channel is closed with the budget."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path

from paymaster import Runner, Scopes, SidecarBudget, Step

from .agents import FixedMetricAgent
from .conftest import InProcessSidecar
from .sidecar_support import wait_until


def connections_to(address: str) -> int:
    """Established TCP connections to ``address``'s port on this machine (from /proc/net)."""
    port = int(address.rsplit(":", 1)[1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def governed(side: InProcessSidecar) -> tuple[SidecarBudget, Runner]:
    side.admin.budget("search-daily", "100")
    budget = SidecarBudget(side.address, scopes=Scopes(team="search"), journal_dir=None, deadline_s=10)
    return budget, Runner(Step("call", FixedMetricAgent(cost="0.01")), budget=budget)


def test_runs_from_one_event_loop_start_no_grpc_thread_per_call(sidecar: InProcessSidecar) -> None:
    """gRPC completes a call on a synchronous channel on a thread it starts whenever no other call is
    in flight; a loop that keeps calling has a channel of its own and starts none."""
    budget, runner = governed(sidecar)
    started: list[str] = []
    start = threading.Thread.start

    def counting(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    async def main() -> None:
        for _ in range(10):  # 20 calls: past the first few, which use the shared channel
            await runner.run_async(0)
        threading.Thread.start = counting  # type: ignore[method-assign]
        try:
            for _ in range(20):
                await runner.run_async(0)
        finally:
            threading.Thread.start = start  # type: ignore[method-assign]

    asyncio.run(main())
    budget.close()
    assert started == []  # on the shared synchronous channel: two per run
    assert sidecar.admin.status("search-daily") == (Decimal("0.30"), Decimal(0))


def test_short_runs_of_runner_run_share_one_connection(sidecar: InProcessSidecar) -> None:
    budget, runner = governed(sidecar)
    before = connections_to(sidecar.address)
    for _ in range(10):
        runner.run(0)
    assert connections_to(sidecar.address) == before + 1
    budget.close()
    assert wait_until(lambda: connections_to(sidecar.address) == before)


def test_a_loop_that_keeps_calling_adds_one_connection_closed_with_the_budget(
    sidecar: InProcessSidecar,
) -> None:
    budget, runner = governed(sidecar)
    before = connections_to(sidecar.address)
    counted: list[int] = []

    async def main() -> None:
        for _ in range(10):
            await runner.run_async(0)
        counted.append(connections_to(sidecar.address))

    asyncio.run(main())
    assert counted == [before + 2]  # the shared channel's, and the loop's own
    budget.close()
    assert wait_until(lambda: connections_to(sidecar.address) == before)
    assert sidecar.admin.status("search-daily") == (Decimal("0.10"), Decimal(0))


def test_loops_in_several_threads_each_use_their_own_channel(sidecar: InProcessSidecar) -> None:
    """One budget shared by runs on event loops in several threads at once: every run is charged."""
    budget, runner = governed(sidecar)
    errors: list[BaseException] = []

    def serve() -> None:
        async def main() -> None:
            await asyncio.gather(*(runner.run_async(0) for _ in range(20)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    loops = 3
    threads = [threading.Thread(target=serve) for _ in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    budget.close()
    assert errors == []
    assert sidecar.admin.status("search-daily") == (Decimal("0.01") * 20 * loops, Decimal(0))
