"""A real sidecar of several worker processes, supervised from this process (the host's share — the
store's schema, the sweeper, alert dispatch into an in-memory log exporter, ``/metrics`` — runs
here; each worker is a child process serving the budget API and OTLP on the shared ports)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from collector_processor.config import parse_config
from collector_processor.workers import Supervisor
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.auth.test_tls import Pki
from tests.sidecar.conftest import StoreFactory

# A channel of its own: gRPC would otherwise share one connection (so one worker) between channels.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def refused_on_a_busy_port(toml: Callable[[int], str]) -> tuple[str, int, Supervisor]:
    """Start a supervisor of 2 workers on ``toml(port)``, where ``port`` is held by another socket: the
    message of the ``ConfigError`` it stops with, the port, and the supervisor (to check nothing runs)."""
    import socket

    from paymaster.exceptions import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        supervisor = Supervisor(parse_config(toml(busy), source="sidecar.toml"), workers=2)
        with pytest.raises(ConfigError) as refused:
            supervisor.start()
    return str(refused.value), busy, supervisor


def store_toml(backing: StoreFactory) -> str:
    if backing.backend == "redis":
        return f'kind = "redis"\nurl = "{backing.redis_url}"\nnamespace = "{backing.namespace}"'
    return f'path = "{backing.path}"'


@dataclass
class Workers:
    """A running supervisor, the logs its dispatcher delivered, and channels that are closed at the end."""

    supervisor: Supervisor
    logs: InMemoryLogRecordExporter
    backing: StoreFactory
    channels: list[grpc.Channel] = field(default_factory=list)
    connect: Callable[[str], grpc.Channel] | None = None
    """Opens a channel of its own to an address (default: plaintext)."""
    metadata: tuple[tuple[str, str], ...] = ()
    """Sent with the calls that find a connection's worker (a token, with ``[auth]`` on)."""

    @property
    def address(self) -> str:
        return self.supervisor.address

    def stub(self, *, metadata_channel: grpc.Channel | None = None) -> budget_pb2_grpc.BudgetServiceStub:
        """A stub on a connection of its own (so on whichever worker the kernel picks for it)."""
        if metadata_channel is not None:
            channel = metadata_channel
        elif self.connect is not None:
            channel = self.connect(self.address)
        else:
            channel = grpc.insecure_channel(self.address, options=OWN_CONNECTION)
        self.channels.append(channel)
        return budget_pb2_grpc.BudgetServiceStub(channel)

    def served(self, method: str | None = None) -> dict[int, float]:
        """Requests answered by each live worker (of ``method``, or of any), by slot."""
        out: dict[int, float] = {}
        for slot, counts in self.supervisor.worker_counts().items():
            series = counts.counters.get("paymaster_rpc_requests_total", {})
            out[slot] = sum(v for key, v in series.items() if method is None or ("method", method) in key)
        return out

    def worker_of(self, stub: budget_pb2_grpc.BudgetServiceStub) -> int:
        """The slot of the worker that serves ``stub``'s connection."""
        before = self.served("CheckBudget")
        stub.CheckBudget(
            pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="probe")), metadata=self.metadata, timeout=10
        )
        after = self.served("CheckBudget")
        (slot,) = [s for s in after if after[s] > before.get(s, 0)]
        return slot

    def stubs_on_each_worker(self) -> dict[int, budget_pb2_grpc.BudgetServiceStub]:
        """One stub per worker: connections are opened until every worker serves one."""
        found: dict[int, budget_pb2_grpc.BudgetServiceStub] = {}
        for _ in range(64):
            stub = self.stub()
            found.setdefault(self.worker_of(stub), stub)
            if len(found) == self.supervisor.workers:
                return found
        raise AssertionError(f"64 connections reached only workers {sorted(found)}")

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.supervisor.stop(0)


def start_workers(
    backing: StoreFactory,
    folder: Path,
    extra_toml: str = "",
    *,
    workers: int = 2,
    poll_s: float = 0.05,
    **kwargs: object,
) -> Workers:
    config = parse_config(
        f"""
        [server]
        listen = "127.0.0.1:0"
        grace_seconds = 0
        workers = {workers}
        [store]
        {store_toml(backing)}
        [ledger]
        sweep_interval_seconds = 0.05
        [alerts]
        poll_interval_seconds = {poll_s}
        {extra_toml}
        """,
        source=str(folder / "sidecar.toml"),
    )
    logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    supervisor = Supervisor(config, workers=workers, logger_provider=provider, **kwargs).start()  # type: ignore[arg-type]
    return Workers(supervisor=supervisor, logs=logs, backing=backing)


@pytest.fixture
def workers(backing: StoreFactory, tmp_path: Path) -> Iterator[Workers]:
    running = start_workers(backing, tmp_path)
    yield running
    running.close()
