"""Where a service's spend comes from: its GenAI spans or its token usage metrics, never both.

An application instrumented for both sends each call twice, once as a span and once inside a metric
point. ``spend_source = "spans"`` or ``"metrics"`` picks one for everybody. ``"auto"`` picks per
service (``service.namespace`` + ``service.name``): spans as soon as the service has sent a GenAI span,
its metrics otherwise. Since metric and span exports of a service arrive independently, a service's
metrics are held back for ``auto_hold_seconds`` after this sidecar first hears of the service, giving
its spans time to show up. Holding back costs nothing for cumulative metrics (the next point charges
everything since the series started) and keeps delta points waiting in ``HeldPoints``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final, Literal

__all__ = ["MAX_SERVICES", "Service", "SpendSource"]

Service = tuple[str | None, str | None]
"""``(service.namespace, service.name)``."""

MAX_SERVICES: Final = 100_000
"""Services remembered under ``auto``; past it the least recently heard of is forgotten."""

_SPANS: Final = -1
"""In place of a first-heard time: the service sends GenAI spans."""


class SpendSource:
    """The per-service decision, remembered in memory (thread-safe).

    Under ``auto`` each service has one entry: the time it was first heard of, or the fact that it sends
    GenAI spans. Past ``MAX_SERVICES`` the least recently heard of is forgotten — both facts at once, so
    a forgotten service is new again: its metrics are held, not charged on top of its spans.
    """

    def __init__(self, mode: Literal["auto", "spans", "metrics"], *, hold_ms: int) -> None:
        self.mode = mode
        self._hold_ms = hold_ms
        self._lock = threading.Lock()
        self._services: OrderedDict[Service, int] = OrderedDict()
        """Service -> epoch ms it was first heard of, or ``_SPANS``; least recently heard of first."""

    def spans_charged(self, service: Service) -> bool:
        """Whether this service's GenAI spans are charged (always, except under ``metrics``)."""
        return self.mode != "metrics"

    def saw_genai_spans(self, service: Service) -> None:
        """Note that ``service`` sends GenAI spans: from now on its metrics are not charged."""
        if self.mode != "auto":
            return
        with self._lock:
            self._heard(service, _SPANS)
            self._services[service] = _SPANS

    def metrics_verdict(self, service: Service, now_ms: int) -> Literal["charge", "skip", "hold"]:
        """``charge`` this service's token metrics, ``skip`` them (its spans are charged), or ``hold``
        them until ``auto_hold_seconds`` have passed since the service was first heard of."""
        if self.mode == "spans":
            return "skip"
        if self.mode == "metrics":
            return "charge"
        with self._lock:
            first = self._heard(service, now_ms)
        if first == _SPANS:
            return "skip"
        return "charge" if now_ms - first >= self._hold_ms else "hold"

    def remembered(self) -> int:
        """How many services are remembered."""
        with self._lock:
            return len(self._services)

    def _heard(self, service: Service, first: int) -> int:
        """Mark ``service`` the most recently heard of, remembering ``first`` if it is new; returns what
        is remembered of it. Called under the lock."""
        services = self._services
        known = services.get(service)
        if known is not None:
            services.move_to_end(service)
            return known
        if len(services) >= MAX_SERVICES:
            services.popitem(last=False)
        services[service] = first
        return first
