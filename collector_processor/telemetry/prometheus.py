"""The Prometheus exporter: a per-sidecar registry whose collector reads everything at scrape time.

``SidecarCollector`` turns the sidecar's ``SelfMetrics`` (requests, decisions, spend, store, OTLP
pipeline) and the store's budget standings (``BudgetGauges``) into Prometheus metric families each time
it is collected; nothing is copied in between. Each sidecar has its own ``CollectorRegistry``, never
the process-global one, so several sidecars in one process keep separate figures. ``MetricsEndpoint``
serves that registry on ``/metrics`` (text format, or OpenMetrics when the scraper asks for it).

A store that cannot be read at scrape time costs the budget families of that scrape, not the scrape:
everything else is served, and ``paymaster_metrics_read_errors_total`` counts the failure.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector_processor.auth.edge import Gate
from collector_processor.auth.policy import Action, authorize
from collector_processor.auth.tls import ServerTls, ssl_peer_certificate
from collector_processor.auth.tokens import Unauthenticated
from collector_processor.store.base import LedgerStore
from collector_processor.telemetry.budget_gauges import BudgetGauges, BudgetReading
from collector_processor.telemetry.selfmetrics import HistogramSnapshot, Labels, MetricsSnapshot, SelfMetrics
from collector_processor.telemetry.service_metrics import ServiceMetrics

__all__ = ["MetricsEndpoint", "SidecarCollector", "build_registry"]

log = logging.getLogger("paymaster.sidecar.metrics")

READ_ERRORS = "paymaster_metrics_read_errors_total"
_ENTITY = ["budget", "scope", "scope_id"]
_BUDGET = ["budget", "scope"]

# name -> (help, attribute of BudgetSample)
_SAMPLE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("paymaster_budget_limit_usd", "The budget's limit per period, USD.", "limit_usd"),
    ("paymaster_budget_used_usd", "Committed spend in the current period, USD.", "used_usd"),
    ("paymaster_budget_reserved_usd", "Held by reservations in flight, USD.", "reserved_usd"),
    (
        "paymaster_budget_remaining_usd",
        "Limit minus used minus reserved, never below zero, USD.",
        "remaining_usd",
    ),
    ("paymaster_budget_used_percent", "Committed spend as a percentage of the limit.", "percent"),
    (
        "paymaster_budget_burn_rate_usd_per_hour",
        "Committed spend per hour since the period started (rolling windows: over the window).",
        "burn_usd_per_hour",
    ),
    (
        "paymaster_budget_projected_usd",
        "Spend at period end if the burn rate holds (rolling windows: the current spend), USD.",
        "projected_usd",
    ),
    (
        "paymaster_budget_exhaustion_seconds",
        "Seconds until the remaining budget is spent at the burn rate; 0 when exhausted, +Inf when not burning.",
        "exhaustion_seconds",
    ),
)


class SidecarCollector(Collector):
    """Collects one sidecar's metrics when its registry is scraped."""

    def __init__(
        self,
        metrics: SelfMetrics,
        *,
        gauges: BudgetGauges | None = None,
        service: ServiceMetrics | None = None,
        store: LedgerStore | None = None,
        version: str = "",
        snapshot: Callable[[], MetricsSnapshot] | None = None,
    ) -> None:
        self._metrics = metrics
        self._snapshot = snapshot or metrics.snapshot
        self._gauges = gauges
        self._service = service
        self._store = store
        self._version = version
        metrics.describe(READ_ERRORS, "Metric collections that could not read the store, by what was read.")

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the store

    def collect(self) -> Iterator[Metric]:
        reading = self._read()
        yield from _snapshot_families(self._snapshot())
        if reading is not None:
            yield from _budget_families(reading)
        info = GaugeMetricFamily("paymaster_build_info", "The sidecar's version.", labels=["version"])
        info.add_metric([self._version], 1)
        yield info

    def _read(self) -> BudgetReading | None:
        if self._service is not None and self._store is not None:
            try:
                self._service.resolve_alerts(self._store)
            except Exception:
                log.warning("could not read fired alerts for metrics", exc_info=True)
                self._metrics.inc(READ_ERRORS, 1, {"read": "alerts"})
        if self._gauges is None:
            return None
        try:
            return self._gauges.read()
        except Exception:
            log.warning("could not read budget standings for metrics", exc_info=True)
            self._metrics.inc(READ_ERRORS, 1, {"read": "budgets"})
            return None


def build_registry(collector: SidecarCollector) -> CollectorRegistry:
    """A registry of its own for one sidecar."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# -- families --------------------------------------------------------------------------------------
def _budget_families(r: BudgetReading) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "paymaster_budget_info",
        "Every budget, with its name, scope, period, action, whether it is enabled and where it is declared.",
        labels=["budget", "name", "scope", "wildcard", "period", "action", "enabled", "source"],
    )
    entities = GaugeMetricFamily(
        "paymaster_budget_entities",
        "Entities with spend or holds in the budget's current period.",
        labels=_BUDGET,
    )
    dropped = GaugeMetricFamily(
        "paymaster_budget_entities_dropped",
        "Entities of a wildcard budget beyond the metrics cap, not exported individually.",
        labels=_BUDGET,
    )
    for spend in r.budgets:
        b = spend.budget
        info.add_metric(
            [b.id, b.name, b.scope.value, str(b.is_wildcard).lower(), b.period.spec, b.on_exceed.value,
             str(b.enabled).lower(), "config" if b.declared_in_config else "api"],
            1,
        )  # fmt: skip
        entities.add_metric([b.id, b.scope.value], spend.entity_count)
        dropped.add_metric([b.id, b.scope.value], max(spend.entity_count - len(spend.entities), 0))
    yield from (info, entities, dropped)
    for name, text, attribute in _SAMPLE_GAUGES:
        family = GaugeMetricFamily(name, text, labels=_ENTITY)
        for s in r.samples:
            family.add_metric([s.budget_id, s.scope, s.entity], float(getattr(s, attribute)))
        yield family
    for name, text, ms in (
        (
            "paymaster_budget_period_start_timestamp_seconds",
            "When the current period (or window) started.",
            "start",
        ),
        (
            "paymaster_budget_period_end_timestamp_seconds",
            "When the current period ends; a rolling window never does, and reads the time of measurement.",
            "end",
        ),
    ):
        family = GaugeMetricFamily(name, text, labels=_ENTITY)
        for s in r.samples:
            value = s.period_start_ms if ms == "start" else s.period_end_ms
            family.add_metric([s.budget_id, s.scope, s.entity], value / 1000)
        yield family
    yield GaugeMetricFamily(
        "paymaster_reservations_active", "Reservations held now.", value=r.held_reservations
    )
    yield GaugeMetricFamily(
        "paymaster_reservations_held_usd", "USD held by reservations now.", value=float(r.held_usd)
    )
    yield GaugeMetricFamily(
        "paymaster_metrics_read_seconds",
        "How long the last read of budget standings took.",
        value=r.read_seconds,
    )


def _snapshot_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    for name, series in sorted(snap.counters.items()):
        text = snap.help.get(name, name)
        if name.endswith("_total"):
            family = Metric(name[: -len("_total")], text, "counter")
        else:  # not named as a counter: exposed as it is, untyped
            family = Metric(name, text, "unknown")
        for labels, value in sorted(series.items()):
            family.add_sample(name, dict(labels), value)
        yield family
    for name, gseries in sorted(snap.gauges.items()):
        family = Metric(name, snap.help.get(name, name), "gauge")
        for labels, value in sorted(gseries.items()):
            family.add_sample(name, dict(labels), value)
        yield family
    for name, hseries in sorted(snap.histograms.items()):
        family = Metric(name, snap.help.get(name, name), "histogram")
        for labels, hist in sorted(hseries.items(), key=lambda item: item[0]):
            _add_histogram(family, name, labels, hist)
        yield family


def _add_histogram(family: Metric, name: str, labels: Labels, hist: HistogramSnapshot) -> None:
    base = dict(labels)
    cumulative = 0
    for bound, count in zip((*hist.buckets, math.inf), hist.counts, strict=True):
        cumulative += count
        family.add_sample(f"{name}_bucket", {**base, "le": _le(bound)}, cumulative)
    family.add_sample(f"{name}_count", base, hist.count)
    family.add_sample(f"{name}_sum", base, hist.total)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# -- the endpoint ----------------------------------------------------------------------------------
class MetricsEndpoint:
    """Serves a registry on ``http(s)://<listen>/metrics`` from a background thread.

    With a ``gate`` that requires authentication, a scrape must carry a bearer token (Prometheus's
    ``authorization: credentials_file``) or a mapped client certificate of a principal that may read
    metrics and whose grants cover everything: ``/metrics`` shows every tenant's figures. With ``tls``,
    each connection is wrapped with the listener's current certificate (re-read when it changes)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str,
        *,
        gate: Gate | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.registry = registry
        self.listen = listen
        self.port = 0
        self._gate = gate
        self._tls = tls
        self._server: WSGIServer | None = None

    def start(self) -> None:
        """Open the port; ``OSError`` if it cannot be bound."""
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        server_class = _Server6 if ":" in host else _Server
        server = make_server(host, int(port), self._app(), server_class, handler_class=_Handler)
        server.tls = self._tls  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_port
        threading.Thread(target=server.serve_forever, name="paymaster-metrics", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self) -> Any:
        scrape = make_wsgi_app(self.registry)
        gate = self._gate
        if gate is None or not gate.required:
            return scrape

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            try:
                principal = gate.identify(environ.get("HTTP_AUTHORIZATION"), environ.get("paymaster.peer"))
            except Unauthenticated as exc:
                return _refuse(start_response, "401 Unauthorized", str(exc), [("WWW-Authenticate", "Bearer")])
            denial = authorize(principal, Action.SCRAPE_METRICS)
            if denial is None and not principal.grants.unrestricted:
                denial_reason, message = (
                    "scope",
                    f"{principal.name} may not read /metrics: it shows every tenant, and its grants ({principal.grants}) do not cover everything (*)",
                )
            elif denial is not None:
                denial_reason, message = denial.reason, denial.message
            else:
                return scrape(environ, start_response)
            gate.denied(principal.name, denial_reason)
            return _refuse(start_response, "403 Forbidden", message, [])

        return app


def _refuse(start_response: Any, status: str, message: str, headers: list[tuple[str, str]]) -> list[bytes]:
    body = (message + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *headers]
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per scrape; with TLS, each accepted connection is wrapped (the handshake runs in the
    connection's own thread, so a slow client never holds up the others)."""

    daemon_threads = True
    tls: ServerTls | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["paymaster.peer"] = ssl_peer_certificate(self.connection)
        return environ

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("a /metrics client failed or left: %s", exc)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a line each
        pass
