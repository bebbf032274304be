"""A sidecar of several worker processes serves one set of ports: requests spread over the workers, one
``/metrics`` sums their counts, a worker that dies is replaced (counted and logged), and the budget
API's port answers NOT_SERVING while no worker serves."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector_processor.workers import RESTARTS, SERVING, Supervisor
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import StoreFactory, pb_budget
from tests.sidecar.workers.conftest import OWN_CONNECTION, Workers, refused_on_a_busy_port, start_workers

pytestmark = pytest.mark.slow

TEAM = pb.ScopeIds(organization="acme", team="search")


def pair(stub: object, estimate: str = "0.10", actual: str = "0.10") -> str:
    reply = stub.Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd=estimate), timeout=10)  # type: ignore[attr-defined]
    assert reply.decision == pb.DECISION_ALLOW, reply.reason
    done = stub.Commit(pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd=actual), timeout=10)  # type: ignore[attr-defined]
    return str(done.charged_usd)


def wait_until(condition: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def health(address: str) -> str:
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_requests_over_many_connections_are_spread_over_every_worker(workers: Workers) -> None:
    stubs = [workers.stub() for _ in range(16)]
    for stub in stubs:
        pair(stub)
    served = workers.served("Reserve")
    assert sorted(served) == [0, 1]
    assert sum(served.values()) == 16
    assert all(count > 0 for count in served.values()), served  # each worker served some
    assert len(set(workers.supervisor.pids().values())) == 2


def test_one_metrics_endpoint_sums_every_worker_and_counts_nothing_twice(
    backing: StoreFactory, tmp_path: Path
) -> None:
    running = start_workers(
        backing, tmp_path, '[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\nrefresh_seconds = 0'
    )
    try:
        running.stub().CreateBudget(pb_budget("team", limit="100"))
        stubs = running.stubs_on_each_worker()
        for stub in stubs.values():
            for _ in range(5):
                pair(stub)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{running.supervisor.metrics_port}/metrics", timeout=10
        ) as reply:
            text = reply.read().decode()
        # One series per label set, whichever workers answered it, and their sum is every answer.
        commits = re.findall(r'^paymaster_rpc_requests_total\{code="OK",method="Commit"\} (\S+)$', text, re.M)
        assert commits == ["10.0"]
        assert re.search(r'^paymaster_commits_total\{outcome="charged"\} 10\.0$', text, re.M)
        assert re.search(
            r'^paymaster_budget_used_usd\{budget="team",scope="team",scope_id="search"\} 1\.0$', text, re.M
        )
        assert len(re.findall(r"^paymaster_budget_used_usd\{", text, re.M)) == 1  # read once, not per worker
        assert re.search(rf"^{SERVING} 2\.0$", text, re.M)
        assert len(re.findall(r"^paymaster_build_info\{", text, re.M)) == 1
    finally:
        running.close()


def test_a_worker_killed_with_sigkill_is_replaced_counted_and_logged_and_its_counts_stay(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    stubs = workers.stubs_on_each_worker()
    for stub in stubs.values():
        pair(stub)
    before = workers.supervisor.snapshot().counters["paymaster_rpc_requests_total"]
    victim = workers.supervisor.pids()[0]
    with caplog.at_level(logging.WARNING, logger="paymaster.sidecar.supervisor"):
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: workers.supervisor.serving() == 2 and workers.supervisor.pids()[0] != victim,
            "a new worker",
        )
    assert workers.supervisor.restarts == 1
    assert f"worker 0 (pid {victim}) was killed by SIGKILL" in caplog.text
    summed = workers.supervisor.snapshot()
    assert summed.counters[RESTARTS] == {(("worker", "0"),): 1.0}
    # What the dead worker answered is still counted: no counter of the sum goes back.
    after = summed.counters["paymaster_rpc_requests_total"]
    assert all(after[key] >= value for key, value in before.items())
    # The survivor and the newcomer both serve.
    for stub in workers.stubs_on_each_worker().values():
        pair(stub)


def test_the_port_answers_not_serving_while_no_worker_serves(backing: StoreFactory, tmp_path: Path) -> None:
    running = start_workers(backing, tmp_path, restart_delay_s=3.0)
    try:
        assert health(running.address) == "SERVING"
        for pid in running.supervisor.pids().values():
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: running.supervisor.serving() == 0, "both workers to be gone")
        assert health(running.address) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as refused:
            running.stub().Reserve(pb.ReserveRequest(scopes=TEAM, estimate_usd="1"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "no worker of this sidecar is serving" in str(refused.value.details())  # type: ignore[attr-defined]
        wait_until(lambda: running.supervisor.serving() == 2, "the replacements", timeout_s=60)
        wait_until(lambda: health(running.address) == "SERVING", "SERVING again")
        pair(running.stub())
    finally:
        running.close()


def test_a_port_in_use_stops_the_sidecar_naming_its_key_before_any_worker_starts(
    backing: StoreFactory, tmp_path: Path
) -> None:
    first = start_workers(backing, tmp_path)
    try:
        from collector_processor.config import parse_config

        config = parse_config(
            f'[server]\nlisten = "{first.address}"\nworkers = 2\n[store]\npath = "{tmp_path / "other.db"}"\n',
            source="second.toml",
        )
        with pytest.raises(ConfigError) as refused:
            Supervisor(config, workers=2).start()
        assert str(refused.value).startswith(f"second.toml: server.listen: cannot serve on {first.address}: ")
        assert not (tmp_path / "other.db").exists()
        # A sidecar of one process cannot take the port either (it binds without SO_REUSEPORT).
        from collector_processor.api.server import create_sidecar

        single = config.model_copy(update={"server": config.server.model_copy(update={"workers": 1})})
        with pytest.raises(ConfigError, match=r"server\.listen: cannot serve on"):
            create_sidecar(single).start()
        pair(first.stub())
    finally:
        first.close()


def test_an_otlp_port_in_use_stops_the_sidecar_naming_its_key_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:

    prices = tmp_path / "paymaster.toml"
    prices.write_text(
        "[cost.providers.openai.'gpt-4o']\nprompt_tokens_per_1k = 0.002\ncompletion_tokens_per_1k = 0.008\n"
    )
    message, busy, supervisor = refused_on_a_busy_port(
        lambda busy: (
            f'[server]\nlisten = "127.0.0.1:0"\nworkers = 2\n[store]\npath = "{tmp_path / "ledger.db"}"\n'
            f'[receivers.otlp]\nenabled = true\ngrpc_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:{busy}"\n'
            f'[receivers.otlp.pricing]\nconfig = "{prices}"\n'
        )
    )
    assert message.startswith(f"sidecar.toml: receivers.otlp.http_listen: cannot serve on 127.0.0.1:{busy}: ")
    assert supervisor.pids() == {}
    assert not (tmp_path / "ledger.db").exists()
