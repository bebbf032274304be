"""The ledger over a store: atomic reservations, idempotent spend, TTLs, periods, alerts, restarts.

Every test here runs once per store backend (``store_factory`` in conftest): the same suite proves the
SQLite store today and a cluster store tomorrow.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector_processor.domain.budgets import BudgetPatch, OnExceed, Scope, ScopeSet
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.types import (
    CommitCommand,
    Decision,
    RecordUsageCommand,
    ReservationState,
    ReserveCommand,
    UsageFacts,
)
from collector_processor.domain.usage import Dimension, UsageQuery
from collector_processor.errors import FailedPreconditionError, NotFoundError
from collector_processor.ledger import Ledger, LedgerSettings
from tests.sidecar.conftest import START, StoreFactory, draft

SEARCH = ScopeSet(organization="acme", team="search", user="ada")
D = Decimal


def reserve(ledger: Ledger, amount: str, scopes: ScopeSet = SEARCH, **kwargs: object) -> object:
    return ledger.reserve(ReserveCommand(scopes=scopes, estimate_usd=D(amount), **kwargs))  # type: ignore[arg-type]


def commit(ledger: Ledger, reservation_id: str, amount: str) -> object:
    return ledger.commit(CommitCommand(reservation_id=reservation_id, actual_usd=D(amount)))


def standing(ledger: Ledger, budget_id: str, entity: str = "") -> tuple[Decimal, Decimal]:
    status = ledger.budget_status(budget_id, entity)
    return status.used_usd, status.reserved_usd


def test_a_reservation_is_held_on_every_matching_budget_or_on_none(ledger: Ledger) -> None:
    ledger.create_budget(draft("org", Scope.ORGANIZATION, "acme", "100"))
    ledger.create_budget(draft("team", Scope.TEAM, "search", "1"))
    first = reserve(ledger, "0.9")
    assert first.decision is Decision.ALLOW  # type: ignore[attr-defined]
    denied = reserve(ledger, "0.2")
    assert denied.decision is Decision.DENY and denied.deciding_budget_id == "team"  # type: ignore[attr-defined]
    assert denied.reservation_id == ""  # type: ignore[attr-defined]
    # The organization budget had room, but nothing was held on it either.
    assert standing(ledger, "org") == (D(0), D("0.9"))
    assert standing(ledger, "team") == (D(0), D("0.9"))


def test_wildcard_budget_keeps_a_separate_spend_for_each_entity(ledger: Ledger) -> None:
    ledger.create_budget(draft("per-user", Scope.USER, None, "1"))
    ada, bob = ScopeSet(user="ada"), ScopeSet(user="bob")
    r = reserve(ledger, "0.9", ada)
    commit(ledger, r.reservation_id, "0.9")  # type: ignore[attr-defined]
    assert reserve(ledger, "0.2", ada).decision is Decision.DENY  # type: ignore[attr-defined]
    assert reserve(ledger, "0.9", bob).decision is Decision.ALLOW  # type: ignore[attr-defined]
    assert standing(ledger, "per-user", "ada") == (D("0.9"), D(0))
    assert standing(ledger, "per-user", "bob") == (D(0), D("0.9"))


def test_commit_replaces_the_hold_with_the_actual_and_committing_twice_charges_once(ledger: Ledger) -> None:
    ledger.create_budget(draft("team"))
    r = reserve(ledger, "0.50")
    first = commit(ledger, r.reservation_id, "0.30")  # type: ignore[attr-defined]
    assert (first.charged_usd, first.released_usd, first.duplicate) == (D("0.3"), D("0.5"), False)  # type: ignore[attr-defined]
    again = commit(ledger, r.reservation_id, "0.30")  # type: ignore[attr-defined]
    assert again.duplicate and again.charged_usd == D("0.3")  # type: ignore[attr-defined]
    assert standing(ledger, "team") == (D("0.3"), D(0))
    assert ledger.usage(UsageQuery()).total.records == 1


def test_record_usage_is_idempotent_by_usage_id(ledger: Ledger) -> None:
    ledger.create_budget(draft("team"))
    cmd = RecordUsageCommand(
        usage_id="span-1", scopes=SEARCH, cost_usd=D("0.25"), usage=UsageFacts(model="m")
    )
    assert ledger.record_usage(cmd).charged_usd == D("0.25")
    repeat = ledger.record_usage(cmd)
    assert repeat.duplicate and repeat.charged_usd == 0
    assert standing(ledger, "team") == (D("0.25"), D(0))


def test_usage_carrying_a_reservation_id_is_never_charged_twice(ledger: Ledger) -> None:
    ledger.create_budget(draft("team"))
    r = reserve(ledger, "0.5")
    commit(ledger, r.reservation_id, "0.4")  # type: ignore[attr-defined]
    late_trace = RecordUsageCommand(
        usage_id="span-9", scopes=SEARCH, cost_usd=D("0.4"), reservation_id=r.reservation_id
    )  # type: ignore[attr-defined]
    assert ledger.record_usage(late_trace).duplicate
    # A trace that arrives first commits the reservation; the client's own commit is then a duplicate.
    r2 = reserve(ledger, "0.5")
    first = ledger.record_usage(
        RecordUsageCommand(
            usage_id="span-10", scopes=SEARCH, cost_usd=D("0.2"), reservation_id=r2.reservation_id
        )  # type: ignore[attr-defined]
    )
    assert first.charged_usd == D("0.2") and not first.duplicate
    assert commit(ledger, r2.reservation_id, "0.2").duplicate  # type: ignore[attr-defined]
    assert standing(ledger, "team") == (D("0.6"), D(0))


def test_retrying_a_reserve_with_its_idempotency_key_returns_the_first_reservation(ledger: Ledger) -> None:
    ledger.create_budget(draft("team"))
    first = reserve(ledger, "1", idempotency_key="req-7")
    again = reserve(ledger, "1", idempotency_key="req-7")
    assert again.reservation_id == first.reservation_id and again.replayed  # type: ignore[attr-defined]
    assert standing(ledger, "team") == (D(0), D(1))


def test_a_reservation_not_committed_before_its_ttl_is_released(ledger: Ledger, clock: ManualClock) -> None:
    ledger.create_budget(draft("team", limit="1"))
    r = reserve(ledger, "0.8", ttl_ms=2_000)
    assert reserve(ledger, "0.5").decision is Decision.DENY  # type: ignore[attr-defined]
    clock.advance(seconds=2)
    assert standing(ledger, "team") == (D(0), D(0))
    assert reserve(ledger, "0.5").decision is Decision.ALLOW  # type: ignore[attr-defined]
    # The crashed caller comes back late: its spend is still charged, once, and flagged.
    late = commit(ledger, r.reservation_id, "0.3")  # type: ignore[attr-defined]
    assert late.late and late.released_usd == 0  # type: ignore[attr-defined]
    assert standing(ledger, "team") == (D("0.3"), D("0.5"))


def test_release_gives_the_hold_back_and_is_harmless_to_repeat(ledger: Ledger) -> None:
    ledger.create_budget(draft("team"))
    r = reserve(ledger, "2")
    assert ledger.release(r.reservation_id).released_usd == D(2)  # type: ignore[attr-defined]
    again = ledger.release(r.reservation_id)  # type: ignore[attr-defined]
    assert again.released_usd == 0 and again.state is ReservationState.RELEASED
    assert standing(ledger, "team") == (D(0), D(0))
    done = reserve(ledger, "1")
    commit(ledger, done.reservation_id, "1")  # type: ignore[attr-defined]
    with pytest.raises(FailedPreconditionError, match="committed already"):
        ledger.release(done.reservation_id)  # type: ignore[attr-defined]
    with pytest.raises(NotFoundError):
        ledger.release("no-such-reservation")


def test_reservations_and_their_ttls_survive_a_restart(
    store_factory: StoreFactory, clock: ManualClock
) -> None:
    before = Ledger(store_factory.open(), clock=clock)
    before.create_budget(draft("team", limit="1"))
    r = reserve(before, "0.7", ttl_ms=30_000)
    store_factory.close_all()  # the process dies
    after = Ledger(store_factory.open(), clock=clock)
    assert standing(after, "team") == (D(0), D("0.7"))
    assert reserve(after, "0.5").decision is Decision.DENY  # type: ignore[attr-defined]
    clock.advance(seconds=30)
    assert standing(after, "team") == (D(0), D(0))
    assert commit(after, r.reservation_id, "0.1").late  # type: ignore[attr-defined]


def test_a_new_period_starts_from_zero_and_the_old_one_is_left_alone(
    ledger: Ledger, clock: ManualClock
) -> None:
    ledger.create_budget(draft("team", limit="10", period="daily"))
    clock.set(START.replace(hour=23, minute=59))
    r = reserve(ledger, "9.9")
    commit(ledger, r.reservation_id, "9.9")  # type: ignore[attr-defined]
    assert reserve(ledger, "0.2").decision is Decision.DENY  # type: ignore[attr-defined]
    held = reserve(ledger, "0.1", ttl_ms=600_000)  # made before midnight, committed after
    clock.advance(seconds=120)
    status = ledger.budget_status("team")
    assert (status.used_usd, status.reserved_usd) == (D(0), D("0.1"))
    assert status.period_start_ms == int((START + timedelta(days=1)).replace(hour=0).timestamp() * 1000)
    commit(ledger, held.reservation_id, "0.1")  # type: ignore[attr-defined]
    assert reserve(ledger, "9.8").decision is Decision.ALLOW  # type: ignore[attr-defined]
    days = ledger.usage(UsageQuery(group_by=(Dimension.DAY,)))
    assert [(row.key, row.totals.cost_usd) for row in days.rows] == [
        (("2025-03-14",), D("9.9")),
        (("2025-03-15",), D("0.1")),
    ]


def test_a_rolling_window_forgets_spend_as_it_ages(ledger: Ledger, clock: ManualClock) -> None:
    ledger.create_budget(draft("team", limit="1", period="rolling_1h"))
    commit(ledger, reserve(ledger, "0.9").reservation_id, "0.9")  # type: ignore[attr-defined]
    clock.advance(seconds=1800)
    assert reserve(ledger, "0.5").decision is Decision.DENY  # type: ignore[attr-defined]
    clock.advance(seconds=1800 + 15)  # one bucket (1/240 of the hour) past the window
    assert reserve(ledger, "0.5").decision is Decision.ALLOW  # type: ignore[attr-defined]


def test_thresholds_fire_once_per_period_across_restarts_and_again_next_period(
    store_factory: StoreFactory, clock: ManualClock
) -> None:
    fired: list[int] = []
    ledger = Ledger(store_factory.open(), clock=clock, on_alert=lambda: fired.append(1))
    ledger.create_budget(draft("team", limit="10", thresholds=(50, 80, 100), on_exceed=OnExceed.WARN))

    def spend(amount: str, on: Ledger) -> None:
        commit(on, reserve(on, amount).reservation_id, amount)  # type: ignore[attr-defined]

    spend("4", ledger)
    spend("1", ledger)  # 50%
    spend("3.5", ledger)  # 85%: crosses 80
    store = store_factory.opened[-1]
    assert [(a.threshold_percent, str(a.used_usd)) for a in store.alerts_after(0, limit=10)] == [
        (50, "5.000000"),
        (80, "8.500000"),
    ]
    store_factory.close_all()
    restarted = Ledger(store_factory.open(), clock=clock)
    spend("0.5", restarted)  # 90%: nothing new after the restart
    store = store_factory.opened[-1]
    assert len(store.alerts_after(0, limit=10)) == 2
    spend("1", restarted)  # 100%
    assert [a.threshold_percent for a in store.alerts_after(0, limit=10)] == [50, 80, 100]
    clock.advance(seconds=86_400)  # next day: every threshold is armed again
    spend("8", restarted)
    alerts = store.alerts_after(0, limit=10)
    assert [a.threshold_percent for a in alerts] == [50, 80, 100, 50, 80]
    assert alerts[3].period_start_ms > alerts[0].period_start_ms
    assert restarted.budget_status("team").alerts_fired == (50, 80)


def test_each_entity_of_a_wildcard_budget_has_its_own_alerts(ledger: Ledger) -> None:
    ledger.create_budget(draft("per-user", Scope.USER, None, "1", thresholds=(80,), on_exceed=OnExceed.WARN))
    for user in ("ada", "bob", "ada"):
        scopes = ScopeSet(user=user)
        commit(ledger, reserve(ledger, "0.9", scopes).reservation_id, "0.9")  # type: ignore[attr-defined]
    alerts = ledger.store.alerts_after(0, limit=10)
    assert [(a.scope_id, a.threshold_percent) for a in alerts] == [("ada", 80), ("bob", 80)]


def test_a_rolling_window_threshold_re_arms_once_spend_falls_below_it(
    ledger: Ledger, clock: ManualClock
) -> None:
    ledger.create_budget(
        draft("team", limit="1", period="rolling_1h", thresholds=(80,), on_exceed=OnExceed.WARN)
    )
    commit(ledger, reserve(ledger, "0.85").reservation_id, "0.85")  # type: ignore[attr-defined]
    commit(ledger, reserve(ledger, "0.05").reservation_id, "0.05")  # type: ignore[attr-defined]
    assert len(ledger.store.alerts_after(0, limit=10)) == 1
    clock.advance(seconds=3700)  # the window is empty again
    commit(ledger, reserve(ledger, "0.1").reservation_id, "0.1")  # type: ignore[attr-defined]  # 10%: re-arms
    commit(ledger, reserve(ledger, "0.75").reservation_id, "0.75")  # type: ignore[attr-defined]  # 85% again
    assert len(ledger.store.alerts_after(0, limit=10)) == 2


def test_disabled_budgets_decide_nothing_but_keep_counting(ledger: Ledger) -> None:
    ledger.create_budget(draft("team", limit="1", enabled=False))
    assert reserve(ledger, "5").decision is Decision.ALLOW  # type: ignore[attr-defined]
    ledger.record_usage(RecordUsageCommand(usage_id="u1", scopes=SEARCH, cost_usd=D("0.7")))
    ledger.update_budget("team", BudgetPatch(enabled=True))
    assert standing(ledger, "team")[0] == D("0.7")
    assert reserve(ledger, "0.5").decision is Decision.DENY  # type: ignore[attr-defined]


def test_limit_changes_apply_to_the_next_request(ledger: Ledger) -> None:
    ledger.create_budget(draft("team", limit="1"))
    assert reserve(ledger, "2").decision is Decision.DENY  # type: ignore[attr-defined]
    ledger.update_budget("team", BudgetPatch(limit_usd=D(5)))
    assert reserve(ledger, "2").decision is Decision.ALLOW  # type: ignore[attr-defined]


def test_a_re_created_budget_is_not_debited_by_its_deleted_namesakes_reservations(ledger: Ledger) -> None:
    ledger.create_budget(draft("team", limit="1"))
    old = reserve(ledger, "0.6")
    ledger.delete_budget("team")
    ledger.create_budget(draft("team", limit="1"))
    fresh = reserve(ledger, "0.3")
    assert standing(ledger, "team") == (D(0), D("0.3"))  # the old hold is not on the new budget
    assert ledger.release(old.reservation_id).released_usd == D("0.6")  # type: ignore[attr-defined]
    assert standing(ledger, "team") == (D(0), D("0.3"))
    assert fresh.decision is Decision.ALLOW  # type: ignore[attr-defined]


def test_config_budgets_are_owned_by_the_config(ledger: Ledger) -> None:
    ledger.load_config_budgets([draft("cfg", limit="3"), draft("gone", limit="1")])
    assert ledger.get_budget("cfg").declared_in_config
    with pytest.raises(FailedPreconditionError, match="declared in the sidecar's config"):
        ledger.update_budget("cfg", BudgetPatch(limit_usd=D(9)))
    commit(ledger, reserve(ledger, "1").reservation_id, "1")  # type: ignore[attr-defined]
    ledger.load_config_budgets([draft("cfg", limit="4")])  # a restart with an edited file
    assert ledger.get_budget("cfg").limit_usd == D(4)
    assert standing(ledger, "cfg") == (D(1), D(0))  # same meaning, same spend
    with pytest.raises(NotFoundError):
        ledger.get_budget("gone")


def test_concurrent_reservations_never_hold_more_than_a_block_budget(
    store_factory: StoreFactory, clock: ManualClock
) -> None:
    """Property: at every sampled instant, committed + reserved <= limit, while 8 threads race."""
    ledger = Ledger(store_factory.open(), clock=clock, settings=LedgerSettings(default_ttl_ms=60_000))
    ledger.create_budget(draft("team", limit="5"))
    stop = threading.Event()
    samples: list[Decimal] = []
    granted: list[int] = []

    def client() -> None:
        for _ in range(40):
            r = reserve(ledger, "0.25")
            if r.decision is Decision.ALLOW:  # type: ignore[attr-defined]
                granted.append(1)
                commit(ledger, r.reservation_id, "0.2")  # type: ignore[attr-defined]

    def sampler() -> None:
        while not stop.is_set():
            used, reserved = standing(ledger, "team")
            samples.append(used + reserved)

    threads = [threading.Thread(target=client) for _ in range(8)]
    watcher = threading.Thread(target=sampler)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert len(samples) > 10
    assert max(samples) <= D(5)
    used, reserved = standing(ledger, "team")
    assert reserved == 0 and used == D("0.2") * len(granted) <= D(5)
    assert len(granted) == 24  # 0.2 committed each, the 25th 0.25 estimate no longer fits


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 400), st.sampled_from(["acme", "acme2"])),
        st.tuples(st.just("commit"), st.integers(0, 100), st.integers(0, 30)),
        st.tuples(st.just("release"), st.integers(0, 30), st.just("")),
        st.tuples(st.just("tick"), st.integers(1, 15), st.just("")),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_property_committed_plus_reserved_never_exceeds_a_block_limit(
    store_factory: StoreFactory, ops: list[tuple[str, int, object]]
) -> None:
    """Any interleaving of reserves, commits at or below the estimate, releases and TTL expiries keeps
    every block budget (a wildcard per organization, and a team budget shared by both) within its
    limit, and spend equals the sum of the commits to the micro-dollar."""
    clock = ManualClock(START)
    ledger = Ledger(store_factory.fresh(), clock=clock, settings=LedgerSettings(default_ttl_ms=20_000))
    ledger.create_budget(draft("org", Scope.ORGANIZATION, None, "2.5"))
    ledger.create_budget(draft("team", Scope.TEAM, "search", "1.5"))
    held: list[tuple[str, str, Decimal, int]] = []  # reservation id, organization, estimate, expiry
    committed = {"acme": D(0), "acme2": D(0)}
    for op, a, b in ops:
        if op == "reserve":
            amount = D(a) * 7 / 1000  # up to $2.80, in odd amounts
            r = ledger.reserve(
                ReserveCommand(scopes=ScopeSet(organization=str(b), team="search"), estimate_usd=amount)
            )
            if r.decision is Decision.ALLOW:
                held.append((r.reservation_id, str(b), amount, r.expires_ms))
        elif op == "commit" and held:
            rid, org, amount, _ = held.pop(int(b) % len(held))
            actual = (amount * a / 100).quantize(D("0.000001"))
            assert not ledger.commit(CommitCommand(reservation_id=rid, actual_usd=actual)).late
            committed[org] += actual
        elif op == "release" and held:
            ledger.release(held.pop(a % len(held))[0])
        elif op == "tick":
            clock.advance(seconds=a)
            held = [h for h in held if h[3] > clock.now_ms()]  # the rest expired: the ledger released them
        team = standing(ledger, "team")
        assert team[0] == sum(committed.values())
        assert sum(team) <= D("1.5")
        for org, spent in committed.items():
            used, reserved = standing(ledger, "org", org)
            assert used == spent
            assert used + reserved <= D("2.5")
            assert reserved == sum(h[2] for h in held if h[1] == org)


def test_recorded_usage_is_charged_to_the_period_it_happened_in(ledger: Ledger, clock: ManualClock) -> None:
    from collector_processor.errors import InvalidRequestError

    ledger.create_budget(draft("team", limit="10", period="daily"))
    yesterday = clock.now_ms() - 86_400_000
    ledger.record_usage(
        RecordUsageCommand(usage_id="old", scopes=SEARCH, cost_usd=D(7), occurred_ms=yesterday)
    )
    ledger.record_usage(RecordUsageCommand(usage_id="new", scopes=SEARCH, cost_usd=D(2)))
    assert standing(ledger, "team") == (D(2), D(0))  # yesterday's spend is not today's
    days = ledger.usage(UsageQuery(group_by=(Dimension.DAY,)))
    assert [(row.key[0], row.totals.cost_usd) for row in days.rows] == [
        ("2025-03-13", D(7)),
        ("2025-03-14", D(2)),
    ]
    with pytest.raises(InvalidRequestError, match="occurred_at: is in the future"):
        ledger.record_usage(
            RecordUsageCommand(
                usage_id="later", scopes=SEARCH, cost_usd=D(1), occurred_ms=clock.now_ms() + 3_600_000
            )
        )


def test_money_stays_exact_beyond_what_a_double_can_hold(
    store_factory: StoreFactory, clock: ManualClock
) -> None:
    """Past 2^53 micro-dollars binary floats stop counting by ones (2^53 + 1 rounds to 2^53); every
    decision there is still exact to the micro-dollar."""
    ledger = Ledger(store_factory.open(), clock=clock, settings=LedgerSettings(max_amount_usd=D(10**9)))
    edge = 2**53
    ledger.create_budget(draft("team", limit=str(D(edge + 2).scaleb(-6))))
    for i in range(9):
        ledger.record_usage(RecordUsageCommand(usage_id=f"big-{i}", scopes=SEARCH, cost_usd=D(10**9)))
    rest = D(edge + 1 - 9 * 10**15).scaleb(-6)
    ledger.record_usage(RecordUsageCommand(usage_id="big", scopes=SEARCH, cost_usd=rest))
    assert reserve(ledger, "0.000001").decision is Decision.ALLOW  # type: ignore[attr-defined]  # reaches the limit
    assert reserve(ledger, "0.000001").decision is Decision.DENY  # type: ignore[attr-defined]  # one past it
    assert standing(ledger, "team") == (D(edge + 1).scaleb(-6), D("0.000001"))


def test_metrics_reads_list_every_budget_its_entities_and_the_holds_in_flight(
    ledger: Ledger, clock: ManualClock
) -> None:
    """``budget_spend`` and ``held_reservations`` (what /metrics reads) answer alike on every store."""
    ledger.create_budget(draft("org", Scope.ORGANIZATION, "acme", "100"))
    ledger.create_budget(draft("per-user", Scope.USER, None, "5"))
    ledger.create_budget(draft("quiet", Scope.TEAM, "nobody", "1"))
    for user, amount in (("ada", "0.30"), ("bob", "0.70"), ("cy", "0.10")):
        r = reserve(ledger, amount, ScopeSet(organization="acme", user=user))
        commit(ledger, r.reservation_id, amount)  # type: ignore[attr-defined]
    reserve(ledger, "0.25", ScopeSet(organization="acme", user="ada"))
    now = clock.now_ms()
    spend = {b.budget.id: b for b in ledger.store.budget_spend(now_ms=now, max_entities=2)}
    assert sorted(spend) == ["org", "per-user", "quiet"]

    def micros(budget_id: str) -> list[tuple[str, int, int]]:
        return [(e.entity, e.used_micros, e.reserved_micros) for e in spend[budget_id].entities]

    assert micros("org") == [("acme", 1_100_000, 250_000)]
    # Most used + reserved first, capped at two; the count still says three.
    assert micros("per-user") == [("bob", 700_000, 0), ("ada", 300_000, 250_000)]
    assert spend["per-user"].entity_count == 3
    assert micros("quiet") == [("nobody", 0, 0)]
    assert ledger.store.held_reservations() == (1, 250_000)


# -- batches (the OTLP receiver's bulk charge) -------------------------------------------------------
def item(ts: int, uid: bytes, group: int, micros: int, tin: int = 10, tout: int = 5) -> tuple:  # type: ignore[type-arg]
    return (ts, uid, group, micros, tin, tout, 0, 0, 0, 0)


def series(sid: bytes, group: int, micros: int, *, baseline: bool = False, tin: int = 0) -> tuple:  # type: ignore[type-arg]
    return (sid, group, baseline, micros, tin, 0, 0, 0, 0, tin)


def test_a_batch_charges_each_group_once_and_each_item_at_most_once(
    ledger: Ledger, clock: ManualClock
) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup

    ledger.create_budget(draft("team", limit="10", thresholds=(50,)))
    ledger.create_budget(draft("other", Scope.TEAM, "ads", "10"))
    now = clock.now_ms()
    groups = (
        UsageGroup(scopes=SEARCH, provider="openai", model="gpt-4o", occurred_ms=now),
        UsageGroup(scopes=ScopeSet(team="ads"), provider="anthropic", model="claude", occurred_ms=now),
    )
    items = [
        item(now - 5, b"a", 0, 2_000_000),
        item(now - 5, b"b", 0, 3_000_000),
        item(now, b"c", 1, 1_000_000),
    ]
    first = ledger.record_usage_batch(UsageBatch(groups=groups, items=items))
    assert first.charged_items == (2, 1) and first.charged_micros == (5_000_000, 1_000_000)
    assert first.duplicates == 0 and len(first.alerts_fired) == 1  # search crossed 50% once
    assert standing(ledger, "team") == (D(5), D(0)) and standing(ledger, "other") == (D(1), D(0))
    # The same export again: every item is known, nothing is charged, nothing fires.
    again = ledger.record_usage_batch(UsageBatch(groups=groups, items=items))
    assert again.charged_items == (0, 0) and again.duplicates == 3 and again.alerts_fired == ()
    # A retry that also carries new spans charges only the new ones; the same uid at another instant is new.
    mixed = [*items, item(now, b"d", 0, 500_000), item(now - 6, b"a", 0, 250_000)]
    third = ledger.record_usage_batch(UsageBatch(groups=groups, items=mixed))
    assert third.charged_items == (2, 0) and third.charged_micros == (750_000, 0) and third.duplicates == 3
    assert standing(ledger, "team") == (D("5.75"), D(0))
    # One usage record per group and batch, with the tokens of the items it charged.
    report = ledger.usage(UsageQuery(group_by=(Dimension.MODEL,)))
    assert [(r.key, r.totals.cost_usd, r.totals.input_tokens, r.totals.records) for r in report.rows] == [
        (("claude",), D(1), 10, 1),
        (("gpt-4o",), D("5.75"), 40, 2),
    ]


def test_a_batch_group_is_charged_to_the_period_it_happened_in(ledger: Ledger, clock: ManualClock) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup

    ledger.create_budget(draft("team", limit="10", period="daily", thresholds=(50,)))
    yesterday = clock.now_ms() - 86_400_000
    groups = (
        UsageGroup(scopes=SEARCH, occurred_ms=yesterday),
        UsageGroup(scopes=SEARCH, occurred_ms=clock.now_ms()),
    )
    outcome = ledger.record_usage_batch(
        UsageBatch(
            groups=groups,
            items=[item(yesterday, b"x", 0, 7_000_000), item(clock.now_ms(), b"y", 1, 2_000_000)],
        )
    )
    assert standing(ledger, "team") == (D(2), D(0))
    days = ledger.usage(UsageQuery(group_by=(Dimension.DAY,)))
    assert [(row.key[0], row.totals.cost_usd) for row in days.rows] == [
        ("2025-03-13", D(7)),
        ("2025-03-14", D(2)),
    ]
    # Each period's thresholds are judged on that period's spend: yesterday's 7 of 10 crossed 50%.
    (alert,) = ledger.store.alerts_after(0, limit=10)
    assert outcome.alerts_fired == (alert.sequence,)
    assert (alert.used_usd, alert.period_start_ms) == (D(7), yesterday - yesterday % 86_400_000)


def test_a_series_is_charged_by_how_much_its_running_total_grew(ledger: Ledger, clock: ManualClock) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup

    ledger.create_budget(draft("team", limit="10"))
    groups = (UsageGroup(scopes=SEARCH, model="gpt-4o", occurred_ms=clock.now_ms()),)

    def record(*rows: tuple) -> tuple[tuple[int, ...], int]:  # type: ignore[type-arg]
        out = ledger.record_usage_batch(UsageBatch(groups=groups, series=list(rows)))
        return out.charged_micros, out.duplicates

    assert record(series(b"s1", 0, 1_000_000, tin=100)) == ((1_000_000,), 0)
    assert record(series(b"s1", 0, 2_500_000, tin=250)) == ((1_500_000,), 0)
    assert record(series(b"s1", 0, 2_500_000, tin=250)) == ((0,), 1)  # a retried export
    assert record(series(b"s1", 0, 2_000_000, tin=200)) == ((0,), 1)  # an older point arriving late
    # A series first seen as a baseline is charged only from there on.
    assert record(series(b"s2", 0, 9_000_000, baseline=True)) == ((0,), 1)
    assert record(series(b"s2", 0, 9_250_000, baseline=True)) == ((250_000,), 0)
    assert standing(ledger, "team") == (D("2.75"), D(0))
    tokens = ledger.usage(UsageQuery()).total
    assert (tokens.input_tokens, tokens.total_tokens) == (250, 250)


def test_batch_keys_outlive_a_restart_until_pruned_after_the_retention(
    store_factory: StoreFactory, clock: ManualClock
) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup

    store = store_factory.open()
    ledger = Ledger(store, clock=clock)
    ledger.create_budget(draft("team", limit="100", period="monthly"))
    now = clock.now_ms()
    batch = UsageBatch(
        groups=(UsageGroup(scopes=SEARCH, occurred_ms=now),),
        items=[item(now, b"k", 0, 1_000_000)],
        series=[series(b"s", 0, 1_000_000)],
    )
    ledger.record_usage_batch(batch)
    store.close()
    ledger = Ledger(store_factory.open(), clock=clock)
    assert ledger.record_usage_batch(batch).duplicates == 2
    clock.advance(seconds=7200)
    retention = {"usage_retention_ms": 10**12, "alert_retention_ms": 10**12}
    ledger.store.prune(now_ms=clock.now_ms(), reservation_retention_ms=3 * 3_600_000, **retention)
    assert ledger.record_usage_batch(batch).duplicates == 2  # still within the retention
    ledger.store.prune(now_ms=clock.now_ms(), reservation_retention_ms=3_600_000, **retention)
    assert ledger.record_usage_batch(batch).charged_items == (2,)  # forgotten: callers must not resend
    assert standing(ledger, "team") == (D(4), D(0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"items": [item(1, b"a", 3, 1)]}, "items.group: must index one of the 1 groups"),
        ({"items": [item(1, b"a", 0, -1)]}, r"items.amounts\[0\]: must not be negative"),
        ({"items": [item(1, b"", 0, 1)]}, "items.key: must be 1 to 64 bytes"),
        ({"items": [item(1, b"a", 0, 1), item(1, b"a", 0, 2)]}, "items.key: appears twice in one batch"),
        ({"series": [series(b"s", 0, 1), series(b"s", 0, 2)]}, "series.key: appears twice in one batch"),
        ({"series": [series(b"s", 0, 1, tin=-4)]}, r"series.amounts\[1\]: must not be negative"),
    ],
)
def test_a_malformed_batch_is_refused_whole_before_anything_is_written(
    ledger: Ledger,
    clock: ManualClock,
    change: dict,
    message: str,  # type: ignore[type-arg]
) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup
    from collector_processor.errors import InvalidRequestError

    ledger.create_budget(draft("team"))
    groups = (UsageGroup(scopes=SEARCH, occurred_ms=clock.now_ms()),)
    good = [item(clock.now_ms(), b"good", 0, 1_000_000)]
    with pytest.raises(InvalidRequestError, match=message):
        ledger.record_usage_batch(UsageBatch(groups=groups, **{"items": good, **change}))
    assert standing(ledger, "team") == (D(0), D(0))


def test_a_batch_group_in_the_future_or_without_scopes_is_refused(ledger: Ledger, clock: ManualClock) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup
    from collector_processor.errors import InvalidRequestError

    later = UsageGroup(scopes=SEARCH, occurred_ms=clock.now_ms() + 3_600_000)
    with pytest.raises(InvalidRequestError, match=r"groups\[0\].occurred_ms: is in the future"):
        ledger.record_usage_batch(UsageBatch(groups=(later,), items=[item(1, b"a", 0, 1)]))
    nobody = UsageGroup(scopes=ScopeSet(), occurred_ms=clock.now_ms())
    with pytest.raises(InvalidRequestError, match=r"groups\[0\].scopes: at least one of"):
        ledger.record_usage_batch(UsageBatch(groups=(nobody,), items=[item(1, b"a", 0, 1)]))


def test_a_batch_fires_each_threshold_once_per_entity_of_a_rolling_wildcard(
    ledger: Ledger, clock: ManualClock
) -> None:
    from collector_processor.domain.types import UsageBatch, UsageGroup

    ledger.create_budget(draft("per-user", Scope.USER, None, "1", period="rolling_24h", thresholds=(50, 100)))
    now = clock.now_ms()
    groups = tuple(UsageGroup(scopes=ScopeSet(user=u), occurred_ms=now) for u in ("ada", "bo"))
    first = ledger.record_usage_batch(
        UsageBatch(groups=groups, items=[item(now, b"1", 0, 600_000), item(now, b"2", 1, 100_000)])
    )
    assert [(a.scope_id, a.threshold_percent) for a in ledger.store.alerts_after(0, limit=10)] == [
        ("ada", 50)
    ]
    second = ledger.record_usage_batch(
        UsageBatch(groups=groups, items=[item(now, b"3", 0, 500_000), item(now, b"4", 0, 1)])
    )
    fired = ledger.store.alerts_after(0, limit=10)
    assert [(a.scope_id, a.threshold_percent) for a in fired] == [("ada", 50), ("ada", 100)]
    assert len(first.alerts_fired) == 1 and len(second.alerts_fired) == 1
    assert standing(ledger, "per-user", "ada") == (D("1.100001"), D(0))
