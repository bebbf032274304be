"""A Redis namespace written by a sidecar of schema 1 is upgraded in place when this one starts on it.

The ledger in ``data/redis_schema1.json`` was written by the code of schema 1 itself
(``data/make_redis_schema1.py``): budgets, spend, a held reservation, and six alerts of which two were
delivered, one is leased for an hour, one had its lease run out and two were never claimed. Each test
loads it into a fresh namespace of a real ``redis-server`` and opens the current store on it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from collector_processor.domain.budgets import OnExceed, Scope, ScopeSet
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.types import CommitCommand, ReserveCommand
from collector_processor.errors import StoreUnavailableError
from collector_processor.ledger import Ledger
from collector_processor.store.redis import schema
from collector_processor.store.redis.store import RedisStore
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.alerts.test_alerts import alert_records, eventually
from tests.sidecar.conftest import StoreFactory, draft, pb_budget, start_sidecar
from tests.sidecar.redisserver import RedisServer
from tests.sidecar.store.data.make_redis_schema1 import plain
from tests.sidecar.store.test_redis_keys import Monitor

FIXTURE = json.loads((Path(__file__).parent / "data" / "redis_schema1.json").read_text())
EXPECTED: dict[str, Any] = FIXTURE["expected"]
NOW_MS: int = EXPECTED["now_ms"]
ALERT_FIELDS = ("id", "b", "e", "th", "u", "l", "ps", "pe", "f", "m")
UPGRADED = "upgraded the Redis ledger"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def load(client: redis.Redis, *, extra_alerts: int = 0) -> str:
    """The fixture in a new namespace (its name); ``extra_alerts`` more alerts of schema 1 after it,
    copies of its last one, pending, for a log longer than one upgrade step."""
    namespace = f"s1-{uuid.uuid4().hex[:10]}"
    p = f"{{{namespace}}}"
    pipe = client.pipeline(transaction=False)
    for row in FIXTURE["keys"]:
        key, value = p + row["key"], row["value"]
        if row["type"] == "hash":
            pipe.hset(key, mapping=value)
        elif row["type"] == "zset":
            pipe.zadd(key, {m: s for m, s in value})
        elif row["type"] == "set":
            pipe.sadd(key, *value)
        else:
            pipe.set(key, value)
    last = next(r["value"] for r in FIXTURE["keys"] if r["key"] == ":alert:6")
    for seq in range(7, 7 + extra_alerts):
        pipe.hset(f"{p}:alert:{seq}", mapping={**last, "id": f"{last['id']}/{seq}"})
        for index in (":alerts", ":alerts:pending", ":alerts:b:team"):
            pipe.zadd(p + index, {str(seq): seq})
        pipe.zadd(f"{p}:alerts:fired", {str(seq): int(last["f"])})
    if extra_alerts:
        pipe.set(f"{p}:alerts:seq", 6 + extra_alerts)
    pipe.execute()
    return namespace


def dump(client: redis.Redis, namespace: str) -> dict[str, Any]:
    """Every key of a namespace (without its tag) and its value."""
    p = f"{{{namespace}}}"
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{{{namespace}}}*", count=1000):
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = client.smembers(key)
        else:
            value = client.get(key)
        out[key[len(p) :]] = value
    return out


def fixture_dump() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in FIXTURE["keys"]:
        value = row["value"]
        if row["type"] == "zset":
            value = [(m, float(s)) for m, s in value]
        elif row["type"] == "set":
            value = set(value)
        out[row["key"]] = value
    return out


def seen_as(value: Any, expected: Any) -> Any:
    """``value`` in the fixture's JSON, with only the fields the old code had (fields added since, such
    as a budget's tiers, are left out)."""
    value = plain(value)
    if isinstance(expected, dict):
        return {k: seen_as(value[k], v) for k, v in expected.items()}
    if isinstance(expected, list) and isinstance(value, list) and len(value) == len(expected):
        return [seen_as(a, e) for a, e in zip(value, expected, strict=True)]
    return value


def open_store(server: RedisServer, namespace: str) -> RedisStore:
    return RedisStore(server.url, namespace=namespace)


def clock_at(ms: int) -> ManualClock:
    return ManualClock(datetime.fromtimestamp(ms / 1000, tz=UTC))


def test_a_namespace_of_schema_1_becomes_schema_2_with_only_the_alert_log_rewritten(
    redis_server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Each alert moves to the one-hash log with its ten fields as the current code writes them, each
    lease to the lease hash; the old hashes go, and every other key is left exactly as it was."""
    namespace = load(client)
    with caplog.at_level(logging.INFO, logger="paymaster.sidecar.store.redis"):
        open_store(redis_server, namespace).close()
    after, before = dump(client, namespace), fixture_dump()

    old_alerts = {k: before.pop(k) for k in list(before) if re.fullmatch(r":alert:\d+", k)}
    assert after.pop(":meta") == {**before.pop(":meta"), "schema": "2"}
    log = after.pop(":alert")
    assert {seq: json.loads(text) for seq, text in log.items()} == {
        k.rsplit(":", 1)[1]: {f: h[f] for f in ALERT_FIELDS} for k, h in old_alerts.items()
    }
    assert after.pop(":alerts:lease") == {
        "1": f"replica-a {old_alerts[':alert:1']['cu']}",
        "2": f"replica-a {old_alerts[':alert:2']['cu']}",  # delivered: kept as who delivered it
        "3": f"replica-a {EXPECTED['leased']['until_ms']}",
        "4": f"replica-b {old_alerts[':alert:4']['cu']}",
    }
    assert after == before  # budgets, state, reservations, usage, the alert indexes: untouched

    (line,) = [r.getMessage() for r in caplog.records if UPGRADED in r.getMessage()]
    assert line == (
        f"upgraded the Redis ledger in namespace '{namespace}' from schema 1 to 2: 6 alerts moved to the "
        "one-hash alert log (4 pending delivery, 4 delivery leases kept) in 1 step"
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="paymaster.sidecar.store.redis"):
        open_store(redis_server, namespace).close()  # schema 2 now: nothing to do, nothing logged
    assert not caplog.records
    assert dump(client, namespace)[":alert"] == log


def test_the_upgraded_ledger_answers_as_the_schema_1_sidecar_did_and_goes_on(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """The alert log, budgets and standings read as the old store answered them; the pending alerts are
    claimed and acknowledged as the current code's are (the delivered ones never again, the leased one
    once its lease runs out); the held reservation commits, and a new alert takes the next sequence."""
    store = open_store(redis_server, load(client))
    try:
        clock = clock_at(NOW_MS)
        ledger = Ledger(store, clock=clock)
        alerts = store.alerts_after(0, limit=100)
        assert seen_as(alerts, EXPECTED["alerts"]) == EXPECTED["alerts"]
        assert len(alerts) == 6 and not any(a.tier for a in alerts)
        assert [a.sequence for a in store.alerts_after(1, limit=100, budget_ids=["team"])] == [2, 4, 6]
        assert store.last_alert_sequence() == EXPECTED["last_alert_sequence"] == 6
        assert seen_as(ledger.list_budgets(), EXPECTED["budgets"]) == EXPECTED["budgets"]
        assert all(not b.tiers for b in ledger.list_budgets()[0])
        for name, status in EXPECTED["statuses"].items():
            budget_id, entity = name.split("/")
            assert seen_as(ledger.budget_status(budget_id, entity), status) == status, name
        assert list(store.held_reservations()) == EXPECTED["held_reservations"]

        # Delivery goes on where the old sidecar left it.
        assert EXPECTED["delivered"] == [1, 2] and EXPECTED["lapsed"] == [4]
        claimed = store.claim_alerts(owner="new", now_ms=NOW_MS, lease_ms=10_000, limit=10)
        assert [a.sequence for a in claimed] == [4, 5, 6]
        assert store.claim_alerts(owner="other", now_ms=NOW_MS, lease_ms=10_000, limit=10) == []
        store.ack_alerts([a.sequence for a in claimed], now_ms=NOW_MS)
        leased_until = EXPECTED["leased"]["until_ms"]
        assert store.claim_alerts(owner="new", now_ms=leased_until - 1, lease_ms=10_000, limit=10) == []
        (late,) = store.claim_alerts(owner="new", now_ms=leased_until, lease_ms=10_000, limit=10)
        assert late.sequence == 3 and late.alert_id == EXPECTED["alerts"][2]["alert_id"]
        store.ack_alerts([3], now_ms=leased_until)
        assert store.claim_alerts(owner="new", now_ms=leased_until + 60_000, lease_ms=10_000, limit=10) == []

        # Its idempotency key replays it (stored without a fingerprint, by a caller without a principal).
        again = ledger.reserve(
            ReserveCommand(
                scopes=ScopeSet(organization="acme", team="search", user="ada", agent="summarizer"),
                estimate_usd=Decimal("0.5"),
                idempotency_key="k-held",
            )
        )
        assert again.replayed and again.reservation_id == EXPECTED["held_reservation"]

        # The money goes on too: the held reservation commits, a new threshold fires as alert 7.
        ledger.create_budget(
            draft("fresh", Scope.TEAM, "search", "0.5", on_exceed=OnExceed.WARN, thresholds=(50,))
        )
        team_before = ledger.budget_status("team")
        outcome = ledger.commit(
            CommitCommand(reservation_id=EXPECTED["held_reservation"], actual_usd=Decimal("0.4"))
        )
        assert (outcome.charged_usd, outcome.released_usd) == (Decimal("0.4"), Decimal("0.5"))
        team_after = ledger.budget_status("team")
        assert team_after.used_usd == team_before.used_usd + Decimal("0.4")
        assert team_after.reserved_usd == team_before.reserved_usd - Decimal("0.5") == 0
        (new,) = store.alerts_after(6, limit=10)
        assert (new.sequence, new.budget_id, new.threshold_percent) == (7, "fresh", 50)
        assert [
            a.sequence for a in store.claim_alerts(owner="new", now_ms=clock.now_ms(), lease_ms=1, limit=9)
        ] == [7]
    finally:
        store.close()


def test_watch_alerts_replays_the_upgraded_log_and_delivery_resumes(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """A sidecar started on the namespace streams the old alerts to a watcher, delivers the pending ones
    to its sinks (not those delivered before the upgrade, the leased one once its lease is over), and
    streams new ones after them."""
    backing = StoreFactory(backend="redis", path=tmp_path / "unused.db", redis_url=redis_server.url)
    backing.namespace = load(client)
    clock = clock_at(NOW_MS)
    running = start_sidecar(backing, clock)
    try:
        replay = running.stub.WatchAlerts(pb.WatchAlertsRequest(after_sequence=0), timeout=10)
        old = [next(replay) for _ in range(6)]
        assert [(a.sequence, a.budget_id, a.scope_id, a.threshold_percent, a.message) for a in old] == [
            (e["sequence"], e["budget_id"], e["scope_id"], e["threshold_percent"], e["message"])
            for e in EXPECTED["alerts"]
        ]

        def delivered() -> list[str]:
            return sorted(
                dict(r.log_record.attributes)["paymaster.alert.alert_id"] for r in alert_records(running)
            )  # type: ignore[arg-type]

        ids = {e["sequence"]: e["alert_id"] for e in EXPECTED["alerts"]}
        eventually(lambda: len(delivered()) == 3, "the three pending alerts without a live lease")
        assert delivered() == sorted(ids[s] for s in (4, 5, 6))
        clock.advance(seconds=3_600)  # replica-a's lease on alert 3 runs out
        eventually(lambda: len(delivered()) == 4, "the alert whose lease ran out")
        assert delivered() == sorted(ids[s] for s in (3, 4, 5, 6))

        running.stub.CreateBudget(
            pb_budget("fresh", limit="1", on_exceed=pb.ON_EXCEED_WARN, thresholds=(50,))
        )
        r = running.stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1"))
        running.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="1"))
        fresh = next(replay)
        assert (fresh.sequence, fresh.budget_id, fresh.threshold_percent) == (7, "fresh", 50)
        replay.cancel()
    finally:
        running.channel.close()
        running.sidecar.stop(0)


def test_alerts_an_older_sidecar_still_running_writes_after_the_upgrade_are_moved_into_the_log(
    redis_server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """During a rolling update a sidecar of schema 1 keeps firing alerts in its layout (one hash per
    alert, the indexes as in schema 2). The upgraded store finds them when it reads the log or claims,
    moves them, and says an older sidecar is still running; a lease taken on one meanwhile is kept."""
    namespace = load(client)
    store = open_store(redis_server, namespace)
    p = f"{{{namespace}}}"
    sixth = next(r["value"] for r in FIXTURE["keys"] if r["key"] == ":alert:6")
    for seq in (7, 8):  # what the old code's `fire` writes
        client.hset(f"{p}:alert:{seq}", mapping={**sixth, "id": f"{sixth['id']}-{seq}", "f": str(NOW_MS)})
        client.incr(f"{p}:alerts:seq")
        for index in (":alerts", ":alerts:pending", ":alerts:b:team"):
            client.zadd(p + index, {str(seq): seq})
        client.zadd(f"{p}:alerts:fired", {str(seq): NOW_MS})
    try:
        with caplog.at_level(logging.INFO, logger="paymaster.sidecar.store.redis"):
            claimed = store.claim_alerts(owner="new", now_ms=NOW_MS, lease_ms=10_000, limit=10)
        assert [a.sequence for a in claimed] == [4, 5, 6, 7, 8]
        assert claimed[3].alert_id == f"{sixth['id']}-7" and claimed[3].fired_ms == NOW_MS
        (warning,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("moved")]
        assert warning.startswith(
            f"moved 2 alerts written in the layout of schema 1 into the alert log of namespace '{namespace}'"
        )
        assert client.hget(f"{p}:alerts:lease", "7") == f"new {NOW_MS + 10_000}"
        assert not client.exists(f"{p}:alert:7") and not client.exists(f"{p}:alert:8")
        assert json.loads(client.hget(f"{p}:alert", "8")) == {
            **{f: sixth[f] for f in ALERT_FIELDS},
            "id": f"{sixth['id']}-8",
            "f": str(NOW_MS),
        }
        client.hset(f"{p}:alert:9", mapping={**sixth, "id": "late"})  # and one a watcher reads first
        client.zadd(f"{p}:alerts", {"9": 9})
        assert [a.alert_id for a in store.alerts_after(8, limit=10)] == ["late"]
    finally:
        store.close()


def test_sidecars_starting_at_once_on_a_namespace_of_schema_1_upgrade_it_exactly_once(
    redis_server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Four stores open the same namespace together; its log is longer than one upgrade step. One of
    them upgrades it (one log line, every alert counted once), the others wait and open schema 2."""
    namespace = load(client, extra_alerts=1_200)
    barrier = threading.Barrier(4)
    opened: list[RedisStore] = []
    failed: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(open_store(redis_server, namespace))
        except BaseException as exc:
            failed.append(exc)

    with caplog.at_level(logging.INFO, logger="paymaster.sidecar.store.redis"):
        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    try:
        assert failed == [] and len(opened) == 4
        lines = [r.getMessage() for r in caplog.records if UPGRADED in r.getMessage()]
        assert len(lines) == 1
        assert (
            "1206 alerts moved to the one-hash alert log (1204 pending delivery, 4 delivery leases kept) in 3 steps"
            in lines[0]
        )
        assert client.hgetall(f"{{{namespace}}}:meta").keys() == {"schema", "version"}
        assert client.hget(f"{{{namespace}}}:meta", "schema") == "2"
        assert client.hlen(f"{{{namespace}}}:alert") == 1_206
        assert not list(client.scan_iter(match=f"{{{namespace}}}:alert:*"))
        for store in opened:
            assert [a.sequence for a in store.alerts_after(1_200, limit=10)] == [
                1_201,
                1_202,
                1_203,
                1_204,
                1_205,
                1_206,
            ]
        claimed = opened[1].claim_alerts(owner="x", now_ms=NOW_MS, lease_ms=1_000, limit=2_000)
        assert len(claimed) == 1_203  # every pending alert but the one leased for an hour, once
    finally:
        for store in opened:
            store.close()


def test_an_upgrade_that_stopped_midway_is_taken_over_and_finished(
    redis_server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A sidecar died after one step, holding a lease that has run out: the next one to start takes the
    upgrade over, goes on from the last sequence done, and counts what both moved."""
    namespace = load(client, extra_alerts=600)
    p = f"{{{namespace}}}"
    meta = f"{p}:meta"
    assert client.eval(schema._BEGIN, 1, meta, "dead/1/x", NOW_MS, NOW_MS) == ["OK", "0"]
    first = [str(s) for s in range(1, 501)]
    keys = [meta, f"{p}:alert", f"{p}:alerts:lease", *(f"{p}:alert:{s}" for s in first)]
    assert client.eval(schema._STEP, len(keys), *keys, "dead/1/x", NOW_MS, NOW_MS, *first) == ["OK", 500, 4]
    assert client.hget(meta, "schema") == "1>2"

    with caplog.at_level(logging.INFO, logger="paymaster.sidecar.store.redis"):
        open_store(redis_server, namespace).close()
    (line,) = [r.getMessage() for r in caplog.records if UPGRADED in r.getMessage()]
    assert (
        "606 alerts moved to the one-hash alert log (604 pending delivery, 4 delivery leases kept) in 1 step"
        in line
    )
    assert client.hlen(f"{p}:alert") == 606
    assert not list(client.scan_iter(match=f"{p}:alert:*"))
    assert client.hgetall(meta).keys() == {"schema", "version"}


def test_a_sidecar_waits_while_another_holds_the_upgrade(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """A store that finds another's live lease does not touch the alerts until that one finishes."""
    namespace = load(client)
    p = f"{{{namespace}}}"
    client.eval(schema._BEGIN, 1, f"{p}:meta", "other/1/x", NOW_MS, 2**52)
    opened: list[RedisStore] = []
    waiter = threading.Thread(target=lambda: opened.append(open_store(redis_server, namespace)))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and client.exists(f"{p}:alert:1") and not client.exists(f"{p}:alert")
    seqs = [str(s) for s in range(1, 7)]
    keys = [f"{p}:meta", f"{p}:alert", f"{p}:alerts:lease", *(f"{p}:alert:{s}" for s in seqs)]
    client.eval(schema._STEP, len(keys), *keys, "other/1/x", NOW_MS, 2**52, *seqs)
    client.eval(schema._FINISH, 2, f"{p}:meta", f"{p}:alerts:pending", "other/1/x")
    waiter.join(30)
    assert len(opened) == 1
    opened[0].close()
    assert client.hlen(f"{p}:alert") == 6


def test_an_alert_missing_a_field_stops_the_upgrade_naming_it_before_its_step_writes(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    namespace = load(client)
    p = f"{{{namespace}}}"
    client.hdel(f"{p}:alert:5", "m")
    with pytest.raises(StoreUnavailableError) as info:
        open_store(redis_server, namespace)
    assert str(info.value) == (
        f"cannot upgrade the Redis ledger to schema 2: the alert '{p}:alert:5' has no field 'm'; restore it, "
        f"or delete it and its sequence from {p}:alerts, and start again"
    )
    assert not client.exists(f"{p}:alert") and client.exists(f"{p}:alert:1")  # the step wrote nothing
    client.delete(f"{p}:alert:5")
    for index in (":alerts", ":alerts:pending", ":alerts:b:per-user", ":alerts:fired"):
        client.zrem(p + index, "5")
    client.hset(f"{p}:meta", "upgrade", "gone/1/x 1")  # the refused sidecar's lease has run out
    open_store(redis_server, namespace).close()
    assert sorted(client.hkeys(f"{p}:alert"), key=int) == ["1", "2", "3", "4", "6"]


@pytest.mark.parametrize(
    ("found", "says"),
    [
        ("3", "'3', written by a newer sidecar; this sidecar reads schema 2 (and upgrades schema 1): run a "
         "sidecar of that version or newer on it, or give this one another [store] namespace"),
        ("two", "'two', which no sidecar writes; this sidecar reads schema 2 (and upgrades schema 1): check "
         "[store] namespace"),
    ],
)  # fmt: skip
def test_a_namespace_of_an_unknown_schema_is_refused_and_left_alone(
    redis_server: RedisServer, client: redis.Redis, found: str, says: str
) -> None:
    """A schema this sidecar does not know (a newer sidecar's) is refused by name, and nothing is written."""
    namespace = load(client)
    client.hset(f"{{{namespace}}}:meta", "schema", found)
    before = dump(client, namespace)
    with pytest.raises(StoreUnavailableError) as info:
        open_store(redis_server, namespace)
    assert str(info.value) == f"namespace '{namespace}' holds a ledger of schema {says}"
    assert dump(client, namespace) == before


def test_every_key_the_upgrade_touches_is_declared_and_in_the_namespace_slot(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """On a Redis Cluster a script may touch only the keys it declares, all in one slot: each command
    the upgrade's scripts run names a declared key carrying the namespace's hash tag."""
    namespace = load(client, extra_alerts=10)
    monitor = Monitor(redis_server)
    open_store(redis_server, namespace).close()
    declared: set[str] | None = None
    scripts, bad = 0, []
    for who, args in monitor.stop():
        if who == "client":
            declared = None
            if args and args[0].upper() == "EVAL":
                declared = set(args[3 : 3 + int(args[2])])
                scripts += 1
                bad += [k for k in declared if not k.startswith(f"{{{namespace}}}:")]
        elif declared is not None and len(args) > 1 and args[1] not in declared:
            bad.append(f"{args[0]} {args[1]}")
    assert scripts == 3 and bad == []  # begin, one step, finish


def test_the_fixture_is_what_the_schema_1_code_wrote() -> None:
    """The fixture holds the old layout this upgrade reads (a guard against regenerating it with the
    current code by mistake)."""
    keys = {r["key"]: r for r in FIXTURE["keys"]}
    assert keys[":meta"]["value"]["schema"] == "1"
    assert ":alert" not in keys and ":alerts:lease" not in keys
    assert {"cb", "cu", "d"} <= keys[":alert:1"]["value"].keys()
