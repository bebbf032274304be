"""The OTLP/HTTP transport: binary protobuf ``POST /v1/traces`` and ``POST /v1/metrics``.

A threaded HTTP/1.1 server (keep-alive, one thread per connection) from the standard library: OTLP/HTTP
needs nothing more than a POST with a body. What a client can hold is bounded. At most
``http_max_connections`` connections are open at once; one more is answered ``503`` with
``Retry-After`` and closed at once, from the accepting thread, without its request being read. A
request must arrive whole (line, headers, body) within ``http_request_timeout_seconds`` of its first
byte, and its answer be taken within as long again; a keep-alive connection waits at most
``http_idle_timeout_seconds`` for its next request. A client that is slower, or that goes away
mid-request, loses its connection and is logged as one line and counted
(``paymaster_otlp_http_disconnects_total``), never as a traceback. Bodies are read as they arrive,
never allocated from what ``Content-Length`` claims, and may be gzip or deflate compressed; both the
body and what it inflates to are bounded by ``max_message_bytes``, so neither a large body nor a
small "zip bomb" costs memory. Statuses follow the OTLP specification, with a ``google.rpc.Status``
body: 400 malformed, 413 too large, 415 not binary protobuf (OTLP/JSON is not supported), 404/405 for
other paths and methods, 503 with ``Retry-After`` when busy, 500 for a bug. Where the sidecar's
``[auth]`` is on, an export without valid credentials (the ``Authorization: Bearer`` header the OTLP
exporters send with ``headers=``, or a mapped client certificate over mTLS) is 401, and one whose
principal is not an ``ingester`` 403, before its body is read. With ``receivers.otlp.tls``, every
connection is TLS; a connection beyond the cap is then closed without a handshake.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.rpc import code_pb2, status_pb2

from collector_processor.auth.edge import Gate, PeerCertificate
from collector_processor.auth.tls import ServerTls, ssl_peer_certificate
from collector_processor.otlp import counters
from collector_processor.otlp.pipeline import METRICS, TRACES, ExportRefused, OtlpPipeline

__all__ = ["HttpReceiver"]

log = logging.getLogger("paymaster.sidecar.otlp")

_PATHS = {"/v1/traces": TRACES, "/v1/metrics": METRICS}
_PROTOBUF = "application/x-protobuf"
_STATUS = {
    "unauthenticated": (HTTPStatus.UNAUTHORIZED, code_pb2.UNAUTHENTICATED),
    "forbidden": (HTTPStatus.FORBIDDEN, code_pb2.PERMISSION_DENIED),
    "invalid": (HTTPStatus.BAD_REQUEST, code_pb2.INVALID_ARGUMENT),
    "too_large": (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, code_pb2.RESOURCE_EXHAUSTED),
    "unavailable": (HTTPStatus.SERVICE_UNAVAILABLE, code_pb2.UNAVAILABLE),
    "error": (HTTPStatus.INTERNAL_SERVER_ERROR, code_pb2.INTERNAL),
}
_READ_CHUNK = 64 * 1024
_LENGTH = re.compile(r"[0-9]{1,19}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_REFUSAL_LOG_EVERY_S = 10.0


class _Refusal(Exception):
    """An HTTP-level refusal (wrong path, method or media type), counted as ``invalid`` when it names a signal."""

    def __init__(self, status: HTTPStatus, message: str, signal: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.signal = signal


class _Expired(Exception):
    """A client ran out of time; ``idle`` when it was only keeping an idle connection open. Not a
    ``TimeoutError``, which ``BaseHTTPRequestHandler`` would swallow uncounted."""

    def __init__(self, *, idle: bool, answering: bool = False) -> None:
        super().__init__("idle" if idle else "timeout")
        self.idle = idle
        self.answering = answering


class HttpReceiver:
    """Serves OTLP/HTTP on ``listen`` until ``stop``."""

    def __init__(
        self,
        pipeline: OtlpPipeline,
        *,
        listen: str,
        max_concurrent: int,
        max_connections: int = 128,
        request_timeout_s: float = 30.0,
        idle_timeout_s: float = 60.0,
        gate: Gate | None = None,
        tls: ServerTls | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self.reuse_port = reuse_port
        """Bind with ``SO_REUSEPORT``: the worker processes of one sidecar share the port."""
        self._gate = gate
        self.tls = tls
        """Wraps each accepted connection (the handshake runs in the connection's own thread)."""
        self.listen = listen
        """The configured address (port 0: any free port)."""
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._busy = _busy_answer(max_connections)
        self._last_refusal_log = -_REFUSAL_LOG_EVERY_S
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> HttpReceiver:
        """Open the port; ``OSError`` if it cannot be bound."""
        host, port = self.listen.rsplit(":", 1)
        server = _Server((host.strip("[]"), int(port)), _handler(self), receiver=self)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="paymaster-otlp-http", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, close idle connections at once, and give requests being read or answered
        up to ``grace_s`` to finish (a slow client does not hold the shutdown past it)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drain(grace_s)
            self._server = None

    # -- connections -----------------------------------------------------------------------------
    def refuse(self, connection: socket.socket, peer: Any) -> None:
        """Answer a connection beyond ``max_connections`` with 503 at once, without reading its request."""
        self._pipeline.metrics.inc(counters.HTTP_CONNECTIONS_REFUSED)
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_EVERY_S:
            self._last_refusal_log = now
            log.warning("OTLP/HTTP: refusing connections (the first from %s): all %d are in use "
                        "(receivers.otlp.http_max_connections)", _peer(peer), self.max_connections)  # fmt: skip
        if self.tls is not None:
            return  # no TLS handshake is spent on it: closing is the answer
        with contextlib.suppress(OSError):
            connection.setblocking(False)
            # Take what already arrived, so that closing does not reset the connection under the answer.
            with contextlib.suppress(BlockingIOError):
                connection.recv(_READ_CHUNK)
            connection.send(self._busy)

    def client_gone(self, peer: Any, reason: str, detail: str) -> None:
        """Count and log (one line) a client that timed out or went away mid-request."""
        self._pipeline.metrics.inc(counters.HTTP_DISCONNECTS, 1, {"reason": reason})
        log.info("OTLP/HTTP client %s: %s; connection closed", _peer(peer), detail)

    # -- one request -----------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler) -> tuple[HTTPStatus, bytes, dict[str, str]]:
        """The status, protobuf body and extra headers answering ``request`` (a POST)."""
        pipeline = self._pipeline
        try:
            signal = self._signal(request)
        except _Refusal as refusal:
            if refusal.signal is not None:
                pipeline.count(refusal.signal, "http", "invalid")
            return refusal.status, _status_body(code_pb2.INVALID_ARGUMENT, refusal.message), {}
        try:
            principal = pipeline.admit(self._gate, *self._credentials(request))
        except ExportRefused as refused:
            pipeline.count(signal, "http", refused.outcome)
            request.close_connection = True  # its body is not read
            return self._refused(refused)
        try:
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
            job = pipeline.prepare(signal, body, "http", principal)
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

    def _credentials(self, request: BaseHTTPRequestHandler) -> tuple[str | None, PeerCertificate | None]:
        """The ``Authorization`` header and, over mTLS, the verified client certificate."""
        mutual = self.tls is not None and self.tls.mutual
        return request.headers.get("Authorization"), ssl_peer_certificate(
            request.connection
        ) if mutual else None

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
            length_header = (request.headers.get("Content-Length") or "").strip()
            if not _LENGTH.fullmatch(length_header):
                raise _Refusal(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", signal)
            length = int(length_header)
            if length > limit:
                _discard(request, length, limit)
                raise self._pipeline.too_large(length)
            raw = _read(request.rfile, length)
            if len(raw) != length:
                raise ExportRefused("invalid", f"the body ended after {len(raw)} of {length} bytes")
        if encoding == "identity":
            return raw
        return _inflate(raw, encoding, limit, self._pipeline)

    def _refused(self, refused: ExportRefused) -> tuple[HTTPStatus, bytes, dict[str, str]]:
        status, code = _STATUS[refused.outcome]
        headers = {"Retry-After": str(max(1, round(refused.retry_after_s)))} if refused.retry_after_s else {}
        if refused.outcome == "unauthenticated":
            headers["WWW-Authenticate"] = "Bearer"
        return status, _status_body(code, refused.message), headers


def _read(rfile: Any, length: int) -> bytes:
    """``length`` bytes or fewer at the end of the stream, read as they arrive: a client that claims
    a large body and sends little costs what it sent, not what it claimed."""
    parts: list[bytes] = []
    left = length
    while left > 0:
        got = rfile.read(min(left, _READ_CHUNK))
        if not got:
            break
        parts.append(got)
        left -= len(got)
    return b"".join(parts)


def _discard(request: BaseHTTPRequestHandler, length: int, limit: int) -> None:
    """Read and drop a refused body so the client sees the answer; one far too large closes the connection."""
    if length > 4 * limit:
        request.close_connection = True
        return
    left = length
    while left > 0:
        got = request.rfile.read(min(left, _READ_CHUNK))
        if not got:
            break
        left -= len(got)


def _read_chunked(request: BaseHTTPRequestHandler, limit: int, pipeline: OtlpPipeline) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = request.rfile.readline(1024)
        digits = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits):
            request.close_connection = True
            raise ExportRefused("invalid", "malformed chunked body")
        chunk = int(digits, 16)
        if chunk == 0:
            while request.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        size += chunk
        if size > limit:
            request.close_connection = True
            raise pipeline.too_large(None)
        part = _read(request.rfile, chunk)
        if len(part) != chunk:
            raise ExportRefused("invalid", "the chunked body ended early")
        parts.append(part)
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


def _busy_answer(max_connections: int) -> bytes:
    body = _status_body(
        code_pb2.UNAVAILABLE,
        f"all {max_connections} OTLP/HTTP connections are in use (receivers.otlp.http_max_connections); retry",
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {_PROTOBUF}\r\nContent-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address)


class _ClientStream(io.RawIOBase):
    """The socket of one connection, read against a deadline: the idle timeout while it waits for a
    request, the request timeout from the request's first byte. A recv-level timeout alone would let
    a client that sends a byte now and then hold its thread for ever."""

    def __init__(self, sock: socket.socket, *, idle_s: float, request_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._idle_s = idle_s
        self._request_s = request_s
        self.idle = True
        self._deadline = time.monotonic() + idle_s

    def readable(self) -> bool:
        return True

    def await_request(self) -> None:
        self.idle = True
        self._deadline = time.monotonic() + self._idle_s

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _Expired(idle=self.idle)
        self._sock.settimeout(left)
        try:
            got = self._sock.recv_into(buffer)
        except TimeoutError:
            raise _Expired(idle=self.idle) from None
        if got and self.idle:
            self.idle = False
            self._deadline = time.monotonic() + self._request_s
        return got


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stopping does not wait for clients; see HttpReceiver.stop
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: Any, *, receiver: HttpReceiver) -> None:
        self.receiver = receiver
        self.allow_reuse_port = receiver.reuse_port
        self._connections = threading.BoundedSemaphore(receiver.max_connections)
        self._open: set[Any] = set()
        self._open_changed = threading.Condition()
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        tls = self.receiver.tls
        if tls is not None:
            sock = tls.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.receiver.refuse(request, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started
            self._connections.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def opened(self, handler: Any) -> None:
        with self._open_changed:
            self._open.add(handler)

    def closed(self, handler: Any) -> None:
        with self._open_changed:
            self._open.discard(handler)
            self._open_changed.notify_all()

    def drain(self, grace_s: float) -> None:
        """Until every connection is closed or ``grace_s`` has passed, end those waiting for a next
        request (their threads return at once); the others finish the request they are on first."""
        deadline = time.monotonic() + grace_s
        with self._open_changed:
            while self._open:
                for handler in self._open:
                    if handler.stream.idle:
                        with contextlib.suppress(OSError):
                            handler.connection.shutdown(socket.SHUT_RDWR)
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._open_changed.wait(min(left, 0.05))

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("OTLP/HTTP: the connection from %s failed", _peer(client_address))


def _handler(receiver: HttpReceiver) -> Any:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "paymaster-otlp"
        timeout = None  # the stream keeps the deadlines
        stream: _ClientStream

        def setup(self) -> None:
            super().setup()
            self.rfile.close()
            self.stream = _ClientStream(
                self.connection, idle_s=receiver.idle_timeout_s, request_s=receiver.request_timeout_s
            )
            self.rfile = io.BufferedReader(self.stream, _READ_CHUNK)
            self.server.opened(self)  # type: ignore[attr-defined]

        def handle(self) -> None:
            try:
                super().handle()
            except _Expired as expired:
                if not expired.idle:
                    what = (
                        "did not take its answer" if expired.answering else "did not send its whole request"
                    )
                    receiver.client_gone(self.client_address, "timeout", f"{what} within "
                                         f"{receiver.request_timeout_s:g} s (receivers.otlp.http_request_timeout_seconds)")  # fmt: skip
            except OSError as exc:  # the client reset or closed the connection (or failed the TLS handshake)
                if not self.stream.idle:
                    receiver.client_gone(self.client_address, "closed",
                                         f"went away mid-request ({type(exc).__name__})")  # fmt: skip
            finally:
                self.server.closed(self)  # type: ignore[attr-defined]

        def handle_one_request(self) -> None:
            self.stream.await_request()
            super().handle_one_request()

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
            self.connection.settimeout(receiver.request_timeout_s)
            try:
                self.send_response(status)
                self.send_header("Content-Type", _PROTOBUF)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
            except TimeoutError:
                raise _Expired(idle=False, answering=True) from None

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("otlp http: " + format, *args)

    return Handler
