"""Configuration of the sidecar's own telemetry: the ``[metrics]`` and ``[telemetry]`` sections.

``MetricsSection`` configures ``/metrics`` (off by default), the cardinality caps of its series and
the optional push of the same figures over OTLP; ``TelemetrySection`` names the service and where its
OpenTelemetry log records (alerts) go. The sidecar's TOML file composes them with the other
components' sections; unknown keys are refused here as everywhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_processor.auth.config import TlsSection

__all__ = ["DEFAULT_METRICS_LISTEN", "MetricsOtlpSection", "MetricsSection", "TelemetrySection"]

DEFAULT_METRICS_LISTEN = "127.0.0.1:7319"


class _Section(BaseModel):
    # Every number is finite: inf and nan are refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TelemetrySection(_Section):
    otlp_endpoint: str = ""
    service_name: str = "paymaster-sidecar"


class MetricsOtlpSection(_Section):
    endpoint: str = ""
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    headers: dict[str, str] = Field(default_factory=dict)
    interval_seconds: float = Field(default=30.0, ge=0.1, le=3600)
    timeout_seconds: float = Field(default=10.0, ge=0.01, le=120)


class MetricsSection(_Section):
    enabled: bool = False
    listen: str = DEFAULT_METRICS_LISTEN
    max_entities_per_budget: int = Field(default=25, ge=1, le=10_000)
    max_entities_per_scope: int = Field(default=100, ge=1, le=100_000)
    max_models: int = Field(default=200, ge=1, le=100_000)
    refresh_seconds: float = Field(default=5.0, ge=0, le=3600)
    otlp: MetricsOtlpSection = MetricsOtlpSection()
    tls: TlsSection = TlsSection()
    require_token: bool = False
    """With ``[auth]`` on: ``/metrics`` answers only a bearer token of a reader or admin whose grants
    cover everything (``*``)."""
    allow_unauthenticated: bool = False
    """Serve ``/metrics`` without credentials on a non-loopback address."""
