"""Reserve+Commit pairs per second through 1 and 3 sidecar replicas sharing one Redis, as ratios of the
same run on the embedded SQLite store and of a bare gRPC echo server.

Every server runs in its own process with the same process model (``bench_sidecar``'s echo server and
sidecar, whose pieces this reuses), all in one run on this machine: one echo process, three echo
processes, one sidecar on SQLite (WAL, ``synchronous=normal``), one sidecar on Redis, and three
sidecars on the same Redis. Redis runs with the durability ``deploy/redis`` recommends (append-only
file, ``appendfsync everysec``), the same class as SQLite's ``normal``: nothing answered is lost when a
process crashes. Each request matches two budgets (an organization block budget and a team warn
budget with thresholds). The clients are one asyncio process, spread round-robin over the replicas.

Printed per concurrency: pairs/s (and p99 of the whole pair) for each store, then the ratios: Redis
against SQLite, and each against the echo server with as many processes. Measurements alternate in
rounds and each keeps its best round, so that noise from the rest of the machine disturbs all alike.
Usage: python bench/bench_cluster.py [--quick] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from bench_sidecar import Server, _drive, _reserve_request, _serve_echo, _serve_sidecar

ECHO_METHOD = "/paymaster.bench.Echo/Echo"


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench_cluster: redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", "redis.log"],
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("bench_cluster: redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Every channel on a connection of its own: gRPC would otherwise share one between channels to the
same address, and so send them all to one of the processes behind a ``SO_REUSEPORT`` port."""


@contextlib.asynccontextmanager
async def echo_calls(addresses: list[str]) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """One echo call per ``await once()``, over one connection per entry of ``addresses`` in turn."""
    from paymaster.v1 import budget_pb2 as pb

    payload = _reserve_request(pb).SerializeToString()
    channels = [grpc.aio.insecure_channel(a, options=OWN_CONNECTION) for a in addresses]
    calls = itertools.cycle([c.unary_unary(ECHO_METHOD) for c in channels])
    try:

        async def once() -> None:
            await next(calls)(payload, timeout=60)

        yield once
    finally:
        for channel in channels:
            await channel.close()


@contextlib.asynccontextmanager
async def pair_calls(addresses: list[str]) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """One Reserve and its Commit per ``await once()``, over one connection per entry of ``addresses``
    in turn (a pair may span two of them, as behind a Service)."""
    from paymaster.v1 import budget_pb2 as pb
    from paymaster.v1 import budget_pb2_grpc

    request = _reserve_request(pb)
    usage = pb.UsageFacts(provider="openai", model="gpt-4o-mini", input_tokens=1000, output_tokens=400)
    channels = [grpc.aio.insecure_channel(a, options=OWN_CONNECTION) for a in addresses]
    stubs = itertools.cycle([budget_pb2_grpc.BudgetServiceStub(c) for c in channels])
    try:

        async def once() -> None:
            reserve, commit = next(stubs), next(stubs)
            reply = await reserve.Reserve(request, timeout=60)
            if reply.decision != pb.DECISION_ALLOW:
                raise SystemExit(f"bench: unexpected decision {reply.decision}: {reply.reason}")
            await commit.Commit(
                pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd="0.0113", usage=usage),
                timeout=60,
            )

        yield once
    finally:
        for channel in channels:
            await channel.close()


async def _echo_spread(
    addresses: list[str], clients: int, seconds: float, warmup: float
) -> tuple[float, float]:
    async with echo_calls(addresses) as once:
        return await _drive(once, clients, seconds, warmup)


async def _pairs_spread(
    addresses: list[str], clients: int, seconds: float, warmup: float
) -> tuple[float, float]:
    async with pair_calls(addresses) as once:
        return await _drive(once, clients, seconds, warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement and one round")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 0.5
    results: dict[tuple[str, int], tuple[float, float]] = {}
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(redis_server(directory))
        redis_toml = f'[store]\nkind = "redis"\nurl = "{url}"\nnamespace = "bench"'
        echo = [stack.enter_context(Server(_serve_echo)) for _ in range(3)]
        sqlite = stack.enter_context(Server(_serve_sidecar, str(directory)))
        replicas = [stack.enter_context(Server(_serve_sidecar, str(directory), redis_toml)) for _ in range(3)]
        setups: dict[str, tuple[Any, list[str]]] = {
            "echo x1": (_echo_spread, echo[:1]),
            "echo x3": (_echo_spread, echo),
            "sqlite x1": (_pairs_spread, [sqlite]),
            "redis x1": (_pairs_spread, replicas[:1]),
            "redis x3": (_pairs_spread, replicas),
        }
        for clients in (16, 64):
            for _ in range(rounds):
                for name, (run, addresses) in setups.items():
                    measured = asyncio.run(run(addresses, clients, seconds, warmup))
                    results[(name, clients)] = max(results.get((name, clients), (0.0, 0.0)), measured)
    print(
        "Reserve+Commit pairs through sidecar replicas on one Redis, against SQLite and a bare gRPC echo server "
        f"(best of {rounds} alternating round(s) of {seconds:g} s each, same run)"
    )
    print(
        f"{'clients':>7}  {'store':<9}  {'pairs/s':>8}  {'pair p99 ms':>11}  {'vs sqlite':>9}  "
        f"{'vs echo':>7}  {'echo calls/s':>12}"
    )
    for clients in (16, 64):
        base = results[("sqlite x1", clients)][0]
        for name in ("sqlite x1", "redis x1", "redis x3"):
            rate, p99 = results[(name, clients)]
            echo_name = "echo x3" if name.endswith("x3") else "echo x1"
            echo_rate = results[(echo_name, clients)][0]
            print(
                f"{clients:>7}  {name:<9}  {rate:>8.0f}  {p99:>11.2f}  {rate / base:>9.2f}  "
                f"{rate / echo_rate:>7.2f}  {echo_rate:>12.0f}"
            )
    print("vs echo: pairs/s divided by echo calls/s through as many echo processes (a pair is two calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
