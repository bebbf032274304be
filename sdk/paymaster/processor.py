"""``ReservationSpanProcessor``: the step's claim on every span a governed agent call starts.

The SDK's step span says who charges its step's spend (``paymaster.reservation_id``: the SDK, under
that id; absent: the sidecar's trace ingestion, from the step span itself). Spans started while the
agent runs — an instrumented model client's ``chat gpt-4o`` span with its GenAI usage attributes, an
HTTP call to a model gateway — record the same spend a second time, and the ingestion would charge them
unless they say it is accounted for. The step puts its claim in the OpenTelemetry baggage while its
agent runs; add this processor to your tracer provider and each of those spans gets it as the
``paymaster.reservation_id`` attribute::

    provider.add_span_processor(ReservationSpanProcessor())

The SDK's own step spans are left alone: each states its own claim. A span that already carries the
attribute keeps it. The request budget a span runs under (the ``paymaster.request_budget`` baggage
entry, ``SidecarBudget.request_budget``) is copied onto every span, the SDK's too, so that a trace view
shows where a request's money went and the OTLP receiver charges a span it charges to that request
budget as well. Baggage also crosses process boundaries when your propagators include W3C baggage
(the default ``tracecontext,baggage``), so a downstream service with this processor stamps its spans
too: install it there only when that service's spend is part of what the calling step reports (a model
gateway whose usage the agent returns); docs/otlp.md, "Who charges a span", has the whole contract.
This module imports the OpenTelemetry SDK; ``import paymaster`` does not.
"""

from __future__ import annotations

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from paymaster.request_budget import REQUEST_BUDGET_KEY
from paymaster.telemetry import RESERVATION_ATTRIBUTE, STEP_ATTRIBUTE

__all__ = ["ReservationSpanProcessor"]


class ReservationSpanProcessor(SpanProcessor):
    """Copies the ``paymaster.reservation_id`` baggage entry onto every span as it starts, except the
    SDK's own step spans and spans that carry the attribute already; and the ``paymaster.request_budget``
    entry onto every span that does not carry one."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        entries = baggage.get_all(parent_context)
        if not entries:
            return
        attributes = span.attributes or {}
        request = entries.get(REQUEST_BUDGET_KEY)
        if request and REQUEST_BUDGET_KEY not in attributes:
            span.set_attribute(REQUEST_BUDGET_KEY, str(request))
        claim = entries.get(RESERVATION_ATTRIBUTE)
        if claim and RESERVATION_ATTRIBUTE not in attributes and STEP_ATTRIBUTE not in attributes:
            span.set_attribute(RESERVATION_ATTRIBUTE, str(claim))

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def __repr__(self) -> str:
        return "ReservationSpanProcessor()"
