"""Column helpers of the trace processor: one attribute of every span of a scope, read in C.

Each helper runs ``map`` with an ``operator`` function over the spans' raw attribute maps (see
``_view``), so a column of 512 spans is 512 hash probes in C and no Python statement per span. Only a
scope whose spans disagree (some with the current name, some with the deprecated one) takes a loop.
"""

from __future__ import annotations

import struct
from itertools import repeat
from operator import add, contains, getitem, setitem, truediv
from typing import Any

from collector_processor.otlp._view import encode_str
from collector_processor.otlp.pricing import FEMTO
from collector_processor.otlp.semconv import COST, COST_SOURCE

__all__ = ["Cache", "column", "optional", "set_costs"]

_SOURCE_VALUES = {s: encode_str(s) for s in ("configured", "library", "unknown")}
_DOUBLE_PREFIX = b"\x21"  # an AnyValue double_value
_PACK_DOUBLE = struct.Struct("<d").pack


class Cache(dict):  # type: ignore[type-arg]
    """A bounded memo: ``cache[key]`` computes a missing value once (in C on a hit)."""

    def __init__(self, compute: Any, limit: int) -> None:
        super().__init__()
        self._compute = compute
        self._limit = limit

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._compute(key)
        return value


def column(maps: list[Any], names: tuple[str, ...], default: bytes | None) -> list[Any]:
    """The raw value of the first of ``names`` each span has, or ``default``. Whole columns are read
    in C; only a scope whose spans disagree on the name takes the per-span loop."""
    for name in names:
        present = list(map(contains, maps, repeat(name)))
        if all(present):
            return list(map(getitem, maps, repeat(name)))
        if any(present):
            break
    else:
        return [default] * len(maps)
    out = []
    for a in maps:
        for name in names:
            if name in a:
                out.append(a[name])
                break
        else:
            out.append(default)
    return out


def optional(maps: list[Any], names: tuple[str, ...]) -> list[Any] | None:
    """Like ``column`` with ``None`` for absent values, or ``None`` when no span has any of ``names``."""
    if not any(any(map(contains, maps, repeat(name))) for name in names):
        return None
    return column(maps, names, None)


def set_costs(maps: list[Any], femto: list[int | None], sources: list[str]) -> None:
    """Set the cost attributes on the spans this receiver priced (an SDK's own cost is left alone)."""
    if None not in femto and "sdk" not in sources:
        values = map(add, repeat(_DOUBLE_PREFIX), map(_PACK_DOUBLE, map(truediv, femto, repeat(FEMTO))))
        list(map(setitem, maps, repeat(COST), values))
        list(map(setitem, maps, repeat(COST_SOURCE), map(_SOURCE_VALUES.__getitem__, sources)))
        return
    for a, cost, source in zip(maps, femto, sources, strict=True):
        if source == "sdk":
            continue
        if cost is not None:
            a[COST] = _DOUBLE_PREFIX + _PACK_DOUBLE(cost / FEMTO)
        a[COST_SOURCE] = _SOURCE_VALUES[source]
