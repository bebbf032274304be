"""Scope attribution: which organization, team, agent, workflow and user a span's spend belongs to.

For each scope the sources are, in order: ``paymaster.<scope>``, then the configured attributes
(``service.name`` -> agent, ``k8s.namespace.name`` -> team ...), each looked up first on the span and
then on its resource (attributes of the resource conventions, ``service.*``, ``k8s.*`` ..., on the
resource only: no instrumentation puts them on spans). Most spans carry none of them and inherit their
resource's scopes, so each resource is resolved once per distinct values of the attributes it is read
for (``for_resource``, cached across exports) and a span only checks the sources that could still
override the resource's answer. Spend no source names is charged to the unattributed bucket: a fixed
id on the configured scopes, so usage reports show it and a budget can cap it.
"""

from __future__ import annotations

from collections.abc import Mapping

from collector_processor.domain.budgets import MAX_SCOPE_ID, SCOPE_ORDER, ScopeSet
from collector_processor.otlp._view import decode_str
from collector_processor.otlp.config import AttributionSection
from collector_processor.otlp.spend_source import Service

__all__ = ["RESOURCE_NAMESPACES", "Attributor", "ResourceScopes"]

_SCOPES = tuple(scope.value for scope in SCOPE_ORDER)
RESOURCE_NAMESPACES = (
    "service.", "k8s.", "host.", "cloud.", "deployment.", "container.", "process.", "os.", "telemetry.",
    "faas.", "device.", "webengine.",
)  # fmt: skip
"""Attribute namespaces the semantic conventions define for resources: read from the resource only."""
# The SDKs' default when an application sets no service name: it names nobody.
_UNNAMED_PREFIX = "unknown_service"


def _text(attributes: Mapping[str, bytes], name: str) -> str | None:
    value = decode_str(attributes[name]) if name in attributes else None
    return value if isinstance(value, str) else None


def scope_value(raw: bytes) -> str | None:
    """A usable scope id from an encoded attribute value, or ``None``."""
    value = decode_str(raw)
    if not isinstance(value, str) or not value or len(value) > MAX_SCOPE_ID or not value.isprintable():
        return None
    if value.startswith(_UNNAMED_PREFIX):
        return None
    return value


class ResourceScopes:
    """The scopes of one resource, and how a span of it may override them."""

    __slots__ = ("_attributor", "_values", "checks", "default", "default_unattributed", "service")

    def __init__(self, attributor: Attributor, attributes: Mapping[str, bytes]) -> None:
        self._attributor = attributor
        values: list[str] = []
        checks: list[tuple[str, int]] = []
        for index, scope in enumerate(_SCOPES):
            found = ""
            for name in attributor.sources[scope]:
                if not name.startswith(RESOURCE_NAMESPACES):
                    checks.append((name, index))  # a span attribute at this rank beats the resource's
                if name in attributes and (value := attributor.value(attributes[name])):
                    found = value
                    break
            values.append(found)
        self._values = tuple(values)
        self.checks = tuple(checks)
        """``(attribute, scope index)`` a span of this resource may override the resource's scopes with."""
        self.default, self.default_unattributed = attributor.scopes(self._values)
        self.service: Service = (_text(attributes, "service.namespace"), _text(attributes, "service.name"))
        """``(service.namespace, service.name)`` as sent: which application this is."""

    def for_span(self, attributes: Mapping[str, bytes]) -> tuple[ScopeSet, bool]:
        """The scopes of a span with these attributes, and whether they are the unattributed bucket."""
        return self.resolve(attributes)

    def resolve(self, attributes: Mapping[str, bytes | None]) -> tuple[ScopeSet, bool]:
        """``for_span`` from the span's raw values of (some of) ``checks``; absent ones may be ``None``."""
        found: list[str] | None = None
        for name, index in self.checks:
            raw = attributes.get(name)
            if raw is not None:
                value = self._attributor.value(raw)
                if value is None:
                    continue
                if found is None:
                    found = list(self._values)
                    taken = [False] * len(_SCOPES)
                if not taken[index]:
                    found[index] = value
                    taken[index] = True
        if found is None:
            return self.default, self.default_unattributed
        return self._attributor.scopes(tuple(found))


class Attributor:
    """Resolves scopes from attributes under one ``AttributionSection``."""

    def __init__(self, section: AttributionSection) -> None:
        self.sources = section.sources()
        self.unattributed = ScopeSet(**{s: section.unattributed_id for s in section.unattributed_scopes})
        self._sets: dict[tuple[str, ...], tuple[ScopeSet, bool]] = {}
        self._values: dict[bytes, str | None] = {}
        names = [name for scope in _SCOPES for name in self.sources[scope]]
        self._read = tuple(dict.fromkeys([*names, "service.namespace", "service.name"]))
        """Every resource attribute ``ResourceScopes`` reads: their raw values decide it."""
        self._resources: dict[tuple[bytes | None, ...], ResourceScopes] = {}

    def for_resource(self, attributes: Mapping[str, bytes]) -> ResourceScopes:
        """The scopes of a resource with these attributes; one shared instance per distinct values."""
        key = tuple(map(attributes.get, self._read))
        found = self._resources.get(key)
        if found is None:
            if len(self._resources) >= 4096:
                self._resources.clear()
            found = self._resources[key] = ResourceScopes(self, attributes)
        return found

    def value(self, raw: bytes) -> str | None:
        """``scope_value`` with a cache: the same few ids arrive over and over."""
        try:
            return self._values[raw]
        except KeyError:
            if len(self._values) > 65_536:
                self._values.clear()
            found = self._values[raw] = scope_value(raw)
            return found

    def scopes(self, values: tuple[str, ...]) -> tuple[ScopeSet, bool]:
        """One shared ``ScopeSet`` per combination of ids (the unattributed one when all are empty)."""
        found = self._sets.get(values)
        if found is None:
            if len(self._sets) > 65_536:
                self._sets.clear()
            if any(values):
                found = (ScopeSet(**dict(zip(_SCOPES, values, strict=True))), False)
            else:
                found = (self.unattributed, True)
            self._sets[values] = found
        return found
