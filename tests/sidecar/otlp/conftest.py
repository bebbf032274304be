"""Fixtures for the OTLP receiver tests: a real sidecar with OTLP on free loopback ports, a real
downstream OTLP/gRPC receiver that records what is forwarded, and the OpenTelemetry SDK's own
exporters pointed at the sidecar.

The sidecar runs on the system clock here: the SDK stamps spans with the real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from collector_processor.api.server import Sidecar, create_sidecar
from collector_processor.config import parse_config
from collector_processor.domain.clock import Clock
from paymaster.v1 import budget_pb2_grpc

PRICES = """
[cost.providers.openai."gpt-4o"]
prompt_tokens_per_1k = 0.005
completion_tokens_per_1k = 0.015
cache_read_tokens_per_1k = 0.0025

[cost.providers.anthropic."claude-sonnet-4-5"]
prompt_tokens_per_1k = 0.003
completion_tokens_per_1k = 0.015
cache_read_tokens_per_1k = 0.0003
cache_write_tokens_per_1k = 0.00375
"""


@dataclass
class Downstream:
    """A collector stand-in: a real OTLP/gRPC server keeping every export it is sent."""

    port: int
    server: grpc.Server
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    failures: list[grpc.StatusCode] = field(default_factory=list)
    """Codes to answer the next exports with, first to last, before accepting again."""
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[Any]:
        return [s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(predicate, timeout), "the downstream receiver never got it"


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream

    def Export(self, request: Any, context: Any) -> Any:
        down = self.downstream
        with down.arrived:
            if down.failures:
                context.abort(down.failures.pop(0), "downstream says no")
            down.traces.append(request)
            down.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream

    def Export(self, request: Any, context: Any) -> Any:
        down = self.downstream
        with down.arrived:
            down.metrics.append(request)
            down.arrived.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()


def start_downstream() -> Downstream:
    """A started collector stand-in on a free loopback port; ``server.stop(0)`` ends it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")
    down = Downstream(port=port, server=server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(down), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(down), server)
    server.start()
    return down


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    down = start_downstream()
    yield down
    down.server.stop(0)


@dataclass
class OtlpSidecar:
    sidecar: Sidecar
    channel: grpc.Channel
    budgets: budget_pb2_grpc.BudgetServiceStub

    @property
    def receiver(self) -> Any:
        return self.sidecar.components[0]

    @property
    def grpc_address(self) -> str:
        return str(self.receiver.grpc.address)

    @property
    def http_url(self) -> str:
        return f"http://{self.receiver.http.address}"

    def counter(self, name: str, **labels: str) -> float:
        """The sidecar's self-metric ``name`` summed over the series matching ``labels``."""
        series = self.sidecar.metrics.snapshot().counters.get(name, {})
        wanted = set(labels.items())
        return sum(v for key, v in series.items() if wanted <= set(key))

    def raw_export(self, signal: str = "traces") -> Any:
        service = "trace.v1.TraceService" if signal == "traces" else "metrics.v1.MetricsService"
        return self.channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export")


@pytest.fixture
def otlp_sidecar(tmp_path: Path) -> Iterator[Callable[..., OtlpSidecar]]:
    """Start sidecars with the OTLP receiver on; ``otlp`` adds keys under [receivers.otlp]."""
    started: list[OtlpSidecar] = []
    prices = tmp_path / "paymaster.toml"
    prices.write_text(PRICES)

    def start(
        otlp: str = "", extra: str = "", db: str = "sidecar.db", store: str = "", clock: Clock | None = None
    ) -> OtlpSidecar:
        config = parse_config(
            f"""
            [server]
            listen = "127.0.0.1:0"
            grace_seconds = 0
            [store]
            path = "{tmp_path / db}"
            {store}
            [ledger]
            sweep_interval_seconds = 0.05
            [alerts]
            otel_logs = false
            [receivers.otlp]
            enabled = true
            grpc_listen = "127.0.0.1:0"
            http_listen = "127.0.0.1:0"
            {otlp}
            [receivers.otlp.pricing]
            config = "{prices}"
            {extra}
            """,
            source=str(tmp_path / "sidecar.toml"),
        )
        sidecar = create_sidecar(config, clock=clock).start()
        channel = grpc.insecure_channel(sidecar.components[0].grpc.address)
        budget_channel = grpc.insecure_channel(sidecar.address)
        running = OtlpSidecar(
            sidecar=sidecar, channel=channel, budgets=budget_pb2_grpc.BudgetServiceStub(budget_channel)
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.sidecar.stop(0)


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for something another thread finishes after the client has its answer (not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def tracer_provider(exporter: Any, **resource: Any) -> TracerProvider:
    """An SDK tracer provider exporting every span as it ends, with these resource attributes."""
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider
