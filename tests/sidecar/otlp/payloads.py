"""Hand-built OTLP exports for the tests that need exact control over the bytes (bad input, clocks,
ids, attribute types), built with opentelemetry-proto's generated messages."""

from __future__ import annotations

import os
import time
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def any_value(value: Any) -> common_pb2.AnyValue:
    out = common_pb2.AnyValue()
    if value is None:  # an empty value
        return out
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(kv(k, v) for k, v in value.items())
    elif isinstance(value, list):
        out.array_value.values.extend(any_value(v) for v in value)
    else:
        out.string_value = value
    return out


def kv(key: str, value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=any_value(value))


def span(
    attributes: dict[str, Any], *, end_ns: int | None = None, name: str = "chat", **fields: Any
) -> trace_pb2.Span:
    end = time.time_ns() if end_ns is None else end_ns
    out = trace_pb2.Span(
        trace_id=fields.pop("trace_id", os.urandom(16)),
        span_id=fields.pop("span_id", os.urandom(8)),
        name=name,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=max(end - 1_000_000_000, 0),
        end_time_unix_nano=end,
        **fields,
    )
    out.attributes.extend(kv(k, v) for k, v in attributes.items())
    return out


def export(
    spans: list[trace_pb2.Span], resource: dict[str, Any] | None = None
) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        kv(k, v) for k, v in (resource or {"service.name": "svc"}).items()
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    scope_spans.spans.extend(spans)
    return request
