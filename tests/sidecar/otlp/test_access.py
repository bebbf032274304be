"""OTLP ingestion under the trust model, with the OpenTelemetry SDK's own exporter sending a token in
``headers``: an ingester charges only spans attributed inside its grants, a forged cost from a sender
without ``trust_reported_cost`` is priced from the tokens, and nobody else may export at all.

The ingesters here are granted ``team=search`` and ``agent=*``: by default a span's service name is its
agent, and every id a span is attributed to must be granted."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.otlp.conftest import OtlpSidecar, eventually, tracer_provider
from tests.sidecar.otlp.payloads import export, span

INGESTER = "ingester-token-" + "i" * 32
TRUSTED = "trusted-token-" + "t" * 32
SPENDER = "spender-token-" + "s" * 32
ROOT = "root-token-" + "r" * 32
GPT4O = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
         "gen_ai.usage.output_tokens": 500}  # fmt: skip
COST_OF_GPT4O = Decimal("0.0125")  # 1000 * 0.005 / 1000 + 500 * 0.015 / 1000 at the test's prices


@pytest.fixture
def authed(otlp_sidecar: Callable[..., OtlpSidecar], tmp_path: Path) -> OtlpSidecar:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "collector"\ntoken = "{INGESTER}"\nroles = ["ingester"]\n'
        'grants = ["team=search", "agent=*"]\n'
        f'[[tokens]]\nname = "sdk-app"\ntoken = "{TRUSTED}"\nroles = ["ingester"]\ngrants = ["team=search", "agent=*"]\n'
        "trust_reported_cost = true\n"
        f'[[tokens]]\nname = "app"\ntoken = "{SPENDER}"\nroles = ["spender"]\ngrants = ["*"]\n'
        f'[[tokens]]\nname = "root"\ntoken = "{ROOT}"\nroles = ["admin", "reader"]\ngrants = ["*"]\n'
    )
    running = otlp_sidecar(extra=f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n')
    for team in ("search", "billing"):
        running.budgets.CreateBudget(
            pb.CreateBudgetRequest(
                budget=pb.Budget(
                    id=f"b-{team}",
                    scope=pb.SCOPE_TEAM,
                    scope_id=team,
                    limit_usd="1000000000",
                    period="monthly",
                    on_exceed=pb.ON_EXCEED_WARN,
                )
            ),
            metadata=[("authorization", f"Bearer {ROOT}")],
        )
    return running


def used(running: OtlpSidecar, team: str) -> Decimal:
    status = running.budgets.GetBudgetStatus(
        pb.GetBudgetStatusRequest(budget_id=f"b-{team}"), metadata=[("authorization", f"Bearer {ROOT}")]
    )
    return Decimal(status.used_usd)


def exporter(running: OtlpSidecar, token: str | None) -> OTLPSpanExporter:
    headers = {"authorization": f"Bearer {token}"} if token else None
    return OTLPSpanExporter(endpoint=running.grpc_address, insecure=True, headers=headers, timeout=5)


def send(running: OtlpSidecar, token: str | None, **attributes: object) -> SpanExportResult:
    """One GenAI span through the SDK's exporter, attributed by its resource."""
    out = exporter(running, token)
    results: list[SpanExportResult] = []
    real_export = out.export
    out.export = lambda spans: results.append(real_export(spans)) or results[-1]  # type: ignore[method-assign]
    provider = tracer_provider(out, **{"service.name": "app", **attributes})
    with provider.get_tracer("t").start_as_current_span("chat") as s:
        s.set_attributes(GPT4O)
    provider.shutdown()
    return results[0]


def test_an_ingester_token_in_the_exporters_headers_charges_its_own_team(authed: OtlpSidecar) -> None:
    assert send(authed, INGESTER, **{"paymaster.team": "search"}) is SpanExportResult.SUCCESS
    eventually(lambda: used(authed, "search") == COST_OF_GPT4O)


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "unauthenticated"), ("wrong-" + "w" * 40, "unauthenticated"), (SPENDER, "forbidden")],
)
def test_an_export_without_an_ingesters_credentials_is_refused_and_charges_nothing(
    authed: OtlpSidecar, token: str | None, code: str
) -> None:
    assert send(authed, token, **{"paymaster.team": "search"}) is SpanExportResult.FAILURE
    raw = authed.raw_export()
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with pytest.raises(grpc.RpcError) as info:
        raw(export([span(GPT4O)], {"service.name": "app", "paymaster.team": "search"}).SerializeToString(),
            metadata=metadata, timeout=5)  # fmt: skip
    expected = (
        grpc.StatusCode.UNAUTHENTICATED if code == "unauthenticated" else grpc.StatusCode.PERMISSION_DENIED
    )
    assert info.value.code() == expected
    assert authed.counter("paymaster_otlp_requests_total", outcome=code) >= 2
    assert used(authed, "search") == 0
    assert authed.counter("paymaster_auth_denied_total", listener="otlp") >= 2


def test_spans_attributed_outside_the_grants_are_counted_and_not_charged(authed: OtlpSidecar) -> None:
    raw = authed.raw_export()
    request = export([span(GPT4O), span(GPT4O)], {"service.name": "app", "paymaster.team": "billing"})
    reply = raw(request.SerializeToString(), metadata=[("authorization", f"Bearer {INGESTER}")], timeout=5)
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(reply)
    assert "2 spans accepted but not charged" in answer.partial_success.error_message
    assert "team='billing', agent='app', outside the sender's grants" in answer.partial_success.error_message
    assert "(and" not in answer.partial_success.error_message
    assert authed.counter("paymaster_otlp_spans_charged_total", outcome="forbidden") == 2
    assert used(authed, "billing") == 0


def test_a_forged_cost_is_priced_from_the_tokens_unless_the_sender_is_trusted(authed: OtlpSidecar) -> None:
    forged = {**GPT4O, "paymaster.cost_usd": "1000000"}
    raw = authed.raw_export()
    for _ in range(2):  # the attack that charged a team $2,000,000 with two exports
        request = export([span(forged)], {"service.name": "app", "paymaster.team": "search"})
        raw(request.SerializeToString(), metadata=[("authorization", f"Bearer {INGESTER}")], timeout=5)
    eventually(lambda: used(authed, "search") == 2 * COST_OF_GPT4O)
    request = export(
        [span({**GPT4O, "paymaster.cost_usd": "0.5"})], {"service.name": "app", "paymaster.team": "search"}
    )
    raw(request.SerializeToString(), metadata=[("authorization", f"Bearer {TRUSTED}")], timeout=5)
    eventually(lambda: used(authed, "search") == 2 * COST_OF_GPT4O + Decimal("0.5"))


def test_otlp_http_takes_the_same_token_and_refuses_without_it(authed: OtlpSidecar) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    def send_http(token: str | None) -> SpanExportResult:
        headers = {"authorization": f"Bearer {token}"} if token else None
        out = HttpSpanExporter(endpoint=f"{authed.http_url}/v1/traces", headers=headers, timeout=5)
        results: list[SpanExportResult] = []
        real_export = out.export
        out.export = lambda spans: results.append(real_export(spans)) or results[-1]  # type: ignore[method-assign]
        provider = tracer_provider(out, **{"service.name": "app", "paymaster.team": "search"})
        with provider.get_tracer("t").start_as_current_span("chat") as s:
            s.set_attributes(GPT4O)
        provider.shutdown()
        return results[0]

    assert send_http(None) is SpanExportResult.FAILURE
    assert send_http(SPENDER) is SpanExportResult.FAILURE
    assert authed.counter("paymaster_otlp_requests_total", transport="http", outcome="unauthenticated") == 1
    assert authed.counter("paymaster_otlp_requests_total", transport="http", outcome="forbidden") == 1
    assert send_http(INGESTER) is SpanExportResult.SUCCESS
    eventually(lambda: used(authed, "search") == COST_OF_GPT4O)


def test_otlp_over_tls_on_both_transports(otlp_sidecar: Callable[..., OtlpSidecar], tmp_path: Path) -> None:
    import ssl
    import urllib.error
    import urllib.request

    from tests.certs import Authority

    ca = Authority()
    cert, key = ca.server().write(tmp_path, "server")
    running = otlp_sidecar(otlp=f'[receivers.otlp.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    grpc_out = OTLPSpanExporter(
        endpoint=f"localhost:{running.receiver.grpc.port}",
        credentials=grpc.ssl_channel_credentials(root_certificates=ca.pem),
        timeout=5,
    )
    provider = tracer_provider(grpc_out, **{"service.name": "app"})
    with provider.get_tracer("t").start_as_current_span("chat") as s:
        s.set_attributes(GPT4O)
    provider.shutdown()
    eventually(lambda: running.counter("paymaster_otlp_requests_total", transport="grpc", outcome="ok") == 1)
    body = export([span(GPT4O)]).SerializeToString()
    context = ssl.create_default_context(cafile=str(ca.write(tmp_path)))
    request = urllib.request.Request(
        f"https://localhost:{running.receiver.http.port}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, context=context, timeout=5) as reply:
        assert reply.status == 200
    with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA
        urllib.request.urlopen(request, context=ssl.create_default_context(), timeout=5)
