"""Alerts reach WatchAlerts, OpenTelemetry logs and a webhook, once per threshold per period, durably."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
import redis

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar, pb_budget

TEAM = pb.ScopeIds(team="search")


def spend(server: RunningSidecar, amount: str, scopes: pb.ScopeIds = TEAM) -> None:
    r = server.stub.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd=amount))
    server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd=amount))


def eventually(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Wait for background delivery; fails (does not measure) if it never happens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def warn_budget(server: RunningSidecar, thresholds: tuple[int, ...] = (50, 80, 100), **kwargs: Any) -> None:
    server.stub.CreateBudget(
        pb_budget("team", limit="10", on_exceed=pb.ON_EXCEED_WARN, thresholds=thresholds, **kwargs)
    )


def test_watch_alerts_streams_crossings_as_they_fire(server: RunningSidecar) -> None:
    warn_budget(server)
    stream = server.stub.WatchAlerts(pb.WatchAlertsRequest(), timeout=10)
    stream.initial_metadata()  # positioned: everything from here on is delivered
    spend(server, "6")
    first = next(stream)
    assert (first.budget_id, first.scope, first.scope_id, first.threshold_percent) == (
        "team",
        pb.SCOPE_TEAM,
        "search",
        50,
    )
    assert (first.used_usd, first.limit_usd, first.percentage, first.action) == (
        "6.000000",
        "10.000000",
        "60.00",
        pb.ON_EXCEED_WARN,
    )
    assert first.kind == pb.ALERT_KIND_THRESHOLD
    assert first.period_start.ToJsonString() == "2025-03-14T00:00:00Z"
    assert first.message == (
        "Budget 'team' (team=search) reached 50% of its $10.00 daily limit: $6.00 spent in the daily period "
        "2025-03-14 00:00 to 2025-03-15 00:00 UTC (UTC); on_exceed=warn."
    )
    spend(server, "5")  # 110%: two thresholds in one commit
    assert [next(stream).threshold_percent for _ in range(2)] == [80, 100]
    stream.cancel()


def test_a_watcher_that_reconnects_with_its_last_sequence_misses_nothing(server: RunningSidecar) -> None:
    warn_budget(server)
    server.stub.CreateBudget(
        pb_budget("other", pb.SCOPE_USER, None, "1", on_exceed=pb.ON_EXCEED_WARN, thresholds=(50,))
    )
    spend(server, "6", pb.ScopeIds(team="search", user="ada"))
    spend(server, "3", pb.ScopeIds(team="search", user="bob"))
    replay = server.stub.WatchAlerts(pb.WatchAlertsRequest(after_sequence=0), timeout=10)
    seen = [next(replay) for _ in range(4)]
    replay.cancel()
    assert [(a.budget_id, a.scope_id, a.threshold_percent) for a in seen] == [
        ("team", "search", 50), ("other", "ada", 50), ("team", "search", 80), ("other", "bob", 50)
    ]  # fmt: skip
    assert [a.sequence for a in seen] == sorted(a.sequence for a in seen)
    resumed = server.stub.WatchAlerts(
        pb.WatchAlertsRequest(after_sequence=seen[1].sequence, budget_ids=["other"]), timeout=10
    )
    assert next(resumed).scope_id == "bob"
    resumed.cancel()


def alert_records(running: RunningSidecar) -> list[Any]:
    """The alert log records (the sidecar also emits audit records of budget changes)."""
    return [
        r for r in running.logs.get_finished_logs() if r.log_record.event_name == "paymaster.budget.alert"
    ]


def test_each_alert_is_emitted_as_an_opentelemetry_log_record(server: RunningSidecar) -> None:
    warn_budget(server, thresholds=(50,))
    spend(server, "5")
    (record,) = eventually(lambda: alert_records(server), "the alert's log record")
    log = record.log_record
    assert log.event_name == "paymaster.budget.alert"
    assert log.body.startswith("Budget 'team' (team=search) reached 50%")
    attributes = dict(log.attributes)
    assert attributes["paymaster.alert.threshold_percent"] == 50
    assert attributes["paymaster.alert.used_usd"] == "5.000000"
    assert attributes["paymaster.team"] == "search"
    assert attributes["paymaster.alert.alert_id"].startswith("team/search/")


def test_alerts_fire_once_per_period_across_a_restart_of_the_sidecar(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    first = sidecar_factory()
    warn_budget(first, thresholds=(50, 80))
    spend(first, "8.5")
    eventually(lambda: len(alert_records(first)) == 2, "both alerts delivered before the restart")
    first.sidecar.stop(0)

    second = sidecar_factory()
    spend(second, "0.5")  # 90%: both thresholds already fired this period
    replay = second.stub.WatchAlerts(pb.WatchAlertsRequest(after_sequence=0), timeout=10)
    assert [next(replay).threshold_percent for _ in range(2)] == [50, 80]
    second.clock.advance(seconds=86_400)  # the next day
    spend(second, "6")
    again = next(replay)
    assert again.threshold_percent == 50 and again.period_start.ToJsonString() == "2025-03-15T00:00:00Z"
    replay.cancel()
    eventually(lambda: len(alert_records(second)) == 1, "only the new period's alert")
    time.sleep(0.2)  # let a wrongly re-delivered alert show up, if there were one
    assert [r.log_record.attributes["paymaster.alert.threshold_percent"] for r in alert_records(second)] == [
        50
    ]


# -- the webhook -----------------------------------------------------------------------------------
class Hook:
    """A local HTTP endpoint: fails the first ``failures`` POSTs with ``status``, can be held closed."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.failures, self.status = failures, status
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.entered.set()
                hook.gate.wait(10)
                hook.requests.append((body, dict(self.headers)))
                code = hook.status if len(hook.requests) <= hook.failures else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def config(self, **extra: object) -> str:
        settings = {
            "max_attempts": 4,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "queue_size": 10,
            **extra,
        }
        lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
        return f'[alerts.webhook]\nurl = "http://127.0.0.1:{self.server.server_port}/hook"\n{lines}\n'

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory() -> Iterator[Callable[..., Hook]]:
    hooks: list[Hook] = []

    def make(**kwargs: Any) -> Hook:
        hooks.append(Hook(**kwargs))
        return hooks[-1]

    yield make
    for hook in hooks:
        hook.close()


def test_webhook_retries_with_backoff_and_sends_an_idempotency_key(
    sidecar_factory: Callable[..., RunningSidecar], hook_factory: Callable[..., Hook]
) -> None:
    hook = hook_factory(failures=2)
    server = sidecar_factory(hook.config())
    warn_budget(server, thresholds=(50,))
    spend(server, "5")
    eventually(lambda: len(hook.requests) == 3, "two failed attempts and a delivery")
    bodies = [body for body, _ in hook.requests]
    assert bodies[0] == bodies[2]
    body, headers = hook.requests[-1]
    assert (body["budget_id"], body["threshold_percent"], body["used_usd"], body["scope"]) == (
        "team",
        50,
        "5.000000",
        "team",
    )
    assert headers["Idempotency-Key"] == body["alert_id"]
    assert headers["Content-Type"] == "application/json"
    eventually(lambda: _undelivered(server) == 0, "the alert acknowledged once delivered")


def test_webhook_does_not_retry_a_permanent_refusal(
    sidecar_factory: Callable[..., RunningSidecar], hook_factory: Callable[..., Hook]
) -> None:
    hook = hook_factory(failures=100, status=404)
    server = sidecar_factory(hook.config())
    warn_budget(server, thresholds=(50,))
    spend(server, "5")
    eventually(lambda: _undelivered(server) == 0, "the refused alert given up on")
    assert len(hook.requests) == 1


def test_a_full_webhook_queue_leaves_alerts_in_the_durable_log_until_there_is_room(
    sidecar_factory: Callable[..., RunningSidecar], hook_factory: Callable[..., Hook]
) -> None:
    hook = hook_factory()
    hook.gate.clear()  # the endpoint hangs
    server = sidecar_factory(hook.config(queue_size=1))
    server.stub.CreateBudget(
        pb_budget("per-user", pb.SCOPE_USER, None, "1", on_exceed=pb.ON_EXCEED_WARN, thresholds=(50,))
    )
    for user in ("a", "b", "c", "d"):
        spend(server, "0.6", pb.ScopeIds(user=user))
    assert hook.entered.wait(10)
    # One alert is being posted and one waits in the queue; the rest are not even claimed.
    eventually(lambda: _unclaimed(server) == 2, "two alerts left in the log")
    time.sleep(0.2)
    assert _unclaimed(server) == 2
    hook.gate.set()
    eventually(lambda: len(hook.requests) == 4, "every alert delivered once the endpoint recovers")
    assert sorted(body["scope_id"] for body, _ in hook.requests) == ["a", "b", "c", "d"]
    eventually(lambda: _undelivered(server) == 0, "every alert acknowledged")


def _undelivered(server: RunningSidecar) -> int:
    """Alerts in the store's log not yet acknowledged by every sink."""
    if server.backing.backend == "redis":
        with _redis(server) as r:
            return int(r.zcard(f"{{{server.backing.namespace}}}:alerts:pending"))
    return _count(server, "delivered_ms IS NULL")


def _unclaimed(server: RunningSidecar) -> int:
    """Alerts in the store's log that no dispatcher has leased yet."""
    if server.backing.backend == "redis":
        prefix = f"{{{server.backing.namespace}}}"
        with _redis(server) as r:
            return sum(
                not r.hexists(f"{prefix}:alerts:lease", seq) for seq in r.zrange(f"{prefix}:alerts", 0, -1)
            )
    return _count(server, "claimed_by IS NULL")


def _count(server: RunningSidecar, where: str) -> int:
    with sqlite3.connect(server.db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM alerts WHERE {where}").fetchone()[0])


@contextlib.contextmanager
def _redis(server: RunningSidecar) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.backing.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def test_too_many_watchers_are_refused_not_queued(sidecar_factory: Callable[..., RunningSidecar]) -> None:
    server = sidecar_factory()
    streams = []
    for _ in range(16):
        stream = server.stub.WatchAlerts(pb.WatchAlertsRequest(), timeout=10)
        stream.initial_metadata()
        streams.append(stream)
    extra = server.stub.WatchAlerts(pb.WatchAlertsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        next(extra)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    for stream in streams:
        stream.cancel()
