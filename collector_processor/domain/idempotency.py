"""Idempotency keys that belong to their principal and remember what they were used for.

Two rules, the ones careful payment APIs keep: a key is the caller's own, so another principal's
Reserve with the same key is a new request (never answered with someone else's reservation), and a
key remembers what was asked, so the same key with a different request is refused rather than
answered with the first one's result. ``owned_key`` namespaces a key by its owner (keys of callers
without a principal keep their plain form), and the fingerprints are short hashes of every field of
the request that changes what it does.
"""

from __future__ import annotations

import hashlib

from collector_processor.domain.budgets import ScopeSet, Tier
from collector_processor.domain.money import usd_to_micros
from collector_processor.domain.requests import OpenRequestCommand
from collector_processor.domain.types import RecordUsageCommand, ReserveCommand, UsageFacts

__all__ = ["owned_key", "record_fingerprint", "request_fingerprint", "reserve_fingerprint"]


def owned_key(owner: str, key: str) -> str:
    """``key`` in ``owner``'s namespace: its length prefix keeps any two owners' keys apart."""
    if not owner or not key:
        return key
    return f"{len(owner)}:{owner}:{key}"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _scopes(s: ScopeSet) -> list[str]:
    return [s.organization, s.team, s.agent, s.workflow, s.user]


def _facts(f: UsageFacts) -> list[str]:
    return [
        f.provider, f.model, str(f.input_tokens), str(f.output_tokens), str(f.cache_read_tokens),
        str(f.cache_creation_tokens), str(f.reasoning_tokens),
    ]  # fmt: skip


def reserve_fingerprint(c: ReserveCommand) -> str:
    """What a Reserve asks: its scopes, estimates, model and what it re-sends (not its TTL)."""
    downgrade = "" if c.downgrade_estimate_usd is None else str(usd_to_micros(c.downgrade_estimate_usd))
    model = _facts(c.model) if c.model is not None else []
    parts = ["reserve", *_scopes(c.scopes), str(usd_to_micros(c.estimate_usd)), str(c.estimate_tokens)]
    if c.request_budget:  # a Reserve without one digests as it always has
        parts += ["request", c.request_budget]
    return _digest([*parts, downgrade, c.downgrade_of, *model])


def record_fingerprint(c: RecordUsageCommand) -> str:
    """What a RecordUsage asks: its scopes, cost, tokens, model, time and reservation."""
    occurred = "" if c.occurred_ms is None else str(c.occurred_ms)
    parts = ["record", *_scopes(c.scopes), str(usd_to_micros(c.cost_usd)), str(c.total_tokens)]
    if c.request_budget:
        parts += ["request", c.request_budget]
    return _digest([*parts, *_facts(c.usage), occurred, c.reservation_id])


def request_fingerprint(c: OpenRequestCommand, tiers: tuple[Tier, ...], idle_ttl_ms: int) -> str:
    """What an OpenRequestBudget asks: opening the same id again with the same is a retry."""
    limit = "" if c.limit_usd is None else str(usd_to_micros(c.limit_usd))
    fraction = "" if c.fraction is None else str(c.fraction.normalize())
    parts = ["request", c.owner, c.name.strip(), c.parent_id, limit, fraction, str(idle_ttl_ms)]
    return _digest([*parts, *(f"{t.at}:{t.action.value}" for t in tiers)])
