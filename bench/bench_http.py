"""Check and Reserve+Commit over the HTTP/JSON API as ratios of the same over gRPC, measured in one run.

One sidecar in its own process (bench_sidecar.py's budgets, SQLite), serving both its gRPC port and
its HTTP port. The same asyncio client process drives each transport with 1 and 16 concurrent
clients: gRPC over one ``grpc.aio`` channel, HTTP over one keep-alive ``httpx.AsyncClient`` pool.
Rounds alternate between the transports and each keeps its best round. Ratios above 1 mean HTTP is
faster.
Usage: python bench/bench_http.py [--quick] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_sidecar import BUDGETS_TOML, Server, _drive, _reserve_request

SCOPES = {"organization": "acme", "team": "search", "agent": "summarizer"}
RESERVE = {"scopes": SCOPES, "estimate_usd": "0.0125", "estimate_tokens": 1500,
           "model": {"provider": "openai", "model": "gpt-4o-mini"}}  # fmt: skip
COMMIT = {"actual_usd": "0.011", "usage": {"provider": "openai", "model": "gpt-4o-mini",
          "input_tokens": 1200, "output_tokens": 300}}  # fmt: skip


def _serve(ready: Any, stop: Any, directory: str) -> None:
    from collector_processor.api.http import HttpApi
    from collector_processor.api.server import create_sidecar
    from collector_processor.config import parse_config

    folder = Path(directory)
    config = parse_config(
        f'[server]\nlisten = "127.0.0.1:0"\n[http]\nenabled = true\nlisten = "127.0.0.1:0"\n'
        f'[store]\npath = "{folder / "bench.db"}"\n{BUDGETS_TOML}',
        source="bench",
    )
    sidecar = create_sidecar(config).start()
    api = next(c for c in sidecar.components if isinstance(c, HttpApi))
    ready.put((sidecar.address, api.address))
    stop.wait()
    sidecar.stop(0)


async def _grpc(address: str, what: str, clients: int, seconds: float, warmup: float) -> float:
    from paymaster.v1 import budget_pb2 as pb
    from paymaster.v1 import budget_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        reserve = _reserve_request(pb)
        check = pb.CheckBudgetRequest(scopes=reserve.scopes, estimate_usd="0.0125")

        async def once() -> None:
            if what == "check":
                await stub.CheckBudget(check)
                return
            reply = await stub.Reserve(reserve)
            await stub.Commit(pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd="0.011",
                                               usage=pb.UsageFacts(provider="openai", model="gpt-4o-mini",
                                                                   input_tokens=1200, output_tokens=300)))  # fmt: skip

        rate, _ = await _drive(once, clients, seconds, warmup)
        return rate


async def _http(address: str, what: str, clients: int, seconds: float, warmup: float) -> float:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://{address}", limits=limits, timeout=30) as client:
        check = {"scopes": SCOPES, "estimate_usd": "0.0125"}

        async def once() -> None:
            if what == "check":
                (await client.post("/v1/check", json=check)).raise_for_status()
                return
            reply = await client.post("/v1/reservations", json=RESERVE)
            reply.raise_for_status()
            rid = reply.json()["reservation_id"]
            (await client.post(f"/v1/reservations/{rid}/commit", json=COMMIT)).raise_for_status()

        rate, _ = await _drive(once, clients, seconds, warmup)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke run)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds, rounds = (0.5, 1) if args.quick else (args.seconds, args.rounds)
    with tempfile.TemporaryDirectory() as tmp, Server(_serve, tmp) as (grpc_address, http_address):
        print(f"{'operation':<16}{'clients':>8}{'gRPC ops/s':>12}{'HTTP ops/s':>12}{'HTTP/gRPC':>11}")
        for what in ("check", "reserve+commit"):
            for clients in (1, 16):
                best = {"grpc": 0.0, "http": 0.0}
                for _ in range(rounds):
                    best["grpc"] = max(
                        best["grpc"], asyncio.run(_grpc(grpc_address, what, clients, seconds, 0.3))
                    )
                    best["http"] = max(
                        best["http"], asyncio.run(_http(http_address, what, clients, seconds, 0.3))
                    )
                ratio = best["http"] / best["grpc"]
                print(f"{what:<16}{clients:>8}{best['grpc']:>12.0f}{best['http']:>12.0f}{ratio:>11.2f}")


if __name__ == "__main__":
    main()
