"""The OTLP receiver end to end: the OpenTelemetry SDK's own exporters send spans to a real sidecar on
loopback; the ledger is read back through the budget API, and forwarded spans at a real downstream
OTLP receiver.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.otlp.conftest import Downstream, OtlpSidecar, eventually, tracer_provider

D = Decimal
GPT4O = {
    "gen_ai.provider.name": "openai",
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 500,
}  # 1000 * 0.005/1k + 500 * 0.015/1k = 0.0125


def usage(running: OtlpSidecar, *group_by: int) -> pb.GetUsageResponse:
    return running.budgets.GetUsage(pb.GetUsageRequest(group_by=list(group_by)))


def rows(report: pb.GetUsageResponse) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(r.key), r.totals.cost_usd) for r in report.rows]


def emit(provider: TracerProvider, name: str, attributes: dict[str, Any]) -> None:
    with provider.get_tracer("tests.openai.instrumentation").start_as_current_span(
        name, attributes=attributes
    ):
        pass


def test_spans_sent_by_the_sdk_grpc_exporter_are_priced_charged_and_forwarded_enriched(
    otlp_sidecar: Callable[..., OtlpSidecar], downstream: Downstream
) -> None:
    running = otlp_sidecar(
        extra=f'[receivers.otlp.forward]\nendpoint = "{downstream.endpoint}"\ncompression = "none"'
    )
    running.budgets.CreateBudget(
        pb.CreateBudgetRequest(
            budget=pb.Budget(
                id="search",
                scope=pb.SCOPE_TEAM,
                scope_id="search",
                limit_usd="10",
                period="daily",
                on_exceed=pb.ON_EXCEED_BLOCK,
            )
        )
    )
    exporter = OTLPSpanExporter(
        endpoint=running.grpc_address, insecure=True, compression=grpc.Compression.Gzip
    )
    provider = tracer_provider(exporter, **{"service.name": "chat-api", "k8s.namespace.name": "search"})
    emit(provider, "chat gpt-4o", GPT4O)
    emit(
        provider, "GET /health", {"http.request.method": "GET"}
    )  # not a model call: forwarded, never charged
    # The export was acknowledged, so the spend is already in the ledger: no waiting.
    report = usage(running, pb.DIMENSION_TEAM, pb.DIMENSION_AGENT, pb.DIMENSION_MODEL)
    assert rows(report) == [(("search", "chat-api", "gpt-4o"), "0.012500")]
    assert (report.total.input_tokens, report.total.output_tokens) == (1000, 500)
    status = running.budgets.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="search"))
    assert status.used_usd == "0.012500"
    downstream.wait_for(lambda: len(downstream.spans()) == 2)
    forwarded = {s.name: {a.key: a.value for a in s.attributes} for s in downstream.spans()}
    assert forwarded["chat gpt-4o"]["gen_ai.usage.cost"].double_value == 0.0125
    assert forwarded["chat gpt-4o"]["gen_ai.usage.cost.source"].string_value == "configured"
    assert forwarded["chat gpt-4o"]["gen_ai.usage.input_tokens"].int_value == 1000
    assert "gen_ai.usage.cost" not in forwarded["GET /health"]
    resource = {
        a.key: a.value.string_value for a in downstream.traces[0].resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "chat-api"
    assert running.counter("paymaster_otlp_spans_received_total", transport="grpc") == 2
    assert running.counter("paymaster_otlp_spans_priced_total", source="configured") == 1
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="charged") == 1
    assert running.counter("paymaster_otlp_cost_usd_total") == 0.0125
    assert (
        running.counter("paymaster_otlp_requests_total", signal="traces", transport="grpc", outcome="ok") == 2
    )
    eventually(lambda: running.counter("paymaster_otlp_forwarded_total", signal="traces") == 2)
    provider.shutdown()


def test_the_sdk_http_exporter_with_gzip_is_charged_like_grpc(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    exporter = HttpSpanExporter(endpoint=f"{running.http_url}/v1/traces", compression=HttpCompression.Gzip)
    provider = tracer_provider(exporter, **{"service.name": "chat-api", "paymaster.team": "ads"})
    emit(provider, "chat gpt-4o", GPT4O)
    assert rows(usage(running, pb.DIMENSION_TEAM)) == [(("ads",), "0.012500")]
    assert running.counter("paymaster_otlp_requests_total", transport="http", outcome="ok") == 1
    assert running.counter("paymaster_otlp_spans_received_total", transport="http") == 1
    provider.shutdown()


def test_a_retried_export_never_charges_twice(otlp_sidecar: Callable[..., OtlpSidecar]) -> None:
    running = otlp_sidecar()
    memory = InMemorySpanExporter()
    provider = tracer_provider(memory, **{"service.name": "chat-api"})
    emit(provider, "chat gpt-4o", GPT4O)
    emit(provider, "chat gpt-4o", {**GPT4O, "gen_ai.usage.output_tokens": 100})
    spans = memory.get_finished_spans()
    grpc_exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    http_exporter = HttpSpanExporter(endpoint=f"{running.http_url}/v1/traces")
    assert grpc_exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    # The exporter retries the whole batch, over either transport, after losing an answer.
    assert grpc_exporter.export(spans) is SpanExportResult.SUCCESS
    assert http_exporter.export(spans) is SpanExportResult.SUCCESS
    assert grpc_exporter.export(spans) is SpanExportResult.SUCCESS
    assert usage(running).total.cost_usd == "0.019000"  # 0.0125 + (0.005 + 0.0015), once each
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="charged") == 2
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="duplicate") == 5
    grpc_exporter.shutdown()
    http_exporter.shutdown()
    provider.shutdown()


def test_spans_carrying_a_reservation_id_are_left_to_the_sdk(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    """Committed, still held or never seen (a fail-open replay id): the receiver charges none of them and
    never settles the reservation on a span's word — the SDK's own commit charges the held one."""
    running = otlp_sidecar()
    budgets = running.budgets
    budgets.CreateBudget(pb.CreateBudgetRequest(budget=pb.Budget(
        id="ml", scope=pb.SCOPE_TEAM, scope_id="ml", limit_usd="5", period="daily", on_exceed=pb.ON_EXCEED_BLOCK)))  # fmt: skip
    scopes = pb.ScopeIds(team="ml")
    committed = budgets.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd="0.05"))
    budgets.Commit(pb.CommitRequest(reservation_id=committed.reservation_id, actual_usd="0.0125"))
    held = budgets.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd="0.05"))
    exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    provider = tracer_provider(exporter, **{"service.name": "ml-runner", "paymaster.team": "ml"})
    sdk_attributes = {**GPT4O, "paymaster.cost_usd": "0.0125", "gen_ai.usage.cost": 0.0125,
                      "gen_ai.usage.cost.source": "configured"}  # fmt: skip
    for name, claim in (
        ("invoke_agent summarise", committed.reservation_id),
        ("invoke_agent classify", held.reservation_id),  # a lease, or a step whose commit is on its way
        ("invoke_agent draft", "fail-open:6f1c"),  # spend the SDK's journal replays
    ):
        emit(provider, name, {**sdk_attributes, "paymaster.reservation_id": claim})
    status = budgets.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="ml"))
    assert (status.used_usd, status.reserved_usd) == ("0.012500", "0.050000")
    commit = budgets.Commit(pb.CommitRequest(reservation_id=held.reservation_id, actual_usd="0.0125"))
    assert not commit.duplicate
    status = budgets.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="ml"))
    assert (status.used_usd, status.reserved_usd) == ("0.025000", "0.000000")
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="sdk") == 3
    assert running.counter("paymaster_otlp_spans_charged_total") == 3
    assert running.counter("paymaster_otlp_cost_usd_total") == 0
    assert running.counter("paymaster_otlp_spans_priced_total", source="sdk") == 3
    provider.shutdown()


def test_an_sdk_span_keeps_its_cost_and_aggregate_spans_are_never_charged(
    otlp_sidecar: Callable[..., OtlpSidecar], downstream: Downstream
) -> None:
    running = otlp_sidecar(extra=f'[receivers.otlp.forward]\nendpoint = "{downstream.endpoint}"')
    exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    provider = tracer_provider(exporter, **{"service.name": "pipeline", "paymaster.workflow": "nightly"})
    # The SDK priced this call with a negotiated rate the sidecar does not know: its cost stands.
    emit(provider, "invoke_agent draft", {**GPT4O, "paymaster.cost_usd": "0.0099", "gen_ai.usage.cost": 0.0099,
                                          "gen_ai.usage.cost.source": "configured"})  # fmt: skip
    # The run span sums its steps: a cost, no token counts, so no usage of its own.
    emit(provider, "paymaster.run nightly", {"gen_ai.usage.cost": 0.0099, "paymaster.cost_usd": "0.0099"})
    assert usage(running).total.cost_usd == "0.009900"
    downstream.wait_for(lambda: len(downstream.spans()) == 2)
    draft = next(s for s in downstream.spans() if s.name == "invoke_agent draft")
    assert {a.key: a.value.double_value for a in draft.attributes}["gen_ai.usage.cost"] == 0.0099
    assert running.counter("paymaster_otlp_spans_priced_total", source="sdk") == 1
    provider.shutdown()


def test_a_span_shaped_like_a_third_party_instrumentation_is_priced_from_either_naming(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    """OpenLLMetry-style spans still use the deprecated names; current instrumentations the new ones."""
    running = otlp_sidecar()
    exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    provider = tracer_provider(exporter, **{"service.name": "support-bot", "k8s.namespace.name": "support"})
    emit(provider, "openai.chat", {  # deprecated names, as OpenLLMetry's OpenAI instrumentation sends them
        "llm.request.type": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.usage.prompt_tokens": 2000,
        "gen_ai.usage.completion_tokens": 100,
        "gen_ai.usage.cache_read_input_tokens": 1000,
        "llm.usage.total_tokens": 2100,
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": "Summarise the ticket.",
        "gen_ai.completion.0.content": "The customer wants a refund.",
    })  # fmt: skip
    emit(provider, "chat claude-sonnet-4-5", {  # current names, as the OpenTelemetry instrumentations send them
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 3000,
        "gen_ai.usage.output_tokens": 200,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 1000,
        "gen_ai.agent.name": "triage",
    })  # fmt: skip
    report = usage(running, pb.DIMENSION_AGENT, pb.DIMENSION_PROVIDER, pb.DIMENSION_MODEL)
    # gpt-4o (dated: the undated price applies): 1000 plain * 0.005 + 1000 cached * 0.0025 + 100 * 0.015 per 1k
    # claude: 1000 * 0.003 + 1000 * 0.0003 + 1000 * 0.00375 + 200 * 0.015 per 1k
    assert rows(report) == [
        (("support-bot", "openai", "gpt-4o-2024-08-06"), "0.009000"),
        (("triage", "anthropic", "claude-sonnet-4-5"), "0.010050"),
    ]
    assert report.total.input_tokens == 5000
    assert rows(usage(running, pb.DIMENSION_TEAM)) == [(("support",), "0.019050")]
    provider.shutdown()


def test_spend_nobody_is_named_for_is_charged_to_the_unattributed_bucket(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    running.budgets.CreateBudget(pb.CreateBudgetRequest(budget=pb.Budget(
        id="stray", scope=pb.SCOPE_ORGANIZATION, scope_id="unattributed", limit_usd="1", period="daily",
        on_exceed=pb.ON_EXCEED_WARN)))  # fmt: skip
    exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    provider = tracer_provider(exporter)  # the SDK's default "unknown_service:..." names nobody
    emit(provider, "chat gpt-4o", GPT4O)
    named = tracer_provider(exporter, **{"service.name": "billing"})
    emit(named, "chat gpt-4o", {**GPT4O, "enduser.id": "ada"})
    assert rows(usage(running, pb.DIMENSION_ORGANIZATION)) == [
        (("",), "0.012500"),
        (("unattributed",), "0.012500"),
    ]
    assert rows(usage(running, pb.DIMENSION_USER, pb.DIMENSION_AGENT)) == [
        (("ada", "billing"), "0.012500"),
        (("unattributed", "unattributed"), "0.012500"),
    ]
    assert (
        running.budgets.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="stray")).used_usd == "0.012500"
    )
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="unattributed") == 1
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="charged") == 1
    provider.shutdown()
    named.shutdown()


def test_span_attributes_override_their_resource_and_mappings_are_configurable(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(
        extra='[receivers.otlp.attribution]\nteam = ["deployment.environment.name"]\nagent = []'
    )
    exporter = OTLPSpanExporter(endpoint=running.grpc_address, insecure=True)
    provider = tracer_provider(
        exporter,
        **{"service.name": "svc", "paymaster.organization": "acme", "deployment.environment.name": "prod"},
    )
    emit(provider, "chat gpt-4o", GPT4O)
    emit(provider, "chat gpt-4o", {**GPT4O, "paymaster.organization": "globex", "paymaster.user": "bo"})
    report = usage(
        running, pb.DIMENSION_ORGANIZATION, pb.DIMENSION_TEAM, pb.DIMENSION_AGENT, pb.DIMENSION_USER
    )
    assert rows(report) == [
        (("acme", "prod", "", ""), "0.012500"),
        (("globex", "prod", "", "bo"), "0.012500"),
    ]
    provider.shutdown()


def test_an_export_is_acknowledged_only_once_its_spend_is_durable(
    otlp_sidecar: Callable[..., OtlpSidecar], tmp_path: Path
) -> None:
    """While another process holds the ledger's write lock past the busy timeout, an export is answered
    UNAVAILABLE with a retry delay and charges nothing; sent again, it is charged once."""
    running = otlp_sidecar(db="locked.db", store="busy_timeout_ms = 50")
    memory = InMemorySpanExporter()
    provider = tracer_provider(memory, **{"service.name": "chat-api"})
    emit(provider, "chat gpt-4o", GPT4O)
    body = encode_spans(memory.get_finished_spans()).SerializeToString()
    blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            running.raw_export()(body, timeout=5)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "the ledger is busy; retry" in refused.value.details()  # type: ignore[attr-defined]
    assert "google.rpc.retryinfo-bin" in dict(refused.value.trailing_metadata())  # type: ignore[attr-defined]
    assert usage(running).total.cost_usd == "0.000000"
    assert running.counter("paymaster_otlp_requests_total", outcome="unavailable") == 1
    running.raw_export()(body, timeout=5)
    running.raw_export()(body, timeout=5)
    assert usage(running).total.cost_usd == "0.012500"
    provider.shutdown()


def test_sdk_spans_in_process_with_an_in_memory_provider_use_the_same_names(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    """The SDK's own agent spans (``usage_attributes``) are read as GenAI usage by the receiver."""
    from paymaster._metering import MeasuredUsage
    from paymaster.telemetry import usage_attributes

    running = otlp_sidecar()
    measured = MeasuredUsage(
        cost_usd=D("0.0125"), cost_source="configured", input_tokens=1000, output_tokens=500, total_tokens=1500,
        provider="openai", model="gpt-4o",
    )  # fmt: skip
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-app"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=running.grpc_address, insecure=True))
    )
    emit(provider, "invoke_agent answer", usage_attributes(measured))
    assert rows(usage(running, pb.DIMENSION_AGENT)) == [(("sdk-app",), "0.012500")]
    assert running.counter("paymaster_otlp_spans_priced_total", source="sdk") == 1
    provider.shutdown()
