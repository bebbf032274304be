"""The gRPC servicer of ``paymaster.v1.BudgetService``: translate, call the ledger, translate back.

Nothing here decides anything. Each method converts the request with ``convert``, hands one ledger call
to the ``Batcher`` (so concurrent calls share a transaction) and converts the outcome. Every error
becomes one gRPC status with a message that names the field or the id, and an unexpected exception is
logged and answered ``INTERNAL``, so no request can take the server down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError

from collector_processor.alerts.dispatch import AlertHub
from collector_processor.api import convert
from collector_processor.api.batching import Batcher
from collector_processor.domain.budgets import check_budget_id
from collector_processor.domain.money import parse_usd
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailableError,
)
from collector_processor.ledger import Ledger
from collector_processor.telemetry.selfmetrics import SelfMetrics
from collector_processor.telemetry.service_metrics import ServiceMetrics
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc

__all__ = ["BudgetServicer", "add_to_server"]

log = logging.getLogger("paymaster.sidecar")

_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
)

# Alert sequences are signed 64-bit integers in both stores.
_MAX_SEQUENCE = 2**63 - 1

# grpc.aio.ServicerContext; grpc ships no type information, so the alias is only documentation.
Ctx: TypeAlias = Any
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _status(exc: Exception) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: Ctx, exc: Exception) -> None:
    code = _status(exc)
    if code is not grpc.StatusCode.INTERNAL:
        await context.abort(code, str(exc))
    log.error("unexpected error while serving a request", exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the sidecar log"
    )


class _Undecodable:
    """What a request that is not valid protobuf of its type deserialises to; the handler refuses it
    with ``INVALID_ARGUMENT`` (gRPC itself would answer ``UNKNOWN``)."""

    __slots__ = ("problem",)

    def __init__(self, type_name: str, error: Exception) -> None:
        text = str(error)
        self.problem = (
            f"cannot be decoded: {text}" if type_name in text else f"cannot be decoded as {type_name}: {text}"
        )


def _lenient(message_type: Any) -> Callable[[bytes], Any]:
    parse = message_type.FromString
    type_name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(type_name, exc)

    return deserialize


def add_to_server(servicer: BudgetServicer, server: Any) -> None:
    """Serve ``servicer`` on ``server``: the generated registration, with requests that cannot be
    decoded answered ``INVALID_ARGUMENT`` naming their message type."""
    service = pb.DESCRIPTOR.services_by_name["BudgetService"]
    handlers = {}
    for method in service.methods:
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _guarded(method: F) -> F:
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: BudgetServicer, request: Any, context: Ctx) -> Any:
        start, code = perf_counter(), "OK"
        try:
            if type(request) is _Undecodable:
                raise InvalidRequestError("request", request.problem)
            return await method(self, request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = _status(exc).name
            await _abort(context, exc)
        finally:
            self._metrics.request(name, code, perf_counter() - start)

    return wrapper  # type: ignore[return-value]


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):  # type: ignore[misc]
    """Serves the budget API from a ``Ledger``; WatchAlerts streams come from an ``AlertHub``."""

    def __init__(
        self,
        ledger: Ledger,
        hub: AlertHub,
        batcher: Batcher,
        *,
        max_watchers: int = 16,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._ledger = ledger
        self._metrics = metrics or ServiceMetrics(SelfMetrics())
        self._hub = hub
        self._batcher = batcher
        self._max_watchers = max_watchers
        self._watchers = 0

    # -- budgets ---------------------------------------------------------------------------------
    @_guarded
    async def CreateBudget(self, request: pb.CreateBudgetRequest, context: Ctx) -> pb.Budget:
        draft = convert.draft_from_pb(request.budget)
        return convert.budget_to_pb(await self._batcher.run(lambda: self._ledger.create_budget(draft)))

    @_guarded
    async def GetBudget(self, request: pb.GetBudgetRequest, context: Ctx) -> pb.Budget:
        return convert.budget_to_pb(self._ledger.get_budget(request.id))

    @_guarded
    async def ListBudgets(self, request: pb.ListBudgetsRequest, context: Ctx) -> pb.ListBudgetsResponse:
        budgets, token = self._ledger.list_budgets(
            scope=convert.scope_from_pb(request.scope, "scope", allow_unspecified=True),
            scope_id=request.scope_id if request.HasField("scope_id") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListBudgetsResponse(
            budgets=[convert.budget_to_pb(b) for b in budgets], next_page_token=token
        )

    @_guarded
    async def UpdateBudget(self, request: pb.UpdateBudgetRequest, context: Ctx) -> pb.Budget:
        check_budget_id(request.id)
        patch = convert.patch_from_pb(request)
        return convert.budget_to_pb(
            await self._batcher.run(lambda: self._ledger.update_budget(request.id, patch))
        )

    @_guarded
    async def DeleteBudget(self, request: pb.DeleteBudgetRequest, context: Ctx) -> pb.DeleteBudgetResponse:
        await self._batcher.run(lambda: self._ledger.delete_budget(request.id))
        return pb.DeleteBudgetResponse()

    # -- decisions and spend ---------------------------------------------------------------------
    @_guarded
    async def CheckBudget(self, request: pb.CheckBudgetRequest, context: Ctx) -> pb.CheckBudgetResponse:
        scopes = convert.scopes_from_pb(request.scopes)
        estimate = parse_usd(request.estimate_usd, "estimate_usd", required=False)
        outcome = await self._batcher.run(lambda: self._ledger.check(scopes, estimate))
        self._metrics.checked(outcome)
        return convert.check_to_pb(outcome)

    @_guarded
    async def Reserve(self, request: pb.ReserveRequest, context: Ctx) -> pb.ReserveResponse:
        command = convert.reserve_from_pb(request)
        outcome = await self._batcher.run(lambda: self._ledger.reserve(command))
        self._metrics.reserved(outcome)
        return convert.reserve_to_pb(outcome)

    @_guarded
    async def Commit(self, request: pb.CommitRequest, context: Ctx) -> pb.CommitResponse:
        command = convert.commit_from_pb(request)
        outcome = await self._batcher.run(lambda: self._ledger.commit(command))
        self._metrics.committed(command, outcome)
        return convert.commit_to_pb(outcome)

    @_guarded
    async def Release(self, request: pb.ReleaseRequest, context: Ctx) -> pb.ReleaseResponse:
        reservation_id = request.reservation_id
        return convert.release_to_pb(await self._batcher.run(lambda: self._ledger.release(reservation_id)))

    @_guarded
    async def RecordUsage(self, request: pb.RecordUsageRequest, context: Ctx) -> pb.RecordUsageResponse:
        command = convert.record_from_pb(request)
        outcome = await self._batcher.run(lambda: self._ledger.record_usage(command))
        self._metrics.recorded(command, outcome)
        return convert.record_to_pb(outcome)

    # -- reports and alerts ----------------------------------------------------------------------
    @_guarded
    async def GetBudgetStatus(self, request: pb.GetBudgetStatusRequest, context: Ctx) -> pb.BudgetStatus:
        budget_id, scope_id = request.budget_id, request.scope_id
        return convert.status_to_pb(
            await self._batcher.run(lambda: self._ledger.budget_status(budget_id, scope_id))
        )

    @_guarded
    async def GetUsage(self, request: pb.GetUsageRequest, context: Ctx) -> pb.GetUsageResponse:
        query = convert.usage_query_from_pb(request)
        # A report may scan a lot of history: run it off the loop, on the store's reader connection.
        return convert.usage_to_pb(await asyncio.to_thread(self._ledger.usage, query))

    async def WatchAlerts(self, request: pb.WatchAlertsRequest, context: Ctx) -> AsyncIterator[pb.Alert]:
        try:
            if type(request) is _Undecodable:
                raise InvalidRequestError("request", request.problem)
            for budget_id in request.budget_ids:
                check_budget_id(budget_id, "budget_ids")
            if request.HasField("after_sequence") and request.after_sequence > _MAX_SEQUENCE:
                raise InvalidRequestError(
                    "after_sequence", f"must be at most {_MAX_SEQUENCE:,}, got {request.after_sequence:,}"
                )
        except InvalidRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._watchers >= self._max_watchers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many WatchAlerts streams on this sidecar; retry later",
            )
        self._watchers += 1
        try:
            if request.HasField("after_sequence"):
                cursor = request.after_sequence
            else:
                cursor = self._ledger.store.last_alert_sequence()
            # Initial metadata tells the client the stream is positioned: nothing fired after it is missed.
            await context.send_initial_metadata(())
            async for alert in self._hub.watch(after_sequence=cursor, budget_ids=list(request.budget_ids)):
                yield convert.alert_to_pb(alert)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            self._watchers -= 1
