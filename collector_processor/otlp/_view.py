"""A fast view of OTLP trace exports, derived at import from opentelemetry-proto's own descriptors.

Reading attributes through the generated ``Span`` costs a Python object per key-value pair and per
value: several microseconds a span, more than pricing it. The wire format allows a cheaper reading.
A ``KeyValue`` is encoded exactly like an entry of ``map<string, bytes>``, so this view declares
``attributes`` of ``Span`` and ``Resource`` as such a map: the parser (upb, in C) indexes them by
key, a lookup is a hash probe, and a value is its raw encoded ``AnyValue`` bytes, decoded here only
for the few attributes the receiver reads. Span events, links and status are opaque bytes. Everything
else keeps the package's declarations, so the view refuses a request malformed at any level it reads
and serialises back to a valid export (with the attributes the receiver added). What it does not read
(attribute values it does not use, events, links, status) passes through unexamined, for the
collector downstream to check.

Nothing is copied from the ``.proto`` files: the descriptors come from the installed package, and
only the declared types of those fields are changed.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "INVALID",
    "TraceRequestView",
    "decode_int",
    "decode_str",
    "encode_double",
    "encode_str",
    "value_kind",
]

_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def _file(module: Any) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _message(proto: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    for message in proto.message_type:
        if message.name == name:
            return message
    raise LookupError(f"opentelemetry-proto has no message {name!r} in {proto.name}")


def _field(message: descriptor_pb2.DescriptorProto, name: str) -> descriptor_pb2.FieldDescriptorProto:
    for field in message.field:
        if field.name == name:
            return field
    raise LookupError(f"opentelemetry-proto's {message.name} has no field {name!r}")


def _as_raw_map(message: descriptor_pb2.DescriptorProto, name: str) -> None:
    """Re-declare ``repeated KeyValue name`` as ``map<string, bytes>`` (the same bytes on the wire)."""
    field = _field(message, name)
    if field.type_name != ".opentelemetry.proto.common.v1.KeyValue":
        raise LookupError(f"{message.name}.{name} is not a list of KeyValue")
    entry = message.nested_type.add(name="RawAttributesEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=_OPTIONAL, type=_STRING)
    entry.field.add(name="value", number=2, label=_OPTIONAL, type=_BYTES)
    field.type = _MESSAGE
    field.type_name = f"{message.name}.RawAttributesEntry"


def _as_opaque(message: descriptor_pb2.DescriptorProto, *names: str) -> None:
    for name in names:
        field = _field(message, name)
        field.type = _BYTES
        field.ClearField("type_name")


def _build() -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file(common_pb2))
    resource = _file(resource_pb2)
    _as_raw_map(_message(resource, "Resource"), "attributes")
    pool.Add(resource)
    trace = _file(trace_pb2)
    span = _message(trace, "Span")
    _as_raw_map(span, "attributes")
    _as_opaque(span, "events", "links", "status")
    pool.Add(trace)
    pool.Add(_file(trace_service_pb2))
    name = trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR.full_name
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


TraceRequestView: Any = _build()
"""``ExportTraceServiceRequest`` with raw attribute maps; ``FromString`` parses an export."""


# -- AnyValue bytes -------------------------------------------------------------------------------
# field 1 string_value, 2 bool_value, 3 int_value, 4 double_value, 5 array, 6 kvlist, 7 bytes
_KINDS = {
    0x0A: "string",
    0x10: "bool",
    0x18: "int",
    0x21: "double",
    0x2A: "array",
    0x32: "kvlist",
    0x3A: "bytes",
}
_DOUBLE = struct.Struct("<d")
INVALID = object()
"""What the decoders return for a value of the wrong type or a malformed one."""


def value_kind(raw: bytes) -> str:
    """``string``, ``int`` ... of an encoded AnyValue; ``empty`` for none, ``unknown`` for a future kind."""
    if not raw:
        return "empty"
    return _KINDS.get(raw[0], "unknown")


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    """The varint starting at ``at`` and the offset after it; ``ValueError`` when truncated or too long."""
    value = shift = 0
    while True:
        if at >= len(raw) or shift > 63:
            raise ValueError("malformed varint")
        byte = raw[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def decode_int(raw: bytes) -> int | object:
    """An integer AnyValue (or a double holding a whole number, as some exporters send counts); ``None``
    for an empty value; ``INVALID`` otherwise. Negative numbers are returned as such."""
    if not raw:
        return None
    kind = raw[0]
    try:
        if kind == 0x18:
            value, end = _varint(raw, 1)
            if end != len(raw):
                return INVALID
            return value - (1 << 64) if value >= 1 << 63 else value
        if kind == 0x21 and len(raw) == 9:
            number = _DOUBLE.unpack_from(raw, 1)[0]
            if number.is_integer():
                return int(number)
    except (ValueError, OverflowError):
        pass
    return INVALID


def decode_str(raw: bytes) -> str | object:
    """A string AnyValue; ``None`` for an empty value; ``INVALID`` for another type or bad UTF-8."""
    if not raw:
        return None
    if raw[0] != 0x0A:
        return INVALID
    try:
        size, start = _varint(raw, 1)
        if start + size != len(raw):
            return INVALID
        return raw[start:].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return INVALID


def encode_double(value: float) -> bytes:
    return b"\x21" + _DOUBLE.pack(value)


def encode_str(value: str) -> bytes:
    data = value.encode("utf-8")
    size = len(data)
    prefix = bytearray(b"\x0a")
    while size >= 0x80:
        prefix.append((size & 0x7F) | 0x80)
        size >>= 7
    prefix.append(size)
    return bytes(prefix) + data
