"""The HTTP listener as a sidecar component: uvicorn serving the ASGI app on an event loop of its own.

``HttpApi`` follows the component lifecycle of ``api/server.py`` (``describe``, ``start``, ``stop``):
``start`` binds the port itself, so a port in use is refused at start naming ``http.listen``, then runs
uvicorn in a thread with its own event loop, ``Batcher`` (group commit) and ``AlertHub`` (alert
streams). With ``http.tls`` every connection is TLS: the certificate files are looked at for each new
connection and a rotated certificate is served from the next handshake on (``ServerTls``), and with a
client CA the verified client certificate is handed to the gate (mTLS). ``stop`` ends alert streams,
stops accepting, and gives requests in flight the sidecar's grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import uvicorn

try:  # the C parser when it is installed (the sidecar extra asks for it), else the pure-Python one
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools missing
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

from collector_processor.alerts.dispatch import AlertHub
from collector_processor.api.batching import Batcher
from collector_processor.api.http.app import PEER_CERTIFICATE, Endpoint, Listener, build_app
from collector_processor.api.http.operations import Operations
from collector_processor.auth.tls import ServerTls, ssl_peer_certificate
from collector_processor.ledger import Ledger
from paymaster.exceptions import ConfigError

__all__ = ["HttpApi"]

log = logging.getLogger("paymaster.sidecar.http")


class _PeerProtocol(_Base):
    """uvicorn's HTTP/1.1 protocol (httptools' parser), with the connection's verified client certificate put where the
    gate reads it (the ASGI scope's ``state``; each connection has its own copy)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            certificate = ssl_peer_certificate(ssl_object)
            if certificate is not None:
                self.app_state = {**self.app_state, PEER_CERTIFICATE: certificate}


class HttpApi:
    """Serves the HTTP API on ``listen`` until ``stop``."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        listener: Listener,
        *,
        ledger: Ledger,
        service_metrics: Any,
        on_denied: Any,
        listen: str,
        tls: ServerTls | None,
        keepalive_s: float,
        grace_s: float,
        poll_s: float,
        reuse_port: bool = False,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._reuse_port = reuse_port
        """Bind with ``SO_REUSEPORT``: the worker processes of one sidecar share the port."""
        self.listener = listener
        self._ledger = ledger
        self._service_metrics = service_metrics
        self._on_denied = on_denied
        self.listen = listen
        self.tls = tls
        self._keepalive_s = keepalive_s
        self._grace_s = grace_s
        self._poll_s = poll_s
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    def describe(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"HTTP API on {scheme}://{self.address} (OpenAPI at /openapi.json)"

    def addresses(self) -> dict[str, str]:
        """Its bound address, by the key that configures it (the start-up line)."""
        return {"http.listen": self.address}

    def notify_alerts(self) -> None:
        """Alerts were fired in this process: wake the alert streams now."""
        if self.listener.hub is not None:
            self.listener.hub.notify()

    def start(self) -> HttpApi:
        host, port = self.listen.rsplit(":", 1)
        host = host.strip("[]")
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            # IPPROTO_TCP named, so that asyncio turns Nagle off on every accepted connection (it
            # checks the protocol); SO_REUSEADDR lets a restart rebind over connections in TIME_WAIT.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, int(port)))
        except OSError as exc:
            raise ConfigError(f"http.listen: cannot serve on {self.listen}: {exc}") from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="paymaster-http", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._failure is not None:
            raise ConfigError(f"http.listen: cannot serve on {self.listen}: {self._failure}") from None
        return self

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:  # the loop could not start: reported by start()
            self._failure = exc
            self._started.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        hub = AlertHub(self._ledger.store, poll_interval_s=self._poll_s)
        hub.attach(self._loop)
        self.listener.hub = hub
        self.listener.ops = Operations(
            self._ledger, Batcher(self._ledger.store), self._service_metrics, on_denied=self._on_denied
        )
        config = uvicorn.Config(
            build_app(self._endpoints, self.listener),
            http=_PeerProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_keep_alive=max(1, round(self._keepalive_s)),
            timeout_graceful_shutdown=max(1, round(self._grace_s)) if self._grace_s else None,
            ssl_context_factory=self._ssl_factory if self.tls is not None else None,
            server_header=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        # uvicorn offers no event for it.
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        self._started.set()
        await serving

    def _ssl_factory(self, config: Any, default: Any) -> ssl.SSLContext:
        """A context whose handshakes each take the listener's current certificate (re-read when the
        files change) through the SNI callback, which runs for every ClientHello."""
        tls = self.tls
        assert tls is not None
        base = tls.context()

        def current(ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
            fresh = tls.context()
            if fresh is not context:
                ssl_object.context = fresh

        base.sni_callback = current
        return base

    def stop(self, grace_s: float = 5.0) -> None:
        """End alert streams, stop accepting, give requests in flight up to ``grace_s``."""
        server, loop, thread = self._server, self._loop, self._thread
        if server is None or loop is None or thread is None:
            return
        self._server = None
        hub = self.listener.hub
        if hub is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(hub.close)
        server.should_exit = True
        thread.join(grace_s + 5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
