"""Reserve+Commit round trips per second against the sidecar, as a ratio of a bare gRPC echo server.

Both servers run in their own process with the same process model (a ``grpc.aio`` server on one event
loop, ``so_reuseport`` off) and are driven by the same asyncio client process,
with 1, 16 and 64 concurrent clients, in one run on this machine. The echo server returns the request
bytes untouched: it is the cost of the transport alone, the ceiling for any Python gRPC service here.

The sidecar runs its real configuration: SQLite in WAL mode (``synchronous=normal``) in a temporary
directory, two matching budgets per request (an organization block budget and a team warn budget with
alert thresholds). One *pair* is a Reserve followed by a Commit of its reservation.

Printed per concurrency: echo calls/s and p99, sidecar pairs/s and p99 (of the whole pair), and the ratio
pairs/s ÷ echo calls/s. The two are measured in alternating rounds and each keeps its best round (the
least disturbed by anything else on the machine). The target is a ratio of at least 0.40: each budget
call costs little more than the transport.
Usage: python bench/bench_sidecar.py [--quick] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

ECHO_METHOD = "/paymaster.bench.Echo/Echo"


def _serve_echo(ready: Any, stop: Any) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "paymaster.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.put(f"127.0.0.1:{port}")
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await server.stop(0)

    asyncio.run(main())


def _serve_sidecar(ready: Any, stop: Any, directory: str, store_toml: str = "") -> None:
    """The sidecar with the benchmark's budgets; ``store_toml`` replaces the SQLite ``[store]`` section."""
    from collector_processor.config import parse_config
    from collector_processor.server import create_sidecar

    store = store_toml or f'[store]\npath = "{Path(directory) / "bench.db"}"'
    config = parse_config(
        f"""
        [server]
        listen = "127.0.0.1:0"
        {store}
        [[budgets]]
        id = "org-monthly"
        scope = "organization"
        scope_id = "acme"
        limit_usd = "1000000000"
        period = "monthly"
        on_exceed = "block"
        [[budgets]]
        id = "team-daily"
        scope = "team"
        limit_usd = "500000000"
        period = "daily"
        on_exceed = "warn"
        alert_thresholds = [50, 80, 100]
        """,
        source="bench",
    )
    sidecar = create_sidecar(config).start()
    ready.put(f"127.0.0.1:{sidecar.port}")
    stop.wait()
    sidecar.stop(0)


class Server:
    """A server in a child process, for a ``with`` block: the block gets what the server put on its
    ready queue (its address here; more for servers with several ports)."""

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self._ready, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=target, args=(self._ready, self._stop, *args), daemon=True)

    def __enter__(self) -> Any:
        self._proc.start()
        return self._ready.get(timeout=120)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


async def _drive(call_once: Any, clients: int, seconds: float, warmup: float) -> tuple[float, float]:
    """Run ``clients`` loops of ``call_once`` for ``seconds`` after ``warmup``; return ops/s and p99 ms."""
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def loop() -> None:
        while (now := time.perf_counter()) < stop_at:
            await call_once()
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return len(latencies) / seconds, statistics.quantiles(latencies, n=100)[98] * 1000


async def _echo(address: str, clients: int, seconds: float, warmup: float) -> tuple[float, float]:
    from paymaster.v1 import budget_pb2 as pb

    payload = _reserve_request(pb).SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(ECHO_METHOD)

        async def once() -> None:
            await call(payload)

        return await _drive(once, clients, seconds, warmup)


def _reserve_request(pb: Any) -> Any:
    return pb.ReserveRequest(
        scopes=pb.ScopeIds(organization="acme", team="search", agent="summarizer"),
        estimate_usd="0.0125",
        estimate_tokens=1500,
        model=pb.UsageFacts(provider="openai", model="gpt-4o-mini"),
    )


async def _pairs(address: str, clients: int, seconds: float, warmup: float) -> tuple[float, float]:
    from paymaster.v1 import budget_pb2 as pb
    from paymaster.v1 import budget_pb2_grpc

    request = _reserve_request(pb)
    usage = pb.UsageFacts(provider="openai", model="gpt-4o-mini", input_tokens=1000, output_tokens=400)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)

        async def once() -> None:
            reply = await stub.Reserve(request)
            if reply.decision != pb.DECISION_ALLOW:
                raise SystemExit(f"bench: unexpected decision {reply.decision}: {reply.reason}")
            await stub.Commit(
                pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd="0.0113", usage=usage)
            )

        return await _drive(once, clients, seconds, warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement and one round")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating rounds per concurrency (default 3)"
    )
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 0.5
    rows = []
    with (
        tempfile.TemporaryDirectory() as directory,
        Server(_serve_echo) as echo,
        Server(_serve_sidecar, directory) as sidecar,
    ):
        for clients in (1, 16, 64):
            # Alternate the two, and keep each one's best round: the one least disturbed by whatever
            # else this machine was doing. Both get the same treatment, so the ratio stays fair.
            echo_runs, pair_runs = [], []
            for _ in range(rounds):
                echo_runs.append(asyncio.run(_echo(echo, clients, seconds, warmup)))
                pair_runs.append(asyncio.run(_pairs(sidecar, clients, seconds, warmup)))
            (echo_rate, echo_p99), (pair_rate, pair_p99) = max(echo_runs), max(pair_runs)
            rows.append((clients, echo_rate, echo_p99, pair_rate, pair_p99, pair_rate / echo_rate))
    print(
        f"Reserve+Commit pairs against a bare gRPC echo server "
        f"(best of {rounds} alternating round(s) of {seconds:g} s each, same run)"
    )
    print(
        f"{'clients':>7}  {'echo calls/s':>12}  {'echo p99 ms':>11}  {'pairs/s':>8}  {'pair p99 ms':>11}  {'ratio':>6}"
    )
    for clients, echo_rate, echo_p99, pair_rate, pair_p99, ratio in rows:
        print(
            f"{clients:>7}  {echo_rate:>12.0f}  {echo_p99:>11.2f}  {pair_rate:>8.0f}  {pair_p99:>11.2f}  {ratio:>6.2f}"
        )
    worst = min(r[-1] for r in rows)
    print(f"lowest ratio {worst:.2f} (target >= 0.40: a pair costs at most 2.5 echo calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
