"""Authentication at the edge: one ``Gate`` per listener turns what a caller presented into a principal.

A call presents a bearer token (``authorization: Bearer <token>``, the header the standard OTLP
exporters send with ``headers=``), a client certificate verified by the listener's TLS (mTLS), both, or
nothing. A token, when present, decides; otherwise a verified certificate whose URI SAN (a SPIFFE id)
or common name is mapped in ``[[auth.clients]]``. A listener that does not require authentication
answers every caller as ``anonymous`` (all roles, all grants). Every refusal is counted through
``on_denied`` with a fixed reason word — never with the token, which appears nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from collector_processor.auth.principal import ANONYMOUS, Principal
from collector_processor.auth.tokens import TokenBook, Unauthenticated

__all__ = ["AUTH_DENIED", "Gate", "PeerCertificate", "bearer_token"]

AUTH_DENIED = "paymaster_auth_denied_total"
"""Counter of refused calls, by listener, principal (empty when unknown) and reason."""

DenialCounter = Callable[[str, str, str], None]
"""``(listener, principal, reason)``."""


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What the TLS layer verified of a client certificate."""

    uris: tuple[str, ...] = ()
    common_name: str = ""


def bearer_token(value: str | None) -> str | None:
    """The token of an ``authorization`` header value; ``None`` when there is none.
    ``Unauthenticated`` for a header that is there but not ``Bearer <token>``."""
    if value is None or not value.strip():
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed", "the authorization header must be 'Bearer <token>'")
    return token.strip()


class Gate:
    """Identifies the callers of one listener."""

    def __init__(
        self,
        listener: str,
        *,
        required: bool,
        book: TokenBook | None = None,
        clients: Mapping[str, Principal] | None = None,  # "uri:<san>" or "cn:<name>" -> principal
        on_denied: DenialCounter | None = None,
    ) -> None:
        self.listener = listener
        self.required = required
        self._book = book
        self._clients = dict(clients or {})
        self._on_denied = on_denied

    def identify(self, authorization: str | None, certificate: PeerCertificate | None = None) -> Principal:
        """The caller's principal; ``Unauthenticated`` (counted) when it cannot be identified."""
        if not self.required:
            return ANONYMOUS
        try:
            token = bearer_token(authorization)
            if token is not None:
                if self._book is None:
                    raise Unauthenticated("invalid_token", "the bearer token is not valid")
                return self._book.authenticate(token)
            if certificate is not None:
                principal = self._certificate(certificate)
                if principal is not None:
                    return principal
                raise Unauthenticated(
                    "unmapped_certificate",
                    "the client certificate is not mapped to a principal (auth.clients)",
                )
            raise Unauthenticated(
                "missing",
                "credentials are required: send 'authorization: Bearer <token>' or a client certificate",
            )
        except Unauthenticated as exc:
            self.denied("", exc.reason)
            raise

    def denied(self, principal: str, reason: str) -> None:
        """Count a refusal (authentication here, authorization by the caller of ``identify``)."""
        if self._on_denied is not None:
            self._on_denied(self.listener, principal, reason)

    def _certificate(self, certificate: PeerCertificate) -> Principal | None:
        for uri in certificate.uris:
            found = self._clients.get(f"uri:{uri}")
            if found is not None:
                return found
        if certificate.common_name:
            return self._clients.get(f"cn:{certificate.common_name}")
        return None


def first(values: Iterable[bytes | str]) -> str:
    for value in values:
        return value.decode() if isinstance(value, bytes) else value
    return ""
