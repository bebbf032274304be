"""Spend from token usage metrics: the OpenTelemetry SDK's histogram ``gen_ai.client.token.usage``,
exported by its OTLP exporter, charges services that send no spans, once, and never as well as spans."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from collector_processor.domain.clock import ManualClock
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.otlp.conftest import Downstream, OtlpSidecar, eventually, tracer_provider

CALL = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}


@contextmanager
def token_meter(
    running: OtlpSidecar, service: str, *, delta: bool = False
) -> Iterator[tuple[Any, Callable[[], None]]]:
    """A histogram of tokens on an SDK meter provider exporting to the sidecar; yields it and a flush."""
    temporality = {Histogram: AggregationTemporality.DELTA} if delta else None
    exporter = OTLPMetricExporter(
        endpoint=running.grpc_address, insecure=True, preferred_temporality=temporality
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": service}))
    histogram = provider.get_meter("tests.genai").create_histogram(
        "gen_ai.client.token.usage", unit="{token}"
    )
    try:
        yield histogram, lambda: provider.force_flush()
    finally:
        provider.shutdown()


def record(histogram: Any, tokens_in: int, tokens_out: int, **extra: str) -> None:
    histogram.record(tokens_in, {**CALL, "gen_ai.token.type": "input", **extra})
    histogram.record(tokens_out, {**CALL, "gen_ai.token.type": "output", **extra})


def spent(running: OtlpSidecar) -> str:
    return str(running.budgets.GetUsage(pb.GetUsageRequest()).total.cost_usd)


def test_cumulative_token_metrics_are_charged_by_their_growth_once_and_forwarded(
    otlp_sidecar: Callable[..., OtlpSidecar], downstream: Downstream
) -> None:
    forward = f'[receivers.otlp.forward]\nendpoint = "{downstream.endpoint}"'
    running = otlp_sidecar(extra=f'[receivers.otlp.charging]\nspend_source = "metrics"\n{forward}')
    with token_meter(running, "batch-job") as (histogram, flush):
        record(histogram, 1000, 500)
        flush()
        assert spent(running) == "0.012500"
        record(histogram, 1000, 0)
        flush()  # the cumulative sums grew by 1000 input tokens
        assert spent(running) == "0.017500"
        flush()  # nothing new: the same totals again
        assert spent(running) == "0.017500"
    report = running.budgets.GetUsage(pb.GetUsageRequest(group_by=[pb.DIMENSION_AGENT, pb.DIMENSION_MODEL]))
    assert [(tuple(r.key), r.totals.input_tokens, r.totals.output_tokens) for r in report.rows] == [
        (("batch-job", "gpt-4o"), 2000, 500)
    ]
    # Four exports of two points (the last at shutdown): 2 new, then 1 grown and 1 unchanged, then unchanged.
    assert running.counter("paymaster_otlp_metric_points_charged_total", outcome="charged") == 3
    assert running.counter("paymaster_otlp_metric_points_charged_total", outcome="duplicate") == 5
    assert running.counter("paymaster_otlp_metric_points_received_total", transport="grpc") == 8
    downstream.wait_for(lambda: sum(len(r.resource_metrics) for r in downstream.metrics) == 4)
    names = {
        m.name
        for r in downstream.metrics
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert names == {"gen_ai.client.token.usage"}
    eventually(lambda: running.counter("paymaster_otlp_forwarded_total", signal="metrics") == 8)


def test_delta_token_metrics_are_charged_once_per_point_even_when_an_export_is_retried(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(extra='[receivers.otlp.charging]\nspend_source = "metrics"')
    sent: list[bytes] = []
    original = running.receiver.pipeline.prepare

    def remember(signal: str, body: bytes, transport: str, *principal: Any) -> Any:
        if signal == "metrics":
            sent.append(body)
        return original(signal, body, transport, *principal)

    running.receiver.pipeline.prepare = remember
    with token_meter(running, "batch-job", delta=True) as (histogram, flush):
        record(histogram, 1000, 500)
        flush()
        record(histogram, 1000, 0)
        flush()
    assert spent(running) == "0.017500"
    for body in list(sent):  # every export again, as a client that lost the answers would
        running.raw_export("metrics")(body, timeout=5)
    assert spent(running) == "0.017500"


def test_auto_charges_metrics_only_for_services_that_send_no_genai_spans(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(extra="[receivers.otlp.charging]\nauto_hold_seconds = 0")
    spans = tracer_provider(
        OTLPSpanExporter(endpoint=running.grpc_address, insecure=True), **{"service.name": "traced"}
    )
    with spans.get_tracer("tests").start_as_current_span("chat gpt-4o", attributes={
        **CALL, "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 500}):  # fmt: skip
        pass
    with (
        token_meter(running, "traced") as (traced, flush_traced),
        token_meter(running, "untraced") as (other, flush),
    ):
        record(traced, 1000, 500)  # the same call, seen as metrics too: not charged again
        record(other, 2000, 0)
        flush_traced()
        flush()
    report = running.budgets.GetUsage(pb.GetUsageRequest(group_by=[pb.DIMENSION_AGENT]))
    assert [(tuple(r.key), r.totals.cost_usd) for r in report.rows] == [
        (("traced",), "0.012500"),
        (("untraced",), "0.010000"),
    ]
    # Two points per export, and shutting the meter providers down exported them once more.
    assert running.counter("paymaster_otlp_metric_points_charged_total", outcome="skipped") == 4
    spans.shutdown()


def test_auto_holds_a_new_services_metrics_until_its_spans_had_time_to_arrive(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    clock = ManualClock(time.time_ns() // 1_000_000)
    running = otlp_sidecar(extra="[receivers.otlp.charging]\nauto_hold_seconds = 30", clock=clock)
    with (
        token_meter(running, "cumulative") as (histogram, flush),
        token_meter(running, "delta", delta=True) as (deltas, flush_deltas),
    ):
        record(histogram, 1000, 500)
        record(deltas, 1000, 0)
        flush()
        flush_deltas()
        assert spent(running) == "0.000000"  # held
        assert running.counter("paymaster_otlp_metric_points_charged_total", outcome="held") == 4
        clock.advance(seconds=31)
        running.receiver.pipeline.tick()  # the held delta point is charged
        assert spent(running) == "0.005000"
        flush()  # the next cumulative point charges everything since the series started
        assert spent(running) == "0.017500"


def test_spend_source_spans_never_charges_metrics(otlp_sidecar: Callable[..., OtlpSidecar]) -> None:
    running = otlp_sidecar(extra='[receivers.otlp.charging]\nspend_source = "spans"')
    with token_meter(running, "batch-job") as (histogram, flush):
        record(histogram, 1000, 500)
        flush()
    assert spent(running) == "0.000000"
    assert (
        running.counter("paymaster_otlp_metric_points_charged_total", outcome="skipped") == 4
    )  # flush, shutdown
