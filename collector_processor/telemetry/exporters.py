"""The sidecar's metrics exporters, wired from the ``[metrics]`` config: ``/metrics`` and the OTLP push.

``create_exporters`` builds what every sidecar has — its registry, whose collector reads
``SelfMetrics`` and the store's budget standings at collection time, and the ``ServiceMetrics`` the
servicer counts on — plus, as configured, the Prometheus endpoint (``metrics.enabled``) and the OTLP
push (``metrics.otlp.endpoint``). ``start`` opens the endpoint's port (a port that cannot be bound is
a ``ConfigError`` naming ``metrics.listen``); ``stop`` pushes a last time and closes both, before the
store is closed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from collector_processor.auth.edge import Gate
from collector_processor.auth.tls import ServerTls
from collector_processor.domain.clock import Clock
from collector_processor.store.base import LedgerStore
from collector_processor.telemetry.budget_gauges import BudgetGauges
from collector_processor.telemetry.config import MetricsSection
from collector_processor.telemetry.otlp_push import OtlpMetricsPusher
from collector_processor.telemetry.prometheus import MetricsEndpoint, SidecarCollector, build_registry
from collector_processor.telemetry.selfmetrics import MetricsSnapshot, SelfMetrics
from collector_processor.telemetry.service_metrics import ServiceMetrics
from paymaster.exceptions import ConfigError

__all__ = ["MetricsExporters", "create_exporters"]


class MetricsExporters:
    """A sidecar's registry, the counters its service fills, and the exporters that read them."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        service: ServiceMetrics,
        endpoint: MetricsEndpoint | None,
        pusher: OtlpMetricsPusher | None,
        source: str,
    ) -> None:
        self.registry = registry
        """Collect it for everything ``/metrics`` serves."""
        self.service = service
        """Counts requests, decisions, commits, spend and alerts; receivers that charge spend call it too."""
        self.endpoint = endpoint
        self.pusher = pusher
        self._source = source

    @property
    def port(self) -> int:
        """The port ``/metrics`` is served on (0 when disabled)."""
        return self.endpoint.port if self.endpoint is not None else 0

    def start(self) -> None:
        if self.endpoint is not None:
            try:
                self.endpoint.start()
            except OSError as exc:
                raise ConfigError(
                    f"{self._source}: metrics.listen: cannot serve on {self.endpoint.listen}: {exc}"
                ) from None
        if self.pusher is not None:
            self.pusher.start()

    def stop(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.pusher is not None:
            self.pusher.stop()


def create_exporters(
    section: MetricsSection,
    *,
    service_name: str,
    source: str,
    store: LedgerStore,
    clock: Clock,
    metrics: SelfMetrics,
    gate: Gate | None = None,
    tls: ServerTls | None = None,
    snapshot: Callable[[], MetricsSnapshot] | None = None,
) -> MetricsExporters:
    """Wire ``[metrics]`` to this sidecar's registry; ``source`` names the config file in messages.
    ``snapshot`` replaces ``metrics.snapshot`` as what is served and pushed (a supervisor's sum of
    its workers' counts and its own)."""
    from paymaster import __version__

    m = section
    service = ServiceMetrics(
        metrics, max_entities_per_scope=m.max_entities_per_scope, max_models=m.max_models
    )
    gauges = BudgetGauges(store, clock, max_entities=m.max_entities_per_budget, refresh_s=m.refresh_seconds)
    collector = SidecarCollector(
        metrics, gauges=gauges, service=service, store=store, version=__version__, snapshot=snapshot
    )
    registry = build_registry(collector)
    pusher = None
    if m.otlp.endpoint:
        pusher = OtlpMetricsPusher(
            registry,
            endpoint=m.otlp.endpoint,
            protocol=m.otlp.protocol,
            headers=m.otlp.headers,
            interval_s=m.otlp.interval_seconds,
            timeout_s=m.otlp.timeout_seconds,
            resource={
                "service.name": service_name,
                "service.instance.id": f"{os.uname().nodename}:{os.getpid()}",
                "service.version": __version__,
            },
        )
    return MetricsExporters(
        registry=registry,
        service=service,
        endpoint=MetricsEndpoint(registry, m.listen, gate=gate, tls=tls) if m.enabled else None,
        pusher=pusher,
        source=source,
    )
