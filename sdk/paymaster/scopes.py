"""``Scopes``: who a unit of spend belongs to — an organization, team, agent, workflow and user.

The sidecar charges every budget that matches any of a request's scope ids. A runner's scopes come
from three places, each overriding the one before field by field: the OpenTelemetry resource
(``paymaster.organization``, ``paymaster.team``, ``paymaster.agent``, ``paymaster.workflow``,
``paymaster.user``, e.g. ``OTEL_RESOURCE_ATTRIBUTES=paymaster.team=search``), the ``scopes`` given to
``SidecarBudget``, and a step's own ``Step(..., scopes=...)`` (typically a different ``agent``).
Ids follow the sidecar's rule: 1-256 printable characters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from paymaster.exceptions import ConfigError

__all__ = ["ATTRIBUTE_PREFIX", "SCOPE_NAMES", "Scopes"]

SCOPE_NAMES: Final = ("organization", "team", "agent", "workflow", "user")
"""The five scopes, in the order the sidecar reports budgets."""
ATTRIBUTE_PREFIX: Final = "paymaster."
"""Resource and span attributes name a scope as ``paymaster.<scope>``."""
_MAX_ID = 256
log = logging.getLogger("paymaster")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scopes:
    """The scope ids of a unit of spend; ``None`` means "not given"."""

    organization: str | None = None
    """The whole company or platform."""
    team: str | None = None
    """A product team, business unit or environment."""
    agent: str | None = None
    """One assistant or service account."""
    workflow: str | None = None
    """One governed workflow (a multi-step pipeline)."""
    user: str | None = None
    """One end user or reviewer."""

    def __post_init__(self) -> None:
        for name in SCOPE_NAMES:
            _check_id(getattr(self, name), name, "Scopes")

    # ------------------------------------------------------------------ building
    @classmethod
    def coerce(cls, value: Scopes | Mapping[str, Any] | None, *, where: str) -> Scopes | None:
        """``value`` as ``Scopes``: a ``Scopes``, a mapping of scope names to ids, or ``None``.

        ``where`` names the caller in errors (``Step 'draft'``)."""
        if value is None or isinstance(value, Scopes):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: scopes must be Scopes(...) or a mapping of scope names to ids, "
                f"got {type(value).__name__}"
            )
        unknown = sorted(str(k) for k in value if k not in SCOPE_NAMES)
        if unknown:
            raise ConfigError(f"{where}: unknown scope(s) {unknown}; expected some of {list(SCOPE_NAMES)}")
        for name, ident in value.items():
            _check_id(ident, name, where)
        return cls(**dict(value))

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any], *, source: str) -> Scopes:
        """The ``paymaster.<scope>`` entries of OpenTelemetry attributes; other keys are ignored.

        ``source`` names where the attributes came from in errors and warnings."""
        found: dict[str, str] = {}
        for key, value in attributes.items():
            if not isinstance(key, str) or not key.startswith(ATTRIBUTE_PREFIX):
                continue
            name = key[len(ATTRIBUTE_PREFIX) :]
            if name not in SCOPE_NAMES:
                if "." not in name:
                    log.warning(
                        "%s: attribute %r is not a Paymaster scope (expected paymaster.<%s>); ignored",
                        source,
                        key,
                        "|".join(SCOPE_NAMES),
                    )
                continue
            _check_id(value, name, f"{source}: attribute {key!r}")
            found[name] = value
        return cls(**found)

    @classmethod
    def from_resource(
        cls, tracer_provider: Any = None, *, environ: Mapping[str, str] | None = None
    ) -> Scopes:
        """Scopes named by the OpenTelemetry resource of ``tracer_provider`` (or the global one).

        Without an SDK provider (nothing configured yet, or only the API installed) the
        ``OTEL_RESOURCE_ATTRIBUTES`` variable is read directly, as the SDK itself would."""
        if tracer_provider is None:
            from opentelemetry import trace

            tracer_provider = trace.get_tracer_provider()
        resource = getattr(tracer_provider, "resource", None)
        attributes = getattr(resource, "attributes", None)
        if isinstance(attributes, Mapping):
            return cls.from_attributes(attributes, source="OpenTelemetry resource")
        env = os.environ if environ is None else environ
        return cls.from_attributes(
            _parse_resource_env(env.get("OTEL_RESOURCE_ATTRIBUTES", "")), source="OTEL_RESOURCE_ATTRIBUTES"
        )

    def merged(self, override: Scopes | None) -> Scopes:
        """These scopes with every id ``override`` gives replacing ours."""
        if override is None:
            return self
        values = {f.name: getattr(override, f.name) or getattr(self, f.name) for f in fields(self)}
        return Scopes(**values)

    # ------------------------------------------------------------------ reading
    def items(self) -> tuple[tuple[str, str], ...]:
        """``(scope, id)`` of every scope given, in the order of ``SCOPE_NAMES``."""
        return tuple((name, v) for name in SCOPE_NAMES if (v := getattr(self, name)) is not None)

    @property
    def is_empty(self) -> bool:
        """True when no scope id is given."""
        return not self.items()

    def attributes(self) -> dict[str, str]:
        """``{"paymaster.team": "search", ...}``: the span and resource attribute form."""
        return {ATTRIBUTE_PREFIX + name: ident for name, ident in self.items()}

    def __str__(self) -> str:
        return ", ".join(f"{name}={ident}" for name, ident in self.items()) or "no scopes"


def _check_id(value: object, name: str, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string id, got {type(value).__name__} {value!r}")
    if not value:
        raise ConfigError(f"{where}: {name} must not be empty (leave it out, or None, for no {name})")
    if len(value) > _MAX_ID or not value.isprintable():
        raise ConfigError(
            f"{where}: {name} must be at most {_MAX_ID} printable characters, got {value[:40]!r}"
            + ("..." if len(value) > 40 else "")
        )


def _parse_resource_env(text: str) -> dict[str, str]:
    """``key=value,key=value`` with percent-encoded values, as OTEL_RESOURCE_ATTRIBUTES is written."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out
