"""Real sidecars for the SDK's budget tests: in-process servers on free loopback ports, and sidecar
processes (``python -m collector_processor --config file.toml``) that can be killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from paymaster import Step, StepConfig
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SCOPE = {
    "organization": pb.SCOPE_ORGANIZATION,
    "team": pb.SCOPE_TEAM,
    "agent": pb.SCOPE_AGENT,
    "workflow": pb.SCOPE_WORKFLOW,
    "user": pb.SCOPE_USER,
}
ACTION = {"block": pb.ON_EXCEED_BLOCK, "warn": pb.ON_EXCEED_WARN, "downgrade": pb.ON_EXCEED_DOWNGRADE}


class Admin:
    """Budget administration and read-back over a plain stub."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.stub = budget_pb2_grpc.BudgetServiceStub(self.channel)

    def budget(
        self,
        budget_id: str,
        limit: str,
        *,
        scope: str = "team",
        scope_id: str | None = "search",
        on_exceed: str = "block",
        period: str = "daily",
    ) -> None:
        budget = pb.Budget(
            id=budget_id,
            scope=SCOPE[scope],
            limit_usd=limit,
            period=period,
            on_exceed=ACTION[on_exceed],
            alert_thresholds=[],
        )
        if scope_id is not None:
            budget.scope_id = scope_id
        self.stub.CreateBudget(pb.CreateBudgetRequest(budget=budget), timeout=5)

    def status(self, budget_id: str, scope_id: str = "") -> tuple[Decimal, Decimal]:
        """(used, reserved) of a budget."""
        st = self.stub.GetBudgetStatus(
            pb.GetBudgetStatusRequest(budget_id=budget_id, scope_id=scope_id), timeout=5
        )
        return Decimal(st.used_usd), Decimal(st.reserved_usd)

    def usage_by_model(self, **scopes: str) -> dict[str, Decimal]:
        response = self.stub.GetUsage(
            pb.GetUsageRequest(scopes=pb.ScopeIds(**scopes), group_by=[pb.DIMENSION_MODEL]), timeout=5
        )
        return {row.key[0]: Decimal(row.totals.cost_usd) for row in response.rows}

    def close(self) -> None:
        self.channel.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SidecarProcess:
    """A sidecar process on a fixed loopback port and SQLite file; ``kill()`` and ``start()`` again
    are a crash and a restart on the same address and data."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        path = self.workdir / "sidecar.toml"
        if not path.exists():
            path.write_text(
                "[server]\n"
                f'listen = "127.0.0.1:{self.port}"\n'
                "grace_seconds = 0\n"
                "[store]\n"
                f'path = "{self.workdir / "sidecar.db"}"\n'
                "[ledger]\n"
                "sweep_interval_seconds = 0.1\n"
                "[alerts]\n"
                "otel_logs = false\n"
            )
        return path

    def start(self) -> SidecarProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = self.workdir / "sidecar.log"
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector_processor", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text()[offset:]
            if "listening on" in text:
                assert self.address in text, text
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"the sidecar did not start ({self.proc.poll()}): {log.read_text()[offset:]}")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes (a bound, never a measurement)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def loop_of(agent: Any, *, times: int = 20, expected: str | None = None, **step: Any) -> Step:
    config = StepConfig(expected_cost_usd=expected) if expected is not None else None
    return Step.loop_until(
        name="loop",
        loop_body_pipeline=Step("call", agent, config=config, **step),
        exit_condition_callable=lambda out, ctx: False,
        max_loops=times,
    )
