"""Run a governed pipeline against a team budget held by the Paymaster sidecar, and watch it deny.

    paymaster sidecar &                      # the sidecar, on 127.0.0.1:7310
    python examples/sidecar_demo.py          # --target HOST:PORT --team NAME --limit USD

The script declares a daily block budget for the team (unless one exists), then runs a drafting
loop of fake agents — no model is called, every call reports what it cost — under that budget. Each
call is reserved in the sidecar before it runs and committed after; the call that would take the
team past its limit is denied before its agent runs, and the script prints what every step cost, the
sidecar's reason and its figures for the budget. Run it again and the sidecar denies at once: the
day's budget is spent (``paymaster budgets update <team>-daily --limit ...`` to raise it).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc

from paymaster import BudgetExceededError, Runner, Scopes, SidecarBudget, Step, StepConfig
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc


@dataclass
class Draft:
    """What a fake agent returns: a text and what producing it cost (explicit cost reporting)."""

    text: str
    cost_usd: Decimal
    token_counts: int


class Drafter:
    """Writes one more paragraph per call; every call costs $0.12."""

    async def run(self, data: Any) -> Draft:
        text = data.text if isinstance(data, Draft) else str(data)
        return Draft(text=text + " ...and another paragraph.", cost_usd=Decimal("0.12"), token_counts=900)


def ensure_budget(target: str, team: str, limit: str) -> str:
    """A daily block budget for the team, created through the budget API if it does not exist."""
    budget_id = f"{team}-daily"
    with grpc.insecure_channel(target) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        budget = pb.Budget(
            id=budget_id,
            name=budget_id,
            scope=pb.SCOPE_TEAM,
            scope_id=team,
            limit_usd=limit,
            period="daily",
            on_exceed=pb.ON_EXCEED_BLOCK,
        )
        try:
            stub.CreateBudget(pb.CreateBudgetRequest(budget=budget), timeout=5)
            print(f"created budget {budget_id!r}: ${limit} a day for team {team!r}, on_exceed=block")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise SystemExit(
                    f"sidecar_demo: cannot create the budget at {target}: {exc.details()}"
                ) from None
            print(f"budget {budget_id!r} exists already; using it")
    return budget_id


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=os.environ.get("PAYMASTER_SIDECAR", "127.0.0.1:7310"))
    parser.add_argument("--team", default="demo")
    parser.add_argument("--limit", default="0.50", help="the team's daily limit in USD (new budgets only)")
    args = parser.parse_args()

    ensure_budget(args.target, args.team, args.limit)
    refine = Step.loop_until(
        name="refine",
        loop_body_pipeline=Step("draft", Drafter(), config=StepConfig(expected_cost_usd=Decimal("0.12"))),
        exit_condition_callable=lambda out, ctx: len(out.text) > 10_000,
        max_loops=20,
    )
    with SidecarBudget(args.target, scopes=Scopes(team=args.team), journal_dir=None) as budget:
        denied: BudgetExceededError | None = None
        try:
            result = Runner(refine, budget=budget).run("A proposal.")
        except BudgetExceededError as exc:
            assert exc.result is not None
            result, denied = exc.result, exc

    print(f"\n{'step':<10} {'decision':<10} {'cost':>8}  reservation")
    for step in result.walk():
        if step.kind != "agent":
            continue
        outcome = step.budget
        decision = outcome.decision if outcome else "-"
        cost = "denied" if step.denied else f"${step.cost_usd}"
        reservation = outcome.reservation_id if outcome is not None and outcome.reservation_id else ""
        print(f"{step.name:<10} {decision:<10} {cost:>8}  {reservation}")
    print(f"\ntotal spent: ${result.total_cost_usd:.2f}")
    if denied is None:
        print("the loop finished within the budget")
        return 0
    print(f"\nDENIED by the sidecar before the agent ran ({denied.code}):\n  {denied}")
    for line in denied.budget_info:
        print(
            f"  budget {line['budget_id']!r}: used ${line['used_usd']:.2f} of ${line['limit_usd']:.2f} "
            f"({line['percentage']}%), on_exceed={line['action']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
