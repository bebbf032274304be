"""Bearer tokens: how they look, how they are issued, and how a presented one becomes a principal.

A token reads ``pmt_<id>_<secret>``: twelve hex characters of public id (what ``paymaster tokens
list`` and the audit log show) and 43 characters of secret from ``secrets``. The store keeps the id
and the SHA-256 of the whole token, never the token; a presented token is looked up by its id and
its hash compared in constant time. The secret has 256 bits of entropy, so a fast hash is safe here
(there is no password to guess).

``TokenBook`` answers "who is this?" from memory on every call. It keeps every issued token of the
store and the bootstrap tokens of the config, and re-reads the store's tokens when their version
counter moves, checking at most every ``refresh_s`` seconds, so a token revoked through any replica
stops working on every replica sharing the store within that bound. Expiry is checked on every call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from collector_processor.auth.grants import parse_grants
from collector_processor.auth.principal import Principal, parse_roles
from collector_processor.domain.access import TokenRecord
from collector_processor.errors import InvalidRequestError

__all__ = [
    "BootstrapToken",
    "TokenBook",
    "TokenSource",
    "Unauthenticated",
    "hash_token",
    "new_token",
    "principal_of",
    "token_id_of",
]

log = logging.getLogger("paymaster.sidecar.auth")

PREFIX = "pmt_"
_TOKEN = re.compile(r"pmt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class Unauthenticated(Exception):
    """The caller could not be identified; ``reason`` is a fixed word for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def new_token() -> tuple[str, str]:
    """A fresh ``(id, token)``."""
    token_id = secrets.token_hex(6)
    return token_id, f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_id_of(token: str) -> str | None:
    """The public id of a well-formed issued token, else ``None``."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def principal_of(record: TokenRecord) -> Principal:
    """The principal a stored token stands for."""
    return Principal(
        name=record.name,
        roles=parse_roles(record.roles),
        grants=parse_grants(record.grants),
        trust_reported_cost=record.trust_reported_cost,
        kind="token",
        token_id=record.id,
    )


@dataclass(frozen=True, slots=True)
class BootstrapToken:
    """A token the config supplies (from a file or an environment variable), held only in memory."""

    secret_sha256: str
    principal: Principal


class TokenSource(Protocol):
    """What the book reads issued tokens from (the ledger store implements it)."""

    def tokens_version(self) -> int:
        """A counter that moves whenever a token is issued or revoked."""
        ...

    def list_tokens(self) -> list[TokenRecord]:
        """Every token issued, live or not."""
        ...


class TokenBook:
    """Resolves presented tokens to principals from memory, refreshed from the store."""

    def __init__(
        self,
        source: TokenSource | None,
        *,
        bootstrap: Sequence[BootstrapToken] = (),
        refresh_s: float = 2.0,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._source = source
        self._bootstrap = tuple(bootstrap)
        self._refresh_s = refresh_s
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._lock = threading.Lock()
        self._by_id: dict[str, tuple[TokenRecord, Principal]] = {}
        self._version = -1
        self._checked = 0.0

    def authenticate(self, token: str) -> Principal:
        """The principal of ``token``; ``Unauthenticated`` for an unknown, revoked or expired one."""
        token_id = token_id_of(token)
        digest = hash_token(token)
        if token_id is None:
            for boot in self._bootstrap:
                if hmac.compare_digest(boot.secret_sha256, digest):
                    return boot.principal
            raise Unauthenticated("invalid_token", "the bearer token is not valid")
        self._refresh()
        found = self._by_id.get(token_id)
        if found is None or not hmac.compare_digest(found[0].secret_sha256, digest):
            # An issued-looking token may also be a bootstrap one (made with `paymaster tokens new`).
            for boot in self._bootstrap:
                if hmac.compare_digest(boot.secret_sha256, digest):
                    return boot.principal
            raise Unauthenticated("invalid_token", "the bearer token is not valid")
        record, principal = found
        if record.revoked_ms is not None:
            raise Unauthenticated("revoked", f"token {record.id} was revoked")
        if record.expires_ms is not None and self._now_ms() >= record.expires_ms:
            raise Unauthenticated("expired", f"token {record.id} has expired")
        return principal

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the store's tokens if their version moved (``force``: now, whatever the interval)."""
        if force:
            self._checked = 0.0
        self._refresh()

    def _refresh(self) -> None:
        if self._source is None:
            return
        now = time.monotonic()
        if now - self._checked < self._refresh_s:
            return
        with self._lock:
            if now - self._checked < self._refresh_s:
                return
            try:
                version = self._source.tokens_version()
                if version != self._version:
                    records = self._source.list_tokens()
                    by_id: dict[str, tuple[TokenRecord, Principal]] = {}
                    for record in records:
                        try:
                            by_id[record.id] = (record, principal_of(record))
                        except (ValueError, InvalidRequestError):
                            log.error("token %s in the store is malformed; it is ignored", record.id)
                    self._by_id, self._version = by_id, version
            except Exception as exc:
                # The store is away: keep answering from what was read last (revocations made
                # meanwhile are seen once it is back), and try again at the next call after the interval.
                log.warning("could not refresh the tokens from the store: %s", exc)
            self._checked = now
