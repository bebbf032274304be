"""The sidecar's security, wired from its config: one token book, and a gate and TLS per listener.

Built once by the factory: the ``TokenBook`` (issued tokens read from the store, bootstrap tokens from
the config's file and environment variable), the client certificates of ``[[auth.clients]]``, and for
each listener (the budget API over gRPC and over HTTP, the OTLP receivers, ``/metrics``) a ``Gate`` that requires
authentication exactly when ``[auth]`` is on (``/metrics`` when it also says ``require_token``) and a
``ServerTls`` when its ``tls`` block names a certificate. Refused callers are counted in
``paymaster_auth_denied_total{listener, principal, reason}``; listeners that serve anyone on a
non-loopback address are flagged by ``paymaster_listener_unauthenticated{listener}`` and a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from collector_processor.auth.config import TlsSection
from collector_processor.auth.edge import AUTH_DENIED, Gate
from collector_processor.auth.tls import ServerTls
from collector_processor.auth.tokens import TokenBook
from collector_processor.config import SidecarConfig, is_loopback
from collector_processor.errors import InvalidRequestError
from collector_processor.store.base import LedgerStore
from collector_processor.telemetry.selfmetrics import SelfMetrics
from paymaster.exceptions import ConfigError

__all__ = ["UNAUTHENTICATED_LISTENERS", "Guarded", "Security"]

log = logging.getLogger("paymaster.sidecar.auth")

UNAUTHENTICATED_LISTENERS = "paymaster_listener_unauthenticated"


@dataclass(frozen=True, slots=True)
class Guarded:
    """What one listener checks: who calls (``gate``) and over what (``tls``, ``None`` for plaintext)."""

    gate: Gate
    tls: ServerTls | None

    @property
    def mutual(self) -> bool:
        return self.tls is not None and self.tls.mutual


class Security:
    """The token book and every listener's gate and TLS."""

    def __init__(
        self,
        config: SidecarConfig,
        store: LedgerStore,
        metrics: SelfMetrics,
        *,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        metrics.describe(
            AUTH_DENIED,
            "Calls refused by authentication or authorization, by listener, principal and reason.",
        )
        metrics.describe(
            UNAUTHENTICATED_LISTENERS,
            "1 for a listener that serves callers without credentials on a non-loopback address.",
        )
        auth, base = config.auth, config.base_dir
        try:
            bootstrap = auth.bootstrap(base) if auth.enabled else []
        except InvalidRequestError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
        # Expiry is judged by the clock that stamps tokens (the ledger's), not by another one.
        self.book = (
            TokenBook(store, bootstrap=bootstrap, refresh_s=auth.refresh_seconds, now_ms=now_ms)
            if auth.enabled
            else None
        )
        self._clients = auth.principals() if auth.enabled else {}
        self.api = self._guard("api", config.server.tls, "server.tls", required=auth.enabled)
        self.otlp = self._guard(
            "otlp", config.receivers.otlp.tls, "receivers.otlp.tls", required=auth.enabled
        )
        self.http = self._guard("http", config.http.tls, "http.tls", required=auth.enabled)
        self.metrics = self._guard(
            "metrics",
            config.metrics.tls,
            "metrics.tls",
            required=auth.enabled and config.metrics.require_token,
        )
        for listener in config.listeners():
            if not listener.authenticated and not is_loopback(listener.address):
                log.warning(
                    "%s: %s serves callers without credentials (allow_unauthenticated = true); anyone who can "
                    "connect may change budgets and spend",
                    listener.key,
                    listener.address,
                )
                metrics.set_gauge(UNAUTHENTICATED_LISTENERS, 1, {"listener": listener.key})

    def refresh(self) -> None:
        """See a token issued or revoked through this sidecar at once (others within the interval)."""
        if self.book is not None:
            self.book.refresh(force=True)

    def count_denied(self, listener: str, principal: str, reason: str) -> None:
        self._metrics.inc(AUTH_DENIED, 1, {"listener": listener, "principal": principal, "reason": reason})

    def _guard(self, listener: str, tls: TlsSection, key: str, *, required: bool) -> Guarded:
        gate = Gate(
            listener, required=required, book=self.book, clients=self._clients, on_denied=self.count_denied
        )
        if not tls.enabled:
            return Guarded(gate, None)
        try:
            return Guarded(gate, ServerTls(tls, self._config.base_dir, key))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self._config.source}: {exc}") from None
