"""The sidecar's start-up line: every port it opened, with its transport and whether callers must
authenticate, and the store it keeps the ledger in.

One line, so a log search for ``listening on`` finds all of it::

    paymaster sidecar listening on 127.0.0.1:7310 (budget API, gRPC: plaintext, no auth); OTLP/gRPC
    on 127.0.0.1:7317 (TLS, auth); OTLP/HTTP on 127.0.0.1:7318 (TLS, auth); metrics on
    https://127.0.0.1:7319/metrics (mutual TLS, no auth); store: sqlite /var/lib/paymaster/ledger.db

The addresses are the bound ones (a configured port 0 shows the port it got). With ``server.workers``
above 1 the supervisor prints it once, ending with how many worker processes serve the ports (the
workers print nothing). A second line names where OTLP is forwarded, when it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from collector_processor.config import Listener, SidecarConfig

if TYPE_CHECKING:
    from collector_processor.api.server import Sidecar

__all__ = ["lines", "startup_lines"]

_NAMES = {
    "server.listen": "budget API, gRPC",
    "receivers.otlp.grpc_listen": "OTLP/gRPC",
    "receivers.otlp.http_listen": "OTLP/HTTP",
    "metrics.listen": "metrics",
    "http.listen": "budget API, HTTP/JSON",
}


def startup_lines(sidecar: Sidecar) -> list[str]:
    """What ``paymaster sidecar`` prints once every port is open."""
    onward = [o for c in sidecar.components for o in getattr(c, "onward", list)()]
    return lines(sidecar.config, _bound(sidecar), onward)


def lines(
    config: SidecarConfig, bound: Mapping[str, str], onward: Sequence[str], *, workers: int = 1
) -> list[str]:
    """The start-up line of ``config`` with the addresses ``bound`` (by key; the configured ones for
    keys it lacks), the forwarding line if OTLP goes ``onward``, and, under a supervisor, how many
    worker processes serve every listener but ``/metrics``."""
    parts = []
    for listener in config.listeners():
        address = bound.get(listener.key, listener.address)
        security = _security(listener)
        if listener.key == "server.listen":
            parts.append(f"listening on {address} ({_NAMES[listener.key]}: {security})")
        elif listener.key == "metrics.listen":
            scheme = "https" if listener.tls.enabled else "http"
            parts.append(f"metrics on {scheme}://{address}/metrics ({security})")
        else:
            parts.append(f"{_NAMES.get(listener.key, listener.key)} on {address} ({security})")
    parts.append(f"store: {config.store_description()}")
    if workers > 1:
        parts.append(f"{workers} worker processes")
    out = [f"paymaster sidecar {'; '.join(parts)}"]
    if onward:
        out.append(f"paymaster sidecar: forwarding OTLP to {', '.join(sorted(set(onward)))}")
    return out


def _bound(sidecar: Sidecar) -> dict[str, str]:
    bound = {"server.listen": sidecar.address}
    for component in sidecar.components:
        bound.update(getattr(component, "addresses", dict)())
    port = sidecar.exporters.port
    if port:
        host = sidecar.config.metrics.listen.rsplit(":", 1)[0]
        bound["metrics.listen"] = f"{host}:{port}"
    return bound


def _security(listener: Listener) -> str:
    tls: Any = listener.tls
    transport = ("mutual TLS" if tls.client_ca_file else "TLS") if tls.enabled else "plaintext"
    return f"{transport}, {'auth' if listener.authenticated else 'no auth'}"
