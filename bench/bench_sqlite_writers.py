"""Several processes writing one SQLite ledger, as the workers of a sidecar do: the store's own ceiling.

The workers of a sidecar (``server.workers``) share one SQLite file, and SQLite lets one connection
write at a time (a writer that finds the lock taken is put to sleep by SQLite's busy handler for 1, 2,
5, 10 ... ms and retries). Each process here runs Reserve+Commit pairs through a ``Ledger`` on its own
``SqliteStore`` of the same file, as fast as it can, with a little work of its own between
transactions (as a worker answers its batch); 1, 2 and 4 processes in alternating rounds of one run.

Printed: pairs/s over all processes (and each one's share), the ratio to one process, and the p50 /
p99 / max time of one transaction, waiting included. No gRPC is involved: this is the store's own
ceiling, under the sidecar's transport (``bench_workers.py`` measures the whole).

Usage: python bench/bench_sqlite_writers.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

SEND_WORK = 3000  # loop iterations of the process's own work between transactions (about 0.1 ms)


def _writer(path: str, seconds: float, start_at: float, answers: Any) -> None:
    from collector_processor.domain.budgets import ScopeSet
    from collector_processor.domain.types import CommitCommand, ReserveCommand
    from collector_processor.ledger import Ledger, LedgerSettings
    from collector_processor.store import SqliteStore

    store = SqliteStore(Path(path))
    ledger = Ledger(store, settings=LedgerSettings(default_ttl_ms=60_000))
    scopes = ScopeSet(organization="acme", team="search")
    times: list[float] = []
    pairs = 0
    try:
        while time.time() < start_at:
            time.sleep(0.001)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            reserved = ledger.reserve(ReserveCommand(scopes=scopes, estimate_usd=Decimal("0.001")))
            t1 = time.perf_counter()
            ledger.commit(CommitCommand(reservation_id=reserved.reservation_id, actual_usd=Decimal("0.001")))
            t2 = time.perf_counter()
            times += (t1 - t0, t2 - t1)
            pairs += 1
            spare = 0
            for i in range(SEND_WORK):
                spare += i
    finally:
        store.close()
    answers.put((pairs, times))


def _budget(path: Path) -> None:
    from collector_processor.domain.budgets import BudgetDraft, OnExceed, Scope
    from collector_processor.ledger import Ledger, LedgerSettings
    from collector_processor.store import SqliteStore

    store = SqliteStore(path)
    try:
        Ledger(store, settings=LedgerSettings()).create_budget(
            BudgetDraft(
                id="search-daily",
                name="search-daily",
                scope=Scope.TEAM,
                scope_id="search",
                limit_usd=Decimal("1000000"),
                period="daily",
                on_exceed=OnExceed.BLOCK,
            )
        )
    finally:
        store.close()


def measure(work: Path, processes: int, seconds: float, tag: str) -> dict[str, Any]:
    path = work / f"{tag}.db"
    _budget(path)
    ctx = mp.get_context("spawn")
    answers = ctx.Queue()
    start_at = time.time() + 1.5  # every process has imported and opened its store by then
    procs = [
        ctx.Process(target=_writer, args=(str(path), seconds, start_at, answers)) for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = [answers.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    times = sorted(t for _, ts in results for t in ts)
    q = statistics.quantiles(times, n=100)
    return {
        "rate": sum(p for p, _ in results) / seconds,
        "shares": [p / seconds for p, _ in results],
        "p50": q[49] * 1e3,
        "p99": q[98] * 1e3,
        "max": times[-1] * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round, 1 and 2 processes")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = (1, 2, 4)
    if args.quick:
        args.seconds, args.rounds, counts = 1.0, 1, (1, 2)
    best: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="paymaster-bench-writers-") as tmp:
        for round_no in range(args.rounds):
            for processes in counts:
                result = measure(Path(tmp), processes, args.seconds, f"r{round_no}-{processes}")
                if processes not in best or result["rate"] > best[processes]["rate"]:
                    best[processes] = result
    print(
        f"Reserve+Commit pairs through a Ledger on one SQLite file from {', '.join(map(str, counts))} processes "
        f"(best of {args.rounds} alternating round(s) of {args.seconds:g} s, same run, {mp.cpu_count()} cores; "
        "no gRPC)"
    )
    print(
        f"{'processes':>9} {'pairs/s':>8} {'x 1 process':>11} {'per process':>20} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    )
    base = best[1]["rate"]
    for processes in counts:
        r = best[processes]
        shares = "/".join(f"{s:.0f}" for s in r["shares"])
        print(
            f"{processes:>9} {r['rate']:>8.0f} {r['rate'] / base:>11.2f} {shares:>20} "
            f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.1f}"
        )
    print("p50/p99/max: one transaction (a Reserve or a Commit) as its process saw it, waiting included")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
