"""What the sidecar costs a governed loop, next to the same loop with local limits only, in one run.

Starts a real sidecar process on loopback (SQLite store in a temporary directory, a team budget with
room for everything), then measures the per-iteration overhead of a governed loop (limits on, a
trivial agent that reports its cost and declares it as its estimate) three ways, in alternating
rounds, keeping each one's best:

  * local-only: ``Runner(loop, usage_limits=...)`` — the baseline;
  * per-step reservations: ``budget=SidecarBudget(...)`` — a Reserve and a Commit per iteration;
  * leases: ``SidecarBudget(..., lease=LeasePolicy())`` — the default $1 slices, a Reserve and a
    Commit per slice (1,000 iterations of $0.001), and the same with slices of ``--steps-per-lease``
    iterations to show what each slice's round trips cost.

Overhead is time over the agent awaited in a bare loop; each sidecar mode is printed as a ratio of
the local-only overhead. Target: leases (the default policy) at most 1.5x.

Usage: python bench/bench_sdk_sidecar.py [--quick] [--steps-per-lease N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import grpc

from paymaster import LeasePolicy, Runner, Scopes, SidecarBudget, Step, StepConfig, UsageLimits
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc

COST = Decimal("0.001")


@dataclass
class Out:
    value: int
    cost_usd: Decimal = COST
    token_counts: int = 1


class Trivial:
    async def run(self, data: Any) -> Out:
        return Out(value=(data.value if isinstance(data, Out) else data) + 1)


def loop_runner(iterations: int, budget: SidecarBudget | None) -> Runner:
    loop = Step.loop_until(
        name="bench_loop",
        loop_body_pipeline=Step("body", Trivial(), config=StepConfig(expected_cost_usd=COST)),
        exit_condition_callable=lambda out, ctx: False,
        max_loops=iterations,
    )
    return Runner(
        loop,
        usage_limits=UsageLimits(total_cost_usd_limit=Decimal(1000), total_tokens_limit=10**9),
        budget=budget,
    )


def bare(iterations: int) -> None:
    async def main() -> None:
        agent, data = Trivial(), cast(Any, 0)
        for _ in range(iterations):
            data = await agent.run(data)

    asyncio.run(main())


def start_sidecar(workdir: Path, toml: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m collector_processor`` on a free loopback port; returns the process and its address.

    ``toml`` is the whole configuration (default: a SQLite store in ``workdir``, alerts not logged);
    the sidecar writes its config and log in ``workdir``."""
    config = workdir / "sidecar.toml"
    config.write_text(
        toml
        or f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n[store]\npath = "{workdir / "sidecar.db"}"\n'
        "[alerts]\notel_logs = false\n"
    )
    log = workdir / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector_processor", "--config", str(config)], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "listening on " in line:
                return proc, line.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"the sidecar did not start:\n{log.read_text()}")


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps-per-lease", type=int, default=100)
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    n_local, n_reserved = 2000, 200 if args.quick else 400
    small_slice = COST * args.steps_per_lease
    default_steps = int(LeasePolicy().slice_usd / COST)

    with tempfile.TemporaryDirectory() as tmp:
        sidecar, address = start_sidecar(Path(tmp))
        channel = grpc.insecure_channel(address)
        admin = budget_pb2_grpc.BudgetServiceStub(channel)
        admin.CreateBudget(
            pb.CreateBudgetRequest(
                budget=pb.Budget(
                    id="bench-team",
                    scope=pb.SCOPE_TEAM,
                    scope_id="bench",
                    limit_usd="1000000",
                    period="daily",
                    on_exceed=pb.ON_EXCEED_BLOCK,
                )
            ),
            timeout=5,
        )
        scopes = Scopes(team="bench")
        per_step = SidecarBudget(address, scopes=scopes, journal_dir=None, deadline_s=5)
        leased = SidecarBudget(address, scopes=scopes, journal_dir=None, deadline_s=5, lease=LeasePolicy())
        small = SidecarBudget(
            address, scopes=scopes, journal_dir=None, deadline_s=5, lease=LeasePolicy(slice_usd=small_slice)
        )
        local_runner = loop_runner(n_local, None)
        reserved_runner = loop_runner(n_reserved, per_step)
        leased_runner = loop_runner(n_local, leased)
        small_runner = loop_runner(n_local, small)
        # Warm up: connections, caches, the sidecar's statements.
        for warm in (per_step, leased, small):
            loop_runner(20, warm).run(0)
        local_runner.run(0)

        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, fn in (
                ("bare", lambda: bare(n_local)),
                ("local", lambda: local_runner.run(0)),
                ("reserved", lambda: reserved_runner.run(0)),
                ("leased", lambda: leased_runner.run(0)),
                ("small", lambda: small_runner.run(0)),
            ):
                best[name] = min(best.get(name, float("inf")), timed(fn))
        status = admin.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="bench-team"), timeout=5)
        used, reserved = Decimal(status.used_usd), Decimal(status.reserved_usd)
        for budget in (per_step, leased, small):
            budget.close()
        channel.close()
        sidecar.terminate()
        sidecar.wait(timeout=10)

    base = best["bare"] / n_local
    local = best["local"] / n_local - base
    per_reserved = best["reserved"] / n_reserved - base
    per_leased = best["leased"] / n_local - base
    per_small = best["small"] / n_local - base
    us = 1e6
    print(
        f"governed loop against a local sidecar process (baseline: the agent awaited in a bare loop, "
        f"{base * us:.1f} us/iter; best of {rounds} alternating rounds)"
    )
    print(f"  local-only limits:        {local * us:8.1f} us/iteration overhead   (x1.00 local-only)")
    print(
        f"  per-step reservations:    {per_reserved * us:8.1f} us/iteration overhead   "
        f"(x{per_reserved / local:.2f} local-only; a Reserve and a Commit per iteration)"
    )
    print(
        f"  leases, default policy:   {per_leased * us:8.1f} us/iteration overhead   "
        f"(x{per_leased / local:.2f} local-only; $1 slices = {default_steps} iterations)   target <= 1.5"
    )
    print(
        f"  leases, small slices:     {per_small * us:8.1f} us/iteration overhead   "
        f"(x{per_small / local:.2f} local-only; ${small_slice.normalize():f} slices = {args.steps_per_lease} iterations)"
    )
    print(f"  the sidecar charged ${used.normalize():f} and holds ${reserved.normalize():f} after the runs")


if __name__ == "__main__":
    main()
