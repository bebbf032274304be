"""How much the governor costs next to the work it governs, measured against baselines in one run.

Prints, each as an absolute figure *and* a comparison measured in the same run:
  * per-iteration overhead of a 1,000-iteration governed loop (limits on, trivial agent), against
    the same agent awaited 1,000 times in a bare loop; without a telemetry provider, and with
    recording OpenTelemetry SDK tracer and meter providers (plus the cost of one bare SDK span);
  * per-branch overhead of parallel steps with 5, 50 and 100 branches, against asyncio.gather of
    the same agents;
  * ``import paymaster`` time, against a bare interpreter start.

Usage: python bench/bench_sdk.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster import Runner, Step, UsageLimits

QUICK = "--quick" in sys.argv
REPEATS = 3 if QUICK else 7
ITERATIONS = 1000


@dataclass
class Out:
    value: int
    cost_usd: str = "0.000001"
    token_counts: int = 1


class Trivial:
    async def run(self, data: Any) -> Out:
        return Out(value=(data.value if isinstance(data, Out) else data) + 1)


def best(fn: Any, repeats: int = REPEATS) -> float:
    """Fastest of several runs: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def loop_runner(**providers: Any) -> Runner:
    loop = Step.loop_until(
        name="bench_loop",
        loop_body_pipeline=Step("body", Trivial()),
        exit_condition_callable=lambda out, ctx: False,
        max_loops=ITERATIONS,
    )
    return Runner(
        loop, usage_limits=UsageLimits(total_cost_usd_limit=1000, total_tokens_limit=10**9), **providers
    )


def bare_loop() -> None:
    async def main() -> None:
        agent, data = Trivial(), 0
        for _ in range(ITERATIONS):
            data = await agent.run(data)

    asyncio.run(main())


def sdk_providers() -> tuple[dict[str, Any], InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    # The processor production uses: spans are queued on end and exported by a background thread.
    tp.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000, schedule_delay_millis=200))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {"tracer_provider": tp, "meter_provider": mp}, exporter


def bench_loop() -> None:
    base = best(bare_loop)
    plain = loop_runner()
    t_plain = best(lambda: plain.run(0))
    providers, exporter = sdk_providers()
    traced = loop_runner(**providers)

    def run_traced() -> None:
        traced.run(0)
        exporter.clear()

    t_traced = best(run_traced)
    tracer = providers["tracer_provider"].get_tracer("bench")

    def bare_spans() -> None:
        for _ in range(ITERATIONS):
            tracer.start_span("bare", attributes={"a": 1, "b": "x"}).end()
        exporter.clear()

    t_span = best(bare_spans)
    per = lambda t: (t - base) / ITERATIONS * 1e6  # noqa: E731
    print(
        f"governed loop, {ITERATIONS} iterations (baseline: the agent awaited in a bare loop, {base / ITERATIONS * 1e6:.1f} us/iter)"
    )
    print(
        f"  no provider:          {per(t_plain):7.1f} us/iteration overhead   (x{t_plain / base:.1f} the bare loop)   target <= 40"
    )
    print(
        f"  recording SDK providers:{per(t_traced):6.1f} us/iteration overhead   (x{t_traced / base:.1f} the bare loop)   target <= 180"
    )
    print(
        f"  one bare SDK span:    {t_span / ITERATIONS * 1e6:7.1f} us   -> recording overhead = {per(t_traced) / (t_span / ITERATIONS * 1e6):.1f} bare spans"
    )


def bench_parallel() -> None:
    print("parallel step, per-branch overhead (baseline: asyncio.gather of the same agents)")
    for n in (5, 50, 100):
        par = Step.parallel("fan", {f"b{i}": Step(f"b{i}", Trivial()) for i in range(n)})
        runner = Runner(par, usage_limits=UsageLimits(total_cost_usd_limit=1000))
        reps = 50 if QUICK else 200

        t_gov = best(lambda runner=runner, reps=reps: asyncio.run(_governed(runner, reps)))
        t_base = best(lambda n=n, reps=reps: asyncio.run(_gathered(n, reps)))
        per_branch = (t_gov - t_base) / reps / n * 1e6
        print(
            f"  {n:3d} branches: {per_branch:7.1f} us/branch overhead   (x{t_gov / t_base:.1f} gather)   target <= 150, flat"
        )


async def _governed(runner: Runner, reps: int) -> None:
    for _ in range(reps):
        await runner.run_async(0)


async def _gathered(n: int, reps: int) -> None:
    agents = [Trivial() for _ in range(n)]
    for _ in range(reps):
        await asyncio.gather(*(asyncio.ensure_future(a.run(0)) for a in agents))


def bench_import() -> None:
    def timed(code: str) -> float:
        samples = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    bare = timed("pass")
    full = timed("import paymaster")
    heavy = timed(
        "import paymaster, sys; assert 'grpc' not in sys.modules and 'opentelemetry.sdk' not in sys.modules"
    )
    print(f"import paymaster: {full - bare:.3f} s over a bare interpreter ({bare:.3f} s)   target < 0.5 s")
    print(
        f"  grpc and the OpenTelemetry SDK are not imported by 'import paymaster' (checked, {heavy - bare:.3f} s)"
    )


if __name__ == "__main__":
    bench_loop()
    bench_parallel()
    bench_import()
