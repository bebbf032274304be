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
from collector_processor.api import authz, convert, convert_access
from collector_processor.api.batching import Batcher
from collector_processor.auth.desk import TokenDesk
from collector_processor.auth.policy import Action
from collector_processor.auth.principal import Principal
from collector_processor.auth.rpc import current_principal
from collector_processor.domain.budgets import ScopeSet, check_budget_id
from collector_processor.domain.money import parse_usd
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    UnauthenticatedError,
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
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
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
            self._denied(exc)
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
        desk: TokenDesk | None = None,
        on_denied: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._desk = desk or TokenDesk(ledger.store, now_ms=ledger.clock.now_ms, on_change=lambda: None)
        self._on_denied = on_denied or (lambda listener, principal, reason: None)
        self._metrics = metrics or ServiceMetrics(SelfMetrics())
        self._hub = hub
        self._batcher = batcher
        self._max_watchers = max_watchers
        self._watchers = 0

    # -- budgets ---------------------------------------------------------------------------------
    @_guarded
    async def CreateBudget(self, request: pb.CreateBudgetRequest, context: Ctx) -> pb.Budget:
        principal = authz.require(Action.MANAGE_BUDGETS)
        draft = convert.draft_from_pb(request.budget)
        if draft.scope is not None:  # without one, the ledger refuses it as malformed
            authz.require_manage(principal, draft.scope, draft.scope_id, "budget.scope_id")
        who = authz.actor(principal, context)
        return convert.budget_to_pb(
            await self._batcher.run(lambda: self._ledger.create_budget(draft, actor=who))
        )

    @_guarded
    async def GetBudget(self, request: pb.GetBudgetRequest, context: Ctx) -> pb.Budget:
        principal = authz.require(Action.READ)
        return convert.budget_to_pb(authz.require_visible(principal, self._ledger.get_budget(request.id)))

    @_guarded
    async def ListBudgets(self, request: pb.ListBudgetsRequest, context: Ctx) -> pb.ListBudgetsResponse:
        principal = authz.require(Action.READ)
        budgets, token = self._ledger.list_budgets(
            scope=convert.scope_from_pb(request.scope, "scope", allow_unspecified=True),
            scope_id=request.scope_id if request.HasField("scope_id") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        # A page may come back shorter than asked when budgets outside the grants are left out.
        return pb.ListBudgetsResponse(
            budgets=[convert.budget_to_pb(b) for b in budgets if authz.may_see_budget(principal, b)],
            next_page_token=token,
        )

    @_guarded
    async def UpdateBudget(self, request: pb.UpdateBudgetRequest, context: Ctx) -> pb.Budget:
        principal = authz.require(Action.MANAGE_BUDGETS)
        check_budget_id(request.id)
        patch = convert.patch_from_pb(request)
        self._managed(principal, request.id)
        who = authz.actor(principal, context)
        return convert.budget_to_pb(
            await self._batcher.run(lambda: self._ledger.update_budget(request.id, patch, actor=who))
        )

    @_guarded
    async def DeleteBudget(self, request: pb.DeleteBudgetRequest, context: Ctx) -> pb.DeleteBudgetResponse:
        principal = authz.require(Action.MANAGE_BUDGETS)
        self._managed(principal, request.id)
        who = authz.actor(principal, context)
        await self._batcher.run(lambda: self._ledger.delete_budget(request.id, actor=who))
        return pb.DeleteBudgetResponse()

    def _managed(self, principal: Principal, budget_id: str) -> None:
        """The budget exists, is visible to the caller and inside what it may manage (a budget's
        target never changes, so the check holds for the change that follows)."""
        if principal.grants.unrestricted:
            return
        budget = authz.require_visible(principal, self._ledger.get_budget(budget_id))
        authz.require_manage(principal, budget.scope, budget.scope_id, "id")

    # -- decisions and spend ---------------------------------------------------------------------
    @_guarded
    async def CheckBudget(self, request: pb.CheckBudgetRequest, context: Ctx) -> pb.CheckBudgetResponse:
        principal = authz.require(Action.SPEND)
        scopes = convert.scopes_from_pb(request.scopes)
        authz.require_scopes(principal, scopes)
        estimate = parse_usd(request.estimate_usd, "estimate_usd", required=False)
        request_budget = request.request_budget_id
        outcome = await self._batcher.run(
            lambda: self._ledger.check(scopes, estimate, request_budget=request_budget)
        )
        self._metrics.checked(outcome)
        return convert.check_to_pb(outcome)

    @_guarded
    async def Reserve(self, request: pb.ReserveRequest, context: Ctx) -> pb.ReserveResponse:
        principal = authz.require(Action.SPEND)
        command = convert.reserve_from_pb(request, owner=principal.owner)
        authz.require_scopes(principal, command.scopes)
        outcome = await self._batcher.run(lambda: self._ledger.reserve(command))
        self._metrics.reserved(outcome)
        return convert.reserve_to_pb(outcome)

    @_guarded
    async def Commit(self, request: pb.CommitRequest, context: Ctx) -> pb.CommitResponse:
        principal = authz.require(Action.SPEND)
        command = convert.commit_from_pb(request, owner=principal.owner)
        outcome = await self._batcher.run(lambda: self._ledger.commit(command))
        self._metrics.committed(command, outcome)
        return convert.commit_to_pb(outcome)

    @_guarded
    async def Release(self, request: pb.ReleaseRequest, context: Ctx) -> pb.ReleaseResponse:
        owner = authz.require(Action.SPEND).owner
        reservation_id = request.reservation_id
        return convert.release_to_pb(
            await self._batcher.run(lambda: self._ledger.release(reservation_id, owner=owner))
        )

    @_guarded
    async def RecordUsage(self, request: pb.RecordUsageRequest, context: Ctx) -> pb.RecordUsageResponse:
        principal = authz.require(Action.SPEND)
        command = convert.record_from_pb(request, owner=principal.owner)
        authz.require_scopes(principal, command.scopes)
        outcome = await self._batcher.run(lambda: self._ledger.record_usage(command))
        self._metrics.recorded(command, outcome)
        return convert.record_to_pb(outcome)

    @_guarded
    async def OpenRequestBudget(self, request: pb.OpenRequestBudgetRequest, context: Ctx) -> pb.RequestBudget:
        # A spender may open one: it names no scope, so no grant is involved, and it can only deny more
        # (docs/security.md, "Request budgets").
        principal = authz.require(Action.SPEND)
        command = convert.open_request_from_pb(request, owner=principal.owner)
        return convert.request_to_pb(
            await self._batcher.run(lambda: self._ledger.open_request_budget(command))
        )

    # -- reports and alerts ----------------------------------------------------------------------
    @_guarded
    async def GetBudgetStatus(self, request: pb.GetBudgetStatusRequest, context: Ctx) -> pb.BudgetStatus:
        principal = authz.require(Action.READ)
        if request.request_budget_id:
            if request.budget_id or request.scope_id:
                raise InvalidRequestError(
                    "request_budget_id", "give a budget_id (and scope_id) or a request_budget_id, not both"
                )
            request_id = request.request_budget_id
            return convert.request_status_to_pb(
                await self._batcher.run(lambda: self._ledger.request_status(request_id))
            )
        budget_id, scope_id = request.budget_id, request.scope_id
        if not principal.grants.unrestricted:
            budget = authz.require_visible(principal, self._ledger.get_budget(budget_id))
            if budget.scope_id is None and scope_id:
                authz.require_scopes(principal, ScopeSet(**{budget.scope.value: scope_id}), "scope_id")
            elif budget.scope_id is None:
                authz.require_manage(principal, budget.scope, None, "scope_id")
        return convert.status_to_pb(
            await self._batcher.run(lambda: self._ledger.budget_status(budget_id, scope_id))
        )

    @_guarded
    async def GetUsage(self, request: pb.GetUsageRequest, context: Ctx) -> pb.GetUsageResponse:
        principal = authz.require(Action.READ)
        query = convert.usage_query_from_pb(request)
        authz.require_scopes(principal, query.scopes)
        # Records are shown when any of their ids is granted (a reader of a team sees all of its spend).
        visible = None if principal.grants.unrestricted else principal.grants.sees
        # A report may scan a lot of history: run it off the loop, on the store's reader connection.
        return convert.usage_to_pb(
            await asyncio.to_thread(lambda: self._ledger.usage(query, visible=visible))
        )

    async def WatchAlerts(self, request: pb.WatchAlertsRequest, context: Ctx) -> AsyncIterator[pb.Alert]:
        try:
            principal = authz.require(Action.READ)
            if type(request) is _Undecodable:
                raise InvalidRequestError("request", request.problem)
            for budget_id in request.budget_ids:
                check_budget_id(budget_id, "budget_ids")
            if request.HasField("after_sequence") and request.after_sequence > _MAX_SEQUENCE:
                raise InvalidRequestError(
                    "after_sequence", f"must be at most {_MAX_SEQUENCE:,}, got {request.after_sequence:,}"
                )
        except (InvalidRequestError, PermissionDeniedError) as exc:
            self._denied(exc)
            await context.abort(_status(exc), str(exc))
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
            everything = principal.grants.unrestricted
            async for alert in self._hub.watch(after_sequence=cursor, budget_ids=list(request.budget_ids)):
                if everything or authz.may_see_alert(principal, alert):
                    yield convert.alert_to_pb(alert)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            self._watchers -= 1

    # -- tokens and the audit log ----------------------------------------------------------------
    @_guarded
    async def CreateToken(self, request: pb.CreateTokenRequest, context: Ctx) -> pb.CreateTokenResponse:
        principal = authz.require(Action.MANAGE_TOKENS)
        expires = convert_access.expires_in_ms(request)
        issued = await asyncio.to_thread(
            self._desk.issue,
            principal,
            authz.actor(principal, context),
            name=request.name,
            roles=list(request.roles),
            grants=list(request.grants),
            trust_reported_cost=request.trust_reported_cost,
            expires_in_ms=expires,
        )
        return pb.CreateTokenResponse(token=convert_access.token_to_pb(issued.record), secret=issued.secret)

    @_guarded
    async def ListTokens(self, request: pb.ListTokensRequest, context: Ctx) -> pb.ListTokensResponse:
        principal = authz.require(Action.MANAGE_TOKENS)
        tokens = await asyncio.to_thread(
            self._desk.tokens, principal, include_inactive=request.include_inactive
        )
        return pb.ListTokensResponse(tokens=[convert_access.token_to_pb(t) for t in tokens])

    @_guarded
    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Ctx) -> pb.Token:
        principal = authz.require(Action.MANAGE_TOKENS)
        who = authz.actor(principal, context)
        revoked = await asyncio.to_thread(self._desk.revoke, principal, who, request.id)
        return convert_access.token_to_pb(revoked)

    @_guarded
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        principal = authz.require(Action.READ_AUDIT)
        events, cursor = await asyncio.to_thread(
            self._desk.audit, principal, after=request.after_sequence, limit=request.page_size
        )
        return pb.ListAuditEventsResponse(
            events=[convert_access.audit_to_pb(e) for e in events], next_after_sequence=cursor
        )

    def _denied(self, exc: Exception) -> None:
        if isinstance(exc, PermissionDeniedError):
            self._on_denied("api", current_principal().name, exc.reason)
