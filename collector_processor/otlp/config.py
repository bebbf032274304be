"""Configuration of the OTLP receiver: the ``[receivers.otlp]`` section of the sidecar's TOML file.

Collector-shaped: ``OtlpReceiverSection`` is the validated section (pydantic at the edge, unknown
keys refused), ``validate_all()`` checks what spans several keys, and ``create_default_config()`` is what
runs without one. Sub-tables configure each stage: ``pricing`` (which ``paymaster.toml`` prices
spans), ``attribution`` (which attributes name the budget scopes), ``charging`` (where spend comes
from) and ``forward`` (the onward OTLP exporter).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from collector_processor.auth.config import TlsSection
from collector_processor.domain.budgets import SCOPE_ORDER, check_scope_id
from collector_processor.errors import InvalidRequestError

__all__ = [
    "AttributionSection",
    "ChargingSection",
    "ForwardSection",
    "OtlpReceiverSection",
    "PricingSection",
    "create_default_config",
]

ScopeName = Literal["organization", "team", "agent", "workflow", "user"]
_ALL_SCOPES: tuple[ScopeName, ...] = ("organization", "team", "agent", "workflow", "user")
_ATTRIBUTE = re.compile(r"[A-Za-z0-9_.\-/:]{1,255}")
_URL = re.compile(r"https?://[^/\s]+(/\S*)?")


class _Section(BaseModel):
    # Every number is finite: inf and nan are refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PricingSection(_Section):
    config: str = ""
    """A ``paymaster.toml`` whose ``[cost]`` prices spans (relative to the sidecar's file); empty: the
    SDK's search ($PAYMASTER_CONFIG, ./paymaster.toml, ./flujo.toml), then genai-prices alone."""
    max_tokens_per_span: int = Field(default=100_000_000, ge=1, le=10**12)
    """A span reporting more tokens than this in any count is not charged (counted ``invalid``)."""


class AttributionSection(_Section):
    """Where the scopes of spend come from. ``paymaster.<scope>`` on the span, then on the resource,
    always comes first; each list names further attributes, in order, each looked up on the span and
    then on its resource."""

    organization: list[str] = Field(default_factory=list)
    team: list[str] = Field(default_factory=lambda: ["k8s.namespace.name"])
    agent: list[str] = Field(default_factory=lambda: ["gen_ai.agent.name", "service.name"])
    workflow: list[str] = Field(default_factory=list)
    user: list[str] = Field(default_factory=lambda: ["enduser.id"])
    unattributed_id: str = "unattributed"
    """The id spend is charged to when no attribute names any scope."""
    unattributed_scopes: list[ScopeName] = Field(default_factory=lambda: list(_ALL_SCOPES))
    """The scopes that carry ``unattributed_id`` for such spend (so every usage breakdown shows it)."""

    def sources(self) -> dict[str, tuple[str, ...]]:
        """Scope -> attribute names in precedence order, ``paymaster.<scope>`` first."""
        return {
            scope.value: (f"paymaster.{scope.value}", *getattr(self, scope.value)) for scope in SCOPE_ORDER
        }


class ChargingSection(_Section):
    spend_source: Literal["auto", "spans", "metrics"] = "auto"
    """``spans``: GenAI spans are charged, token metrics only forwarded. ``metrics``: token usage
    metrics are charged, spans only priced and forwarded (use with sampled traces). ``auto``: per
    service, spans once it sends GenAI spans, its token metrics otherwise; never both."""
    auto_hold_seconds: float = Field(default=30.0, ge=0, le=3600)
    """``auto``: how long a service's token metrics wait for its first GenAI spans before they are
    charged (longer than its span export interval)."""
    token_metrics: list[str] = Field(default_factory=lambda: ["gen_ai.client.token.usage"])
    """Names of the token usage metrics (histograms or monotonic sums of tokens by gen_ai.token.type)."""
    future_skew_seconds: float = Field(default=300.0, ge=0, le=86_400)
    """Spend stamped later than now plus this is not charged (counted ``invalid``): a wrong clock."""
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Largest export accepted, after decompression; larger ones are refused as too large."""
    max_concurrent_exports: int = Field(default=64, ge=1, le=10_000)
    """Exports being processed at once per transport; more are answered UNAVAILABLE / 503 (retry)."""


class ForwardSection(_Section):
    endpoint: str = ""
    """Where enriched telemetry goes, e.g. ``http://otel-collector:4317``; empty: not forwarded."""
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    """OTLP/gRPC, or OTLP/HTTP with ``/v1/traces`` and ``/v1/metrics`` appended to the endpoint."""
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    timeout_seconds: float = Field(default=10.0, ge=0.01, le=300)
    queue_size: int = Field(default=100_000, ge=1, le=100_000_000)
    """Spans (or metric points) waiting to be forwarded, per signal; an export that does not fit is
    dropped (counted). Bounds the memory the queue holds."""
    max_batch_items: int = Field(default=8192, ge=1, le=1_000_000)
    """Spans (or metric points) per onward export; queued exports are joined up to this."""
    backoff_initial_seconds: float = Field(default=0.5, ge=0.001, le=60)
    backoff_max_seconds: float = Field(default=30.0, ge=0.001, le=600)
    max_elapsed_seconds: float = Field(default=300.0, ge=0.01, le=86_400)
    """Retrying one onward export stops after this long; its items are then dropped (counted)."""


class OtlpReceiverSection(_Section):
    enabled: bool = False
    grpc_listen: str = "127.0.0.1:7317"
    http_listen: str = "127.0.0.1:7318"
    """OTLP/HTTP; an empty string turns it off."""
    http_max_connections: int = Field(default=128, ge=1, le=10_000)
    """OTLP/HTTP connections open at once (each holds one thread); one more is answered 503 with
    ``Retry-After`` and closed without its request being read."""
    http_request_timeout_seconds: float = Field(default=30.0, ge=0.1, le=3600)
    """From the first byte of a request until the whole of it (line, headers, body) has arrived, and
    again for the answer to be taken; a client slower than that loses its connection."""
    http_idle_timeout_seconds: float = Field(default=60.0, ge=0.1, le=3600)
    """How long a keep-alive connection may wait for its next request before it is closed."""
    pricing: PricingSection = PricingSection()
    attribution: AttributionSection = AttributionSection()
    charging: ChargingSection = ChargingSection()
    forward: ForwardSection = ForwardSection()
    tls: TlsSection = TlsSection()
    """TLS (and mTLS) for both OTLP listeners."""
    allow_unauthenticated: bool = False
    """Serve callers without credentials on a non-loopback address while ``[auth]`` is off."""

    def validate_all(self) -> OtlpReceiverSection:
        """Checks that span keys; raises ``InvalidRequestError`` naming the key under ``receivers.otlp``."""
        prefix = "receivers.otlp."
        attribution = self.attribution
        for scope, names in attribution.sources().items():
            for name in names[1:]:
                if not _ATTRIBUTE.fullmatch(name):
                    raise InvalidRequestError(
                        f"{prefix}attribution.{scope}", f"{name!r} is not an attribute name"
                    )
        check_scope_id(attribution.unattributed_id, f"{prefix}attribution.unattributed_id")
        if not attribution.unattributed_scopes:
            raise InvalidRequestError(
                f"{prefix}attribution.unattributed_scopes", "must name at least one scope"
            )
        forward = self.forward
        if forward.endpoint and not _URL.fullmatch(forward.endpoint):
            raise InvalidRequestError(
                f"{prefix}forward.endpoint",
                f"must be an http:// or https:// URL, got {forward.endpoint!r}",
            )
        if forward.backoff_initial_seconds > forward.backoff_max_seconds:
            raise InvalidRequestError(
                f"{prefix}forward.backoff_initial_seconds", "is above forward.backoff_max_seconds"
            )
        if not self.charging.token_metrics and self.charging.spend_source == "metrics":
            raise InvalidRequestError(
                f"{prefix}charging.token_metrics", "is empty, but spend_source = 'metrics' charges only them"
            )
        return self


def create_default_config() -> OtlpReceiverSection:
    """The receiver's defaults: off; loopback ports 7317 (gRPC) and 7318 (HTTP); nothing forwarded."""
    return OtlpReceiverSection()
