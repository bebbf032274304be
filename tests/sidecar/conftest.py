"""Fixtures for the sidecar tests: stores, a ledger on a manual clock, and a real server on a free port.

``store_factory`` is the one place a store plugs in: every ledger test takes ``ledger`` or
``store_factory`` and runs once per backend in its params, on a SQLite file or on a real
``redis-server`` started once per session (each test in its own namespace).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from collector_processor.api.server import Sidecar, create_sidecar
from collector_processor.config import parse_config
from collector_processor.domain.budgets import BudgetDraft, OnExceed, Scope
from collector_processor.domain.clock import ManualClock
from collector_processor.ledger import Ledger, LedgerSettings
from collector_processor.store import LedgerStore, SqliteStore
from collector_processor.store.redis.store import RedisStore
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.redisserver import RedisServer

START = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


@dataclass
class StoreFactory:
    """Opens stores on one backing (a SQLite file, or a namespace on a Redis server); ``open()`` again
    is a restart of the process."""

    backend: str
    path: Path
    redis_url: str = ""
    namespace: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:12]}")
    opened: list[LedgerStore] = field(default_factory=list)

    def open(self) -> LedgerStore:
        store: LedgerStore
        if self.backend == "redis":
            store = RedisStore(self.redis_url, namespace=self.namespace)
        else:
            store = SqliteStore(self.path)
        self.opened.append(store)
        return store

    def fresh(self) -> LedgerStore:
        """A store on a new, empty backing (for property tests that need one per example)."""
        self.path = self.path.with_name(f"{self.path.stem}-{len(self.opened)}{self.path.suffix}")
        self.namespace = f"t-{uuid.uuid4().hex[:12]}"
        return self.open()

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free loopback port with its own directory."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    factory = StoreFactory(backend=request.param, path=tmp_path / "ledger.db", redis_url=url)
    yield factory
    factory.close_all()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def ledger(store_factory: StoreFactory, clock: ManualClock) -> Ledger:
    return Ledger(store_factory.open(), clock=clock, settings=LedgerSettings(default_ttl_ms=60_000))


def draft(
    budget_id: str,
    scope: Scope = Scope.TEAM,
    scope_id: str | None = "search",
    limit: str = "10",
    *,
    period: str = "daily",
    on_exceed: OnExceed | None = OnExceed.BLOCK,
    thresholds: tuple[int, ...] | None = (),
    **kwargs: Any,
) -> BudgetDraft:
    return BudgetDraft(
        id=budget_id,
        scope=scope,
        scope_id=scope_id,
        limit_usd=Decimal(limit),
        period=period,
        on_exceed=on_exceed,
        alert_thresholds=thresholds,
        **kwargs,
    )


# -- a real server ---------------------------------------------------------------------------------
@dataclass
class RunningSidecar:
    sidecar: Sidecar
    stub: budget_pb2_grpc.BudgetServiceStub
    channel: grpc.Channel
    logs: InMemoryLogRecordExporter
    clock: ManualClock
    db: Path
    """The SQLite file, when the store is SQLite."""
    backing: StoreFactory
    """Where the store lives (``backing.backend`` is ``"sqlite"`` or ``"redis"``)."""

    @property
    def address(self) -> str:
        return self.sidecar.address


def _store_toml(backing: StoreFactory) -> str:
    if backing.backend == "redis":
        return f'kind = "redis"\nurl = "{backing.redis_url}"\nnamespace = "{backing.namespace}"'
    return f'path = "{backing.path}"'


def start_sidecar(backing: StoreFactory | Path, clock: ManualClock, extra_toml: str = "") -> RunningSidecar:
    """A sidecar on ``backing`` (a path means a SQLite file there)."""
    if isinstance(backing, Path):
        backing = StoreFactory(backend="sqlite", path=backing)
    config = parse_config(
        f"""
        [server]
        listen = "127.0.0.1:0"
        grace_seconds = 0
        [store]
        {_store_toml(backing)}
        [ledger]
        sweep_interval_seconds = 0.05
        [alerts]
        poll_interval_seconds = 0.05
        {extra_toml}
        """,
        source="test.toml",
    )
    logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    sidecar = create_sidecar(config, clock=clock, logger_provider=provider).start()
    channel = grpc.insecure_channel(sidecar.address)
    return RunningSidecar(
        sidecar=sidecar,
        stub=budget_pb2_grpc.BudgetServiceStub(channel),
        channel=channel,
        logs=logs,
        clock=clock,
        db=backing.path,
        backing=backing,
    )


@pytest.fixture(params=["sqlite", "redis"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Where a test's sidecars keep their ledger: a SQLite file, or a namespace on the session's Redis."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    return StoreFactory(backend=request.param, path=tmp_path / "sidecar.db", redis_url=url)


@pytest.fixture
def server(backing: StoreFactory, clock: ManualClock) -> Iterator[RunningSidecar]:
    running = start_sidecar(backing, clock)
    yield running
    running.channel.close()
    running.sidecar.stop(0)


@pytest.fixture
def sidecar_factory(backing: StoreFactory, clock: ManualClock) -> Iterator[Callable[..., RunningSidecar]]:
    """Start (and restart) sidecars on one store; all are stopped at the end."""
    started: list[RunningSidecar] = []

    def start(extra_toml: str = "") -> RunningSidecar:
        running = start_sidecar(backing, clock, extra_toml)
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.sidecar.stop(0)


def pb_budget(
    budget_id: str,
    scope: int = pb.SCOPE_TEAM,
    scope_id: str | None = "search",
    limit: str = "10",
    *,
    period: str = "daily",
    on_exceed: int = pb.ON_EXCEED_BLOCK,
    thresholds: tuple[int, ...] = (),
    **kwargs: Any,
) -> pb.CreateBudgetRequest:
    budget = pb.Budget(
        id=budget_id, scope=scope, limit_usd=limit, period=period, on_exceed=on_exceed,
        alert_thresholds=thresholds, **kwargs,
    )  # fmt: skip
    if scope_id is not None:
        budget.scope_id = scope_id
    return pb.CreateBudgetRequest(budget=budget)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The error a call fails with; the test fails if it succeeds."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value  # type: ignore[return-value]
