"""What answers on the budget API's port while no worker serves it: health ``NOT_SERVING``, and
``UNAVAILABLE`` to every other call.

The supervisor starts it when its last serving worker dies and stops it as soon as a worker is ready
again, so a Kubernetes gRPC probe or a load balancer sees a sidecar that is not serving (rather than
a refused connection it may take for a network fault), and a client's retry lands on a worker once
there is one. It joins the port's ``SO_REUSEPORT`` group like a worker, with the listener's TLS; it
reveals nothing and changes nothing, so it asks for no credentials.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from collector_processor.api.server import SERVICE_NAME
from collector_processor.auth.tls import ServerTls

__all__ = ["NotServing"]

_MESSAGE = "no worker of this sidecar is serving (one is being restarted); retry"


class _Unavailable(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method but health checking: UNAVAILABLE."""

    def service(self, handler_call_details: Any) -> Any:
        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _MESSAGE)

        return grpc.unary_unary_rpc_method_handler(refuse)


class NotServing:
    """The stand-in on ``listen``; ``start`` and ``stop`` may be called from any thread, repeatedly."""

    def __init__(self, listen: str, tls: ServerTls | None) -> None:
        self.listen = listen
        self._tls = tls
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._ready.clear()
        self.error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="paymaster-not-serving", daemon=True
        )
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
            health = health_aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health, server)
            server.add_generic_rpc_handlers((_Unavailable(),))
            if self._tls is not None:
                server.add_secure_port(self.listen, self._tls.grpc_credentials())
            else:
                server.add_insecure_port(self.listen)
            await server.start()
            for service in ("", SERVICE_NAME):
                await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        except Exception as exc:  # the port is held by this sidecar: not expected, but never fatal
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)
