"""The sidecar process: the factory that wires a config into a running gRPC server, and its entry point.

``create_sidecar(config)`` builds the store, the ledger (loading the budgets the config declares), the
alert hub and dispatcher with their sinks, the housekeeping sweeper, and a gRPC server carrying the
budget service, standard health checking and server reflection. Everything that can be wrong with the
configuration fails here, before the port opens, as a ``ConfigError`` naming the file and key.

One process runs the whole sidecar (``Share.WHOLE``). With ``server.workers`` > 1 the supervisor
(``collector_processor.workers``) splits it: each worker process runs ``Share.worker(...)`` (the
listeners — the budget API over gRPC and HTTP, the OTLP receivers — on ports shared with
``SO_REUSEPORT``) and the supervisor's own process ``Share.host(...)`` (what must happen once per host:
the config's budgets, the sweeper, alert dispatch, ``/metrics`` and metric pushes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from collector_processor.alerts.dispatch import AlertDispatcher, AlertHub, AlertSink
from collector_processor.alerts.sinks import OtelLogSink, WebhookSink
from collector_processor.api.batching import Batcher
from collector_processor.api.security import Security
from collector_processor.api.servicer import BudgetServicer, add_to_server
from collector_processor.api.startup import startup_lines
from collector_processor.auth.desk import TokenDesk
from collector_processor.auth.rpc import GatedServer
from collector_processor.config import SidecarConfig, create_default_config, load_config, parse_address
from collector_processor.domain.clock import Clock, SystemClock
from collector_processor.errors import FailedPreconditionError, InvalidRequestError, StoreUnavailableError
from collector_processor.ledger import Ledger
from collector_processor.ledger.sweeper import Sweeper
from collector_processor.store import LedgerStore, SqliteStore
from collector_processor.store.instrumented import InstrumentedStore
from collector_processor.telemetry.audit_log import OtelAuditLog
from collector_processor.telemetry.config import MetricsOtlpSection
from collector_processor.telemetry.exporters import MetricsExporters, create_exporters
from collector_processor.telemetry.selfmetrics import MetricsSnapshot, SelfMetrics
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2

if TYPE_CHECKING:
    from paymaster.pricing import CostCalculator

__all__ = ["SERVICE_NAME", "Share", "Sidecar", "create_sidecar", "main"]

SERVICE_NAME = budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name
log = logging.getLogger("paymaster.sidecar")
_STORE_HEALTH_POLL_S = 0.1


@dataclass(frozen=True, kw_only=True, slots=True)
class Share:
    """Which share of a sidecar one process runs: all of it (``WHOLE``), or, under a supervisor of
    several worker processes, a worker's (``worker``) or the supervisor's (``host``)."""

    listeners: bool = True
    """Serve the budget API (with health and reflection), the OTLP receivers and the HTTP API."""
    host: bool = True
    """Do what is done once per host: load the config's budgets, sweep, dispatch alerts, serve
    ``/metrics`` and push metrics."""
    reuse_port: bool = False
    """Bind the listeners with ``SO_REUSEPORT``, so that every worker serves the same ports."""
    on_alert: Callable[[], None] | None = None
    """Told whenever this process fires alerts (so the supervisor can wake dispatch and the other
    workers' WatchAlerts streams)."""
    on_tokens: Callable[[], None] | None = None
    """Told whenever a token is issued or revoked through this process (so the other workers see it
    at once, not at their next refresh)."""
    snapshot: Callable[[], MetricsSnapshot] | None = None
    """What ``/metrics`` and metric pushes read instead of this process's own counts: every worker's
    counts summed (the host's)."""

    @staticmethod
    def worker(*, on_alert: Callable[[], None], on_tokens: Callable[[], None]) -> Share:
        return Share(host=False, reuse_port=True, on_alert=on_alert, on_tokens=on_tokens)

    @staticmethod
    def for_host(*, snapshot: Callable[[], MetricsSnapshot]) -> Share:
        return Share(listeners=False, snapshot=snapshot)


WHOLE = Share()


class Component(Protocol):
    """A part of the sidecar with ports of its own (the OTLP receiver), started after the budget API."""

    def describe(self) -> str:
        """Where it listens, for the start-up line."""
        ...

    def start(self) -> Any: ...

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish what is in flight; harmless to call twice or before ``start``."""
        ...


class Sidecar:
    """A built sidecar. ``start()`` runs the gRPC server on an event loop in its own thread and returns
    once the port is open; ``stop()`` drains requests and closes everything."""

    def __init__(
        self,
        *,
        config: SidecarConfig,
        store: LedgerStore,
        ledger: Ledger,
        hub: AlertHub,
        dispatcher: AlertDispatcher | None,
        sweeper: Sweeper | None,
        on_close: list[Any],
        metrics: SelfMetrics | None = None,
        exporters: MetricsExporters | None = None,
        components: Sequence[Component] = (),
        security: Security | None = None,
        audit_log: OtelAuditLog | None = None,
        share: Share = WHOLE,
    ) -> None:
        self.config = config
        self.share = share
        """Which share of the sidecar this process runs."""
        self.metrics = metrics if metrics is not None else SelfMetrics()
        """This sidecar's own counters and histograms, read by its metrics exporters."""
        self.security = security or Security(config, store, self.metrics, now_ms=ledger.clock.now_ms)
        """The token book, and the gate and TLS of every listener."""
        self.audit_log = audit_log or OtelAuditLog()
        """Emits every change to budgets and tokens as an OpenTelemetry log record."""
        ledger.set_audit_listener(self.audit_log)
        self.exporters = exporters or _exporters(
            config, store=store, clock=ledger.clock, metrics=self.metrics, security=self.security, share=share
        )
        """Its metrics registry, ``/metrics`` endpoint and OTLP push."""
        self.components = tuple(components)
        """Started after the budget API and stopped before it, e.g. the OTLP receiver."""
        self.store = store
        self.ledger = ledger
        self.hub = hub
        self.dispatcher = dispatcher
        self.port = 0
        self.batcher: Batcher | None = None
        self._sweeper = sweeper
        self._on_close = on_close
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopped = threading.Event()
        self._grace_s = config.server.grace_seconds

    @property
    def address(self) -> str:
        host = self.config.server.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> Sidecar:
        if self.share.listeners:
            self._start_listeners()
        try:
            self.exporters.start()
        except ConfigError:
            self.stop()
            raise
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self._sweeper is not None:
            self._sweeper.start()
        return self

    def _start_listeners(self) -> None:
        self._thread = threading.Thread(target=self._serve_thread, name="paymaster-grpc", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._close_resources()
            error = self._startup_error
            raise ConfigError(
                f"{self.config.source}: server.listen: cannot serve on {self.config.server.listen}: {error}"
            ) from None
        for component in self.components:
            try:
                component.start()
            except ConfigError as exc:  # a port in use, named by its key
                self.stop(0)
                raise ConfigError(f"{self.config.source}: {exc}") from None
            except Exception as exc:
                self.stop(0)
                raise ConfigError(
                    f"{self.config.source}: {component.describe()}: cannot start: {exc}"
                ) from None

    def stop(self, grace_s: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if grace_s is not None:
            self._grace_s = grace_s
        for component in reversed(self.components):
            component.stop(self._grace_s)
        if self._loop is not None and self._stop_requested is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_requested.set)
            self._thread.join()
        self._close_resources()

    def wait(self) -> None:
        self._stopped.wait()

    def notify_alerts(self) -> None:
        """Alerts were fired elsewhere (another worker): wake this process's alert streams now, the
        budget API's and those of components with streams of their own (the HTTP API)."""
        self.hub.notify()
        for component in self.components:
            notify = getattr(component, "notify_alerts", None)
            if notify is not None:
                notify()

    def _close_resources(self) -> None:
        self.exporters.stop()  # a last OTLP push reads the store
        if self._sweeper is not None:
            self._sweeper.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.store.close()
        for close in self._on_close:
            close()

    def _serve_thread(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            server, health_servicer = self._build_server()
            guard = self.security.api
            if guard.tls is not None:
                self.port = server.add_secure_port(self.config.server.listen, guard.tls.grpc_credentials())
            else:
                self.port = server.add_insecure_port(self.config.server.listen)
            await server.start()
        except Exception as exc:  # a port in use, an address that does not resolve
            self._startup_error = exc
            self._ready.set()
            return
        self.hub.attach(self._loop)
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._ready.set()
        follower = asyncio.ensure_future(self._follow_store(health_servicer))
        await self._stop_requested.wait()
        follower.cancel()
        await health_servicer.enter_graceful_shutdown()
        self.hub.close()  # ends WatchAlerts streams so the grace period is not spent waiting on them
        await server.stop(self._grace_s)

    async def _follow_store(self, health_servicer: health_aio.HealthServicer) -> None:
        """A store that depends on a server (Redis) tells whether it can reach it: health reports
        NOT_SERVING while it cannot, so probes and load balancers route around this sidecar."""
        serving = True
        while True:
            await asyncio.sleep(_STORE_HEALTH_POLL_S)
            available = bool(getattr(self.store, "available", True))
            if available != serving:
                serving = available
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if available
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in ("", SERVICE_NAME):
                    await health_servicer.set(service, status)

    def _build_server(self) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
        limit = self.config.server.max_concurrent_rpcs
        guard = self.security.api
        server = grpc.aio.server(
            # Without this, a second sidecar could bind the same port and silently split the traffic;
            # the workers of one sidecar share it (the supervisor made sure the port was free).
            options=[("grpc.so_reuseport", 1 if self.share.reuse_port else 0)],
            maximum_concurrent_rpcs=limit or None,
        )
        # Every method but health checking (reflection too) passes the gate when auth is on.
        gated = GatedServer(server, guard.gate, mutual=guard.mutual) if guard.gate.required else server
        self.batcher = Batcher(self.store)
        add_to_server(
            BudgetServicer(
                self.ledger,
                self.hub,
                self.batcher,
                max_watchers=self.config.server.max_watchers,
                metrics=self.exporters.service,
                desk=TokenDesk(
                    self.store,
                    now_ms=self.ledger.clock.now_ms,
                    on_change=self._tokens_changed,
                    on_audit=self.audit_log,
                ),
                on_denied=self.security.count_denied,
            ),
            gated,
        )
        health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # What reflection.enable_server_reflection does for an aio server, on the gated registrar.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)),
            gated,
        )
        return server, health_servicer

    def _tokens_changed(self) -> None:
        self.security.refresh()
        if self.share.on_tokens is not None:
            self.share.on_tokens()


def create_sidecar(
    config: SidecarConfig,
    *,
    clock: Clock | None = None,
    store: LedgerStore | None = None,
    logger_provider: Any = None,
    share: Share = WHOLE,
) -> Sidecar:
    """Wire ``config`` into a sidecar (not yet started). ``clock``, ``store`` and ``logger_provider`` are
    for tests; ``share`` is for the supervisor of several workers (``collector_processor.workers``)."""
    clock = clock or SystemClock()
    pricing = _otlp_pricing(config)  # a bad price file stops the sidecar before the store is created
    if store is None:
        store = _open_store(config)
    metrics = SelfMetrics()
    store = InstrumentedStore(store, metrics)
    ledger = Ledger(store, clock=clock, settings=config.ledger_settings())
    if share.host:
        _load_budgets(config, ledger, store)
    hub = AlertHub(store, poll_interval_s=config.alerts.poll_interval_seconds)
    security = Security(config, store, metrics, now_ms=clock.now_ms)
    exporters = _exporters(config, store=store, clock=clock, metrics=metrics, security=security, share=share)
    components = (
        _components(config, ledger, metrics, clock, store, exporters, pricing, security, share.reuse_port)
        if share.listeners
        else []
    )
    on_close: list[Any] = []
    logger_provider = logger_provider or _otlp_logger_provider(config, on_close)
    dispatcher = _dispatcher(config, store, clock, logger_provider, on_close) if share.host else None
    ledger.set_alert_listener(_listener(hub, dispatcher, components, share.on_alert))
    lg = config.ledger
    sweeper = (
        Sweeper(
            ledger,
            interval_s=lg.sweep_interval_seconds,
            reservation_retention_ms=int(lg.reservation_retention_hours * 3_600_000),
            usage_retention_ms=int(lg.usage_retention_days * 86_400_000),
            alert_retention_ms=int(lg.alert_retention_days * 86_400_000),
        )
        if share.host
        else None
    )
    return Sidecar(
        config=config,
        store=store,
        ledger=ledger,
        hub=hub,
        dispatcher=dispatcher,
        sweeper=sweeper,
        on_close=on_close,
        metrics=metrics,
        exporters=exporters,
        components=components,
        security=security,
        audit_log=OtelAuditLog(logger_provider),
        share=share,
    )


def _load_budgets(config: SidecarConfig, ledger: Ledger, store: LedgerStore) -> None:
    """Make the store's config budgets exactly the file's (once per host: the supervisor's share)."""
    try:
        ledger.load_config_budgets([entry.draft() for entry in config.budgets])
    except (InvalidRequestError, FailedPreconditionError) as exc:
        store.close()
        raise ConfigError(f"{config.source}: budgets: {exc}") from None
    except StoreUnavailableError as exc:
        store.close()
        raise ConfigError(f"{config.source}: store: cannot load the config budgets: {exc}") from None


def _open_store(config: SidecarConfig) -> LedgerStore:
    s = config.store
    try:
        if s.kind == "redis":
            from collector_processor.store.redis.store import RedisStore

            return RedisStore(
                s.url,
                namespace=s.namespace,
                cluster=s.cluster,
                socket_timeout_s=s.socket_timeout_seconds,
                connect_timeout_s=s.connect_timeout_seconds,
                max_connections=s.max_connections,
                backoff_initial_s=s.backoff_initial_seconds,
                backoff_max_s=s.backoff_max_seconds,
                health_interval_s=s.health_interval_seconds,
                wait_replicas=s.wait_replicas,
                wait_timeout_ms=s.wait_timeout_ms,
            )
        return SqliteStore(config.sqlite_path(), synchronous=s.synchronous, busy_timeout_ms=s.busy_timeout_ms)
    except StoreUnavailableError as exc:
        raise ConfigError(f"{config.source}: store.{'url' if s.kind == 'redis' else 'path'}: {exc}") from None


def _otlp_pricing(config: SidecarConfig) -> CostCalculator | None:
    """The OTLP receiver's pricing, read from its price file (None when the receiver is off)."""
    if not config.receivers.otlp.enabled:
        return None
    from collector_processor.otlp import load_pricing

    # A relative price file is found next to the sidecar's own config file.
    config_dir = None if config.source.startswith("<") else Path(config.source).parent
    try:
        return load_pricing(config.receivers.otlp, config_dir=config_dir)
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None


def _components(
    config: SidecarConfig,
    ledger: Ledger,
    metrics: SelfMetrics,
    clock: Clock,
    store: LedgerStore,
    exporters: MetricsExporters,
    pricing: CostCalculator | None,
    security: Security,
    reuse_port: bool = False,
) -> list[Component]:
    components: list[Component] = []
    if config.http.enabled:
        try:
            components.append(_http_api(config, ledger, metrics, exporters, pricing, security, reuse_port))
        except ConfigError as exc:
            store.close()
            raise ConfigError(f"{config.source}: {exc}") from None
    if pricing is None:
        return components
    from collector_processor.otlp import create_otlp_receiver

    try:
        receiver = create_otlp_receiver(
            config.receivers.otlp,
            ledger=ledger,
            metrics=metrics,
            clock=clock,
            retention_ms=int(config.ledger.reservation_retention_hours * 3_600_000),
            calculator=pricing,
            on_spend=exporters.service.batch_recorded,
            gate=security.otlp.gate,
            tls=security.otlp.tls,
            reuse_port=reuse_port,
        )
    except ConfigError as exc:
        store.close()
        raise ConfigError(f"{config.source}: {exc}") from None
    return [receiver, *components]


def _http_api(
    config: SidecarConfig,
    ledger: Ledger,
    metrics: SelfMetrics,
    exporters: MetricsExporters,
    pricing: CostCalculator | None,
    security: Security,
    reuse_port: bool = False,
) -> Component:
    """The HTTP/JSON API (``[http]``); its pricing endpoint reads the OTLP receiver's prices."""
    from collector_processor.api.http import create_http_api

    if pricing is None:
        from collector_processor.otlp import load_pricing

        config_dir = None if config.source.startswith("<") else Path(config.source).parent
        pricing = load_pricing(config.receivers.otlp, config_dir=config_dir)
    return create_http_api(
        config,
        ledger=ledger,
        metrics=metrics,
        service_metrics=exporters.service,
        guard=security.http,
        on_denied=security.count_denied,
        calculator=pricing,
        reuse_port=reuse_port,
    )


def _listener(
    hub: AlertHub,
    dispatcher: AlertDispatcher | None,
    components: Sequence[Component] = (),
    also: Callable[[], None] | None = None,
) -> Any:
    """Told when this process fires alerts: wake the streams here (the budget API's, and those of
    components with an event loop of their own, the HTTP API), dispatch, and ``also`` (under a
    supervisor: the other workers and the host's dispatch)."""
    wakers = [c.notify_alerts for c in components if hasattr(c, "notify_alerts")]

    def on_alert() -> None:
        hub.notify()
        if dispatcher is not None:
            dispatcher.wake()
        for wake in wakers:
            wake()
        if also is not None:
            also()

    return on_alert


def _exporters(
    config: SidecarConfig,
    *,
    store: LedgerStore,
    clock: Clock,
    metrics: SelfMetrics,
    security: Security | None = None,
    share: Share = WHOLE,
) -> MetricsExporters:
    security = security or Security(config, store, metrics, now_ms=clock.now_ms)
    section = config.metrics
    if not share.host:  # a worker's counts are read by the supervisor, which serves and pushes them
        section = section.model_copy(update={"enabled": False, "otlp": MetricsOtlpSection()})
    return create_exporters(
        section,
        service_name=config.telemetry.service_name,
        source=config.source,
        store=store,
        clock=clock,
        metrics=metrics,
        gate=security.metrics.gate,
        tls=security.metrics.tls,
        snapshot=share.snapshot,
    )


def _dispatcher(
    config: SidecarConfig, store: LedgerStore, clock: Clock, logger_provider: Any, on_close: list[Any]
) -> AlertDispatcher | None:
    sinks: list[AlertSink] = []
    if config.alerts.otel_logs:
        sinks.append(OtelLogSink(logger_provider))
    hook = config.alerts.webhook
    lease_ms = 30_000
    if hook is not None:
        sinks.append(
            WebhookSink(
                hook.url,
                headers=hook.headers,
                timeout_s=hook.timeout_seconds,
                max_attempts=hook.max_attempts,
                backoff_initial_s=hook.backoff_initial_seconds,
                backoff_max_s=hook.backoff_max_seconds,
                queue_size=hook.queue_size,
            )
        )
        # The lease must outlast every retry of a full queue, or another sidecar would deliver again.
        retry_s = hook.max_attempts * (hook.timeout_seconds + hook.backoff_max_seconds)
        lease_ms += int(retry_s * 1000) * max(1, hook.queue_size // 100)
    if not sinks:
        return None
    return AlertDispatcher(
        store,
        sinks,
        clock=clock,
        owner=f"{os.uname().nodename}:{os.getpid()}",
        lease_ms=lease_ms,
        poll_interval_s=config.alerts.poll_interval_seconds,
    )


def _otlp_logger_provider(config: SidecarConfig, on_close: list[Any]) -> Any:
    """The application's global provider, or an OTLP exporting one when ``telemetry.otlp_endpoint`` is set."""
    if not config.telemetry.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": config.telemetry.service_name}))
    endpoint = config.telemetry.otlp_endpoint
    provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")))
    )
    on_close.append(provider.shutdown)
    return provider


def run(config: SidecarConfig) -> int:
    """Run a sidecar until SIGTERM or SIGINT; print every port it listens on and its store."""
    sidecar = create_sidecar(config).start()
    for line in startup_lines(sidecar):
        print(line, flush=True)

    def shutdown(signum: int, frame: object) -> None:
        threading.Thread(target=sidecar.stop, name="paymaster-shutdown").start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    sidecar.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="paymaster sidecar", description="Run the Paymaster budget sidecar."
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="sidecar.toml (default: built-in defaults)")
    parser.add_argument("--listen", help="override server.listen, e.g. 127.0.0.1:7310")


def with_listen(config: SidecarConfig, listen: str) -> SidecarConfig:
    """``config`` with ``server.listen`` replaced (``--listen``), checked again as a whole.

    Only that key changes: every other section keeps the keys its file set and no more, since some
    checks depend on which keys were written (the SQLite keys are refused with a Redis store).
    """
    try:
        parse_address(listen, "--listen")
    except InvalidRequestError as exc:
        raise ConfigError(str(exc)) from None
    server = config.server.model_copy(update={"listen": listen})
    return config.model_copy(update={"server": server}).validate_all()


def run_from_args(args: argparse.Namespace, *, serve: Callable[[SidecarConfig], int] = run) -> int:
    """Load the config ``args`` name and ``serve`` it (``collector_processor.workers.run`` runs it
    with ``server.workers`` processes)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config) if args.config else create_default_config()
        if args.listen:
            config = with_listen(config, args.listen)
        return serve(config)
    except ConfigError as exc:
        print(f"paymaster sidecar: {exc}", file=sys.stderr)
        return 2
