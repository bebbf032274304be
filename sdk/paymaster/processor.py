"""``ReservationSpanProcessor``: the reservation id on every span a governed agent call starts.

A step run under a ``SidecarBudget`` carries ``paymaster.reservation_id`` on its own span, and puts
it in the OpenTelemetry baggage while its agent runs. Spans started meanwhile — an instrumented model
client's ``chat gpt-4o`` span with its GenAI usage attributes, an HTTP call to a model gateway — are
the sidecar's trace ingestion's to charge unless they say the spend is accounted for already. Add
this processor to your tracer provider and each of them gets the attribute too::

    provider.add_span_processor(ReservationSpanProcessor())

Baggage also crosses process boundaries when your propagators include W3C baggage (the default
``tracecontext,baggage``), so a downstream service with this processor stamps its spans as well.
This module imports the OpenTelemetry SDK; ``import paymaster`` does not.
"""

from __future__ import annotations

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from paymaster.telemetry import RESERVATION_ATTRIBUTE

__all__ = ["ReservationSpanProcessor"]


class ReservationSpanProcessor(SpanProcessor):
    """Copies the ``paymaster.reservation_id`` baggage entry onto every span as it starts."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        reservation = baggage.get_baggage(RESERVATION_ATTRIBUTE, parent_context)
        if reservation and RESERVATION_ATTRIBUTE not in (span.attributes or {}):
            span.set_attribute(RESERVATION_ATTRIBUTE, str(reservation))

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def __repr__(self) -> str:
        return "ReservationSpanProcessor()"
