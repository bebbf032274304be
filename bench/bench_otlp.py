"""OTLP spans per second ingested, priced and charged by one sidecar process, as ratios of parse-only
throughput on the same payload, measured in the same run.

The payload is one export of 512 GenAI spans (``--shape``): ``semconv`` is what the OpenTelemetry
GenAI instrumentations send (current attribute names, no message content); ``openllmetry`` is what
OpenLLMetry sends by default (deprecated names, prompts and completions recorded as attributes).
Both carry a resource naming the service and namespace, spans of two models and 16 end users (so an
export is charged as up to 32 groups), and every export has fresh span ids, so each one is charged.

Measured, in this order:

1. In process, on one core: parsing the export with opentelemetry-proto (the least any receiver does),
   and the receiver's pricing + attribution step (reading usage, pricing by model, resolving scopes,
   planning the ledger batch) on its own, on exports parsed beforehand and given their bytes as the
   receiver gives them; its throughput as a ratio of parse-only (target >= 0.40). Then both in turn,
   as the receiver runs them.
2. Through gRPC, from a client process with ``--clients`` exports in flight: a parse-only OTLP server
   (it parses each export with opentelemetry-proto and answers), the sidecar over a store that
   answers every batch as charged without writing it (all of the receiver's work but the store's), and
   the real sidecar (SQLite store in WAL mode, two budgets matching every export, forwarding off)
   acknowledging each export only once it is charged. Rounds alternate and each keeps its best.
   Target: >= 100,000 spans/s.

Afterwards the sidecar's ledger is read back through its budget API: it must hold exactly the input
tokens of every span acknowledged, or the run is reported as failed.
Usage: python bench/bench_otlp.py [--quick] [--seconds S] [--rounds N] [--clients C] [--shape S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from bench_sidecar import Server

SPANS = 512
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MODELS = (("openai", "gpt-4o", "gpt-4o-2024-08-06"), ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"))
USERS = 16
SIDECAR_TOML = """
[alerts]
otel_logs = false
[[budgets]]
id = "support-daily"
scope = "team"
scope_id = "support"
limit_usd = "1000000000"
period = "daily"
on_exceed = "block"
[[budgets]]
id = "per-user"
scope = "user"
limit_usd = "1000000"
period = "rolling_24h"
on_exceed = "warn"
alert_thresholds = [80, 100]
"""
"""The benchmark's sidecar besides its listeners and store: a team block budget every export matches
and a wildcard per-user warn budget with thresholds; alerts are not logged."""


# -- the payload --------------------------------------------------------------------------------------
def kv(key: str, value: Any) -> Any:
    """An OTLP attribute."""
    from opentelemetry.proto.common.v1 import common_pb2

    out = common_pb2.KeyValue(key=key)
    if isinstance(value, int):
        out.value.int_value = value
    elif isinstance(value, float):
        out.value.double_value = value
    else:
        out.value.string_value = value
    return out


def build_payload(shape: str) -> tuple[bytes, list[int], int]:
    """One export, the offsets of its spans' trace ids (rewritten per export), and its input tokens."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        kv(k, v)
        for k, v in {
            "service.name": "support-bot", "service.version": "2.4.1", "k8s.namespace.name": "support",
            "k8s.pod.name": "support-bot-7d9f8-x2x5k", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.45.2", "host.name": "node-17",
        }.items()
    )  # fmt: skip
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = (
        "opentelemetry.instrumentation.openai_v2"
        if shape == "semconv"
        else "opentelemetry.instrumentation.openai.v1"
    )
    end = time.time_ns()
    tokens = 0
    for i in range(SPANS):
        provider, model, served = MODELS[i % len(MODELS)]
        tin, tout = 400 + (i * 37) % 1600, 20 + (i * 53) % 480
        tokens += tin
        span = scope_spans.spans.add()
        span.trace_id, span.span_id, span.parent_span_id = os.urandom(16), os.urandom(8), os.urandom(8)
        span.name = f"chat {model}"
        span.kind = 3
        span.start_time_unix_nano, span.end_time_unix_nano = end - 900_000_000, end
        span.status.code = 1
        span.attributes.extend(
            kv(k, v) for k, v in _attributes(shape, provider, model, served, tin, tout, i).items()
        )
    payload = request.SerializeToString()
    offsets = [payload.index(s.trace_id) for s in scope_spans.spans]
    return payload, offsets, tokens


def _attributes(
    shape: str, provider: str, model: str, served: str, tin: int, tout: int, i: int
) -> dict[str, Any]:
    user = f"user-{i % USERS:02d}"
    if shape == "semconv":
        return {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
            "gen_ai.request.temperature": 0.2, "gen_ai.request.max_tokens": 1024,
            "gen_ai.response.model": served, "gen_ai.response.id": f"chatcmpl-{i:08x}",
            "gen_ai.usage.input_tokens": tin, "gen_ai.usage.output_tokens": tout,
            "server.address": "api.openai.com", "server.port": 443, "enduser.id": user,
        }  # fmt: skip
    return {
        "llm.request.type": "chat", "gen_ai.system": provider, "gen_ai.request.model": model,
        "gen_ai.request.temperature": 0.2, "gen_ai.request.max_tokens": 1024, "llm.is_streaming": 0,
        "gen_ai.openai.api_base": "https://api.openai.com/v1/", "gen_ai.response.model": served,
        "gen_ai.response.id": f"chatcmpl-{i:08x}", "gen_ai.usage.prompt_tokens": tin,
        "gen_ai.usage.completion_tokens": tout, "llm.usage.total_tokens": tin + tout,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "You are a support assistant for a hardware store. Answer briefly and politely.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": f"My order {i:06d} arrived with a cracked part; can I get a replacement shipped?",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.completion.0.content": "I'm sorry about that. I've opened a replacement request; you will receive "
        "a shipping confirmation by email within one business day.",
        "enduser.id": user,
    }  # fmt: skip


class Exports:
    """Fresh copies of the payload: each export's trace ids carry its own sequence number."""

    def __init__(self, payload: bytes, offsets: list[int], salt: int) -> None:
        self._payload, self._offsets, self._salt = payload, offsets, salt
        self.sent = 0

    def next(self) -> bytes:
        self.sent += 1
        data = bytearray(self._payload)
        stamp = (self._salt << 32 | self.sent).to_bytes(8, "big")
        for at in self._offsets:
            data[at : at + 8] = stamp
        return bytes(data)


# -- in process -----------------------------------------------------------------------------------------
def in_process(payload: bytes, rounds: int) -> tuple[float, float, float]:
    """Spans/s of parsing alone, of the pricing + attribution step alone, and of both."""
    import logging

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from collector_processor.otlp._view import TraceRequestView
    from collector_processor.otlp.attribution import Attributor
    from collector_processor.otlp.config import AttributionSection
    from collector_processor.otlp.pricing import SpanPricer
    from collector_processor.otlp.spend_source import SpendSource
    from collector_processor.otlp.traces import TraceProcessor, WindowPolicy
    from paymaster.config import PaymasterConfig
    from paymaster.pricing import CostCalculator

    logging.disable(logging.WARNING)
    processor = TraceProcessor(
        pricer=SpanPricer(CostCalculator(PaymasterConfig())), attributor=Attributor(AttributionSection()),
        spend_source=SpendSource("auto", hold_ms=0), max_tokens=100_000_000,
    )  # fmt: skip
    now = time.time_ns() // 1_000_000
    window = WindowPolicy(oldest_ms=now - 3_600_000, newest_ms=now + 3_600_000)
    parse = trace_service_pb2.ExportTraceServiceRequest.FromString
    view = TraceRequestView.FromString
    process = processor.process
    process(
        view(payload), window, enrich=False, payload=payload
    )  # warm the caches, as a running receiver has them

    def best(fn: Any) -> float:
        times = []
        for _ in range(rounds * 20):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    views = [view(payload) for _ in range(rounds * 20)]
    parse_s = best(lambda: parse(payload))
    step_s = best(lambda: process(views.pop(), window, enrich=False, payload=payload))
    both_s = best(lambda: process(view(payload), window, enrich=False, payload=payload))
    return SPANS / parse_s, SPANS / step_s, SPANS / both_s


# -- servers ----------------------------------------------------------------------------------------------
def _serve_parse_only(ready: Any, stop: Any) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    parse = trace_service_pb2.ExportTraceServiceRequest.FromString
    answer: bytes = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    async def export(request: bytes, context: Any) -> bytes:
        parse(request)
        return answer

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},
        )
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)]
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.put(port)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await server.stop(0)

    asyncio.run(main())


class _Forgetful:
    """A store that answers every usage batch as charged without writing anything; all else is the real
    store. Under the sidecar it measures everything but the store's work."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def record_usage_batch(self, batch: Any, *, now_ms: int) -> Any:
        from collector_processor.domain.types import UsageBatchOutcome

        items, micros = [0] * len(batch.groups), [0] * len(batch.groups)
        for item in batch.items:
            items[item[2]] += 1
            micros[item[2]] += item[3]
        return UsageBatchOutcome(charged_items=tuple(items), charged_micros=tuple(micros), duplicates=0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _serve_no_store(ready: Any, stop: Any, directory: str) -> None:
    _serve_sidecar(ready, stop, directory, forget=True)


def _serve_sidecar(ready: Any, stop: Any, directory: str, *, forget: bool = False) -> None:
    import logging

    from collector_processor.api.server import create_sidecar
    from collector_processor.config import parse_config

    logging.disable(logging.WARNING)
    config = parse_config(
        f"""
        [server]
        listen = "127.0.0.1:0"
        [store]
        path = "{Path(directory) / "bench.db"}"
        [receivers.otlp]
        enabled = true
        grpc_listen = "127.0.0.1:0"
        http_listen = ""
        """
        + SIDECAR_TOML,
        source="bench",
    )
    store = None
    if forget:
        from collector_processor.store.sqlite.store import SqliteStore

        store = _Forgetful(SqliteStore(Path(directory) / "bench.db"))
    sidecar = create_sidecar(config, store=store).start()
    ready.put((sidecar.components[0].grpc.port, sidecar.port))  # type: ignore[attr-defined]
    stop.wait()
    sidecar.stop(0)


async def drive(address: str, exports: Exports, clients: int, seconds: float, warmup: float) -> float:
    """Acknowledged spans per second with ``clients`` exports in flight."""
    done = 0
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        export = channel.unary_unary(EXPORT)
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                body = exports.next()
                await export(body, timeout=60)
                if time.perf_counter() >= measure_from:
                    done += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    return done * SPANS / seconds


def ledger_input_tokens(budget_address: str) -> int:
    from paymaster.v1 import budget_pb2, budget_pb2_grpc

    with grpc.insecure_channel(budget_address) as channel:
        report = budget_pb2_grpc.BudgetServiceStub(channel).GetUsage(budget_pb2.GetUsageRequest())
    return int(report.total.input_tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement and one round")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per gRPC measurement (default 4)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="exports in flight (default 8)")
    parser.add_argument("--shape", choices=("semconv", "openllmetry", "both"), default="both")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 3)
    shapes = ("semconv", "openllmetry") if args.shape == "both" else (args.shape,)
    failed = False
    for shape in shapes:
        payload, offsets, tokens = build_payload(shape)
        parse_rate, step_rate, both_rate = in_process(payload, rounds)
        with (
            tempfile.TemporaryDirectory() as directory,
            tempfile.TemporaryDirectory() as no_store_directory,
            Server(_serve_parse_only) as parse_port,
            Server(_serve_no_store, no_store_directory) as (no_store_port, _),
            Server(_serve_sidecar, directory) as (otlp_port, budget_port),
        ):
            parse_runs: list[float] = []
            no_store_runs: list[float] = []
            sidecar_runs: list[float] = []
            sent = 0
            for r in range(rounds):
                for port, runs, salt in (
                    (parse_port, parse_runs, 3 * r),
                    (no_store_port, no_store_runs, 3 * r + 1),
                ):
                    exports = Exports(payload, offsets, salt)
                    runs.append(asyncio.run(drive(f"127.0.0.1:{port}", exports, args.clients, seconds, 0.5)))
                exports = Exports(payload, offsets, 3 * r + 2)
                sidecar_runs.append(
                    asyncio.run(drive(f"127.0.0.1:{otlp_port}", exports, args.clients, seconds, 0.5))
                )
                sent += exports.sent
            charged = ledger_input_tokens(f"127.0.0.1:{budget_port}")
        grpc_parse, no_store, sidecar = max(parse_runs), max(no_store_runs), max(sidecar_runs)
        exact = charged == sent * tokens
        failed |= not exact
        print(
            f"== {shape}: {SPANS} spans per export, {len(payload):,} bytes; best of {rounds} round(s), same run"
        )
        print("   in process, one core:")
        print(f"     parse only (opentelemetry-proto)      {parse_rate:>10,.0f} spans/s")
        print(
            f"     pricing + attribution step alone      {step_rate:>10,.0f} spans/s   ratio {step_rate / parse_rate:.2f}  (target >= 0.40)"
        )
        print(
            f"     parse + pricing + attribution         {both_rate:>10,.0f} spans/s   ratio {both_rate / parse_rate:.2f}"
        )
        print(f"   through gRPC, {args.clients} exports in flight, {seconds:g} s per round:")
        print(f"     parse-only OTLP server                {grpc_parse:>10,.0f} spans/s")
        print(
            f"     sidecar with no store work            {no_store:>10,.0f} spans/s   ratio {no_store / grpc_parse:.2f}"
        )
        print(
            f"     sidecar: ingested, priced, charged    {sidecar:>10,.0f} spans/s   ratio {sidecar / grpc_parse:.2f}  (target >= 100,000 spans/s)"
        )
        print(f"   ledger check: {charged:,} input tokens charged for {sent:,} exports acknowledged: "
              + ("exact" if exact else f"MISMATCH (expected {sent * tokens:,})"))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
