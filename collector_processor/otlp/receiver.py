"""The OTLP component and its factory: config in, a receiver -> processor -> ledger -> exporter chain out.

``load_pricing`` reads the configured ``paymaster.toml`` into the pricing calculator (any mistake in
it stops the sidecar at start with the file and key named, before the store is opened).
``create_otlp_receiver`` wires a validated ``[receivers.otlp]`` section to the sidecar's ledger and
self-metrics: that calculator, the attribution, the spend-source policy, the trace and metric
processors, the forwarders, and both transports. ``OtlpReceiver.start`` opens the ports (one that
cannot be bound is a ``ConfigError`` naming its key and address); ``stop`` finishes the exports in
flight, charges held metric points and drains the forwarders.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from collector_processor.auth.edge import Gate
from collector_processor.auth.tls import ServerTls
from collector_processor.domain.clock import Clock
from collector_processor.domain.types import UsageBatchOutcome, UsageGroup
from collector_processor.ledger import Ledger
from collector_processor.otlp.attribution import Attributor
from collector_processor.otlp.config import OtlpReceiverSection
from collector_processor.otlp.forward import Forwarder
from collector_processor.otlp.grpc_receiver import GrpcReceiver
from collector_processor.otlp.http_receiver import HttpReceiver
from collector_processor.otlp.metrics import MetricsProcessor
from collector_processor.otlp.pipeline import METRICS, TRACES, OtlpPipeline
from collector_processor.otlp.pricing import SpanPricer
from collector_processor.otlp.spend_source import SpendSource
from collector_processor.otlp.traces import TraceProcessor
from collector_processor.telemetry.selfmetrics import SelfMetrics
from paymaster.config import PaymasterConfig, load_config
from paymaster.exceptions import ConfigError
from paymaster.pricing import CostCalculator

__all__ = ["OtlpReceiver", "create_otlp_receiver", "load_pricing"]

_TICK_S = 1.0


class OtlpReceiver:
    """A running (or ready) OTLP receiver of one sidecar."""

    def __init__(
        self,
        *,
        pipeline: OtlpPipeline,
        grpc: GrpcReceiver,
        http: HttpReceiver | None,
        forwarders: dict[str, Forwarder],
    ) -> None:
        self.pipeline = pipeline
        self.grpc = grpc
        self.http = http
        self.forwarders = forwarders
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="paymaster-otlp-tick", daemon=True)

    def describe(self) -> str:
        """Where it listens, for the start-up line."""
        http = f", OTLP/HTTP on {self.http.address}" if self.http is not None else ""
        onward = ", ".join(sorted({f.endpoint for f in self.forwarders.values()}))
        return f"OTLP/gRPC on {self.grpc.address}{http}" + (f", forwarding to {onward}" if onward else "")

    def addresses(self) -> dict[str, str]:
        """The bound address of each of its ports, by the key that configures it (the start-up line)."""
        bound = {"receivers.otlp.grpc_listen": self.grpc.address}
        if self.http is not None:
            bound["receivers.otlp.http_listen"] = self.http.address
        return bound

    def onward(self) -> list[str]:
        """Where it forwards what it receives."""
        return sorted({f.endpoint for f in self.forwarders.values()})

    def start(self) -> OtlpReceiver:
        """Open both ports; ``ConfigError`` naming the key and address of one that cannot be bound."""
        for forwarder in self.forwarders.values():
            forwarder.start()
        try:
            self.grpc.start()
        except Exception as exc:  # a port in use, an address that does not resolve
            raise _cannot_serve("receivers.otlp.grpc_listen", self.grpc.listen, exc) from None
        if self.http is not None:
            try:
                self.http.start()
            except OSError as exc:
                self.grpc.stop(0)
                raise _cannot_serve("receivers.otlp.http_listen", self.http.listen, exc) from None
        self._ticker.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self.grpc.stop(grace_s)
        if self.http is not None:
            self.http.stop(grace_s)
        self.pipeline.close(grace_s)

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_S):
            self.pipeline.tick()


def _cannot_serve(key: str, listen: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"{key}: cannot serve on {listen}: {exc}")


def load_pricing(section: OtlpReceiverSection, *, config_dir: Path | None = None) -> CostCalculator:
    """The calculator pricing spans, its data loaded; ``ConfigError`` naming
    ``receivers.otlp.pricing.config`` for a bad price file."""
    calculator = CostCalculator(_pricing_config(section, config_dir))
    calculator.preload()  # at start, not on the first export
    return calculator


def create_otlp_receiver(
    section: OtlpReceiverSection,
    *,
    ledger: Ledger,
    metrics: SelfMetrics,
    clock: Clock,
    retention_ms: int,
    config_dir: Path | None = None,
    calculator: CostCalculator | None = None,
    on_spend: Callable[[Sequence[UsageGroup], UsageBatchOutcome], None] | None = None,
    gate: Gate | None = None,
    tls: ServerTls | None = None,
    reuse_port: bool = False,
) -> OtlpReceiver:
    """Wire ``section``; ``ConfigError`` (naming ``receivers.otlp.pricing.config``) for a bad price file.

    ``calculator`` is what ``load_pricing`` read (it is read here when not given). ``retention_ms``
    is the ledger's idempotency window (``ledger.reservation_retention_hours``): spend older than
    that is never charged, since its keys may have been forgotten. ``on_spend`` is told of every
    charged batch once it is durable (the sidecar's spend metrics). ``gate`` and ``tls`` are the
    listeners' authentication and TLS (``receivers.otlp.tls``), the same for both transports.
    ``reuse_port`` binds both with ``SO_REUSEPORT``, for the worker processes of one sidecar.
    """
    if calculator is None:
        calculator = load_pricing(section, config_dir=config_dir)
    pricer = SpanPricer(calculator)
    attributor = Attributor(section.attribution)
    charging = section.charging
    spend_source = SpendSource(charging.spend_source, hold_ms=int(charging.auto_hold_seconds * 1000))
    forwarders: dict[str, Forwarder] = {}
    if section.forward.endpoint:
        forwarders = {s: Forwarder(section.forward, signal=s, metrics=metrics) for s in (TRACES, METRICS)}
    pipeline = OtlpPipeline(
        ledger=ledger,
        traces=TraceProcessor(
            pricer=pricer,
            attributor=attributor,
            spend_source=spend_source,
            max_tokens=section.pricing.max_tokens_per_span,
        ),
        metrics_processor=MetricsProcessor(
            pricer=pricer,
            attributor=attributor,
            spend_source=spend_source,
            token_metrics=charging.token_metrics,
        ),
        spend_source=spend_source,
        metrics=metrics,
        clock=clock,
        retention_ms=retention_ms,
        on_spend=on_spend,
        future_skew_ms=int(charging.future_skew_seconds * 1000),
        max_message_bytes=charging.max_message_bytes,
        forwarders=forwarders,
    )
    limit = charging.max_concurrent_exports
    return OtlpReceiver(
        pipeline=pipeline,
        grpc=GrpcReceiver(
            pipeline,
            listen=section.grpc_listen,
            max_concurrent=limit,
            gate=gate,
            tls=tls,
            reuse_port=reuse_port,
        ),
        http=HttpReceiver(
            pipeline,
            listen=section.http_listen,
            max_concurrent=limit,
            max_connections=section.http_max_connections,
            request_timeout_s=section.http_request_timeout_seconds,
            idle_timeout_s=section.http_idle_timeout_seconds,
            gate=gate,
            tls=tls,
            reuse_port=reuse_port,
        )
        if section.http_listen
        else None,
        forwarders=forwarders,
    )


def _pricing_config(section: OtlpReceiverSection, config_dir: Path | None) -> PaymasterConfig:
    path = section.pricing.config
    try:
        if not path:
            return load_config()
        file = Path(path).expanduser()
        if not file.is_absolute() and config_dir is not None:
            file = config_dir / file
        if not file.is_file():
            raise ConfigError(f"{file}: no such file")
        return load_config(file)
    except ConfigError as exc:
        raise ConfigError(f"receivers.otlp.pricing.config: {exc}") from None
