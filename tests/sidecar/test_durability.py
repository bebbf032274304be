"""A real sidecar process killed with SIGKILL loses nothing it answered, and recovers reservations and TTLs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.conftest import pb_budget

pytestmark = pytest.mark.slow

TEAM = pb.ScopeIds(organization="acme", team="search")


class Process:
    """``paymaster sidecar --config ...`` in a child process."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paymaster.cli", "sidecar", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if match is None:
            self.proc.kill()
            raise AssertionError(
                f"the sidecar did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.address = match.group(1)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = budget_pb2_grpc.BudgetServiceStub(self.channel)

    def kill(self) -> None:
        self.channel.close()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.channel.close()
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\n[store]\npath = "{tmp_path / "ledger.db"}"\n'
        "[ledger]\nsweep_interval_seconds = 0.1\n"
    )
    yield path


def test_committed_spend_and_held_reservations_survive_sigkill(config: Path) -> None:
    first = Process(config)
    try:
        first.stub.CreateBudget(pb_budget("team", limit="10", thresholds=(50,)))
        committed = []
        for cents in ("1.25", "2.50", "0.75"):
            r = first.stub.Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd="3"))
            first.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd=cents))
            committed.append(r.reservation_id)
        held = first.stub.Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd="4", ttl={"seconds": 2}))
        long_held = first.stub.Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd="1", ttl={"seconds": 600}))
    finally:
        first.kill()

    second = Process(config)
    try:
        status = second.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="team"))
        assert status.used_usd == "4.500000"  # every answered commit is there, exactly
        assert status.reserved_usd in (
            "5.000000",
            "1.000000",
        )  # both holds, unless the short TTL already passed
        assert list(status.alerts_fired) == []  # 45%: nothing fired before the kill
        # A client retrying its commit after the crash is charged once.
        again = second.stub.Commit(pb.CommitRequest(reservation_id=committed[0], actual_usd="1.25"))
        assert again.duplicate
        # The 2-second TTL runs out after the restart and frees its budget; the 10-minute one holds.
        deadline = time.monotonic() + 20
        while (
            second.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="team")).reserved_usd
            != "1.000000"
        ):
            assert time.monotonic() < deadline, "the recovered reservation never expired"
            time.sleep(0.05)
        late = second.stub.Commit(pb.CommitRequest(reservation_id=held.reservation_id, actual_usd="0.5"))
        assert late.late and late.charged_usd == "0.500000"
        second.stub.Release(pb.ReleaseRequest(reservation_id=long_held.reservation_id))
        final = second.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="team"))
        assert (final.used_usd, final.reserved_usd, list(final.alerts_fired)) == (
            "5.000000",
            "0.000000",
            [50],
        )
    finally:
        assert second.terminate() == 0  # SIGTERM is a clean shutdown
