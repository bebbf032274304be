"""The OTLP metrics exporter: push the same metrics the Prometheus endpoint serves, on an interval.

``OtlpMetricsPusher`` collects the sidecar's registry (the very families a scrape gets), converts them
to the OpenTelemetry data model — counters as cumulative monotonic sums, gauges as gauges, histograms
with their bucket bounds — and exports them with the OTLP exporter of the chosen protocol. Names stay
the Prometheus names (``paymaster_decisions_total``), so a Collector that writes to Prometheus yields
the same series as a scrape. An export that fails is logged and retried at the next interval (the
figures are cumulative, so nothing is lost but resolution); it never affects the sidecar.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric as PromMetric

__all__ = ["OtlpMetricsPusher", "to_metrics_data"]

log = logging.getLogger("paymaster.sidecar.metrics")


def _unit(name: str) -> str:
    if name.endswith("_seconds"):
        return "s"
    if name.endswith("_usd_per_hour"):
        return "{USD}/h"
    if name.endswith("_usd") or name.endswith("_usd_total"):
        return "{USD}"
    if name.endswith("_percent"):
        return "%"
    return ""


def to_metrics_data(
    families: list[PromMetric], *, resource: Mapping[str, str], start_ns: int, now_ns: int
) -> Any:
    """The OTLP ``MetricsData`` of Prometheus metric families (cumulative since ``start_ns``)."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    cumulative = AggregationTemporality.CUMULATIVE
    metrics: list[Metric] = []
    for family in families:
        if family.type == "histogram":
            # min and max are unknown (the buckets do not keep them): left unset on the wire.
            unknown: Any = None
            points: list[Any] = [
                HistogramDataPoint(
                    attributes=attrs,
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    count=count,
                    sum=total,
                    bucket_counts=counts,
                    explicit_bounds=bounds,
                    min=unknown,
                    max=unknown,
                )
                for attrs, bounds, counts, total, count in _histograms(family)
            ]
            data: Any = Histogram(data_points=points, aggregation_temporality=cumulative)
            name = family.name
        else:
            samples = [s for s in family.samples if not s.name.endswith("_created")]
            name = samples[0].name if samples else family.name
            points = [
                NumberDataPoint(
                    attributes=dict(s.labels),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    value=s.value,
                )
                for s in samples
            ]
            if family.type == "counter":
                data = Sum(data_points=points, aggregation_temporality=cumulative, is_monotonic=True)
            else:
                data = Gauge(data_points=points)
        if points:
            metrics.append(Metric(name=name, description=family.documentation, unit=_unit(name), data=data))
    scope = InstrumentationScope("paymaster.sidecar")
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource.create(dict(resource)),
                scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
                schema_url="",
            )
        ]
    )


def _histograms(family: PromMetric) -> list[tuple[dict[str, str], list[float], list[int], float, int]]:
    """Per series: attributes, finite bounds, per-bucket (not cumulative) counts, sum, count."""
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in family.samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": [], "sum": 0.0, "count": 0})
        if s.name.endswith("_bucket"):
            entry["buckets"].append((float(s.labels["le"]), int(s.value)))
        elif s.name.endswith("_sum"):
            entry["sum"] = float(s.value)
        elif s.name.endswith("_count"):
            entry["count"] = int(s.value)
    out = []
    for key, entry in series.items():
        buckets = sorted(entry["buckets"])
        bounds = [b for b, _ in buckets if not math.isinf(b)]
        counts, previous = [], 0
        for _, cumulative in buckets:
            counts.append(cumulative - previous)
            previous = cumulative
        out.append((dict(key), bounds, counts, entry["sum"], entry["count"]))
    return out


class OtlpMetricsPusher:
    """Exports ``registry`` as OTLP every ``interval_s`` seconds from a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        endpoint: str,
        protocol: str = "grpc",
        headers: Mapping[str, str] | None = None,
        interval_s: float = 30.0,
        timeout_s: float = 10.0,
        resource: Mapping[str, str] | None = None,
    ) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._resource = dict(resource or {})
        self._exporter = _exporter(endpoint, protocol, dict(headers or {}), timeout_s)
        self._start_ns = time.time_ns()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.exports = 0
        """Exports that succeeded (for tests and diagnostics)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="paymaster-otlp-metrics", daemon=True)
        self._thread.start()

    def push(self) -> bool:
        """Export once now; True when the receiver accepted it."""
        from opentelemetry.sdk.metrics.export import MetricExportResult

        try:
            data = to_metrics_data(
                list(self._registry.collect()), resource=self._resource, start_ns=self._start_ns,
                now_ns=time.time_ns(),
            )  # fmt: skip
            ok = self._exporter.export(data) is MetricExportResult.SUCCESS
        except Exception:
            log.warning("OTLP metrics export failed", exc_info=True)
            return False
        if ok:
            self.exports += 1
        else:
            log.warning("OTLP metrics export was not accepted; retrying at the next interval")
        return bool(ok)

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.push()

    def stop(self) -> None:
        """Stop, after a last export so the final figures are not lost."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self.push()
        self._exporter.shutdown()


def _exporter(endpoint: str, protocol: str, headers: dict[str, str], timeout_s: float) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        target = endpoint.split("://", 1)[-1]
        return OTLPMetricExporter(
            endpoint=target, insecure=endpoint.startswith("http://"), headers=headers, timeout=timeout_s
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    url = endpoint if endpoint.rstrip("/").count("/") > 2 else endpoint.rstrip("/") + "/v1/metrics"
    return HttpExporter(endpoint=url, headers=headers, timeout=timeout_s)
