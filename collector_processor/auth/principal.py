"""Principals: who is calling, with which roles and grants, as the edge authenticated them.

Every call that reaches the sidecar is made by a principal: the holder of a bearer token, a client
certificate mapped in the config, or — only where the config allows unauthenticated callers — the
``anonymous`` principal, which may do everything (the zero-config default on loopback). Roles say
*what* a principal may do, grants (``grants``) say *whose money*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from collector_processor.auth.grants import ALL, Grants

__all__ = ["ANONYMOUS", "Principal", "Role", "parse_roles"]


class Role(StrEnum):
    """What a principal may do."""

    ADMIN = "admin"
    """Create, change and delete budgets; issue and revoke tokens; read the audit log."""
    SPENDER = "spender"
    """CheckBudget, Reserve, Commit, Release, RecordUsage."""
    INGESTER = "ingester"
    """Export OTLP traces and metrics to the receiver."""
    READER = "reader"
    """GetBudget, ListBudgets, GetBudgetStatus, GetUsage, WatchAlerts (and /metrics when it asks)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    """Shown in the audit log and the denial metrics; never a secret."""
    roles: frozenset[Role]
    """What it may do."""
    grants: Grants
    """Whose money it may touch."""
    trust_reported_cost: bool = False
    """Whether a cost carried on its spans (``paymaster.cost_usd``, ``gen_ai.usage.cost``) is believed;
    otherwise its spans are priced from their tokens."""
    kind: str = "token"
    """How it was authenticated: ``token``, ``certificate`` or ``anonymous``."""
    token_id: str = field(default="", compare=False)
    """The id (not the secret) of the token it presented, for revocation and the audit log."""

    @property
    def owner(self) -> str:
        """The namespace of its idempotency keys and usage ids; empty for ``anonymous``, which keeps
        the keys callers used before authentication was turned on."""
        return "" if self.kind == "anonymous" else self.name


ANONYMOUS = Principal(
    name="anonymous", roles=frozenset(Role), grants=ALL, trust_reported_cost=True, kind="anonymous"
)
"""The caller of a listener that allows unauthenticated callers: every role, every grant."""


def parse_roles(names: list[str] | tuple[str, ...], field_name: str = "roles") -> frozenset[Role]:
    """Roles by name; ``ValueError`` naming the field and the choices for an unknown one."""
    roles = set()
    for i, name in enumerate(names):
        try:
            roles.add(Role(name.strip()))
        except ValueError:
            choices = ", ".join(r.value for r in Role)
            raise ValueError(f"{field_name}[{i}]: unknown role {name[:80]!r}; one of {choices}") from None
    if not roles:
        raise ValueError(
            f"{field_name}: at least one role is required (one of {', '.join(r.value for r in Role)})"
        )
    return frozenset(roles)
