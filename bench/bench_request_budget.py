"""What a request budget costs a governed step, next to the same step without one, in one run.

Starts a real sidecar process on loopback for each store (SQLite in a temporary directory, and Redis
when ``redis-server`` is on the PATH), a team budget with room for everything, and measures a governed
loop of per-step reservations (a Reserve and a Commit per step, a trivial agent) three ways in
alternating rounds, keeping each one's best:

  * no request budget — the baseline;
  * inside a request budget (``with budget.request_budget(limit_usd=...)``): each Reserve also reads,
    decides on and holds on the request budget, and each Commit charges it and its spend by service;
  * inside a request budget nested in another: both are held on and charged.

Each is printed as time per step and as a ratio of the baseline. The request budget is opened once per
round, as a request would open it once; what opening one costs is printed apart.

Usage: python bench/bench_request_budget.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from paymaster import Runner, Scopes, SidecarBudget, Step, StepConfig
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


def loop_runner(iterations: int, budget: SidecarBudget) -> Runner:
    loop = Step.loop_until(
        name="bench_loop",
        loop_body_pipeline=Step("body", Trivial(), config=StepConfig(expected_cost_usd=COST)),
        exit_condition_callable=lambda out, ctx: False,
        max_loops=iterations,
    )
    return Runner(loop, budget=budget)


def start_sidecar(workdir: Path, store: str) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / "sidecar.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n[store]\n{store}\n[alerts]\notel_logs = false\n'
    )
    log = workdir / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector_processor", "--config", str(config)], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "listening on " in line:
                return proc, line.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise SystemExit(f"the sidecar did not start:\n{log.read_text()}")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    if shutil.which("redis-server") is None:
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.02)
    proc.terminate()
    return None


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(address: str, rounds: int, steps: int) -> tuple[dict[str, float], Decimal, Decimal]:
    channel = grpc.insecure_channel(address)
    admin = budget_pb2_grpc.BudgetServiceStub(channel)
    admin.CreateBudget(
        pb.CreateBudgetRequest(
            budget=pb.Budget(id="bench-team", scope=pb.SCOPE_TEAM, scope_id="bench", limit_usd="1000000",
                             period="daily", on_exceed=pb.ON_EXCEED_BLOCK)
        ),
        timeout=5,
    )  # fmt: skip
    budget = SidecarBudget(address, scopes=Scopes(team="bench"), journal_dir=None, deadline_s=5)
    runner = loop_runner(steps, budget)
    opened: list[str] = []

    def plain() -> None:
        runner.run(0)

    def inside() -> None:
        with budget.request_budget(limit_usd="1000") as request:
            opened.append(str(request.id))
            runner.run(0)

    def nested() -> None:
        with budget.request_budget(limit_usd="1000"), budget.request_budget(fraction="0.5"):
            runner.run(0)

    def open_only() -> None:
        for _ in range(steps):
            with budget.request_budget(limit_usd="1"):
                pass

    loop_runner(20, budget).run(0)  # warm up: the connection, the sidecar's statements
    inside()
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in (("plain", plain), ("request", inside), ("nested", nested), ("open", open_only)):
            best[name] = min(best.get(name, float("inf")), timed(fn))
    status = admin.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=opened[-1]), timeout=5)
    team = admin.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="bench-team"), timeout=5)
    budget.close()
    channel.close()
    return best, Decimal(status.used_usd), Decimal(team.reserved_usd)


def report(store: str, best: dict[str, float], steps: int, request_used: Decimal, held: Decimal) -> None:
    us = 1e6
    plain = best["plain"] / steps
    print(f"  {store}:")
    print(
        f"    {'no request budget:':<36}{plain * us:8.1f} us/step   (x1.00; a Reserve and a Commit per step)"
    )
    for name, words in (
        ("request", "inside a request budget"),
        ("nested", "inside a nested one (two held on)"),
    ):
        per = best[name] / steps
        print(f"    {words + ':':<36}{per * us:8.1f} us/step   (x{per / plain:.2f})")
    print(f"    {'opening a request budget:':<36}{best['open'] / steps * us:8.1f} us each (once per request)")
    print(
        f"    the last request budget holds ${request_used.normalize():f}; the team budget holds ${held.normalize():f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, steps = (3, 100) if args.quick else (7, 300)
    print(
        f"a governed step with and without a request budget, per-step reservations (best of {rounds} alternating rounds, {steps} steps each)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sqlite").mkdir()
        sidecar, address = start_sidecar(work / "sqlite", f'path = "{work / "sqlite" / "sidecar.db"}"')
        try:
            report("sqlite", *measure_and_pack(address, rounds, steps))
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=10)
        (work / "redis").mkdir()
        redis = start_redis(work / "redis")
        if redis is None:
            print("  redis: redis-server is not on the PATH; skipped")
            return
        server, url = redis
        sidecar, address = start_sidecar(
            work / "redis", f'kind = "redis"\nurl = "{url}"\nnamespace = "bench"'
        )
        try:
            report("redis", *measure_and_pack(address, rounds, steps))
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=10)
            server.terminate()
            server.wait(timeout=10)


def measure_and_pack(address: str, rounds: int, steps: int) -> tuple[dict[str, float], int, Decimal, Decimal]:
    best, used, held = measure(address, rounds, steps)
    return best, steps, used, held


if __name__ == "__main__":
    main()
