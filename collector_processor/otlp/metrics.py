"""The pricing processor for token usage metrics: spend from ``gen_ai.client.token.usage``.

For services whose spend comes from metrics (see ``spend_source``), each data point of a token usage
metric (a histogram, exponential histogram or monotonic sum of tokens, with ``gen_ai.token.type``
``input`` or ``output``) is priced by its model like a span and attributed by its resource and point
attributes. Cumulative points become running series (charged by how much they grew since the last
point the ledger saw, so retries, restarts and reordering never charge twice); delta points become
items keyed by their series and time.

Metric exports are small and rare next to traces, so this reads the package's generated messages.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.metrics.v1 import metrics_pb2

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.types import SeriesItem, UsageGroup, UsageItem
from collector_processor.otlp._view import decode_str
from collector_processor.otlp.access import forbidden_message
from collector_processor.otlp.attribution import Attributor, ResourceScopes
from collector_processor.otlp.pricing import ModelPrice, SpanPricer, femto_to_micros
from collector_processor.otlp.semconv import MODEL, PROVIDER
from collector_processor.otlp.spend_source import Service, SpendSource
from collector_processor.otlp.traces import WindowPolicy

__all__ = ["MetricsPlan", "MetricsProcessor"]

_CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
_DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
_TOKEN_TYPE = "gen_ai.token.type"
_INPUT_TYPES = frozenset({"input", "prompt"})
_OUTPUT_TYPES = frozenset({"output", "completion"})
_SLOT_MS = 900_000
_MAX_TOKENS = 10**15
_MAX_HELD = 10_000
_MAX_PROBLEMS = 5


@dataclass(kw_only=True, slots=True)
class MetricsPlan:
    """What to charge for one metrics export (or for held points now due)."""

    groups: list[UsageGroup] = field(default_factory=list)
    unattributed: list[bool] = field(default_factory=list)
    items: list[UsageItem] = field(default_factory=list)
    """Delta points."""
    series: list[SeriesItem] = field(default_factory=list)
    """Cumulative points."""
    points: int = 0
    """Data points in the export."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Token points settled without charging: unpriced, invalid, skipped, held."""
    problems: list[str] = field(default_factory=list)
    _index: dict[tuple[ScopeSet, ModelPrice, int], int] = field(default_factory=dict)
    _end: list[int] = field(default_factory=list)

    def group(self, scopes: tuple[ScopeSet, bool], price: ModelPrice, at_ms: int) -> int:
        key = (scopes[0], price, at_ms // _SLOT_MS)
        g = self._index.get(key)
        if g is None:
            g = self._index[key] = len(self.groups)
            self.groups.append(
                UsageGroup(scopes=scopes[0], provider=price.provider, model=price.model, occurred_ms=0)
            )
            self.unattributed.append(scopes[1])
            self._end.append(at_ms)
        self._end[g] = max(self._end[g], at_ms)
        return g

    def finish(self) -> MetricsPlan:
        self.groups = [
            UsageGroup(scopes=g.scopes, provider=g.provider, model=g.model, occurred_ms=end)
            for g, end in zip(self.groups, self._end, strict=True)
        ]
        return self

    def problem(self, message: str) -> None:
        self.outcomes["invalid"] += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(message)

    def forbid(self, scopes: ScopeSet) -> None:
        """A point attributed outside the sender's grants: counted, named, not charged."""
        self.outcomes["forbidden"] += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(forbidden_message(scopes))


@dataclass(frozen=True, kw_only=True, slots=True)
class _Held:
    """A delta point waiting for its service's hold to end."""

    service: Service
    at_ms: int
    uid: bytes
    scopes: tuple[ScopeSet, bool]
    price: ModelPrice
    micros: int
    tokens: tuple[int, int]


class MetricsProcessor:
    """Turns token usage metrics into ledger plans; remembers held delta points between exports."""

    def __init__(
        self,
        *,
        pricer: SpanPricer,
        attributor: Attributor,
        spend_source: SpendSource,
        token_metrics: list[str],
    ) -> None:
        self._pricer = pricer
        self._attributor = attributor
        self._spend_source = spend_source
        self._names = frozenset(token_metrics)
        self._held: list[_Held] = []
        self._held_lock = threading.Lock()

    def process(
        self,
        request: Any,
        window: WindowPolicy,
        now_ms: int,
        *,
        permitted: Callable[[ScopeSet], bool] | None = None,
    ) -> MetricsPlan:
        """Plan the charge for ``request`` (an ``ExportMetricsServiceRequest``), with due held points.
        A point attributed to scopes ``permitted`` refuses (outside the sender's grants) is not charged
        nor held: it is counted ``forbidden``."""
        plan = MetricsPlan()
        for resource_metrics in request.resource_metrics:
            resource = _raw(resource_metrics.resource.attributes)
            context = self._attributor.for_resource(resource)
            identity = _canonical(resource)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope
                for metric in scope_metrics.metrics:
                    points, temporality = _points(metric)
                    plan.points += len(points)
                    if metric.name not in self._names or not points:
                        continue
                    verdict = self._spend_source.metrics_verdict(context.service, now_ms)
                    prefix = b"\x00".join(
                        (identity, scope.name.encode(), scope.version.encode(), metric.name.encode())
                    )
                    for point in points:
                        self._point(point, temporality, prefix, context, verdict, window, plan, permitted)
        self._release_due(plan, now_ms)
        return plan.finish()

    def due(self, now_ms: int, *, final: bool = False) -> MetricsPlan:
        """Held points whose hold has ended (all still held, when ``final``: their service sent no
        spans while this sidecar ran, so their metrics are its spend)."""
        plan = MetricsPlan()
        self._release_due(plan, now_ms, final=final)
        return plan.finish()

    def _point(
        self, point: Any, temporality: int, prefix: bytes, context: ResourceScopes, verdict: str,
        window: WindowPolicy, plan: MetricsPlan, permitted: Callable[[ScopeSet], bool] | None,
    ) -> None:  # fmt: skip
        attributes = _raw(point.attributes)
        token_type = decode_str(attributes.get(_TOKEN_TYPE, b""))
        value = _value(point)
        at_ms = point.time_unix_nano // 1_000_000
        start_ms = point.start_time_unix_nano // 1_000_000
        if token_type not in _INPUT_TYPES and token_type not in _OUTPUT_TYPES:
            plan.problem(f"{_TOKEN_TYPE}: expected input or output, got {token_type!r}")
            return
        if value is None:
            plan.problem("a token count must be a finite, non-negative number")
            return
        if at_ms <= 0 or at_ms > window.newest_ms:
            plan.problem("time_unix_nano is not set or in the future")
            return
        if verdict == "skip":
            plan.outcomes["skipped"] += 1
            return
        price = self._price(attributes)
        tokens = (value, 0) if token_type in _INPUT_TYPES else (0, value)
        femto = self._pricer.cost_femto(price, tokens[0], tokens[1], 0, 0, 0)
        if femto is None:
            plan.outcomes["unpriced"] += 1
            return
        scopes = context.resolve(attributes)
        if permitted is not None and not permitted(scopes[0]):
            plan.forbid(scopes[0])
            return
        series_id = hashlib.blake2b(
            b"\x00".join((prefix, _canonical(attributes), str(start_ms).encode())), digest_size=24
        ).digest()
        micros = femto_to_micros(femto)
        if temporality == _CUMULATIVE:
            if verdict == "hold":
                plan.outcomes["held"] += 1  # the first point after the hold charges everything since start
                return
            g = plan.group(scopes, price, min(at_ms, window.newest_ms))
            plan.series.append((series_id, g, start_ms < window.oldest_ms, micros, *tokens, 0, 0, 0, 0))
            return
        if at_ms < window.oldest_ms:
            plan.outcomes["stale"] += 1
            return
        if verdict == "hold":
            self._hold(_Held(service=context.service, at_ms=at_ms, uid=series_id, scopes=scopes, price=price,
                             micros=micros, tokens=tokens), plan)  # fmt: skip
            return
        g = plan.group(scopes, price, at_ms)
        plan.items.append((at_ms, series_id, g, micros, *tokens, 0, 0, 0, 0))

    def _price(self, attributes: dict[str, bytes]) -> ModelPrice:
        provider = next((decode_str(attributes[n]) for n in PROVIDER if n in attributes), "")
        model = next((decode_str(attributes[n]) for n in MODEL if n in attributes), "")
        if not isinstance(model, str) or not model.strip():
            return ModelPrice(
                provider="", model="", source="unknown", rates=None, reason="the point names no model"
            )
        return self._pricer.model(provider if isinstance(provider, str) else "", model.strip())

    def _hold(self, held: _Held, plan: MetricsPlan) -> None:
        with self._held_lock:
            if len(self._held) >= _MAX_HELD:
                plan.outcomes["dropped"] += 1
                return
            self._held.append(held)
        plan.outcomes["held"] += 1

    def _release_due(self, plan: MetricsPlan, now_ms: int, *, final: bool = False) -> None:
        with self._held_lock:
            if not self._held:
                return
            keep: list[_Held] = []
            for held in self._held:
                verdict = self._spend_source.metrics_verdict(held.service, now_ms)
                if verdict == "hold" and not final:
                    keep.append(held)
                elif verdict == "skip":
                    plan.outcomes["skipped"] += 1
                else:
                    g = plan.group(held.scopes, held.price, held.at_ms)
                    plan.items.append((held.at_ms, held.uid, g, held.micros, *held.tokens, 0, 0, 0, 0))
            self._held = keep


def _points(metric: Any) -> tuple[list[Any], int]:
    """The data points of a token metric and their temporality (0 for kinds that carry no tokens)."""
    kind = metric.WhichOneof("data")
    if kind == "histogram":
        return list(metric.histogram.data_points), metric.histogram.aggregation_temporality
    if kind == "exponential_histogram":
        data = metric.exponential_histogram
        return list(data.data_points), data.aggregation_temporality
    if kind == "sum":
        points = list(metric.sum.data_points)
        return (points, metric.sum.aggregation_temporality) if metric.sum.is_monotonic else (points, 0)
    if kind in ("gauge", "summary"):
        return list(getattr(metric, kind).data_points), 0
    return [], 0


def _value(point: Any) -> int | None:
    """Tokens in a point: a histogram's sum, or a sum's value; ``None`` when unusable."""
    if isinstance(point, metrics_pb2.NumberDataPoint):
        number = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
    elif point.HasField("sum"):
        number = point.sum
    else:
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return None
    tokens = round(number)
    return tokens if 0 <= tokens <= _MAX_TOKENS else None


def _raw(attributes: Any) -> dict[str, bytes]:
    """KeyValues as the raw view's map: key -> encoded AnyValue."""
    return {kv.key: kv.value.SerializeToString() for kv in attributes}


def _canonical(attributes: dict[str, bytes]) -> bytes:
    """A stable encoding of an attribute set, whatever order it was sent in."""
    return b"\x01".join(key.encode() + b"\x02" + attributes[key] for key in sorted(attributes))
