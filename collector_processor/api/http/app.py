"""The HTTP listener's ASGI application: every endpoint behind one gate, one error vocabulary, one cap.

An ``Endpoint`` is one operation: its method and path, the gRPC method it is equivalent to (whose
action ``auth/policy.py`` names, so both transports authorize alike), its request and response
models (for ``/openapi.json``) and its handler. ``build_app`` wraps each handler the same way:

* **Shedding.** At most ``http.max_concurrent_requests`` requests are served at once; one more is
  answered ``503`` with ``Retry-After`` before anything else is done. Alert streams have their own cap
  (``http.max_streams``, ``429``).
* **Authentication.** The listener's ``Gate`` turns ``Authorization: Bearer <token>``, AxonFlow's
  ``Authorization: Basic`` (``client_id`` = the token's name, ``client_secret`` = the token; see
  ``http.basic_auth``) or a client certificate verified by mTLS into a principal, or answers ``401``.
* **Errors.** The sidecar's errors become one status each — ``400`` naming the field, ``401``, ``403``
  naming the scope, ``404``, ``409`` (an idempotency key or usage id reused for another request, a
  state that does not allow the change), ``413``, ``429``/``503`` with ``Retry-After`` — with the body
  ``{"error": {"code", "message", "field"}}``. An unexpected exception is logged and answered ``500``
  without its details; nothing a client sends can stop the listener.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector_processor.alerts.dispatch import AlertHub
from collector_processor.api.http.json import error
from collector_processor.api.http.operations import Operations
from collector_processor.auth.edge import Gate, PeerCertificate
from collector_processor.auth.policy import RPC_ACTIONS, Action
from collector_processor.auth.principal import ANONYMOUS, Principal
from collector_processor.auth.tokens import Unauthenticated
from collector_processor.domain.access import Actor
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    UnauthenticatedError,
)
from collector_processor.telemetry.selfmetrics import SelfMetrics

__all__ = [
    "PEER_CERTIFICATE",
    "Call",
    "Endpoint",
    "Param",
    "Refused",
    "build_app",
    "json_response",
]

log = logging.getLogger("paymaster.sidecar.http")

PEER_CERTIFICATE = "paymaster.peer_certificate"
"""Where the connection's verified client certificate waits in the ASGI scope's ``state``."""
REQUESTS = "paymaster_http_requests_total"
DURATION = "paymaster_http_request_duration_seconds"

_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (InvalidRequestError, 400, "invalid_argument"),
    (NotFoundError, 404, "not_found"),
    (AlreadyExistsError, 409, "already_exists"),
    (FailedPreconditionError, 409, "failed_precondition"),
    (StoreUnavailableError, 503, "unavailable"),
    (PermissionDeniedError, 403, "permission_denied"),
    (UnauthenticatedError, 401, "unauthenticated"),
)
_JSON = "application/json"


class Refused(Exception):
    """An HTTP-level refusal with its own status (413, 429, 503)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter, for the document."""

    name: str
    where: str
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it."""

    request: Request
    principal: Principal
    ops: Operations
    listener: Listener

    @property
    def actor(self) -> Actor:
        client = self.request.client
        address = f"ipv4:{client.host}:{client.port}" if client is not None else ""
        if client is not None and ":" in client.host:
            address = f"ipv6:[{client.host}]:{client.port}"
        return Actor(principal=self.principal.name, address=address)

    @property
    def params(self) -> Mapping[str, str]:
        return self.request.query_params

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def body(self) -> bytes:
        """The request body, refused with 413 past ``http.max_body_bytes``."""
        limit = self.listener.max_body_bytes
        length = self.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise Refused(
                413, "resource_exhausted", f"the body is larger than {limit} bytes (http.max_body_bytes)"
            )
        chunks, size = [], 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(
                    413, "resource_exhausted", f"the body is larger than {limit} bytes (http.max_body_bytes)"
                )
            chunks.append(chunk)
        return b"".join(chunks)


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One operation of the HTTP API."""

    name: str
    """The OpenAPI ``operationId`` and the ``operation`` label of the request metrics."""
    method: str
    path: str
    handler: Handler
    rpc: str | None
    """The gRPC method it is: the caller needs that method's action (``auth.policy.RPC_ACTIONS``)."""
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | Mapping[str, Any] | None = None
    status: int = 200
    params: tuple[Param, ...] = ()
    tag: str = "budgets"
    media: str = _JSON
    streaming: bool = False
    errors: tuple[int, ...] = (400, 401, 403, 404, 409, 503)
    open: bool = False
    """Served without credentials (health checks only)."""
    needs: Action | None = None
    """The action of an endpoint that is no gRPC method; neither: any authenticated principal."""

    @property
    def action(self) -> Action | None:
        """What the caller's roles must allow (the access tests read it)."""
        return RPC_ACTIONS[self.rpc] if self.rpc is not None else self.needs


@dataclass(slots=True)
class Listener:
    """What every request of one listener shares."""

    gate: Gate
    mutual: bool
    basic_auth: bool
    max_concurrent: int
    max_streams: int
    max_body_bytes: int
    metrics: SelfMetrics
    ops: Operations | None = None
    hub: AlertHub | None = None
    """Feeds alert streams; belongs to the listener's event loop."""
    poll_s: float = 0.5
    """How often a long poll looks at the alert log (``alerts.poll_interval_seconds``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What AxonFlow's pricing endpoint reads (``calculator``)."""
    in_flight: int = 0
    streams: int = 0

    def identify(self, request: Request) -> Principal:
        """The caller; ``Unauthenticated`` (counted by the gate) when it cannot be identified."""
        header = request.headers.get("authorization")
        certificate: PeerCertificate | None = None
        if self.mutual:
            certificate = request.scope.get("state", {}).get(PEER_CERTIFICATE)
        if header is not None and header.strip()[:6].lower() == "basic ":
            return self._basic(header.strip()[6:].strip(), certificate)
        return self.gate.identify(header, certificate)

    def _basic(self, encoded: str, certificate: PeerCertificate | None) -> Principal:
        if not self.gate.required:
            return ANONYMOUS
        if not self.basic_auth:
            self.gate.denied("", "malformed")
            raise Unauthenticated(
                "malformed",
                "HTTP Basic is turned off on this listener (http.basic_auth); send 'Bearer <token>'",
            )
        try:
            client_id, _, secret = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self.gate.denied("", "malformed")
            raise Unauthenticated(
                "malformed", "the Basic credentials are not base64 of client_id:client_secret"
            ) from None
        if not secret:
            self.gate.denied("", "missing")
            raise Unauthenticated(
                "missing", "HTTP Basic needs a token as client_secret (and its name as client_id)"
            )
        principal = self.gate.identify(f"Bearer {secret}", certificate)
        if client_id != principal.name:
            self.gate.denied(principal.name, "client_id")
            raise Unauthenticated(
                "client_id", "client_id is not the name of the token given as client_secret"
            )
        return principal


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(text, status_code=status, headers=headers, media_type=_JSON)


def _refusal(exc: Exception) -> Response:
    if isinstance(exc, Refused):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return json_response(error(exc.code, str(exc)), exc.status, headers)
    if isinstance(exc, Unauthenticated):
        return json_response(
            error("unauthenticated", str(exc)), 401, {"WWW-Authenticate": 'Bearer, Basic realm="paymaster"'}
        )
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            field = None
            if isinstance(exc, InvalidRequestError):
                field = exc.field
                if field.startswith("budget."):  # the ledger names a budget's fields as gRPC nests them
                    field = field.removeprefix("budget.")
                    exc = InvalidRequestError(field, exc.problem)
            headers = {"Retry-After": "1"} if status == 503 else None
            return json_response(error(code, str(exc), field), status, headers)
    log.error("unexpected error while serving an HTTP request", exc_info=exc)
    return json_response(
        error("internal", f"internal error ({type(exc).__name__}); see the sidecar log"), 500
    )


def _wrap(endpoint: Endpoint, listener: Listener) -> Callable[[Request], Awaitable[Response]]:
    name = endpoint.name

    async def serve(request: Request) -> Response:
        start = perf_counter()
        response: Response | None = None
        if listener.in_flight >= listener.max_concurrent and not endpoint.streaming:
            response = json_response(
                error(
                    "unavailable",
                    f"all {listener.max_concurrent} request slots are in use "
                    "(http.max_concurrent_requests); retry",
                ),
                503,
                {"Retry-After": "1"},
            )
            _count(listener, name, 503, start)
            return response
        listener.in_flight += 1
        principal = ANONYMOUS
        try:
            principal = ANONYMOUS if endpoint.open else listener.identify(request)
            assert listener.ops is not None
            response = await endpoint.handler(Call(request, principal, listener.ops, listener))
        except Exception as exc:
            if listener.ops is not None:
                listener.ops.denied(principal, exc)
            response = _refusal(exc)
        finally:
            listener.in_flight -= 1
        _count(listener, name, response.status_code, start)
        return response

    return serve


def _count(listener: Listener, name: str, status: int, start: float) -> None:
    listener.metrics.inc(REQUESTS, 1, {"operation": name, "status": str(status)})
    listener.metrics.observe(DURATION, perf_counter() - start, {"operation": name})


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return json_response(
            error("invalid_argument", f"{request.method} is not supported on {request.url.path}"), 405
        )
    return json_response(error("not_found", f"no endpoint at {request.url.path}; see /openapi.json"), 404)


def build_app(endpoints: Sequence[Endpoint], listener: Listener) -> Starlette:
    """The ASGI application serving ``endpoints``."""
    listener.metrics.describe(REQUESTS, "HTTP API requests answered, by operation and status.")
    listener.metrics.describe(
        DURATION, "Time from an HTTP API request's arrival to its answer, by operation."
    )
    routes = [Route(e.path, _wrap(e, listener), methods=[e.method]) for e in endpoints]
    return Starlette(routes=routes, exception_handlers={HTTPException: _not_found})
