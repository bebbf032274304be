"""The sidecar process: the factory that wires a config into a running gRPC server, and its entry point.

``create_sidecar(config)`` builds the store, the ledger (loading the budgets the config declares), the
alert hub and dispatcher with their sinks, the housekeeping sweeper, and a gRPC server carrying the
budget service, standard health checking and server reflection. Everything that can be wrong with the
configuration fails here, before the port opens, as a ``ConfigError`` naming the file and key.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collector_processor.alerts import AlertDispatcher, AlertHub, AlertSink
from collector_processor.clock import Clock, SystemClock
from collector_processor.config import SidecarConfig, create_default_config, load_config
from collector_processor.errors import FailedPreconditionError, InvalidRequestError, StoreUnavailableError
from collector_processor.ledger import Ledger
from collector_processor.servicer import BudgetServicer
from collector_processor.sinks import OtelLogSink, WebhookSink
from collector_processor.store import LedgerStore, SqliteStore
from collector_processor.sweeper import Sweeper
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2, budget_pb2_grpc

__all__ = ["SERVICE_NAME", "Sidecar", "create_sidecar", "main"]

SERVICE_NAME = budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name
log = logging.getLogger("paymaster.sidecar")


class Sidecar:
    """A built sidecar; ``start()`` opens the port, ``stop()`` drains and closes everything."""

    def __init__(
        self,
        *,
        config: SidecarConfig,
        store: LedgerStore,
        ledger: Ledger,
        server: grpc.Server,
        port: int,
        health: health.HealthServicer,
        hub: AlertHub,
        dispatcher: AlertDispatcher | None,
        sweeper: Sweeper,
        on_close: list[Any],
    ) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.port = port
        self.hub = hub
        self.dispatcher = dispatcher
        self._server = server
        self._health = health
        self._sweeper = sweeper
        self._on_close = on_close
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        host = self.config.server.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> Sidecar:
        self._server.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        self._sweeper.start()
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace_s: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self.hub.close()  # ends WatchAlerts streams so the grace period is not spent waiting on them
        self._server.stop(self.config.server.grace_seconds if grace_s is None else grace_s).wait()
        self._sweeper.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.store.close()
        for close in self._on_close:
            close()

    def wait(self) -> None:
        self._stopped.wait()


def create_sidecar(
    config: SidecarConfig,
    *,
    clock: Clock | None = None,
    store: LedgerStore | None = None,
    logger_provider: Any = None,
) -> Sidecar:
    """Wire ``config`` into a sidecar (not yet started). ``clock``, ``store`` and ``logger_provider`` are for tests."""
    clock = clock or SystemClock()
    if store is None:
        try:
            store = SqliteStore(
                config.store.path, synchronous=config.store.synchronous, busy_timeout_ms=config.store.busy_timeout_ms
            )
        except StoreUnavailableError as exc:
            raise ConfigError(f"{config.source}: store.path: {exc}") from None
    ledger = Ledger(store, clock=clock, settings=config.ledger_settings())
    try:
        ledger.load_config_budgets([entry.draft() for entry in config.budgets])
    except (InvalidRequestError, FailedPreconditionError) as exc:
        store.close()
        raise ConfigError(f"{config.source}: budgets: {exc}") from None
    hub = AlertHub(store, poll_interval_s=config.alerts.poll_interval_seconds)
    on_close: list[Any] = []
    dispatcher = _dispatcher(config, store, clock, logger_provider, on_close)
    ledger.set_alert_listener(_listener(hub, dispatcher))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.server.max_workers, thread_name_prefix="paymaster-rpc"),
        # Without this, a second sidecar could bind the same port and silently split the traffic.
        options=[("grpc.so_reuseport", 0)],
    )
    budget_pb2_grpc.add_BudgetServiceServicer_to_server(
        BudgetServicer(ledger, hub, max_watchers=config.server.max_watchers), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(config.server.listen)
    except RuntimeError as exc:
        store.close()
        raise ConfigError(f"{config.source}: server.listen: cannot listen on {config.server.listen}: {exc}") from None
    lg = config.ledger
    sweeper = Sweeper(
        ledger,
        interval_s=lg.sweep_interval_seconds,
        reservation_retention_ms=int(lg.reservation_retention_hours * 3_600_000),
        usage_retention_ms=int(lg.usage_retention_days * 86_400_000),
        alert_retention_ms=int(lg.alert_retention_days * 86_400_000),
    )
    return Sidecar(
        config=config, store=store, ledger=ledger, server=server, port=port, health=health_servicer, hub=hub,
        dispatcher=dispatcher, sweeper=sweeper, on_close=on_close,
    )  # fmt: skip


def _listener(hub: AlertHub, dispatcher: AlertDispatcher | None) -> Any:
    def on_alert() -> None:
        hub.notify()
        if dispatcher is not None:
            dispatcher.wake()

    return on_alert


def _dispatcher(
    config: SidecarConfig, store: LedgerStore, clock: Clock, logger_provider: Any, on_close: list[Any]
) -> AlertDispatcher | None:
    sinks: list[AlertSink] = []
    if config.alerts.otel_logs:
        provider = logger_provider or _otlp_logger_provider(config, on_close)
        sinks.append(OtelLogSink(provider))
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
    """Run a sidecar until SIGTERM or SIGINT; print where it listens."""
    sidecar = create_sidecar(config).start()
    print(
        f"paymaster sidecar listening on {sidecar.address} (store: {config.store.kind} {config.store.path})",
        flush=True,
    )

    def shutdown(signum: int, frame: object) -> None:
        threading.Thread(target=sidecar.stop, name="paymaster-shutdown").start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    sidecar.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paymaster sidecar", description="Run the Paymaster budget sidecar.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="sidecar.toml (default: built-in defaults)")
    parser.add_argument("--listen", help="override server.listen, e.g. 127.0.0.1:7310")


def run_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config) if args.config else create_default_config()
        if args.listen:
            config = SidecarConfig.model_validate(
                {**config.model_dump(), "source": config.source, "server": {**config.server.model_dump(), "listen": args.listen}}
            ).validate_all()
        return run(config)
    except ConfigError as exc:
        print(f"paymaster sidecar: {exc}", file=sys.stderr)
        return 2
