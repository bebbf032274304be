"""One sidecar's counts summed over its processes, for the one ``/metrics`` a supervisor of workers serves.

Each worker process counts on its own ``SelfMetrics``; the supervisor asks every worker for a
``MetricsSnapshot`` when it is scraped and serves their sum: ``merge`` adds counters and histogram
buckets series by series, and takes the largest value of a gauge (the only gauges counted this way
are flags, such as ``paymaster_listener_unauthenticated``). Dashboards and alert rules read one
series per label set, exactly as from a sidecar of one process.

The cardinality caps of ``ServiceMetrics`` hold per process; ``Caps`` applies them again to the sum,
so that several workers, each admitting its first ids, never export more ids than the cap together:
an id is admitted the first time the sum shows it while there is room, and stays admitted, so every
series, ``__other__`` included, only ever grows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from collector_processor.telemetry.selfmetrics import HistogramSnapshot, Labels, MetricsSnapshot
from collector_processor.telemetry.service_metrics import OTHER

__all__ = ["Caps", "merge"]

# Metrics whose series carry ids that clients choose, and the labels that carry them.
_BY_ENTITY = ("paymaster_scope_spend_usd_total", "paymaster_scope_spend_tokens_total")
_BY_MODEL = ("paymaster_spend_usd_total", "paymaster_spend_tokens_total")


def merge(snapshots: Iterable[MetricsSnapshot]) -> MetricsSnapshot:
    """The sum of ``snapshots``: counters and histograms added, gauges at their largest."""
    counters: dict[str, dict[Labels, float]] = {}
    histograms: dict[str, dict[Labels, HistogramSnapshot]] = {}
    gauges: dict[str, dict[Labels, float]] = {}
    helps: dict[str, str] = {}
    for snap in snapshots:
        helps.update(snap.help)
        for name, series in snap.counters.items():
            into = counters.setdefault(name, {})
            for key, value in series.items():
                into[key] = into.get(key, 0.0) + value
        for name, series in snap.gauges.items():
            into = gauges.setdefault(name, {})
            for key, value in series.items():
                into[key] = max(into.get(key, value), value)
        for name, hseries in snap.histograms.items():
            hinto = histograms.setdefault(name, {})
            for key, hist in hseries.items():
                hinto[key] = _add(hinto.get(key), hist)
    return MetricsSnapshot(counters=counters, histograms=histograms, help=helps, gauges=gauges)


def _add(total: HistogramSnapshot | None, hist: HistogramSnapshot) -> HistogramSnapshot:
    if total is None:
        return hist
    if total.buckets != hist.buckets:  # every process uses the default buckets; never seen
        return total if total.count >= hist.count else hist
    return HistogramSnapshot(
        buckets=total.buckets,
        counts=tuple(a + b for a, b in zip(total.counts, hist.counts, strict=True)),
        total=total.total + hist.total,
        count=total.count + hist.count,
    )


class Caps:
    """The cardinality caps of ``ServiceMetrics`` (``metrics.max_entities_per_scope``,
    ``metrics.max_models``) applied to a sum of processes' counts; see the module docstring."""

    def __init__(self, *, max_entities_per_scope: int, max_models: int) -> None:
        self._max_entities = max_entities_per_scope
        self._max_models = max_models
        self._entities: dict[str, set[str]] = {}
        self._models: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def apply(self, snap: MetricsSnapshot) -> MetricsSnapshot:
        """``snap`` with every id past its cap counted under ``__other__``."""
        with self._lock:
            counters = dict(snap.counters)
            for name in _BY_ENTITY:
                if name in counters:
                    counters[name] = self._fold(counters[name], self._entity)
            for name in _BY_MODEL:
                if name in counters:
                    counters[name] = self._fold(counters[name], self._model)
        return MetricsSnapshot(
            counters=counters, histograms=snap.histograms, help=snap.help, gauges=snap.gauges
        )

    @staticmethod
    def _fold(
        series: dict[Labels, float], relabel: Callable[[dict[str, str]], Labels]
    ) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        # Sorted, so that ids one sum shows for the first time are admitted in a stable order.
        for key in sorted(series):
            shown = relabel(dict(key))
            out[shown] = out.get(shown, 0.0) + series[key]
        return out

    def _entity(self, labels: dict[str, str]) -> Labels:
        scope, entity = labels.get("scope", ""), labels.get("scope_id", "")
        if entity != OTHER:
            seen = self._entities.setdefault(scope, set())
            if entity not in seen:
                if len(seen) < self._max_entities:
                    seen.add(entity)
                else:
                    labels["scope_id"] = OTHER
        return tuple(sorted(labels.items()))

    def _model(self, labels: dict[str, str]) -> Labels:
        pair = (labels.get("provider", ""), labels.get("model", ""))
        if pair != (OTHER, OTHER) and pair not in self._models:
            if len(self._models) < self._max_models:
                self._models.add(pair)
            else:
                labels["provider"], labels["model"] = OTHER, OTHER
        return tuple(sorted(labels.items()))
