"""Authentication on a gRPC server: every method but health checking runs only for an identified caller.

``GateInterceptor`` wraps each method handler of the server it is given to (the budget API and server
reflection alike) so that the call first passes the listener's ``Gate``: a caller without valid
credentials is answered ``UNAUTHENTICATED`` before its request is looked at. The principal is then
available to the handler through ``current_principal()`` (a context variable set for the call's task).
Health checks stay open, so probes and load balancers need no token.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from collector_processor.auth.edge import Gate
from collector_processor.auth.principal import ANONYMOUS, Principal
from collector_processor.auth.tls import grpc_peer_certificate
from collector_processor.auth.tokens import Unauthenticated

__all__ = ["GateInterceptor", "current_principal", "identify"]

_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "paymaster_principal", default=ANONYMOUS
)
_OPEN_PREFIX = "/grpc.health.v1.Health/"


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


class GateInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Puts every method of a gRPC server but health checking behind ``gate``."""

    def __init__(self, gate: Gate, *, mutual: bool = False) -> None:
        self._gate = gate
        self._mutual = mutual

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not self._gate.required or details.method.startswith(_OPEN_PREFIX):
            return handler
        gate, mutual = self._gate, self._mutual
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                _PRINCIPAL.set(await identify(gate, context, mutual=mutual))
                return await _result(unary(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                _PRINCIPAL.set(await identify(gate, context, mutual=mutual))
                async for item in _items(stream(request, context)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                _PRINCIPAL.set(await identify(gate, context, mutual=mutual))
                return await _result(inner_su(requests, context))

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            _PRINCIPAL.set(await identify(gate, context, mutual=mutual))
            async for item in _items(inner_ss(requests, context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


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
