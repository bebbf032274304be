"""Spans that name a request budget: a service instrumented only with OpenTelemetry (no Paymaster SDK)
whose ``BaggageSpanProcessor`` copies the ``paymaster.request_budget`` baggage entry onto its spans is
charged to the request budget by the OTLP receiver, once, with its ``service.name``; a span the SDK
claims is charged nowhere here; a malformed id charges only the span's own scopes."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.otlp.conftest import OtlpSidecar, tracer_provider

GPT4O = {
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 500,
}  # $0.0125
REQUEST_KEY = "paymaster.request_budget"


def _status(running: OtlpSidecar, request_id: str) -> pb.BudgetStatus:
    return running.budgets.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=request_id))


def test_an_opentelemetry_only_service_is_charged_to_the_request_budget_in_its_baggage(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    opened = running.budgets.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="0.05"))
    memory = InMemorySpanExporter()
    provider = tracer_provider(
        OTLPSpanExporter(endpoint=running.grpc_address, insecure=True), **{"service.name": "summarizer"}
    )
    # Only the request budget's entry: an upstream step's claim in the same baggage must not come along.
    provider.add_span_processor(BaggageSpanProcessor(lambda key: key == REQUEST_KEY))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    incoming = baggage.set_baggage("paymaster.reservation_id", "upstream-step", context.get_current())
    incoming = baggage.set_baggage(REQUEST_KEY, opened.id, incoming)
    token = context.attach(incoming)
    try:
        with provider.get_tracer("openai").start_as_current_span("chat gpt-4o", attributes=GPT4O):
            pass
    finally:
        context.detach(token)
    (finished,) = memory.get_finished_spans()
    assert (
        finished.attributes[REQUEST_KEY] == opened.id
        and "paymaster.reservation_id" not in finished.attributes
    )
    status = _status(running, opened.id)
    assert status.used_usd == "0.012500"
    assert [(s.service, s.used_usd) for s in status.request.by_service] == [("summarizer", "0.012500")]
    # The same span exported again (a retry) is charged nothing more.
    OTLPSpanExporter(endpoint=running.grpc_address, insecure=True).export([finished])
    assert _status(running, opened.id).used_usd == "0.012500"
    usage = running.budgets.GetUsage(pb.GetUsageRequest(scopes=pb.ScopeIds(agent="summarizer")))
    assert usage.total.cost_usd == "0.012500"  # its own scopes are charged as well
    provider.shutdown()


def test_spans_the_sdk_claims_are_charged_to_no_request_budget_here(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    opened = running.budgets.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="1"))
    provider = tracer_provider(
        OTLPSpanExporter(endpoint=running.grpc_address, insecure=True), **{"service.name": "planner"}
    )
    claimed = {
        **GPT4O,
        REQUEST_KEY: opened.id,
        "paymaster.reservation_id": "0190c1b2a3",
        "paymaster.cost_usd": "0.0125",
    }
    with provider.get_tracer("paymaster").start_as_current_span("invoke_agent plan", attributes=claimed):
        pass
    malformed = {**GPT4O, REQUEST_KEY: "not-an-id"}
    with provider.get_tracer("openai").start_as_current_span("chat gpt-4o", attributes=malformed):
        pass
    assert _status(running, opened.id).used_usd == "0.000000"
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="sdk") == 1
    assert Decimal(running.budgets.GetUsage(pb.GetUsageRequest()).total.cost_usd) == Decimal("0.0125")
    provider.shutdown()


def test_spans_of_one_export_naming_different_request_budgets_are_charged_apart(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    first = running.budgets.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="1"))
    second = running.budgets.OpenRequestBudget(pb.OpenRequestBudgetRequest(limit_usd="1"))
    exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    memory = InMemorySpanExporter()
    provider = tracer_provider(memory, **{"service.name": "gateway"})
    tracer = provider.get_tracer("openai")
    for request_id in (first.id, second.id, second.id, ""):
        attributes = {**GPT4O, REQUEST_KEY: request_id} if request_id else GPT4O
        with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):
            pass
    exporter.export(memory.get_finished_spans())  # one export with all four
    assert _status(running, first.id).used_usd == "0.012500"
    assert _status(running, second.id).used_usd == "0.025000"
    assert running.budgets.GetUsage(pb.GetUsageRequest()).total.cost_usd == "0.050000"
    provider.shutdown()
