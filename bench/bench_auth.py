"""Reserve+Commit pairs per second with bearer tokens, with TLS and with both, as ratios of the same
sidecar without either, measured in one run.

Five sidecars in their own processes, with bench_sidecar.py's budgets and SQLite settings:
*plain* (no authentication, plaintext), *token* (``[auth]`` on, every call carries a bearer token,
plaintext), *tls* (TLS, no authentication), *token+tls* (both) and *mtls* (TLS with a client
certificate mapped to a principal, no token). The same asyncio client process drives each with 1, 16
and 64 concurrent clients, over one channel per run (TLS handshakes happen once per channel, as in
any long-lived client). Rounds alternate between the servers and each keeps its best round.
Target: token+tls at least 0.85 of plain.
Usage: python bench/bench_auth.py [--quick] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.certs makes the certificates

from bench_sidecar import BUDGETS_TOML, Server, _drive, _reserve_request

TOKEN = "bench-spender-token-" + "b" * 32
ROOT = "bench-root-token-" + "r" * 32
SPIFFE = "spiffe://bench.local/ns/app/sa/runner"
KINDS = ("plain", "token", "tls", "token+tls", "mtls")


def _serve(ready: Any, stop: Any, directory: str, kind: str) -> None:
    from collector_processor.api.server import create_sidecar
    from collector_processor.config import parse_config

    folder = Path(directory)
    tokens = folder / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "runner"\ntoken = "{TOKEN}"\nroles = ["spender"]\n'
        f'grants = ["organization=acme", "team=search", "agent=summarizer"]\n'
    )
    auth = ""
    if kind in ("token", "token+tls", "mtls"):
        auth = f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n'
        if kind == "mtls":
            auth += (
                f'[[auth.clients]]\nname = "runner"\nuri = "{SPIFFE}"\nroles = ["spender"]\n'
                'grants = ["organization=acme", "team=search", "agent=summarizer"]\n'
            )
    tls = ""
    if "tls" in kind:
        tls = f'[server.tls]\ncert_file = "{folder / "server.crt"}"\nkey_file = "{folder / "server.key"}"\n'
        if kind == "mtls":
            tls += f'client_ca_file = "{folder / "ca.crt"}"\n'
    config = parse_config(
        f'[server]\nlisten = "127.0.0.1:0"\n{tls}\n{auth}\n[store]\npath = "{folder / f"{kind}.db"}"\n{BUDGETS_TOML}',
        source="bench",
    )
    sidecar = create_sidecar(config).start()
    ready.put(f"127.0.0.1:{sidecar.port}")
    stop.wait()
    sidecar.stop(0)


def _channel(address: str, kind: str, folder: Path) -> Any:
    if "tls" not in kind:
        return grpc.aio.insecure_channel(address)
    ca = (folder / "ca.crt").read_bytes()
    key = cert = None
    if kind == "mtls":
        key, cert = (folder / "client.key").read_bytes(), (folder / "client.crt").read_bytes()
    port = address.rsplit(":", 1)[1]
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def _pairs(
    address: str, kind: str, folder: Path, clients: int, seconds: float, warmup: float
) -> tuple[float, float]:
    from paymaster.v1 import budget_pb2 as pb
    from paymaster.v1 import budget_pb2_grpc

    request = _reserve_request(pb)
    usage = pb.UsageFacts(provider="openai", model="gpt-4o-mini", input_tokens=1000, output_tokens=400)
    metadata = (("authorization", f"Bearer {TOKEN}"),) if kind in ("token", "token+tls") else None
    async with _channel(address, kind, folder) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)

        async def once() -> None:
            reply = await stub.Reserve(request, metadata=metadata)
            if reply.decision != pb.DECISION_ALLOW:
                raise SystemExit(f"bench: unexpected decision {reply.decision}: {reply.reason}")
            await stub.Commit(
                pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd="0.0113", usage=usage),
                metadata=metadata,
            )

        return await _drive(once, clients, seconds, warmup)


def _certificates(folder: Path) -> None:
    from tests.certs import Authority

    ca = Authority("bench CA")
    ca.write(folder)
    ca.server().write(folder, "server")
    ca.client(common_name="runner", uri=SPIFFE).write(folder, "client")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement and one round")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        _certificates(folder)
        servers = [Server(_serve, directory, kind) for kind in KINDS]
        addresses = [s.__enter__() for s in servers]
        try:
            for clients in (1, 16, 64):
                runs: list[list[tuple[float, float]]] = [[] for _ in KINDS]
                for _ in range(rounds):
                    for i, (kind, address) in enumerate(zip(KINDS, addresses, strict=True)):
                        runs[i].append(asyncio.run(_pairs(address, kind, folder, clients, seconds, 0.5)))
                rows.append((clients, [max(r) for r in runs]))
        finally:
            for server in servers:
                server.__exit__(None, None, None)
    print(
        f"Reserve+Commit pairs/s by transport security (best of {rounds} alternating round(s) of {seconds:g} s, same run)"
    )
    print(f"{'clients':>7}  " + "  ".join(f"{k:>16}" for k in KINDS))
    for clients, best in rows:
        plain = best[0][0]
        cells = "  ".join(f"{rate:>7.0f} {rate / plain:>4.2f} {p99:>3.0f}" for rate, p99 in best)
        print(f"{clients:>7}  {cells}")
    print("(each: pairs/s, ratio to plain, pair p99 ms)")
    worst = min(best[3][0] / best[0][0] for _, best in rows)
    print(f"lowest token+tls ratio {worst:.2f} (target >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
