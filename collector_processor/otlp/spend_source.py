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
from typing import Literal

__all__ = ["Service", "SpendSource"]

Service = tuple[str | None, str | None]
"""``(service.namespace, service.name)``."""

_MAX_SERVICES = 100_000


class SpendSource:
    """The per-service decision, remembered in memory (thread-safe)."""

    def __init__(self, mode: Literal["auto", "spans", "metrics"], *, hold_ms: int) -> None:
        self.mode = mode
        self._hold_ms = hold_ms
        self._lock = threading.Lock()
        self._span_services: set[Service] = set()
        self._first_heard: dict[Service, int] = {}

    def spans_charged(self, service: Service) -> bool:
        """Whether this service's GenAI spans are charged (always, except under ``metrics``)."""
        return self.mode != "metrics"

    def saw_genai_spans(self, service: Service) -> None:
        """Note that ``service`` sends GenAI spans: from now on its metrics are not charged."""
        if self.mode != "auto" or service in self._span_services:
            return
        with self._lock:
            if len(self._span_services) >= _MAX_SERVICES:
                self._span_services.clear()  # forgetting errs towards holding metrics back again
            self._span_services.add(service)

    def metrics_verdict(self, service: Service, now_ms: int) -> Literal["charge", "skip", "hold"]:
        """``charge`` this service's token metrics, ``skip`` them (its spans are charged), or ``hold``
        them until ``auto_hold_seconds`` have passed since the service was first heard of."""
        if self.mode == "spans":
            return "skip"
        if self.mode == "metrics":
            return "charge"
        if service in self._span_services:
            return "skip"
        with self._lock:
            if len(self._first_heard) >= _MAX_SERVICES:
                self._first_heard.clear()
            first = self._first_heard.setdefault(service, now_ms)
        return "charge" if now_ms - first >= self._hold_ms else "hold"
