"""Issuing, listing and revoking tokens, and reading the audit log, for an admin principal.

An admin never hands out more than it holds: a new token's grants must lie inside the issuer's own
(believing reported costs, ``trust_reported_cost``, only ever concerns money inside those grants),
and an admin limited to some grants sees and revokes only the tokens (and audit events) inside them.
Every issue and revocation is written to the audit log in the same step as the change, and the new
token's secret is returned once and kept nowhere but in the caller's hands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from collector_processor.auth.grants import Grants, parse_grants
from collector_processor.auth.principal import Principal, parse_roles
from collector_processor.auth.tokens import hash_token, new_token
from collector_processor.domain.access import Actor, AuditEvent, TokenRecord
from collector_processor.domain.budgets import Scope
from collector_processor.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from collector_processor.store.base import LedgerStore

__all__ = ["MAX_EXPIRY_MS", "IssuedToken", "TokenDesk"]

_NAME = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
MAX_EXPIRY_MS = 10 * 366 * 24 * 3600 * 1000
"""Ten years: a token that should outlive that should be re-issued."""
_MAX_AUDIT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    record: TokenRecord
    secret: str


class TokenDesk:
    """Token and audit operations over a store, on behalf of one admin principal per call."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        now_ms: Callable[[], int],
        on_change: Callable[[], None],
        on_audit: Callable[[AuditEvent], None] | None = None,
    ) -> None:
        self._store = store
        self._now_ms = now_ms
        self._on_change = on_change
        self._on_audit = on_audit or (lambda event: None)

    def issue(
        self,
        admin: Principal,
        actor: Actor,
        *,
        name: str,
        roles: list[str],
        grants: list[str],
        trust_reported_cost: bool,
        expires_in_ms: int,
    ) -> IssuedToken:
        if not _NAME.fullmatch(name):
            raise InvalidRequestError(
                "name", f"must be 1-128 characters of A-Z a-z 0-9 . _ : @ / -, got {name[:80]!r}"
            )
        try:
            parsed_roles = parse_roles(roles, "roles")
        except ValueError as exc:
            raise InvalidRequestError("roles", str(exc).split(": ", 1)[-1]) from None
        if not grants:
            raise InvalidRequestError(
                "grants", "at least one grant is required (e.g. team=search, or * for everything)"
            )
        parsed = parse_grants(grants, "grants")
        if not parsed.within(admin.grants):
            raise PermissionDeniedError(
                f"grants: {parsed} reach beyond {admin.name}'s own grants ({admin.grants}); an admin "
                "issues only what it holds"
            )
        if not 0 <= expires_in_ms <= MAX_EXPIRY_MS:
            raise InvalidRequestError("expires_in", "must be between 0 (never) and 10 years")
        now = self._now_ms()
        token_id, secret = new_token()
        record = TokenRecord(
            id=token_id,
            name=name,
            secret_sha256=hash_token(secret),
            roles=tuple(sorted(r.value for r in parsed_roles)),
            grants=tuple(str(g) for g in parsed.items),
            trust_reported_cost=trust_reported_cost,
            created_ms=now,
            created_by=admin.name,
            expires_ms=now + expires_in_ms if expires_in_ms else None,
        )
        event = _event(actor, now, "token.create", record, before=None)
        self._store.create_token(record, event=event)
        self._on_change()
        self._on_audit(event)
        return IssuedToken(record=record, secret=secret)

    def tokens(self, admin: Principal, *, include_inactive: bool) -> list[TokenRecord]:
        now = self._now_ms()
        return [
            t
            for t in self._store.list_tokens()
            if _inside(t, admin.grants) and (include_inactive or t.live(now))
        ]

    def revoke(self, admin: Principal, actor: Actor, token_id: str) -> TokenRecord:
        found = next((t for t in self._store.list_tokens() if t.id == token_id), None)
        if found is None or not _inside(found, admin.grants):
            raise NotFoundError(f"token {token_id[:80]!r} does not exist")
        now = self._now_ms()
        after = replace(found, revoked_ms=found.revoked_ms or now)
        event = _event(actor, now, "token.revoke", after, before=found)
        revoked = self._store.revoke_token(token_id, now_ms=now, event=event)
        self._on_change()
        if found.revoked_ms is None:
            self._on_audit(event)
        return revoked

    def audit(self, admin: Principal, *, after: int, limit: int) -> tuple[list[AuditEvent], int]:
        """Events after ``after`` that ``admin``'s grants reach, and the sequence to continue from."""
        if not 0 <= after < 2**63:
            raise InvalidRequestError("after_sequence", f"must be at most {2**63 - 1:,}, got {after:,}")
        if not 0 <= limit <= _MAX_AUDIT_PAGE:
            raise InvalidRequestError(
                "page_size", f"must be between 1 and {_MAX_AUDIT_PAGE} (0 means 100), got {limit}"
            )
        limit = limit or 100
        events = self._store.audit_events(after=after, limit=limit)
        cursor = events[-1].sequence if events else after
        return [e for e in events if _event_visible(e, admin.grants)], cursor


def _inside(token: TokenRecord, grants: Grants) -> bool:
    try:
        return parse_grants(token.grants).within(grants)
    except InvalidRequestError:
        return grants.unrestricted


def token_json(t: TokenRecord) -> str:
    """A token as the audit log shows it: everything but the hash of its secret."""
    fields = {
        "id": t.id, "name": t.name, "roles": list(t.roles), "grants": list(t.grants),
        "trust_reported_cost": t.trust_reported_cost, "created_ms": t.created_ms, "created_by": t.created_by,
        "expires_ms": t.expires_ms, "revoked_ms": t.revoked_ms,
    }  # fmt: skip
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _event(
    actor: Actor, now: int, action: str, after: TokenRecord, *, before: TokenRecord | None
) -> AuditEvent:
    return AuditEvent(
        sequence=0,
        at_ms=now,
        principal=actor.principal,
        address=actor.address,
        action=action,
        target=after.id,
        scope="",
        scope_id="",
        before=token_json(before) if before is not None else "",
        after=token_json(after),
    )


def _event_visible(event: AuditEvent, grants: Grants) -> bool:
    if grants.unrestricted:
        return True
    if event.action.startswith("budget."):
        return grants.covers_target(Scope(event.scope), event.scope_id or None)
    state = json.loads(event.after or event.before or "{}")
    try:
        return parse_grants(state.get("grants", [])).within(grants) and bool(state.get("grants"))
    except InvalidRequestError:
        return False
