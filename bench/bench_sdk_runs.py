"""What the SDK adds to one short governed run against a sidecar, next to a bare Reserve+Commit pair and
the same run ungoverned, measured in one run at one client.

Starts a real sidecar process on loopback (``python -m collector_processor``, one worker, SQLite in a
temporary directory, bench_sidecar.py's two budgets), then times, one operation at a time from one
event loop (``Runner.run_async`` of a 1-step pipeline whose trivial agent reports its cost):

  * **bare pair**: a Reserve and its Commit from a ``grpc.aio`` client (bench_cluster.py's) — what the
    sidecar and the transport cost, with no SDK;
  * **ungoverned run**: the run without a budget — what the SDK costs without a sidecar;
  * **per-step run**: ``SidecarBudget(...)`` without a lease — a Reserve and a Commit per step;
  * **shared channel**: the same, with the budget's calls kept on the one synchronous channel the
    budget shares between event loops (each call completed on a gRPC thread and handed back to the
    loop), as every call was before a loop that keeps calling got a ``grpc.aio`` channel of its own;
  * **per-run lease**: ``LeasePolicy()`` — the run takes a slice and commits it when it ends;
  * **shared lease**: ``LeasePolicy(shared=True)`` — every run draws from one slice of the budget's.

Modes alternate in rounds; every operation's time is kept. Printed: mean, p50 and p99 of each, the
latency each governed mode adds to the ungoverned run, the client's CPU time per operation, and the
SDK's own share of a per-step run: per-step run - ungoverned run - bare pair (what the SDK spends
around its two calls), also on the shared channel.

Usage: python bench/bench_sdk_runs.py [--quick] [--rounds N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_cluster import pair_calls
from bench_sdk_sidecar import COST, Trivial, start_sidecar
from bench_sidecar import BUDGETS_TOML

from paymaster import LeasePolicy, Runner, Scopes, SidecarBudget, Step, StepConfig

MODES = ("bare pair", "ungoverned run", "per-step run", "shared channel", "per-run lease", "shared lease")
POLICIES: dict[str, LeasePolicy | None] = {
    "per-step run": None,
    "shared channel": None,
    "per-run lease": LeasePolicy(),
    "shared lease": LeasePolicy(shared=True),
}


def runner(budget: SidecarBudget | None) -> Runner:
    return Runner(Step("answer", Trivial(), config=StepConfig(expected_cost_usd=COST)), budget=budget)


async def measure(address: str, rounds: int, runs: int) -> dict[str, list[float]]:
    scopes = Scopes(organization="acme", team="search")
    budgets = {
        name: SidecarBudget(address, scopes=scopes, journal_dir=None, deadline_s=10, lease=policy)
        for name, policy in POLICIES.items()
    }
    client = budgets["shared channel"].client
    client._stub_for = lambda loop: (client.stub, False)  # type: ignore[method-assign]
    runners = {"ungoverned run": runner(None)} | {name: runner(b) for name, b in budgets.items()}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, float] = dict.fromkeys(MODES, 0.0)
    try:
        async with pair_calls([address]) as pair:
            ops: dict[str, Callable[[], Awaitable[Any]]] = {"bare pair": pair}
            for name, r in runners.items():
                ops[name] = lambda r=r: r.run_async(0)
            for op in ops.values():  # warm up: connections, slices, the sidecar's statements
                for _ in range(20):
                    await op()
            for _ in range(rounds):
                for mode in MODES:
                    op, out = ops[mode], times[mode]
                    used = time.process_time()
                    for _ in range(runs):
                        started = time.perf_counter()
                        await op()
                        out.append(time.perf_counter() - started)
                    cpu[mode] += time.process_time() - used
    finally:
        for budget in budgets.values():
            await asyncio.get_running_loop().run_in_executor(None, budget.close)
    return times, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 50 operations per mode")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7)")
    parser.add_argument("--runs", type=int, default=None, help="operations per mode and round (default 300)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 7)
    runs = args.runs or (50 if args.quick else 300)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        proc, address = start_sidecar(
            work,
            f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n[store]\npath = "{work / "bench.db"}"\n'
            f"[alerts]\notel_logs = false\n{BUDGETS_TOML}",
        )
        try:
            times, cpu = asyncio.run(measure(address, rounds, runs))
        finally:
            proc.terminate()
            proc.wait(30)
    us = 1e6
    stats = {}
    for mode, samples in times.items():
        q = statistics.quantiles(samples, n=100)
        stats[mode] = (statistics.fmean(samples) * us, q[49] * us, q[98] * us, cpu[mode] / len(samples) * us)
    print(
        f"1-step runs against a sidecar process (one worker, SQLite) at one client: {rounds} alternating "
        f"rounds of {runs} operations per mode, same run"
    )
    print(
        f"{'mode':<15}  {'mean us':>8}  {'p50 us':>8}  {'p99 us':>8}  {'added p50 us':>12}  {'added p99 us':>12}"
        f"  {'CPU us':>7}"
    )
    base = stats["ungoverned run"]
    for mode, (mean, p50, p99, used) in stats.items():
        added = "" if mode in ("bare pair", "ungoverned run") else f"{p50 - base[1]:.0f}"
        added_p99 = "" if mode in ("bare pair", "ungoverned run") else f"{p99 - base[2]:.0f}"
        print(
            f"{mode:<15}  {mean:>8.0f}  {p50:>8.0f}  {p99:>8.0f}  {added:>12}  {added_p99:>12}  {used:>7.0f}"
        )
    print(
        "added: over the ungoverned run (p50 - p50, p99 - p99); CPU: this client process's CPU time per "
        "operation (all its threads)"
    )
    pair = stats["bare pair"]
    for mode in ("per-step run", "shared channel"):
        step = stats[mode]
        print(
            f"the SDK's own share of a {mode} (it - ungoverned run - bare pair): mean "
            f"{step[0] - base[0] - pair[0]:.0f} us, p50 {step[1] - base[1] - pair[1]:.0f} us, CPU "
            f"{step[3] - base[3] - pair[3]:.0f} us; {mode} / bare pair {step[0] / pair[0]:.2f} (mean)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
