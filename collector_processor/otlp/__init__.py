"""The sidecar's OTLP component: prices and charges spend from any GenAI-instrumented application.

Collector-shaped: ``OtlpReceiverSection`` (the ``[receivers.otlp]`` config, with ``validate_all``),
``create_default_config``, ``load_pricing`` (the price file, read before anything is created), and
the factory ``create_otlp_receiver`` that wires receiver (OTLP/gRPC and
OTLP/HTTP) -> processors (pricing, scope attribution) -> the ledger -> exporter (OTLP onward).
Its self-metrics are named in ``counters``. The factory and the receiver are imported on first use,
so reading a sidecar config does not load gRPC and the OpenTelemetry protos.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector_processor.otlp.config import OtlpReceiverSection, create_default_config

if TYPE_CHECKING:
    from collector_processor.otlp.receiver import OtlpReceiver, create_otlp_receiver, load_pricing

__all__ = [
    "OtlpReceiver",
    "OtlpReceiverSection",
    "create_default_config",
    "create_otlp_receiver",
    "load_pricing",
]


def __getattr__(name: str) -> Any:
    if name in ("OtlpReceiver", "create_otlp_receiver", "load_pricing"):
        from collector_processor.otlp import receiver

        return getattr(receiver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
