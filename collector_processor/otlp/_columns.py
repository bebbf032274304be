"""Column helpers of the trace processor: one attribute of every span of a scope, read in C.

``Columns`` runs ``map`` with an ``operator`` function over the spans' raw attribute maps (see
``_view``), so a column of 512 spans is 512 hash probes in C and no Python statement per span. A name
the first span has is read in one pass; only a scope whose spans disagree (some with the current name,
some with the deprecated one) takes a loop. ``Presence`` rules out names no span of an export has from
the export's bytes, without a probe per span.
"""

from __future__ import annotations

import struct
from itertools import compress, repeat
from operator import add, contains, getitem, ne, setitem, truediv
from typing import Any

from collector_processor.otlp._view import encode_str
from collector_processor.otlp.pricing import FEMTO
from collector_processor.otlp.semconv import COST, COST_SOURCE

__all__ = ["Cache", "Columns", "Presence"]

_SOURCE_VALUES = {s: encode_str(s) for s in ("configured", "library", "unknown")}
_DOUBLE_PREFIX = b"\x21"  # an AnyValue double_value
_PACK_DOUBLE = struct.Struct("<d").pack
# Substring searches of the payload, each ruling out a family of names at once. On spans of up to
# _SEARCHED_BYTES_PER_SPAN bytes a search costs about as much as two or three probes of every span, so
# only families of several names are searched; on spans heavier than that (long prompts recorded as
# attributes) probing the spans is cheaper.
_FAMILIES = ("paymaster.", "gen_ai.usage.cache_", "gen_ai.usage.reasoning")
_USAGE = b"gen_ai.usage."
_SEARCHED_BYTES_PER_SPAN = 1536


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


class Presence:
    """Which attribute names may be on a span of one export, decided from the bytes it was parsed from.

    An attribute's key is on the wire verbatim (a ``KeyValue`` key is its UTF-8 bytes, in one piece), so
    a name whose bytes do not occur anywhere in the payload is on no span: absence is proven exactly. A
    name that does occur (as a key, or only inside some value) is looked up as usual, and so is every
    name when there is no payload or its spans are too heavy for a search to pay.
    """

    __slots__ = ("_counts", "_counts_read", "_found", "_payload")

    def __init__(self, payload: bytes | None, spans: int) -> None:
        """``payload``: the bytes the export was parsed from; ``spans``: how many spans it holds."""
        if payload is not None and len(payload) > spans * _SEARCHED_BYTES_PER_SPAN:
            payload = None
        self._payload = payload
        self._found: dict[str, bool] = {}
        self._counts = -1
        self._counts_read = 0

    def counts_read(self, keys: int) -> None:
        """Note that ``keys`` input or output token counts were read (one name per span and count)."""
        self._counts_read += keys

    def only_counts(self) -> bool:
        """Whether the token counts read so far are every ``gen_ai.usage.*`` key in the export: then no
        span of the scopes read so far or to come has any other (no cache or reasoning counts).

        Exact: every such key of a span is on the wire, in one piece, at its own offset, and the prefix
        cannot overlap itself, so the payload holds at least as many occurrences as there are keys
        (more when the prefix also appears in values, events or duplicated keys: then ``False``).
        """
        if self._payload is None:
            return False
        if self._counts < 0:
            self._counts = self._payload.count(_USAGE)
        return self._counts == self._counts_read

    def may_have(self, name: str) -> bool:
        """``False`` only when no span of the export has an attribute ``name``."""
        if self._payload is None or not name.startswith(_FAMILIES):
            return True
        family = next(f for f in _FAMILIES if name.startswith(f))
        found = self._found.get(family)
        if found is None:
            found = self._found[family] = family.encode() in self._payload
        return found


class Columns:
    """The raw attribute maps of one scope's spans, read one attribute of all of them at a time.

    A map's ``[name]`` inserts an empty value when the name is missing (protobuf's map semantics), so a
    column is read in a single pass and, only when an empty value shows up, the maps that grew are told
    apart from those that hold a real empty value by their sizes before the read, and restored.
    """

    __slots__ = ("_sizes", "maps")

    def __init__(self, maps: list[Any], sizes: list[int] | None = None) -> None:
        self.maps = maps
        self._sizes = sizes

    def select(self, selectors: list[bool]) -> Columns:
        """The columns of the spans ``selectors`` keeps."""
        sizes = None if self._sizes is None else list(compress(self._sizes, selectors))
        return Columns(list(compress(self.maps, selectors)), sizes)

    def has(self, name: str) -> bool:
        """Whether any span has ``name``."""
        return any(map(contains, self.maps, repeat(name)))

    def column(self, names: tuple[str, ...], default: bytes | None) -> list[Any]:
        """The raw value of the first of ``names`` each span has, or ``default``."""
        maps = self.maps
        for k, name in enumerate(names):
            if name in maps[0]:
                values = self._read(name)
                if not all(values):  # an empty value: a real one, or one the read inserted
                    for i in self._restore(name):
                        values[i] = _first(maps[i], names[k + 1 :], default)
                return values
            if self.has(name):  # on some spans but not the first: span by span
                return [_first(a, names, default) for a in maps]
        return [default] * len(maps)

    def optional(self, names: tuple[str, ...], presence: Presence) -> list[Any] | None:
        """Like ``column`` with ``None`` for absent values, or ``None`` when no span has any of ``names``."""
        names = tuple(name for name in names if presence.may_have(name))
        if not any(map(self.has, names)):
            return None
        return self.column(names, None)

    def set_costs(self, femto: list[int | None], sources: list[str]) -> None:
        """Set the cost attributes on the spans this receiver priced (an SDK's own cost is left alone)."""
        maps = self.maps
        self._sizes = None  # the maps grow
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

    def _read(self, name: str) -> list[bytes]:
        if self._sizes is None:
            self._sizes = list(map(len, self.maps))
        return list(map(getitem, self.maps, repeat(name)))

    def _restore(self, name: str) -> list[int]:
        """Take ``name`` out of the maps the read inserted it into; their indexes."""
        maps = self.maps
        grown = [i for i, changed in enumerate(map(ne, map(len, maps), self._sizes)) if changed]  # type: ignore[arg-type]
        for i in grown:
            del maps[i][name]
        return grown


def _first(attributes: Any, names: tuple[str, ...], default: bytes | None) -> Any:
    for name in names:
        if name in attributes:
            return attributes[name]
    return default
