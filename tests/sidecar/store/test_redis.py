"""What only a shared Redis store has to prove: replicas see each other's budgets and expiries at once,
a ledger stays in one hash slot of a Redis Cluster, and Redis going away is UNAVAILABLE and NOT_SERVING
until it is back. (Everything else runs against both stores in the parametrised ledger suite.)"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector_processor.api.server import create_sidecar
from collector_processor.config import parse_config
from collector_processor.domain.budgets import BudgetPatch, OnExceed, Scope, ScopeSet
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.types import CommitCommand, Decision, RecordUsageCommand, ReserveCommand
from collector_processor.domain.usage import Dimension, UsageQuery
from collector_processor.errors import StoreUnavailableError
from collector_processor.ledger import Ledger
from collector_processor.store.redis.store import RedisStore
from paymaster.exceptions import ConfigError
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.sidecar.conftest import START, draft, pb_budget
from tests.sidecar.redisserver import RedisServer

D = Decimal
SCOPES = ScopeSet(organization="acme", team="search", user="ada")


def eventually(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[Callable[[], Ledger]]:
    """Ledgers of separate 'replicas' (each its own store and connections) on one namespace and clock."""
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    clock = ManualClock(START)
    stores: list[RedisStore] = []

    def replica() -> Ledger:
        stores.append(RedisStore(redis_server.url, namespace=namespace))
        return Ledger(stores[-1], clock=clock)

    yield replica
    for store in stores:
        store.close()


def reserve(ledger: Ledger, amount: str, **kwargs: Any) -> Any:
    return ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=D(amount), **kwargs))


def test_a_budget_created_through_one_replica_is_enforced_by_another_at_once(
    replicas: Callable[[], Ledger],
) -> None:
    a, b = replicas(), replicas()
    assert reserve(b, "5").decision is Decision.ALLOW  # b now caches an index without the budget
    a.create_budget(draft("team", limit="1"))
    assert reserve(b, "2").decision is Decision.DENY
    b.update_budget("team", BudgetPatch(limit_usd=D(10)))
    assert reserve(a, "2").decision is Decision.ALLOW
    b.delete_budget("team")
    assert reserve(a, "50").decision is Decision.ALLOW


def test_a_reservation_abandoned_on_one_replica_is_reclaimed_by_whichever_touches_the_ledger_next(
    replicas: Callable[[], Ledger],
) -> None:
    a, b = replicas(), replicas()
    a.create_budget(draft("team", limit="1"))
    held = reserve(b, "0.8", ttl_ms=2_000)
    assert reserve(a, "0.5").decision is Decision.DENY
    a.clock.advance(seconds=2)  # type: ignore[attr-defined]
    # No sweeper runs here: a's own reservation reclaims b's expired one before it reads the budget.
    assert reserve(a, "0.5").decision is Decision.ALLOW
    late = b.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.1")))
    assert late.late and late.released_usd == 0
    assert a.budget_status("team").used_usd == D("0.1")


def test_config_budgets_come_back_when_redis_returns_empty(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(
        server.url, namespace="wiped", backoff_initial_s=0.02, backoff_max_s=0.1, health_interval_s=0.05
    )
    try:
        ledger = Ledger(store, clock=ManualClock(START))
        ledger.load_config_budgets([draft("cfg", limit="1")])
        server.stop()  # no persistence: everything is lost
        eventually(lambda: not store.available, "the store noticing Redis is gone")
        server.start()
        eventually(lambda: store.available, "the store reconnecting")
        # The ledger is gone, but the config budget is declared again and enforced.
        assert eventually(lambda: _exists(ledger, "cfg"), "the config budget re-declared")
        assert reserve(ledger, "2").decision is Decision.DENY
    finally:
        store.close()
        server.stop()


def _exists(ledger: Ledger, budget_id: str) -> bool:
    try:
        return ledger.get_budget(budget_id).declared_in_config
    except Exception:
        return False


def test_every_key_of_a_ledger_is_in_one_hash_slot_and_it_runs_on_a_redis_cluster(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "cluster", extra=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    ).start()
    admin = server.client()
    try:
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        eventually(lambda: "cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"), "the cluster")
        store = RedisStore(server.url, namespace="tenant-a", cluster=True)
        clock = ManualClock(START)
        ledger = Ledger(store, clock=clock)
        ledger.create_budget(draft("org", Scope.ORGANIZATION, "acme", "5", thresholds=(30,)))
        ledger.create_budget(draft("team", Scope.TEAM, "search", "3", on_exceed=OnExceed.WARN))
        ledger.create_budget(draft("per-user", Scope.USER, None, "2", period="rolling_1h"))
        r = reserve(ledger, "1.5", idempotency_key="k1")
        assert r.decision is Decision.ALLOW and reserve(ledger, "1.5", idempotency_key="k1").replayed
        assert (
            ledger.commit(CommitCommand(reservation_id=r.reservation_id, actual_usd=D("1.2"))).alerts_fired
            == ()
        )
        ledger.record_usage(RecordUsageCommand(usage_id="u1", scopes=SCOPES, cost_usd=D("0.6")))
        assert reserve(ledger, "0.5").decision is Decision.DENY  # the user's $2 rolling window
        abandoned = reserve(ledger, "0.1", ttl_ms=1_000)
        clock.advance(seconds=1)
        assert ledger.expire_due() == 1
        assert ledger.release(abandoned.reservation_id).released_usd == 0
        assert [
            a.threshold_percent
            for a in store.claim_alerts(owner="x", now_ms=clock.now_ms(), lease_ms=1, limit=9)
        ] == [30]  # fired by the recorded usage: 36% of $5
        assert ledger.usage(UsageQuery(group_by=(Dimension.USER,))).total.cost_usd == D("1.8")
        store.prune(
            now_ms=clock.now_ms(), reservation_retention_ms=0, usage_retention_ms=0, alert_retention_ms=0
        )
        assert ledger.budget_status("per-user", "ada").used_usd == D("1.8")
        keys = admin.keys("{tenant-a}*")
        assert len(keys) > 10
        assert {admin.execute_command("CLUSTER", "KEYSLOT", k) for k in keys} == {
            admin.execute_command("CLUSTER", "KEYSLOT", "{tenant-a}")
        }
        store.close()
    finally:
        admin.close()
        server.stop()


def test_the_documented_redis_conf_is_accepted_and_makes_the_ledger_durable(tmp_path: Path) -> None:
    conf = Path(__file__).resolve().parents[3] / "deploy" / "redis" / "redis.conf"
    server = RedisServer(tmp_path / "redis", conf=conf).start()
    admin = server.client()
    try:
        settings = {k: admin.config_get(k)[k] for k in ("appendonly", "appendfsync", "maxmemory-policy")}
        assert settings == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
        store = RedisStore(server.url, namespace="durable")
        ledger = Ledger(store, clock=ManualClock(START))
        ledger.create_budget(draft("team", limit="1"))
        held = reserve(ledger, "0.4")
        store.close()
        server.stop()  # SIGKILL: only the append-only file remains
        server.start()
        store = RedisStore(server.url, namespace="durable")
        again = Ledger(store, clock=ManualClock(START))
        assert again.budget_status("team").reserved_usd == D("0.4")
        assert again.commit(
            CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.3"))
        ).charged_usd == D("0.3")
        store.close()
    finally:
        admin.close()
        server.stop()


# -- through the sidecar ---------------------------------------------------------------------------
def _sidecar_config(url: str, namespace: str, extra: str = "") -> str:
    return (
        f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n'
        f'[store]\nkind = "redis"\nurl = "{url}"\nnamespace = "{namespace}"\nsocket_timeout_seconds = 0.5\n'
        "connect_timeout_seconds = 0.5\nbackoff_initial_seconds = 0.02\nbackoff_max_seconds = 0.2\n"
        f"health_interval_seconds = 0.05\n{extra}[alerts]\notel_logs = false\n"
    )


def test_redis_going_away_is_unavailable_and_not_serving_until_it_is_back(tmp_path: Path) -> None:
    # appendfsync always: every answered write is on disk before the answer (see deploy/redis).
    server = RedisServer(tmp_path / "redis", extra=("--appendonly", "yes", "--appendfsync", "always")).start()
    sidecar = create_sidecar(parse_config(_sidecar_config(server.url, "outage"), source="s.toml")).start()
    channel = grpc.insecure_channel(sidecar.address)
    stub, health = budget_pb2_grpc.BudgetServiceStub(channel), health_pb2_grpc.HealthStub(channel)

    def status() -> int:
        return int(health.Check(health_pb2.HealthCheckRequest(service="paymaster.v1.BudgetService")).status)

    try:
        stub.CreateBudget(pb_budget("team", limit="10"))
        held = stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="2"))
        assert status() == health_pb2.HealthCheckResponse.SERVING
        server.stop()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert f"the Redis store at {server.url} is unavailable" in refused.value.details()  # type: ignore[attr-defined]
        eventually(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="")).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with pytest.raises(grpc.RpcError) as fast:  # refused at once, without waiting on a dead server
            stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="team"))
        assert fast.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "reconnecting" in fast.value.details()  # type: ignore[attr-defined]

        server.start()  # same port, same directory: the append-only file brings the ledger back
        eventually(lambda: status() == health_pb2.HealthCheckResponse.SERVING, "SERVING again")
        done = stub.Commit(pb.CommitRequest(reservation_id=held.reservation_id, actual_usd="1.5"))
        assert (done.charged_usd, done.released_usd) == ("1.500000", "2.000000")
        after = stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id="team"))
        assert (after.used_usd, after.reserved_usd) == ("1.500000", "0.000000")
    finally:
        channel.close()
        sidecar.stop(0)
        server.stop()


def test_a_sidecar_whose_redis_cannot_be_reached_fails_at_start_naming_the_key() -> None:
    with socket.socket() as s:  # a free port: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = parse_config(_sidecar_config(f"redis://127.0.0.1:{port}/0", "nowhere"), source="s.toml")
    with pytest.raises(
        ConfigError, match=rf"s\.toml: store\.url: cannot reach Redis at redis://127\.0\.0\.1:{port}/0"
    ):
        create_sidecar(config)


def test_a_sidecar_stops_cleanly_while_its_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    text = _sidecar_config(server.url, "stopping").replace("otel_logs = false", "otel_logs = true")
    sidecar = create_sidecar(parse_config(text, source="s.toml")).start()
    try:
        server.stop()
        eventually(lambda: not sidecar.store.available, "the store noticing Redis is gone")  # type: ignore[attr-defined]
        time.sleep(0.3)  # the sweeper and the alert dispatcher meet the outage too
    finally:
        sidecar.stop(0)  # must return, and raise nothing
        server.stop()


def test_a_cluster_store_on_a_server_that_is_not_a_cluster_fails_at_start_naming_the_key(
    redis_server: RedisServer,
) -> None:
    text = _sidecar_config(redis_server.url, "not-a-cluster", extra="cluster = true\n")
    with pytest.raises(
        ConfigError, match=r"s\.toml: store\.url: cannot use Redis at .*Cluster mode is not enabled"
    ):
        create_sidecar(parse_config(text, source="s.toml"))


def test_housekeeping_forgets_what_no_window_or_retention_needs(redis_server: RedisServer) -> None:
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_server.url, namespace=namespace)
    admin = redis_server.client()
    clock = ManualClock(START)
    ledger = Ledger(store, clock=clock)
    try:
        ledger.create_budget(draft("team", limit="1", thresholds=(50,), on_exceed=OnExceed.WARN))
        ledger.create_budget(draft("per-user", Scope.USER, None, "5", period="rolling_1h"))
        ledger.create_budget(draft("gone", Scope.ORGANIZATION, "acme", "5"))
        r = reserve(ledger, "0.8", idempotency_key="retry-me")
        ledger.commit(CommitCommand(reservation_id=r.reservation_id, actual_usd=D("0.6")))
        ledger.record_usage(RecordUsageCommand(usage_id="u1", scopes=SCOPES, cost_usd=D("0.1")))
        reserve(ledger, "0.1", ttl_ms=1_000)  # abandoned
        p = "{" + namespace + "}"
        generation = ledger.get_budget("gone").generation
        ledger.delete_budget("gone")
        assert admin.smembers(f"{p}:dead") == {f"gone@{generation}"}  # its state awaits collection
        clock.advance(seconds=2)
        assert ledger.expire_due() == 1
        clock.advance(seconds=3 * 86_400)
        store.prune(
            now_ms=clock.now_ms(),
            reservation_retention_ms=3_600_000,
            usage_retention_ms=86_400_000,
            alert_retention_ms=86_400_000,
        )
        left = sorted(k for k in admin.keys(f"{p}*"))
        assert left == [f"{p}:alerts:seq", f"{p}:budgets", f"{p}:meta"], left
        assert [b.id for b in ledger.list_budgets()[0]] == ["per-user", "team"]
        # What was forgotten is forgotten the way SQLite forgets it: a late retry is a new request.
        again = reserve(ledger, "0.8", idempotency_key="retry-me")
        assert not again.replayed and again.reservation_id != r.reservation_id
    finally:
        admin.close()
        store.close()


def test_with_wait_replicas_a_change_is_answered_only_once_a_replica_has_it(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary", extra=("--repl-diskless-sync-delay", "0")).start()
    replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    store = RedisStore(
        primary.url, namespace="waited", wait_replicas=1, wait_timeout_ms=2000, socket_timeout_s=5.0
    )
    ledger = Ledger(store, clock=ManualClock(START))
    mirror = replica.client()
    try:
        eventually(lambda: mirror.info("replication").get("master_link_status") == "up", "replication")
        ledger.create_budget(draft("team", limit="1"))
        held = reserve(ledger, "0.4")
        # Answered means on the replica already: no waiting, no polling.
        assert mirror.hget("{waited}:r:" + held.reservation_id, "held") == "400000"
        replica.stop()
        with pytest.raises(
            StoreUnavailableError, match=r"only 0 of 1 replica\(s\) acknowledged it within 2000 ms"
        ):
            ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.3")))
        replica.start()
        mirror.close()
        mirror = replica.client()
        eventually(lambda: mirror.info("replication").get("master_link_status") == "up", "resync")
        # The refused commit was applied on the primary; retrying it is answered, and charged once.
        again = ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.3")))
        assert again.duplicate and again.charged_usd == D("0.3")
        assert ledger.budget_status("team").used_usd == D("0.3")
    finally:
        mirror.close()
        store.close()
        replica.stop()
        primary.stop()


def test_through_sentinels_a_failover_is_a_pause_and_loses_nothing_answered(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary", extra=("--repl-diskless-sync-delay", "0")).start()
    replica = RedisServer(
        tmp_path / "replica",
        extra=("--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0"),
    ).start()
    mirror = replica.client()
    eventually(lambda: mirror.info("replication").get("master_link_status") == "up", "replication")
    mirror.close()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"sentinel monitor pm 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds pm 1000\nsentinel failover-timeout pm 10000\n"
    )
    sentinel = RedisServer(tmp_path / "sentinel", conf=conf, extra=("--sentinel",)).start()
    watcher = sentinel.client()
    stores: list[RedisStore] = []
    try:
        eventually(
            lambda: watcher.execute_command("SENTINEL", "REPLICAS", "pm"), "the sentinel seeing the replica"
        )
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/pm"
        clock = ManualClock(START)
        stores.append(RedisStore(url, namespace="ha", wait_replicas=1, wait_timeout_ms=1_000))
        writer = Ledger(stores[-1], clock=clock)
        writer.create_budget(draft("team", limit="1"))
        held = reserve(writer, "0.4")  # answered only once the replica has it
        # Another replica of the sidecar, connected to the primary before the failover. (It does not
        # wait for replicas: after a failover the sentinels take a while to attach the old primary to
        # the new one, and a store that waits for a replica refuses writes until then.)
        stores.append(RedisStore(url, namespace="ha", backoff_max_s=0.2))
        ledger = Ledger(stores[-1], clock=clock)
        assert ledger.budget_status("team").reserved_usd == D("0.4")

        def failover() -> bool:
            try:
                return bool(watcher.execute_command("SENTINEL", "FAILOVER", "pm"))
            except redis.exceptions.ResponseError as exc:  # the sentinel has not vetted the replica yet
                assert "NOGOODSLAVE" in str(exc)
                return False

        eventually(failover, "a failover the sentinel accepts")
        promoted = eventually(
            lambda: (
                watcher.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "pm")[1] == str(replica.port)
            ),
            "the replica promoted",
        )
        assert promoted

        def commit() -> Any:
            try:
                return ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.3")))
            except StoreUnavailableError:
                return None  # the pause of the failover: the SDK's fail policy decides meanwhile

        done = eventually(commit, "the store to follow the new primary")
        assert done.charged_usd == D("0.3") and not done.late
        assert replica.client().execute_command("ROLE")[0] == "master"
        assert ledger.budget_status("team").used_usd == D("0.3")
    finally:
        watcher.close()
        for store in stores:
            store.close()
        for server in (sentinel, replica, primary):
            server.stop()


def test_a_batch_whose_sum_a_double_cannot_hold_exactly_is_refused_whole(
    replicas: Callable[[], Ledger],
) -> None:
    """Lua adds the batch's amounts as doubles: past 2^53 it refuses rather than charge a rounded sum."""
    from collector_processor.domain.types import UsageBatch, UsageGroup
    from collector_processor.errors import InvalidRequestError

    ledger = replicas()
    ledger.create_budget(draft("team", limit="100000000000"))
    now = ledger.clock.now_ms()
    big = 2**52 + 1
    batch = UsageBatch(
        groups=(UsageGroup(scopes=SCOPES, model="m", occurred_ms=now),),
        items=[(now, b"a", 0, big, 0, 0, 0, 0, 0, 0), (now, b"b", 0, big, 0, 0, 0, 0, 0, 0)],
    )
    with pytest.raises(
        InvalidRequestError, match=r"^batch: the new amounts of one group add up past 9,007,199,254,740,991"
    ):
        ledger.record_usage_batch(batch)
    # Nothing was written: the same items, one at a time, are new and charged exactly.
    first = ledger.record_usage_batch(UsageBatch(groups=batch.groups, items=batch.items[:1]))
    assert first.charged_micros == (big,) and first.duplicates == 0
