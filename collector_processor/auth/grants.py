"""Scope grants: whose money a principal may touch, written ``team=search``, ``agent=support-*`` or ``*``.

A grant names one scope and a pattern for its ids: an exact id (``team=search``), a prefix ending in
``*`` (``agent=support-*``), or ``*`` for every id of that scope (``team=*``). The grant ``*`` alone
covers every id of every scope. A principal holds any number of grants, and they add up.

What they cover is decided here, once, for every caller:

* a **request** that names scope ids (a Reserve, a RecordUsage, an OTLP span's attribution) is inside
  the grants only when **every** id it names is covered, because every named id's budgets are charged;
* a **budget** is inside them when its target is: ``team=search`` covers the budget of team search;
  a wildcard budget (every team) only by ``team=*``;
* a **record** someone reads (a usage row) is visible when one of its ids is covered by a grant that
  names ids (``team=search``; a reader of team search sees every record of team search, whoever its
  user was), or when every one of its ids is covered (so ``user=*``, which a service needs to charge
  any end user, does not on its own show other teams' records that carry a user id).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from collector_processor.domain.budgets import MAX_SCOPE_ID, SCOPE_ORDER, Scope, ScopeSet
from collector_processor.errors import InvalidRequestError

__all__ = ["ALL", "Grant", "Grants", "parse_grant", "parse_grants"]

_PATTERN = re.compile(r"[^\s=*]*\*?")


@dataclass(frozen=True, slots=True)
class Grant:
    """One scope and a pattern for its ids."""

    scope: Scope | None
    """The scope; ``None`` for the grant ``*`` (every scope)."""
    pattern: str
    """An exact id, a prefix ending in ``*``, or ``*``."""

    def covers(self, scope: Scope, scope_id: str) -> bool:
        """Whether this grant covers the id ``scope_id`` of ``scope``."""
        if self.scope is not None and self.scope is not scope:
            return False
        if self.pattern.endswith("*"):
            return scope_id.startswith(self.pattern[:-1])
        return scope_id == self.pattern

    def covers_every(self, scope: Scope) -> bool:
        """Whether this grant covers every id of ``scope`` (as a wildcard budget needs)."""
        return (self.scope is None or self.scope is scope) and self.pattern == "*"

    def within(self, other: Grant) -> bool:
        """Whether everything this grant covers, ``other`` covers too."""
        if other.scope is not None and other.scope is not self.scope:
            return False
        if other.pattern.endswith("*"):
            return self.pattern.startswith(other.pattern[:-1])
        return self.pattern == other.pattern and not self.pattern.endswith("*")

    def __str__(self) -> str:
        return "*" if self.scope is None else f"{self.scope.value}={self.pattern}"


@dataclass(frozen=True, slots=True)
class Grants:
    """Every grant of one principal."""

    items: tuple[Grant, ...] = ()

    @property
    def unrestricted(self) -> bool:
        """Whether these grants cover every id of every scope."""
        return any(g.scope is None for g in self.items) or all(
            any(g.covers_every(scope) for g in self.items) for scope in SCOPE_ORDER
        )

    def covers(self, scope: Scope, scope_id: str) -> bool:
        return any(g.covers(scope, scope_id) for g in self.items)

    def outside(self, scopes: ScopeSet) -> tuple[Scope, str] | None:
        """The first id ``scopes`` names that no grant covers; ``None`` when every one is covered."""
        for scope, scope_id in scopes.pairs():
            if not self.covers(scope, scope_id):
                return scope, scope_id
        return None

    def covers_target(self, scope: Scope, scope_id: str | None) -> bool:
        """Whether a budget of ``scope`` for ``scope_id`` (``None``: every id) is inside these grants."""
        if scope_id is None:
            return any(g.covers_every(scope) for g in self.items)
        return self.covers(scope, scope_id)

    def sees(self, scopes: ScopeSet) -> bool:
        """Whether a record attributed to ``scopes`` is visible: one of its ids is covered by a grant
        that names ids (``team=search``, ``agent=support-*``), or every one of its ids is covered.
        A ``user=*`` that lets a service charge any end user does not by itself show every team's
        records that carry a user id."""
        pairs = scopes.pairs()
        if not pairs:
            return False
        if any(g.pattern != "*" and g.covers(scope, sid) for scope, sid in pairs for g in self.items):
            return True
        return all(self.covers(scope, scope_id) for scope, scope_id in pairs)

    def sees_scope(self, scope: Scope) -> bool:
        """Whether any grant reaches ids of ``scope`` (a wildcard budget of it may be listed)."""
        return any(g.scope is None or g.scope is scope for g in self.items)

    def within(self, other: Grants) -> bool:
        """Whether every grant here is inside some grant of ``other`` (delegation never widens)."""
        return all(any(g.within(o) for o in other.items) for g in self.items)

    def __str__(self) -> str:
        return ", ".join(str(g) for g in self.items) or "(none)"


ALL = Grants((Grant(None, "*"),))
"""Every id of every scope."""


def parse_grant(text: str, field: str = "grant") -> Grant:
    """``team=search``, ``agent=support-*``, ``user=*`` or ``*``; ``InvalidRequestError`` naming ``field``."""
    text = text.strip()
    if text == "*":
        return Grant(None, "*")
    scope_name, sep, pattern = text.partition("=")
    names = ", ".join(s.value for s in SCOPE_ORDER)
    if not sep:
        raise InvalidRequestError(
            field, f"must be <scope>=<id>, <scope>=<prefix>*, <scope>=* or *, got {_shown(text)}"
        )
    try:
        scope = Scope(scope_name.strip())
    except ValueError:
        raise InvalidRequestError(field, f"unknown scope {_shown(scope_name)}; one of {names}") from None
    pattern = pattern.strip()
    if (
        not pattern
        or len(pattern) > MAX_SCOPE_ID
        or not _PATTERN.fullmatch(pattern)
        or not pattern.isprintable()
    ):
        raise InvalidRequestError(
            field,
            f"the id pattern must be an id, a prefix ending in '*' or '*' (no spaces, '=' or inner '*'), "
            f"got {_shown(pattern)}",
        )
    return Grant(scope, pattern)


def parse_grants(texts: Iterable[str], field: str = "grants") -> Grants:
    """Every grant of a list, in order, duplicates dropped."""
    items: list[Grant] = []
    for i, text in enumerate(texts):
        grant = parse_grant(text, f"{field}[{i}]")
        if grant not in items:
            items.append(grant)
    return Grants(tuple(items))


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")
