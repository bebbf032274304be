"""Bad input never takes the receiver down: each kind gets its OTLP status and its counter, and the
next good export is charged as usual."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.otlp.conftest import OtlpSidecar
from tests.sidecar.otlp.payloads import export, span

GOOD = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500}  # fmt: skip


def post(running: OtlpSidecar, path: str, body: bytes, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    host, port = running.receiver.http.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/x-protobuf", **headers}
        )
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def message(body: bytes) -> str:
    return str(status_pb2.Status.FromString(body).message)


def charged(running: OtlpSidecar) -> str:
    return str(running.budgets.GetUsage(pb.GetUsageRequest()).total.cost_usd)


def assert_still_serving(running: OtlpSidecar, expected: str = "0.012500") -> None:
    running.raw_export()(export([span(GOOD)]).SerializeToString(), timeout=5)
    assert charged(running) == expected


@pytest.mark.parametrize("signal", ["traces", "metrics"])
def test_malformed_protobuf_is_invalid_argument_over_grpc(
    otlp_sidecar: Callable[..., OtlpSidecar], signal: str
) -> None:
    running = otlp_sidecar()
    with pytest.raises(grpc.RpcError) as error:
        running.raw_export(signal)(b"\x0a\xff\xff\xff\x0f garbage", timeout=5)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error.value.details().startswith(f"the request is not a valid OTLP {signal} export")  # type: ignore[attr-defined]
    assert (
        running.counter("paymaster_otlp_requests_total", signal=signal, transport="grpc", outcome="invalid")
        == 1
    )
    assert_still_serving(running)


def test_malformed_protobuf_is_400_over_http(otlp_sidecar: Callable[..., OtlpSidecar]) -> None:
    running = otlp_sidecar()
    status, body, _ = post(running, "/v1/traces", b"\x0a\xff\xff\xff\x0f garbage")
    assert status == 400
    assert message(body).startswith("the request is not a valid OTLP traces export")
    assert running.counter("paymaster_otlp_requests_total", transport="http", outcome="invalid") == 1
    assert_still_serving(running)


def test_an_export_above_the_size_limit_is_refused_over_grpc_even_when_it_arrives_compressed(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(otlp="", extra="[receivers.otlp.charging]\nmax_message_bytes = 4096")
    big = export([span({**GOOD, "gen_ai.prompt.0.content": "x" * 8000})]).SerializeToString()
    for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
        with pytest.raises(grpc.RpcError) as error:
            running.raw_export()(big, timeout=5, compression=compression)
        assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "above the 4,096 bytes this receiver accepts" in error.value.details()  # type: ignore[attr-defined]
    assert running.counter("paymaster_otlp_requests_total", transport="grpc", outcome="too_large") == 2
    assert charged(running) == "0.000000"
    assert_still_serving(running)


def test_an_export_above_the_size_limit_is_413_over_http_including_a_small_gzip_bomb(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(extra="[receivers.otlp.charging]\nmax_message_bytes = 4096")
    big = export([span({**GOOD, "gen_ai.prompt.0.content": "x" * 8000})]).SerializeToString()
    status, body, _ = post(running, "/v1/traces", big)
    assert status == 413
    assert "above the 4,096 bytes this receiver accepts" in message(body)
    bomb = gzip.compress(big + b"\x00" * 1_000_000)
    assert len(bomb) < 4096
    status, body, _ = post(running, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert status == 413
    assert running.counter("paymaster_otlp_requests_total", transport="http", outcome="too_large") == 2
    assert_still_serving(running)


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "text"),
    [
        (
            "/v1/traces",
            {"Content-Type": "application/json"},
            b"{}",
            415,
            "Content-Type application/json is not supported",
        ),
        ("/v1/traces", {"Content-Encoding": "br"}, b"x", 415, "Content-Encoding br is not supported"),
        ("/v1/traces", {"Content-Encoding": "gzip"}, b"not gzip", 400, "the body is not valid gzip data"),
        ("/v1/logs", {}, b"", 404, "no OTLP endpoint at /v1/logs"),
    ],
)
def test_http_requests_that_are_not_otlp_protobuf_exports_are_refused_with_their_status(
    otlp_sidecar: Callable[..., OtlpSidecar],
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    text: str,
) -> None:
    running = otlp_sidecar()
    got, answer, _ = post(running, path, body, **headers)
    assert got == status
    assert text in message(answer)
    assert_still_serving(running)


def test_other_http_methods_are_405(otlp_sidecar: Callable[..., OtlpSidecar]) -> None:
    running = otlp_sidecar()
    host, port = running.receiver.http.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/v1/traces")
    response = connection.getresponse()
    assert (response.status, response.getheader("Allow")) == (405, "POST")
    connection.close()


def test_a_chunked_http_body_is_read(otlp_sidecar: Callable[..., OtlpSidecar]) -> None:
    running = otlp_sidecar()
    body = export([span(GOOD)]).SerializeToString()
    host, port = running.receiver.http.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/v1/traces", body=iter([body[:10], body[10:]]),
                       headers={"Content-Type": "application/x-protobuf"}, encode_chunked=True)  # fmt: skip
    assert connection.getresponse().status == 200
    connection.close()
    assert charged(running) == "0.012500"


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"gen_ai.usage.input_tokens": "1000"}, "gen_ai.usage.input_tokens: must be an integer token count"),
        (
            {"gen_ai.usage.input_tokens": {"n": 1}},
            "gen_ai.usage.input_tokens: must be an integer token count",
        ),
        ({"gen_ai.usage.input_tokens": 10**13}, "exceeds the most one call may report (100000000"),
        ({"gen_ai.usage.output_tokens": -5}, "gen_ai.usage.output_tokens: must not be negative, got -5"),
        (
            {"gen_ai.usage.cache_read.input_tokens": 1.5},
            "gen_ai.usage.cache_read.input_tokens: must be an integer",
        ),
    ],
)
def test_spans_with_unusable_usage_are_accepted_not_charged_and_named_in_the_partial_success(
    otlp_sidecar: Callable[..., OtlpSidecar], attributes: dict[str, Any], problem: str
) -> None:
    running = otlp_sidecar()
    bad = span({**GOOD, **attributes})
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(
        running.raw_export()(export([bad, span(GOOD)]).SerializeToString(), timeout=5)
    )
    partial = answer.partial_success
    assert partial.rejected_spans == 0  # accepted (and forwarded), only not charged
    assert partial.error_message.startswith(f"1 span accepted but not charged: span {bad.trace_id.hex()}/")
    assert problem in partial.error_message
    assert charged(running) == "0.012500"  # the good span in the same export
    assert running.counter("paymaster_otlp_spans_charged_total", outcome="invalid") == 1
    assert running.counter("paymaster_otlp_requests_total", outcome="ok") == 1


def test_an_attribute_of_a_type_newer_than_this_receiver_is_unusable_not_fatal(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    request = export([span(GOOD)])
    attribute = request.resource_spans[0].scope_spans[0].spans[0].attributes[2]
    assert attribute.key == "gen_ai.usage.input_tokens"
    body = request.SerializeToString()
    value = attribute.value.SerializeToString()  # b"\x18\xe8\x07": field 3, varint
    future_kind = b"\x40" + value[1:]  # field 8, a kind AnyValue does not have (yet)
    body = body.replace(value, future_kind)
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(running.raw_export()(body, timeout=5))
    assert "gen_ai.usage.input_tokens: must be an integer token count" in answer.partial_success.error_message
    assert charged(running) == "0.000000"
    assert_still_serving(running)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"end_ns": 0}, "end_time_unix_nano is not set"),
        ({"end_ns": 2**62}, "ends in the future"),
        ({"trace_id": b""}, "trace_id or span_id is missing or malformed"),
    ],
)
def test_spans_without_a_usable_time_or_id_are_not_charged(
    otlp_sidecar: Callable[..., OtlpSidecar], fields: dict[str, Any], problem: str
) -> None:
    running = otlp_sidecar()
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(
        running.raw_export()(export([span(GOOD, **fields)]).SerializeToString(), timeout=5)
    )
    assert problem in answer.partial_success.error_message
    assert charged(running) == "0.000000"
