"""The sidecar's start-up line: every port it opened, with its transport and whether callers must
authenticate, and the store it keeps the ledger in.

One line, so a log search for ``listening on`` finds all of it::

    paymaster sidecar listening on 127.0.0.1:7310 (budget API, gRPC: plaintext, no auth); OTLP/gRPC
    on 127.0.0.1:7317 (TLS, auth); OTLP/HTTP on 127.0.0.1:7318 (TLS, auth); metrics on
    https://127.0.0.1:7319/metrics (mutual TLS, no auth); store: sqlite /var/lib/paymaster/ledger.db

The addresses are the bound ones (a configured port 0 shows the port it got). A second line names
where OTLP is forwarded, when it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector_processor.config import Listener

if TYPE_CHECKING:
    from collector_processor.api.server import Sidecar

__all__ = ["startup_lines"]

_NAMES = {
    "server.listen": "budget API, gRPC",
    "receivers.otlp.grpc_listen": "OTLP/gRPC",
    "receivers.otlp.http_listen": "OTLP/HTTP",
    "metrics.listen": "metrics",
    "http.listen": "budget API, HTTP/JSON",
}


def startup_lines(sidecar: Sidecar) -> list[str]:
    """What ``paymaster sidecar`` prints once every port is open."""
    bound = _bound(sidecar)
    parts = []
    for listener in sidecar.config.listeners():
        address = bound.get(listener.key, listener.address)
        security = _security(listener)
        if listener.key == "server.listen":
            parts.append(f"listening on {address} ({_NAMES[listener.key]}: {security})")
        elif listener.key == "metrics.listen":
            scheme = "https" if listener.tls.enabled else "http"
            parts.append(f"metrics on {scheme}://{address}/metrics ({security})")
        else:
            parts.append(f"{_NAMES.get(listener.key, listener.key)} on {address} ({security})")
    lines = [f"paymaster sidecar {'; '.join(parts)}; store: {sidecar.config.store_description()}"]
    onward = sorted({o for c in sidecar.components for o in getattr(c, "onward", list)()})
    if onward:
        lines.append(f"paymaster sidecar: forwarding OTLP to {', '.join(onward)}")
    return lines


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
