"""The OTLP/HTTP transport: binary protobuf ``POST /v1/traces`` and ``POST /v1/metrics``.

A threaded HTTP/1.1 server (keep-alive, one thread per connection) from the standard library: OTLP/HTTP
needs nothing more than a POST with a body. Bodies may be gzip or deflate compressed; both the body
and what it inflates to are bounded by ``max_message_bytes``, so neither a large body nor a small
"zip bomb" costs memory. Statuses follow the OTLP specification, with a ``google.rpc.Status`` body:
400 malformed, 413 too large, 415 not binary protobuf (OTLP/JSON is not supported), 404/405 for other
paths and methods, 503 with ``Retry-After`` when busy, 500 for a bug.
"""

from __future__ import annotations

import logging
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.rpc import code_pb2, status_pb2

from collector_processor.otlp.pipeline import METRICS, TRACES, ExportRefused, OtlpPipeline

__all__ = ["HttpReceiver"]

log = logging.getLogger("paymaster.sidecar.otlp")

_PATHS = {"/v1/traces": TRACES, "/v1/metrics": METRICS}
_PROTOBUF = "application/x-protobuf"
_STATUS = {
    "invalid": (HTTPStatus.BAD_REQUEST, code_pb2.INVALID_ARGUMENT),
    "too_large": (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, code_pb2.RESOURCE_EXHAUSTED),
    "unavailable": (HTTPStatus.SERVICE_UNAVAILABLE, code_pb2.UNAVAILABLE),
    "error": (HTTPStatus.INTERNAL_SERVER_ERROR, code_pb2.INTERNAL),
}


class _Refusal(Exception):
    """An HTTP-level refusal (wrong path, method or media type), counted as ``invalid`` when it names a signal."""

    def __init__(self, status: HTTPStatus, message: str, signal: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.signal = signal


class HttpReceiver:
    """Serves OTLP/HTTP on ``listen`` until ``stop``."""

    def __init__(self, pipeline: OtlpPipeline, *, listen: str, max_concurrent: int) -> None:
        self._pipeline = pipeline
        self.listen = listen
        """The configured address (port 0: any free port)."""
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> HttpReceiver:
        host, port = self.listen.rsplit(":", 1)
        server = _Server((host.strip("[]"), int(port)), _handler(self))
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="paymaster-otlp-http", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- one request -----------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler) -> tuple[HTTPStatus, bytes, dict[str, str]]:
        """The status, protobuf body and extra headers answering ``request`` (a POST)."""
        pipeline = self._pipeline
        try:
            signal = self._signal(request)
            body = self._body(request, signal)
        except _Refusal as refusal:
            if refusal.signal is not None:
                pipeline.count(refusal.signal, "http", "invalid")
            return refusal.status, _status_body(code_pb2.INVALID_ARGUMENT, refusal.message), {}
        except ExportRefused as refused:
            pipeline.count(signal, "http", refused.outcome)
            return self._refused(refused)
        if not self._slots.acquire(blocking=False):
            busy = ExportRefused("unavailable", "too many exports in flight; retry", retry_after_s=1.0)
            pipeline.count(signal, "http", busy.outcome)
            return self._refused(busy)
        try:
            job = pipeline.prepare(signal, body, "http")
            pipeline.submit(job).result()
            return HTTPStatus.OK, pipeline.answer(job), {}
        except ExportRefused as refused:
            pipeline.count(signal, "http", refused.outcome)
            return self._refused(refused)
        except Exception as exc:  # never let an export take the receiver down
            log.exception("an OTLP/HTTP %s export failed", signal)
            pipeline.count(signal, "http", "error")
            return self._refused(ExportRefused("error", f"internal error ({type(exc).__name__})"))
        finally:
            self._slots.release()

    def _signal(self, request: BaseHTTPRequestHandler) -> str:
        signal = _PATHS.get(request.path.split("?", 1)[0])
        if signal is None:
            raise _Refusal(
                HTTPStatus.NOT_FOUND, f"no OTLP endpoint at {request.path}; use /v1/traces or /v1/metrics"
            )
        media = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media != _PROTOBUF:
            shown = media or "none"
            raise _Refusal(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {shown} is not supported; send binary protobuf ({_PROTOBUF})",
                signal,
            )
        return signal

    def _body(self, request: BaseHTTPRequestHandler, signal: str) -> bytes:
        limit = self._pipeline.max_message_bytes
        encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise _Refusal(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Encoding {encoding} is not supported"
                           " (use gzip, deflate or none)", signal)  # fmt: skip
        if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
            raw = _read_chunked(request, limit, self._pipeline)
        else:
            length_header = request.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                raise _Refusal(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", signal)
            length = int(length_header)
            if length > limit:
                _discard(request, length, limit)
                raise self._pipeline.too_large(length)
            raw = request.rfile.read(length)
            if len(raw) != length:
                raise ExportRefused("invalid", f"the body ended after {len(raw)} of {length} bytes")
        if encoding == "identity":
            return raw
        return _inflate(raw, encoding, limit, self._pipeline)

    def _refused(self, refused: ExportRefused) -> tuple[HTTPStatus, bytes, dict[str, str]]:
        status, code = _STATUS[refused.outcome]
        headers = {"Retry-After": str(max(1, round(refused.retry_after_s)))} if refused.retry_after_s else {}
        return status, _status_body(code, refused.message), headers


def _discard(request: BaseHTTPRequestHandler, length: int, limit: int) -> None:
    """Read and drop a refused body so the client sees the answer; one far too large closes the connection."""
    if length > 4 * limit:
        request.close_connection = True
        return
    left = length
    while left > 0:
        got = request.rfile.read(min(left, 1 << 20))
        if not got:
            break
        left -= len(got)


def _read_chunked(request: BaseHTTPRequestHandler, limit: int, pipeline: OtlpPipeline) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = request.rfile.readline(1024)
        try:
            chunk = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ExportRefused("invalid", "malformed chunked body") from None
        if chunk == 0:
            while request.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        size += chunk
        if size > limit:
            request.close_connection = True
            raise pipeline.too_large(None)
        parts.append(request.rfile.read(chunk))
        request.rfile.readline(1024)


def _inflate(raw: bytes, encoding: str, limit: int, pipeline: OtlpPipeline) -> bytes:
    """Decompress at most ``limit`` bytes; more is refused as too large."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ExportRefused("invalid", f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise pipeline.too_large(None)
    if not inflater.eof:
        raise ExportRefused("invalid", f"the {encoding} body is truncated")
    return out


def _status_body(code: int, message: str) -> bytes:
    return status_pb2.Status(code=code, message=message).SerializeToString()  # type: ignore[no-any-return]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128


def _handler(receiver: HttpReceiver) -> Any:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "paymaster-otlp"
        timeout = 30  # a client that stalls mid-request loses its connection, not a thread forever

        def do_POST(self) -> None:
            status, body, headers = receiver.handle(self)
            self._reply(status, body, headers)

        def do_GET(self) -> None:
            self._method_not_allowed()

        do_PUT = do_DELETE = do_PATCH = do_GET

        def _method_not_allowed(self) -> None:
            message = f"{self.command} is not supported; OTLP/HTTP exports are POSTed"
            self.close_connection = True
            self._reply(
                HTTPStatus.METHOD_NOT_ALLOWED,
                _status_body(code_pb2.INVALID_ARGUMENT, message),
                {"Allow": "POST"},
            )

        def _reply(self, status: HTTPStatus, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", _PROTOBUF)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("otlp http: " + format, *args)

    return Handler
