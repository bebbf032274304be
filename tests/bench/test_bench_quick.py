"""The benchmarks of worker processes and of the SDK's runs still run: each script's ``--quick`` mode
end to end, against real sidecars (and a real redis-server), checking what it prints, never its times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sidecar.redisserver import require_redis_server

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.slow


def run_quick(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_bench_workers_quick_prints_every_ratio_and_an_exact_ledger() -> None:
    """Saturation of 1 and 2 workers on both stores beside echo processes, the open-loop latencies,
    and OTLP spans/s on every payload, whose ledger holds exactly the tokens sent."""
    require_redis_server()
    out = run_quick("bench_workers.py")
    for row in ("echo x1", "echo x2", "sqlite w1", "sqlite w2", "redis w1", "redis w2"):
        assert f"\n{row} " in out, out
    assert "2 workers / 1 worker: SQLite " in out
    assert "pair p99 at 1,000 pairs/s with 2 workers: " in out
    assert "; an echo pair at the same rate: " in out
    for subject in (
        "echo pair, 2 processes",
        "pair, 1 worker",
        "pair, 2 workers",
        "leased run, 2 workers",
        "ungoverned run",
    ):
        assert out.count(f"  {subject} ") == 2, out  # at 100 and 1,000 per second
    for payload in ("semconv", "openllmetry", "miss"):
        assert f"\n{payload} " in out, out
    assert out.count(": exact") == 2, out


def test_bench_sdk_runs_quick_prints_each_mode_and_the_sdk_share() -> None:
    out = run_quick("bench_sdk_runs.py")
    for mode in (
        "bare pair",
        "ungoverned run",
        "per-step run",
        "shared channel",
        "per-run lease",
        "shared lease",
    ):
        assert f"\n{mode} " in out, out
    assert "the SDK's own share of a per-step run" in out
    assert "the SDK's own share of a shared channel" in out


def test_bench_sqlite_writers_quick_prints_one_and_two_processes() -> None:
    out = run_quick("bench_sqlite_writers.py")
    rows = [line.split() for line in out.splitlines() if line[:9].strip() in ("1", "2")]
    assert [row[0] for row in rows] == ["1", "2"], out
    assert rows[0][2] == "1.00" and len(rows[1][3].split("/")) == 2, out


# The other benches, two at a time, the longer ones with shorter measurements: that they run to the
# end on a fresh machine and print their verdict lines, never what they measured.
OLDER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bench_sidecar.py": (("--seconds", "0.3"), ("lowest sidecar ratio ",)),
    "bench_cluster.py": (("--seconds", "0.3"), ("\n     64  redis x3 ", "vs echo: ")),
    "bench_otlp.py": (("--seconds", "0.3"), ("input tokens charged for", ": exact")),
    "bench_http.py": ((), ("\nreserve+commit        16 ",)),
    "bench_auth.py": (("--seconds", "0.3"), ("lowest token+tls ratio ",)),
    "bench_request_budget.py": ((), ("  redis:\n", "opening a request budget:")),
    "bench_sdk.py": ((), ("import paymaster: ",)),
    "bench_sdk_sidecar.py": ((), ("  leases, default policy: ", "holds $0 after the runs")),
}


def test_the_other_benches_run_to_the_end_in_quick_mode() -> None:
    from concurrent.futures import ThreadPoolExecutor

    require_redis_server()  # bench_cluster and bench_request_budget measure Redis too
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {script: pool.submit(run_quick, script, *args) for script, (args, _) in OLDER.items()}
        printed = {script: run.result() for script, run in runs.items()}
    for script, (_, lines) in OLDER.items():
        for line in lines:
            assert line in printed[script], f"{script} printed no {line!r}:\n{printed[script]}"
