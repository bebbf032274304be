"""A real sidecar with its OTLP receiver on, in this process (or a supervisor here and worker processes
serving both ports), on fixed free loopback ports and a store that outlives it (a SQLite file, or a namespace on a real redis-server): ``stop()`` and ``start()``
again are an outage and a restart on the same addresses and data. With it, the SDK's real OTLP
exporter and a span processor that exports each governed step's spans the moment the step ends, while
the sidecar is up (spans that end during an outage are sent when it is back, as an exporter's retry
would)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from collector_processor.api.server import Sidecar, create_sidecar
from collector_processor.config import parse_config
from collector_processor.workers import Supervisor
from paymaster.processor import ReservationSpanProcessor
from paymaster.telemetry import STEP_ATTRIBUTE
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sdk.sidecar_support import free_port

__all__ = ["LiveSidecar", "SpanPipe", "traced"]

# Whole micro-dollars per token, so that every amount in these tests is exact to the micro-dollar.
PRICES = """
[cost.providers.openai."gpt-4o"]
prompt_tokens_per_1k = 0.002
completion_tokens_per_1k = 0.008

[cost.providers.openai."gpt-4o-mini"]
prompt_tokens_per_1k = 0.001
completion_tokens_per_1k = 0.002
"""


@dataclass
class LiveSidecar:
    """See the module docstring. ``store`` is the body of the ``[store]`` section."""

    workdir: Path
    store: str
    port: int = field(default_factory=free_port)
    otlp_port: int = field(default_factory=free_port)
    sidecar: Sidecar | Supervisor | None = None
    extra: str = ""
    """More of the sidecar's TOML (e.g. ``[http]``)."""
    workers: int = 1
    """``server.workers``: above 1, a supervisor of worker processes serving both ports."""
    spread: dict[str, set[int]] = field(
        default_factory=lambda: {"Reserve": set(), "Commit": set(), "spans": set(), "http": set()}
    )
    """With workers: the slots of the workers that answered a Reserve, a Commit, an HTTP/JSON request,
    or received spans (see ``tally``)."""
    _channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def otlp_address(self) -> str:
        return f"127.0.0.1:{self.otlp_port}"

    @property
    def up(self) -> bool:
        return self.sidecar is not None

    @property
    def prices(self) -> Path:
        path = self.workdir / "paymaster.toml"
        if not path.exists():
            path.write_text(PRICES)
        return path

    def start(self) -> LiveSidecar:
        assert self.sidecar is None, "already running"
        config = parse_config(
            f"""
            [server]
            listen = "{self.address}"
            grace_seconds = 0
            workers = {self.workers}
            [store]
            {self.store}
            [ledger]
            sweep_interval_seconds = 0.05
            [alerts]
            otel_logs = false
            [receivers.otlp]
            enabled = true
            grpc_listen = "{self.otlp_address}"
            http_listen = "127.0.0.1:0"
            [receivers.otlp.pricing]
            config = "{self.prices}"
            {self.extra}
            """,
            source=str(self.workdir / "sidecar.toml"),
        )
        self.sidecar = (
            Supervisor(config, workers=self.workers).start()
            if self.workers > 1
            else create_sidecar(config).start()
        )
        return self

    def stop(self) -> None:
        """Down: both ports closed, nothing in flight kept (the store keeps what was committed)."""
        if self.sidecar is not None:
            self.tally()
            sidecar, self.sidecar = self.sidecar, None
            sidecar.stop(0)

    def tally(self) -> None:
        """Add the workers that served since they started to ``spread`` (kept across restarts)."""
        if not isinstance(self.sidecar, Supervisor):
            return
        for slot, counts in self.sidecar.worker_counts().items():
            calls = counts.counters.get("paymaster_rpc_requests_total", {})
            for method in ("Reserve", "Commit"):
                if any(n > 0 and ("method", method) in key for key, n in calls.items()):
                    self.spread[method].add(slot)
            for kind, counter in (
                ("spans", "paymaster_otlp_spans_received_total"),
                ("http", "paymaster_http_requests_total"),
            ):
                if any(n > 0 for n in counts.counters.get(counter, {}).values()):
                    self.spread[kind].add(slot)

    def close(self) -> None:
        self.stop()
        if self._channel is not None:
            self._channel.close()

    # -- administration and read-back ------------------------------------------------------------
    @property
    def stub(self) -> budget_pb2_grpc.BudgetServiceStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return budget_pb2_grpc.BudgetServiceStub(self._channel)

    def budget(self, budget_id: str, team: str, limit: str, on_exceed: int = pb.ON_EXCEED_BLOCK) -> None:
        budget = pb.Budget(
            id=budget_id,
            scope=pb.SCOPE_TEAM,
            scope_id=team,
            limit_usd=limit,
            period="daily",
            on_exceed=on_exceed,
        )
        self.stub.CreateBudget(pb.CreateBudgetRequest(budget=budget), timeout=5)

    def charged(self, team: str) -> Decimal:
        """Everything the ledger holds as spent by ``team``: commits, recorded usage and OTLP charges."""
        response = self.stub.GetUsage(pb.GetUsageRequest(scopes=pb.ScopeIds(team=team)), timeout=5)
        return Decimal(response.total.cost_usd)

    def reserved(self, budget_id: str) -> Decimal:
        status = self.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id=budget_id), timeout=5)
        return Decimal(status.reserved_usd)

    def counter(self, name: str, **labels: str) -> float:
        """The sidecar's self-metric ``name`` summed over the series matching ``labels``."""
        assert self.sidecar is not None
        series = self.sidecar.metrics.snapshot().counters.get(name, {})
        wanted = set(labels.items())
        return sum(v for key, v in series.items() if wanted <= set(key))


class SpanPipe(SpanProcessor):
    """Exports finished spans to the sidecar with the real OTLP/gRPC exporter as each agent step ends
    with its usage (so a lease's spans arrive while the lease is still held), but only while
    ``sidecar`` is up: what ends during an outage waits for the next export once it is back."""

    def __init__(self, sidecar: LiveSidecar) -> None:
        self.sidecar = sidecar
        self.exporter = OTLPSpanExporter(endpoint=sidecar.otlp_address, insecure=True, timeout=10)
        self.waiting: list[ReadableSpan] = []
        self.exported = 0
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.waiting.append(span)
        attributes = span.attributes or {}
        if STEP_ATTRIBUTE in attributes and "gen_ai.usage.input_tokens" in attributes and self.sidecar.up:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self.waiting = self.waiting, []
            if not batch:
                return
            result = self.exporter.export(batch)
            assert result is SpanExportResult.SUCCESS, "the sidecar refused an export"
            self.exported += len(batch)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True


def traced(team: str, pipe: SpanProcessor | None, *extra: SpanProcessor) -> TracerProvider:
    """A tracer provider for one team's runs, with the reservation processor installed (the documented
    setup), exporting through ``pipe`` when given."""
    provider = TracerProvider(resource=Resource.create({"service.name": "pipeline", "paymaster.team": team}))
    processors: Sequence[SpanProcessor] = (ReservationSpanProcessor(), *extra, *([pipe] if pipe else []))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider
