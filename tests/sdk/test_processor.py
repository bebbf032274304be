"""``ReservationSpanProcessor`` and the claim the executor puts in the baggage: every span started inside
an agent step says who charges its spend — the SDK under the step's reservation, or the step's own span
(``local:<span id>``) when the SDK charges nothing and the sidecar's trace ingestion charges that span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster import Runner, Scopes, SidecarBudget, Step
from paymaster.processor import ReservationSpanProcessor

from .agents import MetricOutput
from .conftest import InProcessSidecar
from .test_telemetry import Providers


@pytest.fixture
def otel() -> Iterator[Providers]:
    p = Providers()
    p.tracer_provider.add_span_processor(ReservationSpanProcessor())
    yield p
    p.tracer_provider.shutdown()
    p.meter_provider.shutdown()


class Instrumented:
    """Calls a model through an instrumented client: one ``chat`` span with GenAI usage per call."""

    def __init__(self, tracer: Any, inner: Runner | None = None) -> None:
        self.tracer = tracer
        self.inner = inner

    async def run(self, data: Any) -> MetricOutput:
        with self.tracer.start_as_current_span("chat gpt-4o", attributes={"gen_ai.usage.input_tokens": 12}):
            pass
        if self.inner is not None:
            await self.inner.run_async(data)
        return MetricOutput(value=data, cost_usd=0.01)


def claim(span: Any) -> Any:
    return (span.attributes or {}).get("paymaster.reservation_id")


def test_a_step_the_sdk_does_not_charge_claims_its_inner_spans_for_its_own_span(otel: Providers) -> None:
    """Without a budget the ingestion charges the step span; the client span inside it records the same
    call, so it points at the step span instead of being charged a second time."""
    client = otel.tracer_provider.get_tracer("model-client")
    otel.runner(Step("draft", Instrumented(client))).run(0)
    (step_span,) = otel.finished("invoke_agent draft")
    (client_span,) = otel.finished("chat gpt-4o")
    assert claim(step_span) is None
    assert step_span.context is not None
    assert claim(client_span) == f"local:{step_span.context.span_id:016x}"


def test_each_step_states_its_own_claim_and_its_spans_follow_the_innermost_step(
    sidecar: InProcessSidecar, otel: Providers
) -> None:
    """A run nested in a governed step: the inner step (no budget of its own) is charged from its own
    span, not covered by the outer reservation; spans follow the step they were started in."""
    sidecar.admin.budget("search-daily", "10")
    client = otel.tracer_provider.get_tracer("model-client")
    inner = otel.runner(Step("inner", Instrumented(client)))
    budget = SidecarBudget(sidecar.address, scopes=Scopes(team="search"), journal_dir=None, deadline_s=5)
    result = otel.runner(Step("outer", Instrumented(client, inner)), budget=budget).run(0)
    budget.close()
    reservation = result.step_history[0].budget.reservation_id  # type: ignore[union-attr]
    (outer_span,) = otel.finished("invoke_agent outer")
    (inner_span,) = otel.finished("invoke_agent inner")
    assert claim(outer_span) == reservation
    assert claim(inner_span) is None  # the processor leaves the SDK's step spans alone
    assert inner_span.context is not None
    by_parent = {s.parent.span_id: claim(s) for s in otel.finished("chat gpt-4o") if s.parent}
    assert by_parent == {
        outer_span.context.span_id: reservation,  # type: ignore[union-attr]
        inner_span.context.span_id: f"local:{inner_span.context.span_id:016x}",
    }


def test_an_untraced_governed_step_still_claims_the_spans_its_agent_makes(sidecar: InProcessSidecar) -> None:
    """The runner records no spans (a no-op provider), but the model client traces to a real one: its
    spans carry the step's reservation, since the SDK commits that spend."""
    sidecar.admin.budget("search-daily", "10")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(ReservationSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    budget = SidecarBudget(sidecar.address, scopes=Scopes(team="search"), journal_dir=None, deadline_s=5)
    runner = Runner(
        Step("draft", Instrumented(provider.get_tracer("model-client"))),
        budget=budget,
        tracer_provider=trace.NoOpTracerProvider(),
    )
    result = runner.run(0)
    budget.close()
    (client_span,) = spans.get_finished_spans()
    assert claim(client_span) == result.step_history[0].budget.reservation_id  # type: ignore[union-attr]
    provider.shutdown()


def test_an_untraced_step_nobody_else_charges_takes_an_enclosing_claim_out() -> None:
    """A run without a budget and without spans, called where an upstream claim is in the baggage: its
    agent's spans are this run's spend, charged by the ingestion, not covered by the upstream step."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(ReservationSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    runner = Runner(
        Step("draft", Instrumented(provider.get_tracer("model-client"))),
        tracer_provider=trace.NoOpTracerProvider(),
    )
    token = context.attach(baggage.set_baggage("paymaster.reservation_id", "upstream-reservation"))
    try:
        runner.run(0)
    finally:
        context.detach(token)
    (client_span,) = spans.get_finished_spans()
    assert claim(client_span) is None
    provider.shutdown()
