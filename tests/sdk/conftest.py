"""Fixtures for the SDK tests that talk to a budget sidecar: a real one, in this process on a free
loopback port (on the system clock, or on a manual clock for TTL tests)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector_processor.domain.clock import ManualClock, SystemClock
from tests.sidecar.conftest import RunningSidecar, start_sidecar

from .sidecar_support import Admin
from .test_telemetry import Providers


@dataclass
class InProcessSidecar:
    running: RunningSidecar
    admin: Admin

    @property
    def address(self) -> str:
        return self.running.address


def _start(db: Path, clock: SystemClock | ManualClock) -> InProcessSidecar:
    running = start_sidecar(db, clock)
    return InProcessSidecar(running=running, admin=Admin(running.address))


@pytest.fixture
def otel() -> Iterator[Providers]:
    """In-memory tracer and meter providers for a test's runner, shut down after it."""
    p = Providers()
    yield p
    p.tracer_provider.shutdown()
    p.meter_provider.shutdown()


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[InProcessSidecar]:
    """A sidecar on the system clock."""
    side = _start(tmp_path / "sidecar.db", SystemClock())
    yield side
    side.admin.close()
    side.running.channel.close()
    side.running.sidecar.stop(0)


@pytest.fixture
def manual_sidecar(tmp_path: Path) -> Iterator[InProcessSidecar]:
    """A sidecar on a manual clock (``side.running.clock.advance(...)``), for TTLs."""
    side = _start(tmp_path / "sidecar.db", ManualClock(datetime.now(UTC)))
    yield side
    side.admin.close()
    side.running.channel.close()
    side.running.sidecar.stop(0)
