"""The words Paymaster writes and reads for its enums, and the JSON form of budget API messages.

One vocabulary everywhere a person or a script meets the budget API: the CLI's tables, flags and
``--json``, the HTTP/JSON API, and ``sidecar.toml``. An enum is written as its word — the value's
name in lower case without the enum's prefix (``SCOPE_ORGANIZATION`` is ``organization``,
``ON_EXCEED_WARN`` is ``warn``, ``DIMENSION_MODEL`` is ``model``, ``DECISION_DOWNGRADE`` is
``downgrade``) — and an unset one (``*_UNSPECIFIED``) is ``null``. The words of each enum are
listed here (``SCOPES``, ``ON_EXCEED`` ...); a test holds them equal to the proto's.

``to_json(message)`` is the JSON shape of any budget API message, the same for every command and
endpoint, so a script can rely on it (``jq``):

- an object with **every field** of the message under its proto name (snake_case), whether set or
  not: a field that can be absent and is (``scope_id`` of a wildcard budget, an unset timestamp or
  nested message) is ``null``; a repeated field is a list, empty when it holds nothing;
- **money** is the exact decimal string the API carries (``"12.500000"``), never a float: use
  ``tonumber`` in jq to compute with it;
- **integers** (token counts, sequences, percentages of thresholds) are JSON numbers, 64-bit ones
  included; ``bool`` is ``true`` / ``false``;
- **timestamps** are RFC 3339 in UTC (``"2025-03-01T00:00:00Z"``, with milliseconds when they are not
  zero); **durations** are seconds, as a number;
- **enums** are their words, as above.

This module imports protobuf only when ``to_json`` is called: ``import paymaster`` never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ALERT_KINDS",
    "DECISIONS",
    "DIMENSIONS",
    "NO_MODEL",
    "ON_EXCEED",
    "RESERVATION_STATES",
    "ROLES",
    "SCOPES",
    "SPEND_SCOPES",
    "enum_number",
    "enum_word",
    "to_json",
    "words",
]

SCOPES = ("organization", "team", "agent", "workflow", "user", "request")
"""What a budget governs (``Scope``): ``request`` is the scope of request budgets only, which are
opened per request and reached by their id."""
SPEND_SCOPES = SCOPES[:5]
"""The scopes a unit of spend names ids for, and a period budget may govern; also the scope attributes
``paymaster.<scope>``."""
ON_EXCEED = ("warn", "block", "downgrade")
"""What a budget does to a request that would pass its limit (``OnExceed``)."""
DECISIONS = ("allow", "deny", "downgrade")
"""The answer to a reservation or a check (``Decision``)."""
DIMENSIONS = (*SPEND_SCOPES, "provider", "model", "day", "week", "month", "quarter", "year")
"""What a usage report is broken down by (``Dimension``)."""
RESERVATION_STATES = ("held", "committed", "released", "expired")
"""Where a reservation stands (``ReservationState``)."""
ALERT_KINDS = ("threshold",)
"""What fired an alert (``AlertKind``)."""
ROLES = ("admin", "spender", "ingester", "reader")
"""What a principal may do (a token's ``roles``: strings on the wire, not an enum)."""
NO_MODEL = "__none__"
"""The ``provider`` and ``model`` of spend that named none (an explicit cost: a paid tool, a flat
fee), in usage reports and in the metrics of the SDK and the sidecar alike — never blank, never
``unknown`` (which would say a model was used but not known)."""

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_DURATION = "google.protobuf.Duration"
_TIMESTAMP = "google.protobuf.Timestamp"


def _prefix(enum: Any) -> str:
    descriptor = getattr(enum, "DESCRIPTOR", enum)
    return _CAMEL.sub("_", descriptor.name).upper() + "_"


def enum_word(enum: Any, number: int) -> str | None:
    """The word of value ``number`` of ``enum`` (a generated enum such as ``budget_pb2.Scope``, or
    its descriptor); ``None`` for the unspecified value and for a number this version does not know."""
    descriptor = getattr(enum, "DESCRIPTOR", enum)
    value = descriptor.values_by_number.get(number)
    if value is None or value.number == 0:
        return None
    return str(value.name).removeprefix(_prefix(descriptor)).lower()


def enum_number(enum: Any, word: str) -> int:
    """The value of ``enum`` that ``word`` names (``enum_number(budget_pb2.Scope, "team")``);
    ``ValueError`` listing the words when it names none."""
    descriptor = getattr(enum, "DESCRIPTOR", enum)
    value = descriptor.values_by_name.get(_prefix(descriptor) + word.upper())
    if value is None or value.number == 0 or not word.islower():
        words = ", ".join(w for w in (enum_word(descriptor, v.number) for v in descriptor.values) if w)
        raise ValueError(f"expected one of {words}, got {word!r}")
    return int(value.number)


def to_json(message: Any) -> dict[str, Any]:
    """``message`` (any budget API message) in the JSON shape the module docstring describes."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_repeated(field):
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
            else:
                out[field.name] = [_value(field, v) for v in value]
        elif _has_presence(field) and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # newer protobuf; older ones say it in the label
    return bool(repeated) if repeated is not None else bool(field.label == field.LABEL_REPEATED)


def _has_presence(field: Any) -> bool:
    return bool(field.has_presence)


def _value(field: Any, value: Any) -> Any:
    if field.enum_type is not None:
        return enum_word(field.enum_type, value)
    if field.message_type is None:
        return value
    name = field.message_type.full_name
    if name == _TIMESTAMP:
        return _timestamp(value)
    if name == _DURATION:
        return value.seconds + value.nanos / 1e9
    return to_json(value)


def _timestamp(ts: Any) -> str:
    when = datetime.fromtimestamp(ts.seconds, tz=UTC).replace(microsecond=ts.nanos // 1000)
    spec = "milliseconds" if ts.nanos else "seconds"
    return when.isoformat(timespec=spec).replace("+00:00", "Z")


def words(enum: Any) -> Iterable[str]:
    """Every word of ``enum``, in the proto's order (the unspecified value left out)."""
    descriptor = getattr(enum, "DESCRIPTOR", enum)
    for value in descriptor.values:
        word = enum_word(descriptor, value.number)
        if word is not None:
            yield word
