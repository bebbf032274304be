"""The gRPC servicer of ``paymaster.v1.BudgetService``: translate, call the ledger, translate back.

Nothing here decides anything. Each method converts the request with ``convert``, calls one ledger
method and converts the outcome; every error becomes one gRPC status with a message that names the
field or the id, and an unexpected exception is logged and answered ``INTERNAL``, so no request can
take the server down.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from collector_processor import convert
from collector_processor.alerts import AlertHub
from collector_processor.budgets import check_budget_id
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailableError,
)
from collector_processor.ledger import Ledger
from collector_processor.money import parse_usd
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc

__all__ = ["BudgetServicer"]

log = logging.getLogger("paymaster.sidecar")

_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
)

F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            context.abort(code, str(exc))
    log.exception("unexpected error while serving a request")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the sidecar log")


def _guarded(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: BudgetServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _abort(context, exc)

    return wrapper  # type: ignore[return-value]


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    """Serves the budget API from a ``Ledger``; WatchAlerts streams come from an ``AlertHub``."""

    def __init__(self, ledger: Ledger, hub: AlertHub, *, max_watchers: int = 16) -> None:
        self._ledger = ledger
        self._hub = hub
        self._watchers = threading.BoundedSemaphore(max_watchers) if max_watchers else None

    # -- budgets ---------------------------------------------------------------------------------
    @_guarded
    def CreateBudget(self, request: pb.CreateBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:
        return convert.budget_to_pb(self._ledger.create_budget(convert.draft_from_pb(request.budget)))

    @_guarded
    def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:
        return convert.budget_to_pb(self._ledger.get_budget(request.id))

    @_guarded
    def ListBudgets(self, request: pb.ListBudgetsRequest, context: grpc.ServicerContext) -> pb.ListBudgetsResponse:
        budgets, token = self._ledger.list_budgets(
            scope=convert.scope_from_pb(request.scope, "scope", allow_unspecified=True),
            scope_id=request.scope_id if request.HasField("scope_id") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListBudgetsResponse(budgets=[convert.budget_to_pb(b) for b in budgets], next_page_token=token)

    @_guarded
    def UpdateBudget(self, request: pb.UpdateBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:
        check_budget_id(request.id)
        return convert.budget_to_pb(self._ledger.update_budget(request.id, convert.patch_from_pb(request)))

    @_guarded
    def DeleteBudget(self, request: pb.DeleteBudgetRequest, context: grpc.ServicerContext) -> pb.DeleteBudgetResponse:
        self._ledger.delete_budget(request.id)
        return pb.DeleteBudgetResponse()

    # -- decisions and spend ---------------------------------------------------------------------
    @_guarded
    def CheckBudget(self, request: pb.CheckBudgetRequest, context: grpc.ServicerContext) -> pb.CheckBudgetResponse:
        estimate = parse_usd(request.estimate_usd, "estimate_usd", required=False)
        return convert.check_to_pb(self._ledger.check(convert.scopes_from_pb(request.scopes), estimate))

    @_guarded
    def Reserve(self, request: pb.ReserveRequest, context: grpc.ServicerContext) -> pb.ReserveResponse:
        return convert.reserve_to_pb(self._ledger.reserve(convert.reserve_from_pb(request)))

    @_guarded
    def Commit(self, request: pb.CommitRequest, context: grpc.ServicerContext) -> pb.CommitResponse:
        return convert.commit_to_pb(self._ledger.commit(convert.commit_from_pb(request)))

    @_guarded
    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:
        return convert.release_to_pb(self._ledger.release(request.reservation_id))

    @_guarded
    def RecordUsage(self, request: pb.RecordUsageRequest, context: grpc.ServicerContext) -> pb.RecordUsageResponse:
        return convert.record_to_pb(self._ledger.record_usage(convert.record_from_pb(request)))

    # -- reports and alerts ----------------------------------------------------------------------
    @_guarded
    def GetBudgetStatus(self, request: pb.GetBudgetStatusRequest, context: grpc.ServicerContext) -> pb.BudgetStatus:
        return convert.status_to_pb(self._ledger.budget_status(request.budget_id, request.scope_id))

    @_guarded
    def GetUsage(self, request: pb.GetUsageRequest, context: grpc.ServicerContext) -> pb.GetUsageResponse:
        return convert.usage_to_pb(self._ledger.usage(convert.usage_query_from_pb(request)))

    def WatchAlerts(self, request: pb.WatchAlertsRequest, context: grpc.ServicerContext) -> Iterator[pb.Alert]:
        try:
            for budget_id in request.budget_ids:
                check_budget_id(budget_id, "budget_ids")
        except InvalidRequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._watchers is not None and not self._watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many WatchAlerts streams on this sidecar; retry later")
        try:
            after = request.after_sequence if request.HasField("after_sequence") else None
            budget_ids = list(request.budget_ids)
            for alert in self._hub.watch(after_sequence=after, budget_ids=budget_ids, is_active=context.is_active):
                yield convert.alert_to_pb(alert)
        except Exception as exc:
            _abort(context, exc)
        finally:
            if self._watchers is not None:
                self._watchers.release()
