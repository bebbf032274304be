"""When the sidecar is not there: the fail policy decides each step, a circuit breaker keeps a dead
sidecar from costing a deadline per step, and fail-open spend is replayed — every cent, once."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from collector_processor.api.server import create_sidecar
from collector_processor.config import parse_config
from collector_processor.domain.clock import SystemClock
from paymaster import (
    FAIL_CLOSED,
    FAIL_OPEN,
    LOCAL_ONLY_LIMITS,
    LeasePolicy,
    Runner,
    Scopes,
    SidecarBudget,
    SidecarUnavailableError,
    Step,
    UsageLimitExceededError,
    UsageLimits,
)
from paymaster._sidecar.journal import Journal

from .agents import FixedMetricAgent, MetricOutput
from .sidecar_support import Admin, free_port, loop_of, wait_until
from .test_telemetry import Providers


class BlackHole:
    """A TCP port that accepts connections and never answers: every call waits out its deadline."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def start_on(port: int, db: Path) -> Any:
    """A sidecar on a chosen port (to come back where a runner expects it)."""
    config = parse_config(
        f'[server]\nlisten = "127.0.0.1:{port}"\ngrace_seconds = 0\n[store]\npath = "{db}"\n'
        "[ledger]\nsweep_interval_seconds = 0.05\n[alerts]\notel_logs = false\n",
        source="test.toml",
    )
    return create_sidecar(config, clock=SystemClock()).start()


def nowhere() -> str:
    """An address where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def budget_at(target: str, policy: str, **kwargs: Any) -> SidecarBudget:
    kwargs.setdefault("journal_dir", None)
    # Generous: a live sidecar on a loaded machine must never miss it. A dead one refuses at once,
    # and the one test about deadlines (the black hole) sets its own.
    kwargs.setdefault("deadline_s", 2.0)
    kwargs.setdefault("backoff_s", 0.01)
    return SidecarBudget(target, scopes=Scopes(team="search"), fail_policy=policy, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ fail_closed
def test_fail_closed_denies_before_the_agent_runs_and_the_breaker_stops_further_attempts(
    otel: Providers,
) -> None:
    agent = FixedMetricAgent(cost="0.1")
    budget = budget_at(nowhere(), FAIL_CLOSED, retries=1, breaker_failures=2, breaker_reset_s=60)
    runner = otel.runner(loop_of(agent, times=3), budget=budget)
    for attempt in range(3):
        with pytest.raises(SidecarUnavailableError) as info:
            runner.run(0)
        err = info.value
        assert isinstance(err, UsageLimitExceededError) and err.code == "sidecar_unavailable"
        assert str(err).startswith(f"The budget sidecar at {budget.target} did not answer (")
        assert "fail_policy='fail_closed' denies step 'call' before it runs" in str(err)
        assert err.result is not None and err.result.total_cost_usd == 0
        (denied,) = [s for s in err.result.walk() if s.kind == "agent"]
        assert denied.denied and denied.denial_code == "sidecar_unavailable"
        assert denied.budget is not None and denied.budget.decision == "fail_closed"
        if attempt == 0:
            assert "unavailable" in str(err)
    assert agent.calls == 0
    assert budget.breaker_state == "open"
    calls = otel.points("paymaster.sidecar.calls")
    # Two runs reached for the sidecar (a retry each) and opened the breaker; the third did not try.
    assert calls[(("outcome", "retried"), ("rpc", "Reserve"))] == 2
    assert calls[(("outcome", "unavailable"), ("rpc", "Reserve"))] == 2
    assert calls[(("outcome", "breaker_open"), ("rpc", "Reserve"))] == 1
    assert otel.points("paymaster.sidecar.breaker") == {(("state", "open"),): 1}
    assert otel.points("quota.denials.total") == {(("code", "sidecar_unavailable"),): 3}
    budget.close()


def test_a_sidecar_that_never_answers_fails_within_the_deadline_then_the_breaker_answers(
    otel: Providers,
) -> None:
    hole = BlackHole()
    budget = budget_at(hole.address, FAIL_CLOSED, deadline_s=0.3, retries=0, breaker_failures=1)
    runner = otel.runner(loop_of(FixedMetricAgent(), times=2), budget=budget)
    for _ in range(2):
        with pytest.raises(SidecarUnavailableError):
            runner.run(0)
    calls = otel.points("paymaster.sidecar.calls")
    assert calls.pop((("outcome", "breaker_open"), ("rpc", "Reserve"))) == 1
    # One call went out and found no answer (the handshake or the deadline ran out); no retry.
    ((key, count),) = calls.items()
    assert count == 1 and dict(key)["outcome"] in ("deadline_exceeded", "unavailable")
    budget.close()
    hole.close()


# ------------------------------------------------------------------------------ local_only_limits
def test_local_only_limits_runs_under_the_runners_own_limits_and_keeps_nothing_for_replay(
    otel: Providers,
) -> None:
    budget = budget_at(nowhere(), LOCAL_ONLY_LIMITS)
    runner = otel.runner(
        loop_of(FixedMetricAgent(cost="0.1")),
        budget=budget,
        usage_limits=UsageLimits(total_cost_usd_limit="0.25"),
    )
    with pytest.raises(UsageLimitExceededError) as info:
        runner.run(0)
    # The third call is denied on what the first two cost (the process learned it).
    assert str(info.value) == (
        "step 'call' was not run: its estimate $0.10 would take spend from $0.20 to $0.30, "
        "over the run's cost limit of $0.25"
    )
    assert info.value.result is not None and info.value.result.total_cost_usd == Decimal("0.2")
    steps = [s for s in info.value.result.walk() if s.kind == "agent"]
    assert {s.budget.decision for s in steps if s.budget} == {"local_only"}
    assert "ran under the runner's own limits only" in steps[0].warnings[0]
    assert budget.pending_usage() == []
    span = otel.finished("invoke_agent call")[0]
    # No reservation id: the sidecar's trace ingestion is the one to charge this spend.
    assert "paymaster.reservation_id" not in (span.attributes or {})
    budget.close()


# ------------------------------------------------------------------------------ fail_open
def test_fail_open_runs_keeps_every_cent_and_replays_it_once_when_the_sidecar_is_back(
    tmp_path: Path, otel: Providers
) -> None:
    port = free_port()
    budget = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, journal_dir=tmp_path / "journal", breaker_reset_s=0.05)
    result = otel.runner(loop_of(FixedMetricAgent(cost="0.0125"), times=8), budget=budget).run(0)
    assert result.total_cost_usd == Decimal("0.1")
    pending = budget.pending_usage()
    assert len(pending) == 8 and sum(p.cost_usd for p in pending) == Decimal("0.1")
    assert {p.reason for p in pending} == {"fail_open"}
    steps = [s for s in result.walk() if s.kind == "agent"]
    assert [s.budget.usage_id for s in steps if s.budget] == [p.usage_id for p in pending]
    span = otel.finished("invoke_agent call")[0]
    assert (span.attributes or {})["paymaster.reservation_id"] == pending[0].usage_id
    assert (span.attributes or {})["paymaster.decision"] == "fail_open"
    assert (span.attributes or {})["paymaster.sidecar.outcome"] in ("unavailable", "breaker_open")
    files = list((tmp_path / "journal").glob("pending-*.jsonl"))
    assert len(files) == 1 and files[0].read_text().count('"op":"usage"') == 8

    sidecar = start_on(port, tmp_path / "sidecar.db")
    admin = Admin(sidecar.address)
    admin.budget("search-daily", "10")
    assert budget.flush(timeout_s=10) == 0
    assert admin.status("search-daily") == (Decimal("0.1"), Decimal(0))
    assert budget.pending_usage() == []
    # Replaying the same records again charges nothing: they are idempotent by usage id.
    for entry in pending:
        budget.journal.append(entry)
    assert budget.flush(timeout_s=10) == 0
    assert admin.status("search-daily") == (Decimal("0.1"), Decimal(0))
    replays = otel.points("paymaster.sidecar.replays")
    assert replays[(("outcome", "journaled"),)] == 8
    assert replays[(("outcome", "replayed"),)] == 8 and replays[(("outcome", "duplicate"),)] == 8
    budget.close()
    admin.close()
    sidecar.stop(0)


def test_flush_returns_only_once_every_replayed_entry_is_counted(tmp_path: Path, otel: Providers) -> None:
    """flush() waits for the journal to empty; the outcome of each entry is counted before the journal
    lets it go, so a caller reading the counters after flush() finds all of them (a slow counter
    here stands for a thread descheduled between the two)."""
    port = free_port()
    budget = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, breaker_reset_s=0.05)
    otel.runner(loop_of(FixedMetricAgent(cost="0.0125"), times=4), budget=budget).run(0)
    assert len(budget.pending_usage()) == 4
    counted: list[str] = []
    count = budget.replayer._count_replay

    def slow_count(outcome: str) -> None:
        time.sleep(0.2)
        counted.append(outcome)
        count(outcome)

    budget.replayer._count_replay = slow_count
    sidecar = start_on(port, tmp_path / "sidecar.db")
    try:
        assert budget.flush(timeout_s=30) == 0
        assert counted == ["replayed"] * 4
    finally:
        budget.close()
        sidecar.stop(0)


def test_pending_spend_survives_the_process_and_the_next_one_replays_it(tmp_path: Path) -> None:
    port = free_port()
    journal = tmp_path / "journal"
    first = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, journal_dir=journal)
    Runner(loop_of(FixedMetricAgent(cost="0.07"), times=3), budget=first).run(0)
    first.close()  # the process ends; its journal file stays, unlocked
    assert len(list(journal.glob("pending-*.jsonl"))) == 1

    sidecar = start_on(port, tmp_path / "sidecar.db")
    admin = Admin(sidecar.address)
    admin.budget("search-daily", "10")
    second = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, journal_dir=journal)
    assert second.flush(timeout_s=10) == 0
    assert admin.status("search-daily") == (Decimal("0.21"), Decimal(0))
    second.close()
    assert list(journal.glob("pending-*.jsonl")) == []
    admin.close()
    sidecar.stop(0)


def test_flush_waits_until_a_dead_process_journal_is_adopted_and_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flush`` right after a budget is built covers what it adopts: it does not return while the
    adoption is still reading the dead process's file (the entries are not in the journal yet)."""
    port = free_port()
    journal = tmp_path / "journal"
    first = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, journal_dir=journal)
    Runner(loop_of(FixedMetricAgent(cost="0.05"), times=2), budget=first).run(0)
    first.close()
    sidecar = start_on(port, tmp_path / "sidecar.db")
    admin = Admin(sidecar.address)
    admin.budget("search-daily", "10")
    real_adopt = Journal.adopt_orphans

    def slow_adopt(self: Journal) -> int:
        time.sleep(0.3)  # a large or slow directory: flush must wait, however long it takes
        return real_adopt(self)

    monkeypatch.setattr(Journal, "adopt_orphans", slow_adopt)
    second = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, journal_dir=journal)
    assert second.flush(timeout_s=10) == 0
    assert admin.status("search-daily") == (Decimal("0.10"), Decimal(0))
    second.close()
    admin.close()
    sidecar.stop(0)


def test_the_journals_fsync_never_runs_on_the_event_loop_yet_each_step_is_on_disk_when_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fail-open step waits for its journal line to be fsynced before it is done, but the write runs
    on a worker thread, so other steps and branches go on meanwhile; adopting a dead process's journal
    happens off the loop too."""
    journal, target = tmp_path / "journal", nowhere()
    dead = budget_at(target, FAIL_OPEN, journal_dir=journal)
    Runner(Step("once", FixedMetricAgent(cost="0.02")), budget=dead).run(0)
    dead.close()  # a dead process's journal, for the next budget to adopt
    on_loop: list[str] = []
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(threading.current_thread().name)
        except RuntimeError:
            pass
        real_fsync(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    lines: list[int] = []

    class Watcher:
        """Reads the journal as each step starts: the steps before it must be on disk already."""

        async def run(self, data: Any) -> MetricOutput:
            lines.append(
                sum(f.read_text().count('"cost_usd":"0.01"') for f in journal.glob("pending-*.jsonl"))
            )
            return MetricOutput(value=data, cost_usd=0.01, token_counts=1)

    budget = budget_at(target, FAIL_OPEN, journal_dir=journal)
    Runner(loop_of(Watcher(), times=4), budget=budget).run(0)
    assert lines == [0, 1, 2, 3]  # each step's line is on disk before the next step starts
    assert wait_until(lambda: len(budget.pending_usage()) == 5)  # and the dead process's one adopted
    budget.close()
    assert synced  # the journal was written, and durably
    assert on_loop == [], f"fsync ran on the event loop ({len(on_loop)} times)"


def test_a_commit_that_cannot_reach_the_sidecar_is_replayed_against_its_reservation(tmp_path: Path) -> None:
    port = free_port()
    sidecar = start_on(port, tmp_path / "sidecar.db")
    admin = Admin(sidecar.address)
    admin.budget("search-daily", "10")
    budget = budget_at(f"127.0.0.1:{port}", FAIL_CLOSED, journal_dir=None, breaker_reset_s=0.05)

    class Agent:
        async def run(self, data: Any) -> MetricOutput:
            sidecar.stop(0)  # dies while the step runs: the reservation is held, the commit fails
            return MetricOutput(value=data, cost_usd="0.42")  # type: ignore[arg-type]

    result = Runner(loop_of(Agent(), times=1), budget=budget).run(0)
    (step,) = [s for s in result.walk() if s.kind == "agent"]
    assert step.cost_usd == Decimal("0.42") and step.budget is not None
    (pending,) = budget.pending_usage()
    assert pending.reservation_id == step.budget.reservation_id and pending.reason == "commit_failed"
    back = start_on(port, tmp_path / "sidecar.db")
    assert budget.flush(timeout_s=10) == 0
    assert admin.status("search-daily") == (Decimal("0.42"), Decimal(0))
    budget.close()
    admin.close()
    back.stop(0)


def test_leases_keep_running_through_an_outage_and_every_cent_lands(tmp_path: Path) -> None:
    port = free_port()
    sidecar = start_on(port, tmp_path / "sidecar.db")
    admin = Admin(sidecar.address)
    admin.budget("search-daily", "100")
    budget = budget_at(
        f"127.0.0.1:{port}", FAIL_OPEN, lease=LeasePolicy(slice_usd="0.05"), breaker_reset_s=0.05
    )
    calls = 0

    class Agent:
        async def run(self, data: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 12:
                sidecar.stop(0)
            return type("Out", (), {"cost_usd": "0.01", "token_counts": 1})()

    result = Runner(loop_of(Agent(), times=30, expected="0.01"), budget=budget).run(0)
    assert result.total_cost_usd == Decimal("0.30")
    modes = [s.budget.mode for s in result.walk() if s.kind == "agent" and s.budget]
    assert modes[:10] == ["lease"] * 10 and "fail_open" in modes
    back = start_on(port, tmp_path / "sidecar.db")
    assert budget.flush(timeout_s=10) == 0
    assert admin.status("search-daily") == (Decimal("0.30"), Decimal(0))
    budget.close()
    admin.close()
    back.stop(0)


def test_a_record_the_sidecar_refuses_for_good_is_kept_aside_not_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from paymaster.budget import PendingUsage

    port = free_port()
    sidecar = start_on(port, tmp_path / "sidecar.db")
    budget = budget_at(f"127.0.0.1:{port}", FAIL_OPEN, journal_dir=tmp_path / "journal")
    bad = PendingUsage(usage_id="u-1", target=budget.target, scopes={}, cost_usd=Decimal("0.5"))
    budget.journal.append(bad)
    with caplog.at_level("ERROR", logger="paymaster"):
        assert budget.flush(timeout_s=10) == 0
    assert "refused replayed usage u-1 ($0.5)" in caplog.text
    (rejected,) = (tmp_path / "journal").glob("*.rejected")
    line = rejected.read_text()
    assert '"usage_id": "u-1"' in line and "INVALID_ARGUMENT" in line
    budget.close()
    sidecar.stop(0)
