"""Three sidecar processes on one Redis: a token issued through one works on all, and once revoked
through another it is refused by every one of them within ``auth.refresh_seconds`` (plus a margin)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.auth.conftest import TOKENS, tokens_toml
from tests.sidecar.redisserver import RedisServer
from tests.sidecar.test_cluster import Replica, three_replicas

pytestmark = pytest.mark.slow

REFRESH_S = 1.0
BOUND_S = REFRESH_S + 2.0  # the documented bound, with room for a loaded machine


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Replica]]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml())
    auth = f'[auth]\nenabled = true\ntokens_file = "{tokens}"\nrefresh_seconds = {REFRESH_S}\n'
    with three_replicas(tmp_path, redis_server.url, auth) as started:
        yield started


def stub(address: str) -> budget_pb2_grpc.BudgetServiceStub:
    return budget_pb2_grpc.BudgetServiceStub(grpc.insecure_channel(address))


def check(address: str, token: str) -> grpc.StatusCode:
    try:
        stub(address).CheckBudget(
            pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="search")),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=5,
        )
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def within(seconds: float, address: str, token: str, code: grpc.StatusCode) -> float:
    """How long until ``address`` answers ``code`` for ``token``; fails past ``seconds``."""
    start = time.monotonic()
    while (got := check(address, token)) != code:
        if time.monotonic() - start > seconds:
            pytest.fail(f"{address} still answered {got.name} after {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_token_revoked_through_one_replica_is_refused_by_all_within_the_bound(
    replicas: list[Replica],
) -> None:
    first, second, third = (r.address for r in replicas)
    root = [("authorization", f"Bearer {TOKENS['root']}")]
    made = stub(first).CreateToken(
        pb.CreateTokenRequest(name="ci-runner", roles=["spender"], grants=["team=search"]),
        metadata=root,
        timeout=5,
    )
    for address in (first, second, third):
        within(BOUND_S, address, made.secret, grpc.StatusCode.OK)
    stub(third).RevokeToken(pb.RevokeTokenRequest(id=made.token.id), metadata=root, timeout=5)
    assert check(third, made.secret) == grpc.StatusCode.UNAUTHENTICATED  # at once where it was revoked
    for address in (first, second):
        within(BOUND_S, address, made.secret, grpc.StatusCode.UNAUTHENTICATED)
