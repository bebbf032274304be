"""Many clients racing over gRPC never push a block budget past its limit, even for an instant."""

from __future__ import annotations

import threading
from decimal import Decimal

import grpc

from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.conftest import RunningSidecar, pb_budget

SCOPES = pb.ScopeIds(organization="acme", team="search")


def test_committed_plus_reserved_stays_within_the_limit_at_every_sampled_instant(
    server: RunningSidecar,
) -> None:
    server.stub.CreateBudget(pb_budget("org", pb.SCOPE_ORGANIZATION, "acme", "20"))
    server.stub.CreateBudget(pb_budget("team", pb.SCOPE_TEAM, "search", "1000", on_exceed=pb.ON_EXCEED_WARN))
    stop = threading.Event()
    samples: list[Decimal] = []
    granted: list[str] = []
    refused_bad_commits: list[grpc.StatusCode] = []
    errors: list[BaseException] = []

    def client(index: int) -> None:
        channel = grpc.insecure_channel(server.address)
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        try:
            for attempt in range(15):
                r = stub.Reserve(
                    pb.ReserveRequest(
                        scopes=SCOPES, estimate_usd="0.30", idempotency_key=f"c{index}-{attempt}"
                    )
                )
                if r.decision == pb.DECISION_ALLOW:
                    granted.append(r.reservation_id)
                    stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="0.25"))
                if attempt % 5 == 0:  # a misbehaving neighbour in the same transactions
                    try:
                        stub.Commit(
                            pb.CommitRequest(reservation_id=f"bogus-{index}-{attempt}", actual_usd="1")
                        )
                    except grpc.RpcError as exc:
                        refused_bad_commits.append(exc.code())  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)
        finally:
            channel.close()

    def sampler() -> None:
        channel = grpc.insecure_channel(server.address)
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        while not stop.is_set():
            status = stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="org"))
            samples.append(Decimal(status.used_usd) + Decimal(status.reserved_usd))
        channel.close()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    watcher = threading.Thread(target=sampler)
    watcher.start()
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    watcher.join()

    assert errors == []
    assert (
        server.sidecar.batcher is not None and server.sidecar.batcher.largest > 1
    )  # requests did share transactions
    assert len(samples) > 20
    assert max(samples) <= Decimal(20)
    status = server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="org"))
    assert status.reserved_usd == "0.000000"
    assert Decimal(status.used_usd) == Decimal("0.25") * len(granted) <= Decimal(20)
    assert len(granted) == 79  # 79 x 0.25 = 19.75; a 0.30 estimate no longer fits
    assert len(set(granted)) == len(granted)
    assert refused_bad_commits == [grpc.StatusCode.NOT_FOUND] * (24 * 3)
    # The warn budget saw every commit too: nothing was lost to a neighbour's failed request.
    team = server.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="team"))
    assert team.used_usd == status.used_usd
