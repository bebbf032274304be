"""Authentication on a gRPC server: a service registered through ``GatedServer`` runs only for an
identified caller.

Each method handler of such a service (the budget API and server reflection alike) is wrapped once,
when it is registered, so that a call first passes the listener's ``Gate``: a caller without valid
credentials is answered ``UNAUTHENTICATED`` before its request is looked at. The principal is then
available to the handler through ``current_principal()`` (a context variable set for the call's task).
Health checking is registered on the server itself and stays open, so probes need no token. Wrapping
at registration rather than with a server interceptor keeps gRPC's per-call interceptor machinery off
every call (it cost about a tenth of a Reserve's time at one client).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc

from collector_processor.auth.edge import Gate
from collector_processor.auth.principal import ANONYMOUS, Principal
from collector_processor.auth.tls import grpc_peer_certificate
from collector_processor.auth.tokens import Unauthenticated

__all__ = ["GatedServer", "current_principal", "gated", "identify"]

_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "paymaster_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The principal of the call being served (``anonymous`` where the listener requires none)."""
    return _PRINCIPAL.get()


async def identify(gate: Gate, context: Any, *, mutual: bool) -> Principal:
    """The caller of ``context``, or the call aborted with ``UNAUTHENTICATED``."""
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value
            break
    certificate = grpc_peer_certificate(context) if mutual else None
    try:
        return gate.identify(authorization, certificate)
    except Unauthenticated as exc:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        raise AssertionError("unreachable") from None  # abort raises


def gated(handler: Any, gate: Gate, *, mutual: bool) -> Any:
    """``handler`` (a method handler of any kind) behind ``gate``: the call is answered
    ``UNAUTHENTICATED`` unless the caller is identified, and its principal is set for the handler."""
    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner = handler.unary_unary or handler.stream_unary

        async def answer(request: Any, context: Any) -> Any:
            _PRINCIPAL.set(await identify(gate, context, mutual=mutual))
            return await _result(inner(request, context))

        behavior: Any = answer
    else:
        inner = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            _PRINCIPAL.set(await identify(gate, context, mutual=mutual))
            async for item in _items(inner(request, context)):
                yield item

        behavior = stream
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class GatedServer:
    """Stands for a ``grpc.aio.Server`` when a service is registered on it (``add_*_to_server``):
    every handler it is given is put behind ``gate`` before it reaches the real server."""

    def __init__(self, server: Any, gate: Gate, *, mutual: bool = False) -> None:
        self._server = server
        self._gate = gate
        self._mutual = mutual

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GatedGeneric(h, self._gate, self._mutual) for h in handlers)
        )

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        gate, mutual = self._gate, self._mutual
        wrapped = {name: gated(h, gate, mutual=mutual) for name, h in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, wrapped)


class _GatedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose method handlers are gated (each wrapped once, on first use)."""

    def __init__(self, inner: Any, gate: Gate, mutual: bool) -> None:
        self._inner = inner
        self._gate = gate
        self._mutual = mutual
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = gated(handler, self._gate, mutual=self._mutual)
        return wrapped


async def _result(value: Any) -> Any:
    """A handler's answer, whether it is a coroutine (aio servicers) or already a value."""
    return await value if inspect.isawaitable(value) else value


async def _items(stream: Any) -> AsyncIterator[Any]:
    """A streaming handler's messages, from an async or a plain iterator."""
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            yield item
    else:
        for item in stream:
            yield item
