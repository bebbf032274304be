"""The sidecar's own counters and latency histograms, kept in memory and read by the exporters.

Every component of one sidecar counts what it does on the sidecar's ``SelfMetrics``: ``inc`` for a
counter, ``observe`` for a latency. The exporters (the Prometheus endpoint, the OTLP metrics push)
read ``snapshot()``; nothing here knows about either. Names are Prometheus names with their unit and
``_total`` for counters (``paymaster_otlp_spans_received_total``, ``paymaster_reserve_seconds``);
``describe`` gives each its help text. Labels are small fixed sets chosen by the component that
counts, never unbounded values such as ids of requests.

One instance per sidecar (not a process global), so that several sidecars in one process — as in
the tests — keep separate figures.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_BUCKETS", "HistogramSnapshot", "Labels", "MetricsSnapshot", "SelfMetrics", "label_key"]

Labels = tuple[tuple[str, str], ...]
"""Label pairs sorted by name: the key of one series."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""Upper bounds in seconds: sub-millisecond store calls up to multi-second stalls."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HistogramSnapshot:
    """One histogram series at the time of the snapshot."""

    buckets: tuple[float, ...]
    """Upper bounds, ascending (``+Inf`` is implied)."""
    counts: tuple[int, ...]
    """Observations per bucket, not cumulative; one more entry than ``buckets`` (the ``+Inf`` one)."""
    total: float
    """Sum of every observed value."""
    count: int
    """Number of observations."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsSnapshot:
    """Everything counted so far."""

    counters: dict[str, dict[Labels, float]]
    """Counter name -> series -> value."""
    histograms: dict[str, dict[Labels, HistogramSnapshot]]
    """Histogram name -> series -> snapshot."""
    help: dict[str, str]
    """Help text of every described metric."""
    gauges: dict[str, dict[Labels, float]] = field(default_factory=dict)
    """Gauge name -> series -> current value."""


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0


class SelfMetrics:
    """Thread-safe counters and histograms of one sidecar."""

    def __init__(self, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"histogram buckets must be distinct and ascending, got {list(buckets)}")
        self._buckets = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._help: dict[str, str] = {}

    def describe(self, name: str, help_text: str) -> None:
        """Give a metric its help text (the exporters show it)."""
        with self._lock:
            self._help[name] = help_text

    def inc(self, name: str, value: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        """Add ``value`` (never negative) to the counter ``name`` with these labels."""
        self.add(((name, label_key(labels), value),))

    def add(self, increments: Sequence[tuple[str, Labels, float]]) -> None:
        """Several ``inc`` at once, each ``(name, label_key(labels), value)``: one lock for all of them,
        and keys a caller on a hot path computed once."""
        for name, _, value in increments:
            if value < 0:
                raise ValueError(f"counter {name} cannot decrease (got {value})")
        counters = self._counters
        with self._lock:
            for name, key, value in increments:
                series = counters.get(name)
                if series is None:
                    series = counters[name] = {}
                series[key] = series.get(key, 0.0) + value

    def set_gauge(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Set the gauge ``name`` with these labels to ``value`` (a state, such as a listener's)."""
        with self._lock:
            self._gauges.setdefault(name, {})[label_key(labels)] = value

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Record one observation (seconds, for latencies) in the histogram ``name``."""
        self.observe_key(name, label_key(labels), value)

    def observe_key(self, name: str, key: Labels, value: float) -> None:
        """``observe`` with the key of the labels computed by the caller (``label_key``)."""
        with self._lock:
            series = self._histograms.setdefault(name, {})
            hist = series.get(key)
            if hist is None:
                hist = series[key] = _Histogram(self._buckets)
            hist.counts[bisect.bisect_left(hist.buckets, value)] += 1
            hist.total += value
            hist.count += 1

    def snapshot(self) -> MetricsSnapshot:
        """A consistent copy of everything counted so far."""
        with self._lock:
            return MetricsSnapshot(
                counters={name: dict(series) for name, series in self._counters.items()},
                histograms={
                    name: {
                        key: HistogramSnapshot(
                            buckets=h.buckets, counts=tuple(h.counts), total=h.total, count=h.count
                        )
                        for key, h in series.items()
                    }
                    for name, series in self._histograms.items()
                },
                help=dict(self._help),
                gauges={name: dict(series) for name, series in self._gauges.items()},
            )


def label_key(labels: Mapping[str, str] | None) -> Labels:
    """The series key of ``labels``: their pairs sorted by name."""
    return tuple(sorted(labels.items())) if labels else ()
