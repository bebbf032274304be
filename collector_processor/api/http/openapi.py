"""The OpenAPI 3.1 document of the HTTP API, built from its endpoint table and body models.

``document()`` is what ``GET /openapi.json`` serves; the same document is committed as
``docs/openapi.json`` and a test keeps the two equal. Regenerate the file after changing an endpoint
or a model::

    python -m collector_processor.api.http --write-openapi
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from collector_processor.api.http.app import Endpoint
from collector_processor.api.http.schemas import ErrorOut

__all__ = ["COMMITTED", "document", "render"]

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
_REF = "#/components/schemas/{model}"
_REASONS = {
    400: "A field is malformed or out of range; error.field names it.",
    401: "No valid credentials (a bearer token, Basic client_id/client_secret, or an mTLS certificate).",
    403: "The caller's roles or grants do not allow it; the message names the scope.",
    404: "Unknown, or outside the caller's grants.",
    409: "An idempotency key or usage id reused for another request, or a state that does not allow it.",
    413: "The body is larger than http.max_body_bytes.",
    429: "Too many alert streams (http.max_streams); retry after Retry-After.",
    503: "Too many requests in flight, or the store is unreachable; retry after Retry-After.",
}
_DESCRIPTION = """The Paymaster budget API over HTTP/JSON: the operations of the gRPC service \
`paymaster.v1.BudgetService` under `/v1`, and AxonFlow's cost-management endpoints under `/api/v1`.

Money is an exact decimal string with six places under `/v1` (`"12.500000"`) and an exact decimal \
number literal under `/api/v1` (AxonFlow's shapes). Every request but `/healthz` needs credentials \
where the sidecar's `[auth]` is on: `Authorization: Bearer <token>`, `Authorization: Basic` with a \
token's name as client_id and the token as client_secret, or an mTLS client certificate. \
See docs/http.md and docs/axonflow.md."""


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    models = _models(endpoints)
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Paymaster budget API", "version": "1", "description": _DESCRIPTION},
        "servers": [{"url": "http://127.0.0.1:7311"}],
        "security": [{"bearer": []}, {"basic": []}],
        "tags": [{"name": t} for t in dict.fromkeys(e.tag for e in endpoints)],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(defs.get("$defs", {}).items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "client_id: the token's name; "
                    "client_secret: the token (AxonFlow's credentials).",
                },
            },
        },
    }


def _models(endpoints: Sequence[Endpoint]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorOut": ErrorOut}
    for e in endpoints:
        for model in (e.request, e.response):
            if isinstance(model, type) and issubclass(model, BaseModel):
                found[model.__name__] = model
    return list(found.values())


def _ref(model: type[BaseModel] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model, type):
        return {"$ref": _REF.format(model=model.__name__)}
    return dict(model)


def _operation(e: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": e.name, "summary": e.summary, "tags": [e.tag]}
    if e.action is not None:
        op["description"] = f"Needs a role allowing `{e.action.value}`" + (
            f" (as the gRPC method `{e.rpc}`)." if e.rpc else "."
        )
    if e.open:
        op["security"] = []
    if e.params:
        op["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "schema": dict(p.schema), **({"description": p.description} if p.description else {})}
            for p in e.params
        ]  # fmt: skip
    if e.request is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(e.request)}}}
    ok: dict[str, Any] = {"description": "OK" if e.status != 201 else "Created"}
    if e.status == 204:
        ok = {"description": "Done; no body."}
    elif e.response is not None:
        ok["content"] = {e.media: {"schema": _ref(e.response)}}
    responses: dict[str, Any] = {str(e.status): ok}
    codes = list(e.errors) + ([413] if e.request is not None else [])
    if e.open:
        codes = [503]
    for code in sorted(set(codes)):
        responses[str(code)] = {
            "description": _REASONS[code],
            "content": {"application/json": {"schema": _ref(ErrorOut)}},
        }
    op["responses"] = responses
    return op


def render(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
