"""``paymaster sidecar`` with ``server.workers``: the process a platform runs. SIGTERM drains every worker
(requests in flight are answered) and the sidecar exits 0 with no worker left; ``"auto"`` starts one
worker per core the process may use, a CPU quota included."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from collector_processor.config import parse_config
from collector_processor.workers import usable_cores, worker_count
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.conftest import pb_budget
from tests.sidecar.workers.conftest import OWN_CONNECTION

RETRIED = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def start(config: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "paymaster.cli", "sidecar", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"listening on (\S+) ", first)
    if match is None:
        proc.kill()
        raise AssertionError(f"the sidecar did not start: {first!r} {proc.communicate()[1]}")
    return proc, match.group(1), [first]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_sigterm_drains_every_worker_and_exits_0_with_no_worker_left(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nworkers = 2\ngrace_seconds = 20\n'
        f'[store]\npath = "{db}"\nbusy_timeout_ms = 30000\n[alerts]\notel_logs = false\n'
    )
    proc, address, lines = start(config)
    assert "; store: sqlite " in lines[0] and lines[0].rstrip().endswith("; 2 worker processes")
    workers = children(proc.pid)
    assert len(workers) == 2
    channels = [grpc.insecure_channel(address, options=OWN_CONNECTION) for _ in range(8)]
    stubs = [budget_pb2_grpc.BudgetServiceStub(c) for c in channels]
    stubs[0].CreateBudget(pb_budget("team", limit="100"), timeout=10)
    for stub in stubs:  # connected before the signal
        stub.CheckBudget(pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="search")), timeout=10)
    answers: list[object] = []

    def reserve(stub: budget_pb2_grpc.BudgetServiceStub) -> None:
        try:
            reply = stub.Reserve(
                pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1"), timeout=60
            )
            answers.append(reply.decision)
        except grpc.RpcError as exc:
            answers.append(exc.code())  # type: ignore[attr-defined]

    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # every Reserve waits for the store: in flight when SIGTERM comes
    threads = [threading.Thread(target=reserve, args=(stub,)) for stub in stubs]
    for thread in threads:
        thread.start()
    try:
        threading.Event().wait(1.0)
        proc.send_signal(signal.SIGTERM)
        threading.Event().wait(1.0)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    for thread in threads:
        thread.join(60)
    # Drained: what a worker had begun is answered; what it had not yet taken up when the signal came
    # is refused with a status the client retries elsewhere, and left no trace.
    granted = answers.count(pb.DECISION_ALLOW)
    assert granted >= 1
    assert all(a == pb.DECISION_ALLOW or a in RETRIED for a in answers), answers
    assert proc.wait(60) == 0
    for channel in channels:
        channel.close()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM reservations").fetchone() == (granted,)


def test_auto_is_the_cores_this_process_may_use() -> None:
    config = parse_config('[server]\nworkers = "auto"\n')
    assert worker_count(config) == usable_cores() == len(os.sched_getaffinity(0))
    assert worker_count(parse_config("[server]\nworkers = 3\n")) == 3


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores of quota: 2 workers
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # no quota: the affinity
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_cgroup_cpu_quota_bounds_auto(tmp_path: Path, files: dict[str, str], cores: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (affinity if cores is None else min(cores, affinity))


def test_a_bad_workers_value_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text('[server]\nworkers = "many"\n')
    done = subprocess.run(
        [sys.executable, "-m", "paymaster.cli", "sidecar", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"paymaster sidecar: {config}: server.workers: must be \"auto\" or a whole number from 1 to 256 (got 'many')"
    )
