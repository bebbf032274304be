"""Request budgets in the ledger, on every store: one limit for one request across every service that
reserves, commits or records against it, in addition to each service's own budgets; nested budgets
charged together; idle expiry; exactly-once charging; and the standing by service."""

from __future__ import annotations

from decimal import Decimal

import pytest

from collector_processor.domain.budgets import OnExceed, ScopeSet, Tier
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.requests import OpenRequestCommand
from collector_processor.domain.types import (
    CommitCommand,
    Decision,
    RecordUsageCommand,
    ReserveCommand,
    UsageBatch,
    UsageGroup,
)
from collector_processor.errors import AlreadyExistsError, InvalidRequestError, NotFoundError
from collector_processor.ledger import Ledger, LedgerSettings
from tests.sidecar.conftest import StoreFactory, draft

D = Decimal
PLANNER = ScopeSet(team="planner")
RETRIEVAL = ScopeSet(team="retrieval")
REQ = "rq_0123456789abcdef0123"


def open_request(ledger: Ledger, limit: str | None = "0.10", **kwargs: object) -> str:
    kwargs.setdefault("request_id", REQ)
    command = OpenRequestCommand(limit_usd=None if limit is None else D(limit), **kwargs)  # type: ignore[arg-type]
    return ledger.open_request_budget(command).budget.id


def reserve(
    ledger: Ledger, amount: str, scopes: ScopeSet = PLANNER, request: str = REQ, **kw: object
) -> object:
    command = ReserveCommand(scopes=scopes, estimate_usd=D(amount), request_budget=request, **kw)  # type: ignore[arg-type]
    return ledger.reserve(command)


def spend(ledger: Ledger, amount: str, scopes: ScopeSet, service: str, request: str = REQ) -> object:
    held = reserve(ledger, amount, scopes, request, service=service)
    assert held.decision is Decision.ALLOW, held.reason  # type: ignore[attr-defined]
    return ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D(amount)))  # type: ignore[attr-defined]


def test_services_share_one_request_budget_and_its_denial_names_it(ledger: Ledger) -> None:
    open_request(ledger, "0.10", name="user question 42")
    spend(ledger, "0.04", PLANNER, "planner")
    spend(ledger, "0.05", RETRIEVAL, "retrieval")
    denied = reserve(ledger, "0.02", RETRIEVAL)
    assert denied.decision is Decision.DENY  # type: ignore[attr-defined]
    assert denied.deciding_budget_id == REQ  # type: ignore[attr-defined]
    assert denied.reason.startswith(  # type: ignore[attr-defined]
        "Denied by request budget 'user question 42' (request=rq_0123456789abcdef0123): used $0.09 + reserved "
        "$0.00 + estimate $0.02 = $0.11 exceeds the limit $0.10 over the request's life. Open the request with a "
        "larger limit"
    )
    line = denied.budget_info[-1]  # type: ignore[attr-defined]
    assert (line.scope.value, line.budget_id, line.used_usd, line.exceeded) == (
        "request",
        REQ,
        D("0.09"),
        True,
    )
    status = ledger.request_status(REQ)
    assert status.used_micros == 90_000 and status.reserved_micros == 0
    assert status.by_service == (("retrieval", 50_000), ("planner", 40_000))


def test_a_request_budget_only_ever_adds_a_limit(ledger: Ledger) -> None:
    ledger.create_budget(draft("planner-daily", scope_id="planner", limit="0.03"))
    open_request(ledger, "1")
    denied = reserve(ledger, "0.05", PLANNER)
    assert denied.deciding_budget_id == "planner-daily"  # type: ignore[attr-defined]
    allowed = reserve(ledger, "0.05", RETRIEVAL)
    assert allowed.decision is Decision.ALLOW  # type: ignore[attr-defined]
    assert [i.budget_id for i in allowed.budget_info] == [REQ]  # type: ignore[attr-defined]


def test_holds_count_until_committed_released_or_expired(ledger: Ledger, clock: ManualClock) -> None:
    open_request(ledger, "0.10")
    first = reserve(ledger, "0.06", ttl_ms=10_000)
    assert ledger.request_status(REQ).reserved_micros == 60_000
    assert reserve(ledger, "0.05").decision is Decision.DENY  # type: ignore[attr-defined]
    ledger.release(first.reservation_id)  # type: ignore[attr-defined]
    second = reserve(ledger, "0.05", ttl_ms=10_000)
    assert second.decision is Decision.ALLOW  # type: ignore[attr-defined]
    clock.advance(seconds=11)
    ledger.expire_due()
    assert ledger.request_status(REQ).reserved_micros == 0


def test_a_commit_charges_the_request_budget_it_held_on_once(ledger: Ledger) -> None:
    open_request(ledger, "1")
    held = reserve(ledger, "0.2", service="planner")
    for _ in range(2):
        ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.25")))  # type: ignore[attr-defined]
    status = ledger.request_status(REQ)
    assert (status.used_micros, status.reserved_micros) == (250_000, 0)
    # RecordUsage naming the reservation is its commit again: charged nothing more.
    ledger.record_usage(
        RecordUsageCommand(
            usage_id="u1", scopes=PLANNER, cost_usd=D("0.25"), reservation_id=held.reservation_id
        )  # type: ignore[attr-defined]
    )
    assert ledger.request_status(REQ).used_micros == 250_000


def test_recorded_usage_and_batches_charge_it_once_per_unit(ledger: Ledger, clock: ManualClock) -> None:
    open_request(ledger, "1")
    for _ in range(2):
        ledger.record_usage(
            RecordUsageCommand(
                usage_id="u1", scopes=PLANNER, cost_usd=D("0.1"), request_budget=REQ, service="a"
            )
        )
    now = clock.now_ms()
    group = UsageGroup(scopes=RETRIEVAL, model="m", occurred_ms=now, request_budget=REQ, service="summarizer")
    items = [(now, bytes([i]) * 24, 0, 50_000, 1, 1, 0, 0, 0, 0) for i in range(3)]
    for _ in range(2):
        ledger.record_usage_batch(UsageBatch(groups=(group,), items=items))
    status = ledger.request_status(REQ)
    assert status.used_micros == 250_000
    assert status.by_service == (("summarizer", 150_000), ("a", 100_000))


def test_nested_request_budgets_are_charged_together_and_the_denial_names_the_one_that_decided(
    ledger: Ledger,
) -> None:
    open_request(ledger, "0.10")
    spend(ledger, "0.02", PLANNER, "planner")
    child = ledger.open_request_budget(
        OpenRequestCommand(request_id="rq_child_000000000001", parent_id=REQ, fraction=D("0.5"))
    )
    assert child.budget.limit_micros == 40_000 and child.budget.chain == (REQ,)  # half of 0.08 left
    spend(ledger, "0.03", RETRIEVAL, "retrieval", request="rq_child_000000000001")
    assert ledger.request_status(REQ).used_micros == 50_000
    assert ledger.request_status("rq_child_000000000001").used_micros == 30_000
    by_child = reserve(ledger, "0.02", RETRIEVAL, "rq_child_000000000001")
    assert by_child.decision is Decision.DENY  # type: ignore[attr-defined]
    assert by_child.deciding_budget_id == "rq_child_000000000001"  # type: ignore[attr-defined]
    spend(ledger, "0.045", PLANNER, "planner")  # the parent is nearly spent by another branch
    by_parent = reserve(ledger, "0.009", RETRIEVAL, "rq_child_000000000001")
    assert by_parent.decision is Decision.DENY  # type: ignore[attr-defined]
    assert by_parent.deciding_budget_id == REQ  # type: ignore[attr-defined]
    assert [i.budget_id for i in by_parent.budget_info] == ["rq_child_000000000001", REQ]  # type: ignore[attr-defined]


def test_a_child_gets_at_most_what_its_parent_has_left(ledger: Ledger) -> None:
    open_request(ledger, "0.10")
    reserve(ledger, "0.07")
    child = ledger.open_request_budget(
        OpenRequestCommand(request_id="rq_child_000000000002", parent_id=REQ, limit_usd=D("0.05"))
    )
    assert child.budget.limit_micros == 30_000 and child.clamped
    tighter = ledger.open_request_budget(
        OpenRequestCommand(
            request_id="rq_child_000000000003", parent_id=REQ, limit_usd=D("0.01"), fraction=D("1")
        )
    )
    assert tighter.budget.limit_micros == 10_000 and not tighter.clamped


def test_idle_expiry(store_factory: StoreFactory, clock: ManualClock) -> None:
    ledger = Ledger(store_factory.open(), clock=clock, settings=LedgerSettings(default_ttl_ms=30_000))
    open_request(ledger, "1", idle_ttl_ms=60_000)
    clock.advance(seconds=50)
    spend(ledger, "0.1", PLANNER, "planner")  # activity: another minute from now
    clock.advance(seconds=50)
    assert ledger.request_status(REQ).used_micros == 100_000
    clock.advance(seconds=11)
    with pytest.raises(
        NotFoundError, match="request_budget_id: request budget 'rq_0123456789abcdef0123' is not open"
    ):
        ledger.request_status(REQ)
    denied = reserve(ledger, "0.01")
    assert denied.decision is Decision.DENY and denied.deciding_budget_id == REQ  # type: ignore[attr-defined]
    assert "is not open on this sidecar's ledger" in denied.reason  # type: ignore[attr-defined]
    ledger.store.prune(
        now_ms=clock.now_ms(), reservation_retention_ms=1, usage_retention_ms=1, alert_retention_ms=1
    )
    with pytest.raises(NotFoundError):
        ledger.request_status(REQ)
    assert _stored_request_budgets(store_factory) == 0  # housekeeping forgot it


def _stored_request_budgets(factory: StoreFactory) -> int:
    store = factory.opened[-1]
    if factory.backend == "sqlite":
        with store._read() as conn:  # type: ignore[attr-defined]
            return int(conn.execute("SELECT COUNT(*) FROM request_budgets").fetchone()[0])
    return int(store._client.hlen(f"{{{factory.namespace}}}:rq"))  # type: ignore[attr-defined]


def test_a_hold_keeps_its_request_budget_open_until_it_runs_out(ledger: Ledger, clock: ManualClock) -> None:
    ledger.create_budget(draft("planner-daily", scope_id="planner", limit="10"))
    open_request(ledger, "1", idle_ttl_ms=60_000)
    held = reserve(ledger, "0.2", ttl_ms=300_000)
    clock.advance(seconds=200)  # a long step: past the idle TTL, within the hold
    assert ledger.request_status(REQ).reserved_micros == 200_000
    ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.3")))  # type: ignore[attr-defined]
    assert ledger.request_status(REQ).used_micros == 300_000
    late = reserve(ledger, "0.1", ttl_ms=300_000)
    clock.advance(seconds=400)  # the hold expired, and the request budget with it
    charged = ledger.commit(CommitCommand(reservation_id=late.reservation_id, actual_usd=D("0.1")))  # type: ignore[attr-defined]
    assert charged.late and [i.budget_id for i in charged.budget_info] == ["planner-daily"]
    assert ledger.budget_status("planner-daily").used_usd == D("0.4")


def test_opening_again_returns_it_and_another_request_for_the_id_is_refused(ledger: Ledger) -> None:
    open_request(ledger, "0.5")
    spend(ledger, "0.1", PLANNER, "planner")
    again = ledger.open_request_budget(OpenRequestCommand(request_id=REQ, limit_usd=D("0.5")))
    assert again.used_micros == 100_000
    with pytest.raises(AlreadyExistsError, match="is open already"):
        ledger.open_request_budget(OpenRequestCommand(request_id=REQ, limit_usd=D("0.6")))


def test_an_id_reopened_after_it_expired_is_a_new_budget(ledger: Ledger, clock: ManualClock) -> None:
    open_request(ledger, "0.5", idle_ttl_ms=1_000)
    old = reserve(ledger, "0.2", ttl_ms=1_000)
    clock.advance(seconds=2)
    open_request(ledger, "0.3", idle_ttl_ms=60_000)
    ledger.release(old.reservation_id)  # type: ignore[attr-defined]
    ledger.expire_due()
    status = ledger.request_status(REQ)
    assert (status.budget.limit_micros, status.used_micros, status.reserved_micros) == (300_000, 0, 0)
    assert reserve(ledger, "0.3").decision is Decision.ALLOW  # type: ignore[attr-defined]


def test_check_and_replay_include_the_request_budget(ledger: Ledger) -> None:
    open_request(ledger, "0.1")
    assert ledger.check(PLANNER, D("0.2"), request_budget=REQ).deciding_budget_id == REQ
    first = reserve(ledger, "0.04", idempotency_key="k1")
    again = reserve(ledger, "0.04", idempotency_key="k1")
    assert again.replayed and again.reservation_id == first.reservation_id  # type: ignore[attr-defined]
    assert [i.budget_id for i in again.budget_info] == [REQ]  # type: ignore[attr-defined]
    assert ledger.request_status(REQ).reserved_micros == 40_000


def test_tiers_on_a_request_budget(ledger: Ledger) -> None:
    ledger.open_request_budget(
        OpenRequestCommand(
            request_id=REQ, limit_usd=D("1"), tiers=(Tier(50, OnExceed.WARN), Tier(80, OnExceed.DOWNGRADE))
        )
    )
    assert reserve(ledger, "0.6").warnings  # type: ignore[attr-defined]
    downgraded = reserve(ledger, "0.3", downgrade_estimate_usd=D("0.05"))
    assert downgraded.decision is Decision.DOWNGRADE and downgraded.deciding_budget_id == REQ  # type: ignore[attr-defined]


def test_a_request_budget_survives_a_restart(store_factory: StoreFactory, clock: ManualClock) -> None:
    before = Ledger(store_factory.open(), clock=clock)
    open_request(before, "0.1")
    held = reserve(before, "0.06")
    store_factory.close_all()
    after = Ledger(store_factory.open(), clock=clock)
    assert reserve(after, "0.05").decision is Decision.DENY  # type: ignore[attr-defined]
    after.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D("0.06")))  # type: ignore[attr-defined]
    assert after.request_status(REQ).used_micros == 60_000


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (OpenRequestCommand(request_id="short", limit_usd=D(1)), "id: must be 16-128 characters"),
        (OpenRequestCommand(), "limit_usd: is required for a request budget without a parent_id"),
        (
            OpenRequestCommand(limit_usd=D(1), fraction=D("0.5")),
            "fraction: applies to a request budget opened inside",
        ),
        (OpenRequestCommand(parent_id=REQ, fraction=D("1.5")), "fraction: must be above 0 and at most 1"),
        (OpenRequestCommand(limit_usd=D(1), idle_ttl_ms=0), "idle_ttl: must be positive and at most 86400s"),
        (OpenRequestCommand(limit_usd=D(-1)), "limit_usd: must be a finite amount >= 0"),
    ],
)
def test_malformed_requests_to_open_are_refused_naming_the_field(
    ledger: Ledger, command: OpenRequestCommand, message: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        ledger.open_request_budget(command)
    assert str(refused.value).startswith(message)


def test_a_child_of_a_budget_that_is_not_open_is_refused(ledger: Ledger) -> None:
    with pytest.raises(NotFoundError, match="parent_id: request budget 'rq_nobody_000000000000' is not open"):
        ledger.open_request_budget(OpenRequestCommand(parent_id="rq_nobody_000000000000", limit_usd=D(1)))


def test_nesting_is_bounded(ledger: Ledger) -> None:
    parent = open_request(ledger, "1")
    for depth in range(1, 8):
        parent = ledger.open_request_budget(
            OpenRequestCommand(request_id=f"rq_depth_{depth:012d}", parent_id=parent, fraction=D(1))
        ).budget.id
    with pytest.raises(InvalidRequestError, match="request budgets nest at most 8 deep"):
        ledger.open_request_budget(
            OpenRequestCommand(request_id="rq_depth_too_deep_00", parent_id=parent, fraction=D(1))
        )


def test_the_default_idle_ttl_is_the_ledgers(store_factory: StoreFactory, clock: ManualClock) -> None:
    ledger = Ledger(store_factory.open(), clock=clock, settings=LedgerSettings(request_idle_ttl_ms=5_000))
    opened = ledger.open_request_budget(OpenRequestCommand(limit_usd=D(1)))
    assert opened.budget.idle_ttl_ms == 5_000 and opened.budget.id.startswith("rq_")
    assert opened.expires_ms == clock.now_ms() + 5_000
