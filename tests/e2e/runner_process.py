"""A governed loop in a process of its own, for the end-to-end tests.

    python -m tests.e2e.runner_process TARGET TEAM [--cost 0.01] [--steps 500] [--lease SLICE]
                                       [--die-after N] [--ttl 1] [--delay 0.001] [--barrier FILE]

Runs a loop of a fake agent costing ``--cost`` (and declaring it as its estimate) against the team's
budget in the sidecar until the sidecar denies it, then prints one JSON line: the total it spent, the
steps that ran and the error code. ``--die-after N`` SIGKILLs the process while its N-th call runs.
``--barrier FILE`` prints ``{"ready": true}`` and waits for FILE to exist before it starts, so that
several processes start together; each call takes ``--delay`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from paymaster import LeasePolicy, Runner, Scopes, SidecarBudget, Step, StepConfig, UsageLimitExceededError


class Out:
    def __init__(self, cost: str) -> None:
        self.cost_usd = cost
        self.token_counts = 10


class Agent:
    def __init__(self, cost: str, die_after: int | None, delay: float) -> None:
        self.cost, self.die_after, self.delay, self.calls = cost, die_after, delay, 0

    async def run(self, data: Any) -> Out:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.die_after is not None and self.calls >= self.die_after:
            print(json.dumps({"dying": self.calls}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return Out(self.cost)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("team")
    parser.add_argument("--cost", default="0.01")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lease")
    parser.add_argument("--ttl", type=float, default=300)
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--barrier", type=Path)
    args = parser.parse_args()
    lease = LeasePolicy(slice_usd=args.lease, ttl_s=args.ttl) if args.lease else None
    budget = SidecarBudget(
        args.target, scopes=Scopes(team=args.team), lease=lease, journal_dir=None, deadline_s=5
    )
    loop = Step.loop_until(
        name="loop",
        loop_body_pipeline=Step(
            "call",
            Agent(args.cost, args.die_after, args.delay),
            config=StepConfig(expected_cost_usd=args.cost),
        ),
        exit_condition_callable=lambda out, ctx: False,
        max_loops=args.steps,
    )
    if args.barrier is not None:
        print(json.dumps({"ready": True}), flush=True)
        while not args.barrier.exists():
            time.sleep(0.005)
    code = None
    try:
        result = Runner(loop, budget=budget).run(0)
    except UsageLimitExceededError as exc:
        assert exc.result is not None
        result, code = exc.result, exc.code
    ran = sum(1 for s in result.walk() if s.kind == "agent" and s.success)
    print(json.dumps({"total": str(result.total_cost_usd), "ran": ran, "code": code}), flush=True)
    budget.close()


if __name__ == "__main__":
    main()
