"""The budget API over HTTP/JSON: its own port, the gRPC service's operations, AxonFlow's paths.

``create_http_api(config, ...)`` is what the sidecar's factory starts as a component, like the OTLP
receiver: ``HttpApi`` (``server``) runs uvicorn with the ASGI app of ``app``, whose endpoints are the
native ones (``native``, under ``/v1``), AxonFlow's (``axonflow``, under ``/api/v1``), ``/openapi.json``
(``openapi``) and ``/healthz``. Requests are converted by ``convert`` and answered in the vocabulary
of ``json``; ``operations`` authorizes and calls the ledger exactly as the gRPC servicer does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from collector_processor.api.http import axonflow, native
from collector_processor.api.http.app import Call, Endpoint, Listener, json_response
from collector_processor.api.http.json import error
from collector_processor.api.http.openapi import document
from collector_processor.api.http.server import HttpApi

if TYPE_CHECKING:
    from collector_processor.api.security import Guarded
    from collector_processor.config import SidecarConfig
    from collector_processor.ledger import Ledger
    from collector_processor.telemetry.selfmetrics import SelfMetrics

__all__ = ["ENDPOINTS", "HttpApi", "create_http_api"]


async def _openapi(call: Call) -> Response:
    return Response(_DOCUMENT, media_type="application/json")


async def _health(call: Call) -> Response:
    if getattr(call.ops.ledger.store, "available", True):
        return json_response({"status": "serving"})
    return json_response(error("unavailable", "the store cannot be reached"), 503, {"Retry-After": "1"})


_META = (
    Endpoint("openapi", "GET", "/openapi.json", _openapi, None, "This document.", None,
             {"type": "object"}, tag="meta", errors=(401,)),
    Endpoint("health", "GET", "/healthz", _health, None, "Serving, or 503 while the store is unreachable.",
             None, {"type": "object", "properties": {"status": {"const": "serving"}}, "required": ["status"]},
             tag="meta", open=True),
)  # fmt: skip

ENDPOINTS: tuple[Endpoint, ...] = (*native.ENDPOINTS, *axonflow.ENDPOINTS, *_META)
"""Every endpoint of the HTTP API."""

_DOCUMENT = __import__("json").dumps(document(ENDPOINTS), ensure_ascii=False).encode("utf-8")


def create_http_api(
    config: SidecarConfig,
    *,
    ledger: Ledger,
    metrics: SelfMetrics,
    service_metrics: Any,
    guard: Guarded,
    on_denied: Any,
    calculator: Any,
    reuse_port: bool = False,
) -> HttpApi:
    """The HTTP listener ``config.http`` describes (not yet started); ``reuse_port`` binds it with
    ``SO_REUSEPORT``, for the worker processes of one sidecar."""
    section = config.http
    listener = Listener(
        gate=guard.gate,
        mutual=guard.mutual,
        basic_auth=section.basic_auth,
        max_concurrent=section.max_concurrent_requests,
        max_streams=section.max_streams,
        max_body_bytes=section.max_body_bytes,
        metrics=metrics,
        poll_s=config.alerts.poll_interval_seconds,
        extra={"calculator": calculator},
    )
    return HttpApi(
        ENDPOINTS,
        listener,
        ledger=ledger,
        service_metrics=service_metrics,
        on_denied=on_denied,
        listen=section.listen,
        tls=guard.tls,
        keepalive_s=section.keepalive_seconds,
        grace_s=config.server.grace_seconds,
        poll_s=config.alerts.poll_interval_seconds,
        reuse_port=reuse_port,
    )
