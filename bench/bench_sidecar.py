"""Reserve+Commit round trips per second against the sidecar, as a ratio of a bare gRPC echo server.

Both servers run in their own process with the same process model (a ``grpc.aio`` server on one event
loop, ``so_reuseport`` off) and are driven by the same asyncio client process,
with 1, 16 and 64 concurrent clients, in one run on this machine. The echo server returns the request
bytes untouched: it is the cost of the transport alone, the ceiling for any Python gRPC service here.

The sidecar runs its real configuration: SQLite in WAL mode (``synchronous=normal``) in a temporary
directory, two matching budgets per request (an organization block budget and a team warn budget with
alert thresholds). One *pair* is a Reserve followed by a Commit of its reservation.

Two more servers split the gap between the echo and the sidecar, so a low ratio says where the time
goes: *api* serves the same ``BudgetService`` with fixed answers (the transport and the protobuf of this
API, nothing else), and *no store* is the real sidecar whose ledger repeats its first answers (the
servicer, its conversions, metrics and group-commit batching, without any store work).

Printed per concurrency: echo calls/s and p99, pairs/s of each of the three as a ratio of echo calls/s,
and the sidecar's p99 (of the whole pair). All four are measured in alternating rounds and each keeps
its best round (the least disturbed by anything else on the machine). The target is a sidecar ratio
of at least 0.40: each budget call costs little more than the transport.
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
BUDGETS_TOML = """
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
"""
"""Two budgets every request matches: an organization block budget and a team warn budget with alerts."""


def _serve_aio(ready: Any, stop: Any, install: Any, port: int | None = None) -> None:
    """A ``grpc.aio`` server on one event loop with what ``install(server)`` adds, until ``stop`` is set.
    With ``port``, it joins that port with ``SO_REUSEPORT`` (0: a free port others may join)."""

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0 if port is None else 1)])
        install(server)
        port_bound = server.add_insecure_port(f"127.0.0.1:{port or 0}")
        await server.start()
        ready.put(f"127.0.0.1:{port_bound}")
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await server.stop(0)

    asyncio.run(main())


def _serve_echo(ready: Any, stop: Any, port: int | None = None) -> None:
    """The echo server; with ``port``, one of several processes on that port (see ``_serve_aio``)."""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "paymaster.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    _serve_aio(ready, stop, lambda server: server.add_generic_rpc_handlers((handler,)), port)


def _serve_api(ready: Any, stop: Any) -> None:
    """``BudgetService`` answering Reserve and Commit with fixed messages: the transport of this API."""
    from paymaster.v1 import budget_pb2 as pb
    from paymaster.v1 import budget_pb2_grpc

    reserved = pb.ReserveResponse(
        decision=pb.DECISION_ALLOW, reservation_id="0" * 32, reserved_usd="0.012500"
    )
    committed = pb.CommitResponse(charged_usd="0.011300", released_usd="0.012500")

    class Fixed(budget_pb2_grpc.BudgetServiceServicer):  # type: ignore[misc]
        async def Reserve(self, request: Any, context: Any) -> Any:
            return reserved

        async def Commit(self, request: Any, context: Any) -> Any:
            return committed

    _serve_aio(
        ready, stop, lambda server: budget_pb2_grpc.add_BudgetServiceServicer_to_server(Fixed(), server)
    )


class _Repeating:
    """A ledger whose Reserve and Commit repeat their first real answers; everything else is the real one."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self._answers: dict[str, Any] = {}

    def reserve(self, command: Any) -> Any:
        if "reserve" not in self._answers:
            self._answers["reserve"] = self._ledger.reserve(command)
        return self._answers["reserve"]

    def commit(self, command: Any) -> Any:
        if "commit" not in self._answers:
            self._answers["commit"] = self._ledger.commit(command)
        return self._answers["commit"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def _serve_no_store(ready: Any, stop: Any, directory: str) -> None:
    """The sidecar with a ledger that repeats its first answers: everything but the store's work."""
    _serve_sidecar(ready, stop, directory, repeat_answers=True)


def _serve_sidecar(
    ready: Any, stop: Any, directory: str, store_toml: str = "", *, repeat_answers: bool = False
) -> None:
    """The sidecar with the benchmark's budgets; ``store_toml`` replaces the SQLite ``[store]`` section."""
    from collector_processor.api.server import create_sidecar
    from collector_processor.config import parse_config

    store = store_toml or f'[store]\npath = "{Path(directory) / "bench.db"}"'
    config = parse_config(f'[server]\nlisten = "127.0.0.1:0"\n{store}\n{BUDGETS_TOML}', source="bench")
    sidecar = create_sidecar(config)
    if repeat_answers:
        sidecar.ledger = _Repeating(sidecar.ledger)  # type: ignore[assignment]
    sidecar.start()
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
        tempfile.TemporaryDirectory() as no_store_directory,
        Server(_serve_echo) as echo,
        Server(_serve_api) as api,
        Server(_serve_no_store, no_store_directory) as no_store,
        Server(_serve_sidecar, directory) as sidecar,
    ):
        for clients in (1, 16, 64):
            # Alternate the four, and keep each one's best round: the one least disturbed by whatever
            # else this machine was doing. All get the same treatment, so the ratios stay fair.
            runs: list[list[tuple[float, float]]] = [[], [], [], []]
            for _ in range(rounds):
                runs[0].append(asyncio.run(_echo(echo, clients, seconds, warmup)))
                for i, address in enumerate((api, no_store, sidecar), start=1):
                    runs[i].append(asyncio.run(_pairs(address, clients, seconds, warmup)))
            (echo_rate, echo_p99), (api_rate, _), (bare_rate, _), (pair_rate, pair_p99) = map(max, runs)
            rows.append((clients, echo_rate, echo_p99, api_rate, bare_rate, pair_rate, pair_p99))
    print(
        f"Reserve+Commit pairs against a bare gRPC echo server "
        f"(best of {rounds} alternating round(s) of {seconds:g} s each, same run)"
    )
    print(
        f"{'clients':>7}  {'echo calls/s':>12}  {'echo p99 ms':>11}  {'api':>13}  {'no store':>13}"
        f"  {'sidecar':>13}  {'pair p99 ms':>11}"
    )
    for clients, echo_rate, echo_p99, api_rate, bare_rate, pair_rate, pair_p99 in rows:
        cells = "  ".join(
            f"{rate:>6.0f} {rate / echo_rate:>6.2f}" for rate in (api_rate, bare_rate, pair_rate)
        )
        print(f"{clients:>7}  {echo_rate:>12.0f}  {echo_p99:>11.2f}  {cells}  {pair_p99:>11.2f}")
    print("(each of api, no store and sidecar: pairs/s, then pairs/s / echo calls/s)")
    worst = min(r[5] / r[1] for r in rows)
    print(f"lowest sidecar ratio {worst:.2f} (target >= 0.40: a pair costs at most 2.5 echo calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
