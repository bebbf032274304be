"""The budget API over HTTP/JSON, under ``/v1``: the gRPC service's operations, one route each.

| gRPC | HTTP |
|---|---|
| CreateBudget, ListBudgets | ``POST``, ``GET /v1/budgets`` |
| GetBudget, UpdateBudget, DeleteBudget | ``GET``, ``PATCH``, ``DELETE /v1/budgets/{id}`` |
| GetBudgetStatus | ``GET /v1/budgets/{id}/status`` |
| CheckBudget | ``POST /v1/check`` |
| Reserve | ``POST /v1/reservations`` |
| Commit, Release | ``POST /v1/reservations/{id}/commit``, ``/release`` |
| RecordUsage, GetUsage | ``POST``, ``GET /v1/usage`` |
| OpenRequestBudget | ``POST /v1/requests`` |
| GetBudgetStatus of a request budget | ``GET /v1/requests/{id}/status`` |
| WatchAlerts | ``GET /v1/alerts`` (long poll), ``GET /v1/alerts/stream`` (Server-Sent Events) |

Bodies and answers use the vocabulary of ``json.py``; every handler converts, calls ``Operations`` and
converts back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as stdjson
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from collector_processor.api.http import convert, json, schemas
from collector_processor.api.http.app import Call, Endpoint, Param, Refused, json_response
from collector_processor.domain.budgets import SCOPE_ORDER
from collector_processor.domain.money import parse_usd

__all__ = ["ENDPOINTS"]

_MAX_SEQUENCE = 2**63 - 1
_KEEPALIVE_S = 15.0
_STRING: dict[str, Any] = {"type": "string"}
_ID = Param("id", "path", {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}, required=True)
_RESERVATION = Param("id", "path", {"type": "string"}, "The reservation id Reserve answered.", required=True)


# -- budgets ---------------------------------------------------------------------------------------
async def create_budget(call: Call) -> Response:
    draft = convert.draft(convert.body(schemas.BudgetIn, await call.body()))
    created = await call.ops.create_budget(call.principal, draft, call.actor)
    return json_response(json.budget(created), 201)


async def list_budgets(call: Call) -> Response:
    p = call.params
    scope_name = p.get("scope", "")
    scope = convert.scope_named(scope_name, "scope") if scope_name else None
    budgets, token = call.ops.list_budgets(
        call.principal,
        scope=scope,
        scope_id=p.get("scope_id"),
        page_size=convert.integer(p, "page_size", 0, 0, 500),
        page_token=p.get("page_token", ""),
    )
    return json_response({"budgets": [json.budget(b) for b in budgets], "next_page_token": token})


async def get_budget(call: Call) -> Response:
    return json_response(json.budget(call.ops.get_budget(call.principal, call.path("id"))))


async def update_budget(call: Call) -> Response:
    patch = convert.patch(convert.body(schemas.BudgetPatchIn, await call.body()))
    updated = await call.ops.update_budget(call.principal, call.path("id"), patch, call.actor)
    return json_response(json.budget(updated))


async def delete_budget(call: Call) -> Response:
    await call.ops.delete_budget(call.principal, call.path("id"), call.actor)
    return Response(status_code=204)


async def budget_status(call: Call) -> Response:
    found = await call.ops.status(call.principal, call.path("id"), call.params.get("scope_id", ""))
    return json_response(json.status(found))


# -- decisions and spend -----------------------------------------------------------------------------
async def check(call: Call) -> Response:
    m = convert.body(schemas.CheckIn, await call.body())
    scopes = convert.scopes(m.scopes)
    estimate = parse_usd(m.estimate_usd, "estimate_usd", required=False)
    outcome = await call.ops.check(call.principal, scopes, estimate, m.request_budget_id)
    return json_response(json.check(outcome))


async def reserve(call: Call) -> Response:
    m = convert.body(schemas.ReserveIn, await call.body())
    command = convert.reserve(
        m, owner=call.principal.owner, idempotency_header=call.request.headers.get("idempotency-key")
    )
    return json_response(json.reserve(await call.ops.reserve(call.principal, command)))


async def commit(call: Call) -> Response:
    m = convert.body(schemas.CommitIn, await call.body())
    command = convert.commit(call.path("id"), m, owner=call.principal.owner)
    return json_response(json.commit(await call.ops.commit(call.principal, command)))


async def release(call: Call) -> Response:
    await call.body()
    return json_response(json.release(await call.ops.release(call.principal, call.path("id"))))


async def record_usage(call: Call) -> Response:
    m = convert.body(schemas.RecordIn, await call.body())
    command = convert.record(m, owner=call.principal.owner)
    return json_response(json.record(await call.ops.record_usage(call.principal, command)))


async def open_request_budget(call: Call) -> Response:
    m = convert.body(schemas.RequestBudgetIn, await call.body())
    command = convert.open_request(m, owner=call.principal.owner)
    return json_response(json.request(await call.ops.open_request_budget(call.principal, command)), 201)


async def request_status(call: Call) -> Response:
    found = await call.ops.request_status(call.principal, call.path("id"))
    return json_response(json.request_status(found))


async def get_usage(call: Call) -> Response:
    query = convert.usage_query(call.params, call.request.query_params.getlist("group_by"))
    return json_response(json.usage(await call.ops.usage(call.principal, query)))


# -- alerts ----------------------------------------------------------------------------------------
def _alert_request(call: Call) -> tuple[int | None, list[str]]:
    ids = call.request.query_params.getlist("budget_id")
    call.ops.watch(call.principal, ids)
    last = call.request.headers.get("last-event-id")
    text = call.params.get("after_sequence") or last
    if not text:
        return None, ids
    after = convert.integer({"after_sequence": text}, "after_sequence", 0, 0, _MAX_SEQUENCE)
    return after, ids


async def poll_alerts(call: Call) -> Response:
    after, ids = _alert_request(call)
    wait_s = convert.integer(call.params, "wait_seconds", 0, 0, 60)
    limit = convert.integer(call.params, "limit", 100, 1, 1000)
    store = call.ops.ledger.store
    cursor = store.last_alert_sequence() if after is None else after
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        batch = store.alerts_after(cursor, limit=limit, budget_ids=ids)
        if batch:
            cursor = batch[-1].sequence
        seen = call.ops.visible_alerts(call.principal, batch)
        left = deadline - asyncio.get_running_loop().time()
        if seen or len(batch) == limit or left <= 0:
            return json_response({"alerts": [json.alert(a) for a in seen], "next_after_sequence": cursor})
        if not batch:
            await asyncio.sleep(min(call.listener.poll_s, left))


async def stream_alerts(call: Call) -> Response:
    after, ids = _alert_request(call)
    listener, hub = call.listener, call.listener.hub
    assert hub is not None
    if listener.streams >= listener.max_streams:
        raise Refused(
            429, "resource_exhausted",
            f"all {listener.max_streams} alert streams of this listener are open (http.max_streams); retry later",
            retry_after=5,
        )  # fmt: skip
    cursor = call.ops.ledger.store.last_alert_sequence() if after is None else after
    principal, ops = call.principal, call.ops
    listener.streams += 1

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)

        async def pump() -> None:
            async for alert in hub.watch(after_sequence=cursor, budget_ids=ids):
                await queue.put(alert)
            await queue.put(None)

        task = asyncio.ensure_future(pump())
        try:
            yield b": positioned\n\n"  # every alert fired after this line is delivered
            while True:
                try:
                    alert = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if alert is None:
                    return
                if ops.visible_alerts(principal, [alert]):
                    data = stdjson.dumps(json.alert(alert), separators=(",", ":"))
                    yield f"id: {alert.sequence}\nevent: alert\ndata: {data}\n\n".encode()
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            listener.streams -= 1

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# -- the table -------------------------------------------------------------------------------------
def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> Param:
    return Param(name, "query", schema or _STRING, description)


_SCOPE_QUERY = tuple(_q(s.value, f"Only spend attributed to this {s.value} id.") for s in SCOPE_ORDER)
_REQUEST_ID = Param(
    "id",
    "path",
    {"type": "string", "pattern": "^[A-Za-z0-9._:-]{16,128}$"},
    "The request budget's id.",
    required=True,
)
_INT = {"type": "integer", "minimum": 0}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("create_budget", "POST", "/v1/budgets", create_budget, "CreateBudget", "Create a budget.",
             schemas.BudgetIn, schemas.BudgetOut, status=201),
    Endpoint("list_budgets", "GET", "/v1/budgets", list_budgets, "ListBudgets",
             "List the budgets the caller may see, by id.", None, schemas.BudgetListOut,
             params=(_q("scope", "Only budgets of this scope.", {"type": "string", "enum": [s.value for s in SCOPE_ORDER]}),
                     _q("scope_id", "Only budgets for exactly this entity."),
                     _q("page_size", "1-500; 0 or absent means 50.", {"type": "integer", "minimum": 0, "maximum": 500}),
                     _q("page_token", "next_page_token of the previous page."))),
    Endpoint("get_budget", "GET", "/v1/budgets/{id}", get_budget, "GetBudget", "Read a budget.",
             None, schemas.BudgetOut, params=(_ID,)),
    Endpoint("update_budget", "PATCH", "/v1/budgets/{id}", update_budget, "UpdateBudget",
             "Change the fields given; period, scope and scope_id never change.",
             schemas.BudgetPatchIn, schemas.BudgetOut, params=(_ID,)),
    Endpoint("delete_budget", "DELETE", "/v1/budgets/{id}", delete_budget, "DeleteBudget",
             "Delete a budget with its spend and alert history.", None, None, status=204, params=(_ID,)),
    Endpoint("budget_status", "GET", "/v1/budgets/{id}/status", budget_status, "GetBudgetStatus",
             "A budget's standing for one entity in its current period.", None, schemas.StatusOut,
             params=(_ID, _q("scope_id", "The entity; required for a wildcard budget."))),
    Endpoint("check", "POST", "/v1/check", check, "CheckBudget",
             "What a reservation would be answered now, reserving nothing.", schemas.CheckIn, schemas.CheckOut,
             tag="spend"),
    Endpoint("reserve", "POST", "/v1/reservations", reserve, "Reserve",
             "Reserve an estimate on every matching budget, atomically.", schemas.ReserveIn, schemas.ReserveOut,
             tag="spend", params=(Param("Idempotency-Key", "header", _STRING, "The same as idempotency_key."),)),
    Endpoint("commit", "POST", "/v1/reservations/{id}/commit", commit, "Commit",
             "Replace a reservation with the actual spend; committing again charges nothing.",
             schemas.CommitIn, schemas.CommitOut, tag="spend", params=(_RESERVATION,)),
    Endpoint("release", "POST", "/v1/reservations/{id}/release", release, "Release",
             "Give a reservation back without spending.", None, schemas.ReleaseOut, tag="spend",
             params=(_RESERVATION,)),
    Endpoint("record_usage", "POST", "/v1/usage", record_usage, "RecordUsage",
             "Charge spend that had no reservation; idempotent by usage_id.", schemas.RecordIn,
             schemas.RecordOut, tag="spend"),
    Endpoint("open_request_budget", "POST", "/v1/requests", open_request_budget, "OpenRequestBudget",
             "Open a request budget: a limit on what one request may cost across every service it touches "
             "(opening an open id again with the same body returns it).", schemas.RequestBudgetIn,
             schemas.RequestBudgetOut, status=201, tag="spend"),
    Endpoint("request_status", "GET", "/v1/requests/{id}/status", request_status, "GetBudgetStatus",
             "A live request budget's standing, with its spend by service; 404 once it has expired.", None,
             schemas.StatusOut, tag="reports", params=(_REQUEST_ID,)),
    Endpoint("get_usage", "GET", "/v1/usage", get_usage, "GetUsage",
             "Totals of recorded spend, broken down by the dimensions asked.", None, schemas.UsageOut,
             tag="reports",
             params=(_q("start", "Inclusive start, RFC 3339; absent: all retained history.", {"type": "string", "format": "date-time"}),
                     _q("end", "Exclusive end, RFC 3339; absent: now.", {"type": "string", "format": "date-time"}),
                     *_SCOPE_QUERY, _q("provider", "Only this provider."), _q("model", "Only this model."),
                     _q("group_by", "Dimensions, comma-separated or repeated: organization, team, agent, workflow, "
                        "user, provider, model, day, week, month, quarter, year."),
                     _q("time_zone", "IANA zone of the period dimensions; absent: the sidecar's."))),
    Endpoint("poll_alerts", "GET", "/v1/alerts", poll_alerts, "WatchAlerts",
             "Alerts after a sequence, waiting up to wait_seconds for the first (long poll).", None,
             schemas.AlertsOut, tag="alerts",
             params=(_q("after_sequence", "Alerts with a larger sequence; absent: from now on.", _INT),
                     _q("budget_id", "Only alerts of this budget (repeat for several)."),
                     _q("wait_seconds", "0-60: how long to wait for the first alert.", {"type": "integer", "minimum": 0, "maximum": 60}),
                     _q("limit", "1-1000 (default 100).", {"type": "integer", "minimum": 1, "maximum": 1000}))),
    Endpoint("stream_alerts", "GET", "/v1/alerts/stream", stream_alerts, "WatchAlerts",
             "Alerts as Server-Sent Events (event: alert, id: sequence); resume with Last-Event-ID.", None,
             {"type": "string"}, tag="alerts", media="text/event-stream", streaming=True,
             errors=(400, 401, 403, 429, 503),
             params=(_q("after_sequence", "Alerts with a larger sequence; absent: from now on.", _INT),
                     _q("budget_id", "Only alerts of this budget (repeat for several)."),
                     Param("Last-Event-ID", "header", _STRING, "The id of the last event received."))),
)  # fmt: skip
