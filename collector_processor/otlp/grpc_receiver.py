"""The OTLP/gRPC transport: ``TraceService/Export`` and ``MetricsService/Export`` on their own port.

It runs its own ``grpc.aio`` server on its own event loop and thread, so decoding exports never
delays the budget API. Requests arrive as raw bytes (gRPC has already undone any gzip) and go
through the ``OtlpPipeline``; while a job is charged the loop goes on reading other exports.

An export larger than ``max_message_bytes`` (after decompression) is refused by the handler, which
counts it; gRPC itself refuses anything larger still (four times the limit, and at least 16 MiB more)
before it is read, so such a body never fills memory. Each method is registered as stream-unary,
which is the same thing on the wire as unary, so that a request gRPC refused still reaches the
handler as an empty stream and is counted too.
Where the sidecar's ``[auth]`` is on, an export without valid credentials is UNAUTHENTICATED and one
whose principal lacks the ``ingester`` role PERMISSION_DENIED, before it is decoded.
Statuses follow the OTLP specification: INVALID_ARGUMENT (not retried) for a malformed export,
RESOURCE_EXHAUSTED without RetryInfo (not retried) for one too large, UNAVAILABLE with RetryInfo
when the ledger or the receiver is busy, INTERNAL for a bug.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import grpc
from google.protobuf import duration_pb2

from collector_processor.auth.edge import Gate, PeerCertificate
from collector_processor.auth.tls import ServerTls, grpc_peer_certificate
from collector_processor.otlp.pipeline import METRICS, TRACES, ExportRefused, OtlpPipeline

__all__ = ["GrpcReceiver"]

log = logging.getLogger("paymaster.sidecar.otlp")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"

_CODES = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "error": grpc.StatusCode.INTERNAL,
}


class GrpcReceiver:
    """Serves OTLP/gRPC on ``listen`` until ``stop``."""

    def __init__(
        self,
        pipeline: OtlpPipeline,
        *,
        listen: str,
        max_concurrent: int,
        gate: Gate | None = None,
        tls: ServerTls | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self._reuse_port = reuse_port
        self._gate = gate
        self._tls = tls
        self.listen = listen
        """The configured address (port 0: any free port)."""
        self._max_concurrent = max_concurrent
        self._inflight = 0
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._grace_s = 5.0

    @property
    def address(self) -> str:
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> GrpcReceiver:
        """Open the port; the error (a port in use) is raised here."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="paymaster-otlp-grpc",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish the exports in flight (up to ``grace_s``) and close the port."""
        self._grace_s = grace_s
        thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive() or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        thread.join()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                    ("grpc.max_receive_message_length", _transport_limit(self._pipeline.max_message_bytes)),
                ]
            )
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        TRACE_SERVICE, {"Export": grpc.stream_unary_rpc_method_handler(self._traces)}
                    ),
                    grpc.method_handlers_generic_handler(
                        METRICS_SERVICE, {"Export": grpc.stream_unary_rpc_method_handler(self._metrics)}
                    ),
                )
            )
            if self._tls is not None:
                self.port = server.add_secure_port(self.listen, self._tls.grpc_credentials())
            else:
                self.port = server.add_insecure_port(self.listen)
            await server.start()
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await server.stop(self._grace_s)

    async def _traces(self, requests: Any, context: Any) -> bytes:
        return await self._export(TRACES, requests, context)

    async def _metrics(self, requests: Any, context: Any) -> bytes:
        return await self._export(METRICS, requests, context)

    async def _export(self, signal: str, requests: Any, context: Any) -> bytes:
        pipeline = self._pipeline
        body = None
        async for message in requests:
            if body is not None:
                return await self._refuse(
                    signal, context, ExportRefused("invalid", "Export takes one request")
                )
            body = message
        if body is None:  # gRPC refused the message before it was read: larger than allowed
            pipeline.count(signal, "grpc", "too_large")
            return b""
        try:
            principal = pipeline.admit(self._gate, *_credentials(context, self._tls))
        except ExportRefused as refused:
            return await self._refuse(signal, context, refused)
        if self._inflight >= self._max_concurrent:
            busy = ExportRefused("unavailable", "too many exports in flight; retry", retry_after_s=1.0)
            return await self._refuse(signal, context, busy)
        self._inflight += 1
        try:
            job = pipeline.prepare(signal, body, "grpc", principal)
            await asyncio.wrap_future(pipeline.submit(job))
            return pipeline.answer(job)
        except ExportRefused as refused:
            return await self._refuse(signal, context, refused)
        except Exception as exc:  # never let an export take the receiver down
            log.exception("an OTLP %s export failed", signal)
            return await self._refuse(
                signal, context, ExportRefused("error", f"internal error ({type(exc).__name__})")
            )
        finally:
            self._inflight -= 1

    async def _refuse(self, signal: str, context: Any, refused: ExportRefused) -> bytes:
        self._pipeline.count(signal, "grpc", refused.outcome)
        if refused.retry_after_s:
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", _retry_info(refused.retry_after_s)),))
        await context.abort(_CODES[refused.outcome], refused.message)
        return b""  # not reached: abort raises


def _credentials(context: Any, tls: ServerTls | None) -> tuple[str | None, PeerCertificate | None]:
    """The ``authorization`` metadata of a call and, over mTLS, its verified client certificate."""
    authorization = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
    certificate = grpc_peer_certificate(context) if tls is not None and tls.mutual else None
    return authorization, certificate


def _transport_limit(limit: int) -> int:
    """What gRPC reads at most: enough above the receiver's limit that the handler sees (and counts)
    the usual oversized export, bounded so that no body fills memory."""
    return min(max(4 * limit, limit + (16 << 20)), 2**31 - 1)


def _retry_info(seconds: float) -> bytes:
    from google.rpc import error_details_pb2

    delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay).SerializeToString()  # type: ignore[no-any-return]
