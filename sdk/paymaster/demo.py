"""``paymaster demo``: a governed research pipeline with fake agents, priced and halted by its budget.

The agents make no network calls: they answer like real ones (token usage shaped like an OpenAI or
Anthropic response, or an explicit cost report) with counts that follow from their input, so every
run prints the same figures. The pipeline fans out to three research branches, then drafts and
reviews in a loop until the reviewer approves. It runs twice: once with room to finish, once under
a budget too small for it, which halts it — the second table and the history show what ran, what
was denied before it ran and why, and what every step really cost, with the source of each price
(a step that ran in the first run reserves what it cost there: ``learned``). Then it
starts the budget sidecar in-process, on its embedded SQLite store in a temporary directory (no
server to install), declares a team budget there, and runs the pipeline twice more against it: the
first run fits, the second is denied by the team's budget before the call that would pass it, and
the sidecar's own status and usage report show where the money went.

Prices come from a small built-in ``paymaster.toml`` (``--config`` uses yours instead); models it
does not price fall back to the genai-prices library, and a model nobody can price is shown as
``unknown`` rather than free.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from paymaster.config import PaymasterConfig, load_config, parse_config
from paymaster.exceptions import PaymasterError, UsageLimitExceededError
from paymaster.limits import UsageLimits
from paymaster.money import format_usd
from paymaster.pricing import CostCalculator
from paymaster.result import PipelineResult, StepResult
from paymaster.runner import Runner
from paymaster.step import Pipeline, Step

__all__ = ["build_pipeline", "main"]

DEMO_CONFIG = """
[cost]
strict = false

[cost.providers.openai."gpt-4o-mini"]
prompt_tokens_per_1k = 0.00015
completion_tokens_per_1k = 0.0006

[cost.providers.anthropic."claude-sonnet-4-5"]
prompt_tokens_per_1k = 0.003
completion_tokens_per_1k = 0.015
cache_read_tokens_per_1k = 0.0003

[cost.estimators.anthropic."claude-sonnet-4-5"]
expected_cost_usd = 0.012
expected_tokens = 2000
"""
"""Prices the demo runs on: gpt-4o-mini and claude-sonnet-4-5 configured, gpt-4o left to the library."""

ROOMY = UsageLimits(total_cost_usd_limit=Decimal("1.00"), total_tokens_limit=200_000)
TIGHT = UsageLimits(total_cost_usd_limit=Decimal("0.03"), total_tokens_limit=200_000)


# ----------------------------------------------------------------------------------- fake agents
@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Usage as a chat-completions response reports it."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """What a chat agent returns: text, an approval flag for the reviewer, and its usage."""

    text: str
    usage: TokenUsage
    approved: bool = False


@dataclass(frozen=True, slots=True)
class ToolReply:
    """A paid tool (a search API) that reports its cost explicitly."""

    text: str
    cost_usd: Decimal
    token_counts: int = 0


def _tokens(data: Any) -> int:
    return max(1, len(str(data)) // 4)


@dataclass
class ChatAgent:
    """Answers with ``output_tokens`` tokens after reading its input; no network, fixed figures."""

    model_id: str
    output_tokens: int
    label: str
    cached_share: float = 0.0
    calls: int = field(default=0, init=False)

    async def run(self, data: Any) -> Reply:
        self.calls += 1
        await asyncio.sleep(0.005)
        prompt = _tokens(data) + 400  # the system prompt and instructions
        usage = TokenUsage(prompt, self.output_tokens, int(prompt * self.cached_share))
        return Reply(f"{self.label} #{self.calls} of {str(data)[:40]!r}", usage)


@dataclass
class Reviewer(ChatAgent):
    """Approves the draft on its ``approve_on``-th review."""

    approve_on: int = 3

    async def run(self, data: Any) -> Reply:
        reply = await super().run(data)
        return Reply(reply.text, reply.usage, approved=self.calls >= self.approve_on)


@dataclass
class SearchTool:
    """A search API billed per query, reporting its cost itself."""

    price: Decimal = Decimal("0.005")

    async def run(self, data: Any) -> ToolReply:
        await asyncio.sleep(0.01)
        return ToolReply(f"results for {str(data)[:30]!r}", self.price)


def build_pipeline() -> Pipeline:
    """Research in parallel (search, a library-priced and an unpriced model), then draft and review."""
    research = Step.parallel(
        "research",
        {
            "web": Step(name="web_search", agent=SearchTool()),
            "papers": Step(name="papers", agent=ChatAgent("openai:gpt-4o", 900, "paper notes")),
            "internal": Step(name="wiki", agent=ChatAgent("internal:wiki-ranker", 300, "wiki hits")),
        },
    )
    merge = Step.adapter("merge", lambda found: " | ".join(str(v.text) for v in found.values()))
    body = Step(name="draft", agent=ChatAgent("openai:gpt-4o-mini", 1200, "draft")) >> Step(
        name="review",
        agent=Reviewer("anthropic:claude-sonnet-4-5", 500, "review", cached_share=0.5),
    )
    refine = Step.loop_until(
        name="refine",
        loop_body_pipeline=body,
        exit_condition_callable=lambda out, ctx: out.approved,
        max_loops=6,
        iteration_input_mapper=lambda out, ctx, i: f"revise after review {i}: {out.text}",
    )
    return Pipeline.from_step(research) >> merge >> refine


# ----------------------------------------------------------------------------------- reporting
def _agent_rows(result: PipelineResult) -> list[list[str]]:
    rows = []
    for path, step in result.agent_calls():
        model = f"{step.provider}:{step.model}" if step.model else "-"
        if step.denied:
            outcome = f"denied ({step.denial_code})"
        elif step.cancelled:
            outcome = "cancelled"
        else:
            outcome = "ok" if step.success else "halted"
        estimate = step.estimate.cost_usd if step.estimate is not None else None
        rows.append(
            [
                path,
                model,
                step.cost_source if step.attempts else "-",
                f"{format_usd(estimate, places=6)} {step.estimate_strategy or ''}".strip(),
                f"{step.token_counts:,}",
                format_usd(step.cost_usd, places=6),
                outcome,
            ]
        )
    return rows


def cost_table(result: PipelineResult) -> str:
    """One line per agent call: model, price source, estimate, tokens, cost, outcome; then totals."""
    from paymaster.cli import table

    headers = ["step", "model", "cost source", "estimate (strategy)", "tokens", "cost", "outcome"]
    body = table(headers, _agent_rows(result))
    total = f"total: {format_usd(result.total_cost_usd, places=6)}, {result.total_tokens:,} tokens"
    if result.unpriced_steps:
        total += f", {result.unpriced_steps} call(s) of unknown cost not included"
    return f"{body}\n{total}"


def history(steps: Sequence[StepResult], depth: int = 0) -> list[str]:
    """The nested step history, one indented line per step."""
    lines = []
    for s in steps:
        state = "ok" if s.success else ("denied" if s.denied else "cancelled" if s.cancelled else "stopped")
        line = f"{'  ' * depth}{s.name} [{s.kind}] {state}, {format_usd(s.cost_usd, places=6)}"
        if s.feedback and not s.success:
            line += f" — {s.feedback}"
        lines.append(line)
        lines.extend(history(s.step_history, depth + 1))
    return lines


# ----------------------------------------------------------------------------------- running
def _runner(
    limits: UsageLimits, config: PaymasterConfig, providers: tuple[Any, Any], *, budget: Any = None
) -> Runner:
    return Runner(
        build_pipeline(),
        usage_limits=limits,
        cost_calculator=CostCalculator(config),  # prices the calls and bounds the estimates
        tracer_provider=providers[0],
        meter_provider=providers[1],
        name="research-assistant",
        budget=budget,
    )


def _telemetry() -> tuple[Any, Any, Any, Any]:
    """In-memory OpenTelemetry providers, when the SDK is installed; else no-op ones."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return None, None, None, None
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return tracer_provider, MeterProvider(metric_readers=[reader]), spans, reader


def _telemetry_summary(spans: Any, reader: Any) -> list[str]:
    if spans is None:
        return ["(install opentelemetry-sdk to see the spans and counters of these runs)"]
    names: dict[str, int] = {}
    for span in spans.get_finished_spans():
        key = span.name.split(" ")[0]
        names[key] = names.get(key, 0) + 1
    lines = ["spans: " + ", ".join(f"{n} x{c}" for n, c in sorted(names.items()))]
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                total = sum(p.value for p in metric.data.data_points)
                lines.append(f"counter {metric.name}: {total:g}")
    return lines


SIDECAR_CONFIG = """
[server]
listen = "127.0.0.1:0"
grace_seconds = 0
[store]
path = "{db}"
[alerts]
otel_logs = false

[[budgets]]
id = "research-daily"
name = "Research team, daily"
scope = "team"
scope_id = "research"
limit_usd = "0.06"
period = "daily"
on_exceed = "block"
alert_thresholds = [50, 100]
"""
"""The demo's sidecar: one block budget of $0.06 a day for the research team."""


def run_with_sidecar(config: PaymasterConfig, providers: tuple[Any, Any]) -> None:
    """Start a sidecar on a temporary SQLite store and run the pipeline twice under its team budget."""
    import tempfile
    from pathlib import Path

    from collector_processor.api.server import create_sidecar
    from collector_processor.config import parse_config as parse_sidecar_config
    from paymaster.budget import SidecarBudget
    from paymaster.cli import main as cli
    from paymaster.exceptions import BudgetExceededError
    from paymaster.scopes import Scopes

    with tempfile.TemporaryDirectory(prefix="paymaster-demo-") as tmp:
        db = Path(tmp) / "sidecar.db"
        sidecar_config = parse_sidecar_config(SIDECAR_CONFIG.format(db=db), source="demo sidecar.toml")
        sidecar = create_sidecar(sidecar_config).start()
        try:
            print(f"Runs 3 and 4: against the sidecar at {sidecar.address} (store: sqlite, embedded),")
            print("which holds a block budget of $0.06 a day for team 'research'")
            scopes = Scopes(team="research", user="ada")
            with SidecarBudget(sidecar.address, scopes=scopes, journal_dir=None, deadline_s=5) as budget:
                for run in (3, 4):
                    runner = _runner(ROOMY, config, providers, budget=budget)
                    try:
                        result = runner.run("How should platform teams cap LLM spend per tenant?")
                        print(f"\nRun {run}:")
                        print(cost_table(result))
                    except BudgetExceededError as exc:
                        assert exc.result is not None
                        print(f"\nRun {run}:")
                        print(cost_table(exc.result))
                        print(f"\nThe sidecar denied the run: {exc}")
            print("\nThe sidecar's view (paymaster budgets status research-daily):")
            cli(["--target", sidecar.address, "budgets", "status", "research-daily"])
            print("\nSpend recorded by the sidecar (paymaster usage --by team,model):")
            cli(["--target", sidecar.address, "usage", "--by", "team,model"])
        finally:
            sidecar.stop(0)


def run_demo(
    *, tight: UsageLimits = TIGHT, config: PaymasterConfig | None = None, sidecar: bool = True
) -> int:
    """Run the pipeline with room to finish, then under ``tight``; print both tables and the halt."""
    if config is None:
        # Built in: no file to name in messages, which point to the paymaster.toml that --config reads.
        config = dataclasses.replace(parse_config(DEMO_CONFIG, path="paymaster.toml"), path=None)
        print(
            "Prices: built in (gpt-4o is left to the genai-prices library on purpose); --config FILE uses yours."
        )
    tracer_provider, meter_provider, spans, reader = _telemetry()
    providers = (tracer_provider, meter_provider)
    topic = "How should platform teams cap LLM spend per tenant?"

    print(
        f"Run 1: research, then draft and review until approved; limit {format_usd(ROOMY.total_cost_usd_limit)}"
    )
    finished = _runner(ROOMY, config, providers).run(topic)
    print(cost_table(finished), end="\n\n")

    print(f"Run 2: the same pipeline under a limit of {format_usd(tight.total_cost_usd_limit)}")
    try:
        halted = _runner(tight, config, providers).run(topic)
        print(cost_table(halted))
        print("The run finished within its limit.")
    except UsageLimitExceededError as exc:
        assert exc.result is not None
        print(cost_table(exc.result))
        print(f"\nThe run halted at {exc.result.halted_at}: {exc}")
        print("History of the halted run:")
        print("\n".join("  " + line for line in history(exc.result.step_history)))
    print()
    if sidecar:
        try:
            import grpc  # noqa: F401  (only to tell whether the sidecar can run here)
        except ImportError:
            print("(install paymaster[sidecar] to run the pipeline against the budget sidecar)\n")
        else:
            run_with_sidecar(config, providers)
            print()
    print("\n".join(_telemetry_summary(spans, reader)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paymaster demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", default="0.03", help="cost limit of the second run, USD (default 0.03)")
    parser.add_argument("--config", help="price the agents from this paymaster.toml instead")
    parser.add_argument(
        "--no-sidecar", action="store_true", help="skip the runs against the embedded budget sidecar"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        tight = UsageLimits(total_cost_usd_limit=args.limit, total_tokens_limit=200_000)
        config = load_config(args.config) if args.config else None
        return run_demo(tight=tight, config=config, sidecar=not args.no_sidecar)
    except PaymasterError as exc:
        print(f"paymaster demo: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
