"""The ledger's bounds on both stores: per-request maxima for money and tokens, totals that never
leave the stores' exact range (2^63 - 1 micro-dollars), report sums that stay exact, and timestamps
in range. Every refusal names the field or the budget and leaves nothing behind."""

from __future__ import annotations

from decimal import Decimal

import pytest

from collector_processor.config import parse_config
from collector_processor.domain.budgets import OnExceed, ScopeSet
from collector_processor.domain.clock import ManualClock
from collector_processor.domain.types import (
    CommitCommand,
    Decision,
    RecordUsageCommand,
    ReserveCommand,
    UsageBatch,
    UsageFacts,
    UsageGroup,
)
from collector_processor.domain.usage import UsageQuery
from collector_processor.errors import FailedPreconditionError, InvalidRequestError
from collector_processor.ledger import Ledger, LedgerSettings
from paymaster.exceptions import ConfigError
from tests.sidecar.conftest import StoreFactory, draft

SEARCH = ScopeSet(organization="acme", team="search")
D = Decimal
BILLION = D(10**9)
MAX_TOTAL_MICROS = 2**63 - 1


def record(ledger: Ledger, usage_id: str, cost: Decimal, **kwargs: object) -> object:
    return ledger.record_usage(RecordUsageCommand(usage_id=usage_id, scopes=SEARCH, cost_usd=cost, **kwargs))  # type: ignore[arg-type]


def store_record(ledger: Ledger, usage_id: str, cost: Decimal) -> object:
    """Charge ``cost`` through the store itself, which must keep its totals exact whatever it is sent."""
    command = RecordUsageCommand(usage_id=usage_id, scopes=SEARCH, cost_usd=cost)
    return ledger.store.record_usage(command, now_ms=ledger.clock.now_ms())


def fill_to_the_edge(ledger: Ledger) -> int:
    """Record $1,000,000,000 at a time until one more would pass 2^63 - 1 micro-dollars; return how
    many were recorded."""
    count = MAX_TOTAL_MICROS // 10**15
    for i in range(count):
        store_record(ledger, f"fill-{i}", BILLION)
    return count


# -- per-request maxima ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "field"),
    [
        (ReserveCommand(scopes=SEARCH, estimate_usd=D("1000000.000001")), "estimate_usd"),
        (ReserveCommand(scopes=SEARCH, estimate_usd=D(1), estimate_tokens=10**12 + 1), "estimate_tokens"),
        (
            ReserveCommand(scopes=SEARCH, estimate_usd=D(1), downgrade_estimate_usd=D(2_000_000)),
            "downgrade_estimate_usd",
        ),
        (
            ReserveCommand(scopes=SEARCH, estimate_usd=D(1), model=UsageFacts(output_tokens=2**63 - 1)),
            "model.output_tokens",
        ),
        (RecordUsageCommand(usage_id="u", scopes=SEARCH, cost_usd=D(10**7)), "cost_usd"),
        (RecordUsageCommand(usage_id="u", scopes=SEARCH, cost_usd=D(1), total_tokens=2**62), "total_tokens"),
        (
            RecordUsageCommand(
                usage_id="u", scopes=SEARCH, cost_usd=D(1), usage=UsageFacts(input_tokens=2**63 - 1)
            ),
            "usage.input_tokens",
        ),
        (CommitCommand(reservation_id="r", actual_usd=D(10**6 + 1)), "actual_usd"),
        (
            CommitCommand(reservation_id="r", actual_usd=D(1), usage=UsageFacts(reasoning_tokens=10**13)),
            "usage.reasoning_tokens",
        ),
    ],
)
def test_amounts_and_token_counts_above_the_per_request_maxima_are_refused_naming_the_field(
    ledger: Ledger, command: object, field: str
) -> None:
    """The defaults: $1,000,000 in any money field and 10^12 in any token field of one request."""
    call = {
        ReserveCommand: ledger.reserve,
        RecordUsageCommand: ledger.record_usage,
        CommitCommand: ledger.commit,
    }[type(command)]
    with pytest.raises(InvalidRequestError) as info:
        call(command)  # type: ignore[operator]
    assert info.value.field == field
    assert "per request (ledger.max_" in str(info.value)


def test_the_maxima_are_settings(store_factory: StoreFactory, clock: ManualClock) -> None:
    ledger = Ledger(
        store_factory.open(), clock=clock, settings=LedgerSettings(max_amount_usd=D(5), max_tokens=100)
    )
    assert ledger.reserve(
        ReserveCommand(scopes=SEARCH, estimate_usd=D(5), estimate_tokens=100)
    ).reservation_id
    with pytest.raises(InvalidRequestError, match=r"^estimate_usd: must be at most 5 dollars per request"):
        ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D("5.000001")))
    with pytest.raises(InvalidRequestError, match=r"^estimate_tokens: must be at most 100 tokens"):
        ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D(1), estimate_tokens=101))
    for bad in ({"max_amount_usd": D(0)}, {"max_amount_usd": D(10**9 + 1)}, {"max_tokens": 0}):
        with pytest.raises(ValueError, match="max_"):
            LedgerSettings(**bad).validate()  # type: ignore[arg-type]


# -- totals within the exact range -------------------------------------------------------------------
def test_spend_that_would_pass_the_exact_range_is_refused_and_nothing_is_written(ledger: Ledger) -> None:
    """About 9,200 charges of a billion dollars reach 2^63 - 1 micro-dollars; the next is refused with
    FAILED_PRECONDITION naming the budget, is not recorded, and the budget keeps working exactly (the
    SQLite store used to store the sum as an inexact REAL and fail every later request)."""
    ledger.create_budget(draft("team", limit="1000000000"))
    count = fill_to_the_edge(ledger)
    spent = D(count * 10**15).scaleb(-6)
    with pytest.raises(FailedPreconditionError, match=r"budget 'team' cannot take this amount"):
        store_record(ledger, "one-too-many", BILLION)
    status = ledger.budget_status("team")
    assert (status.used_usd, status.reserved_usd) == (spent, 0)
    assert ledger.usage(UsageQuery()).total.records == count  # the refused usage was not recorded
    # What still fits is charged, exactly, and the budget decides as before.
    room = D(MAX_TOTAL_MICROS - count * 10**15).scaleb(-6)
    store_record(ledger, "the-last-micro-dollars", room)
    assert ledger.budget_status("team").used_usd == D(MAX_TOTAL_MICROS).scaleb(-6)
    assert ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D(1))).decision is Decision.DENY
    with pytest.raises(FailedPreconditionError):
        record(ledger, "not-even-a-micro-dollar", D("0.000001"))


def test_a_rolling_window_whose_buckets_would_add_up_past_the_exact_range_is_refused(
    ledger: Ledger, clock: ManualClock
) -> None:
    """Each hour's bucket fits, but the window's sum would not: refused the same way."""
    ledger.create_budget(draft("team", limit="1000000000", period="rolling_24h", on_exceed=OnExceed.WARN))
    count = MAX_TOTAL_MICROS // 10**15
    for i in range(count // 2):
        store_record(ledger, f"early-{i}", BILLION)
    clock.advance(seconds=7200)
    for i in range(count - count // 2):
        store_record(ledger, f"late-{i}", BILLION)
    with pytest.raises(FailedPreconditionError, match=r"budget 'team' cannot take this amount"):
        store_record(ledger, "one-too-many", BILLION)
    assert ledger.budget_status("team").used_usd == D(count * 10**15).scaleb(-6)


def test_a_commit_that_would_pass_the_exact_range_is_refused_and_the_reservation_stays_held(
    ledger: Ledger,
) -> None:
    ledger.create_budget(draft("team", limit="1000000000", on_exceed=OnExceed.WARN))
    held = ledger.reserve(ReserveCommand(scopes=SEARCH, estimate_usd=D(1)))
    fill_to_the_edge(ledger)
    too_much = CommitCommand(reservation_id=held.reservation_id, actual_usd=BILLION)
    with pytest.raises(FailedPreconditionError, match="budget 'team'"):
        ledger.store.commit(too_much, now_ms=ledger.clock.now_ms())
    assert ledger.budget_status("team").reserved_usd == 1  # still held: the commit left nothing behind
    done = ledger.commit(CommitCommand(reservation_id=held.reservation_id, actual_usd=D(1)))
    assert (done.charged_usd, done.released_usd, done.duplicate) == (1, 1, False)


def test_a_batch_that_would_pass_the_exact_range_is_refused_whole(ledger: Ledger) -> None:
    """The OTLP receiver's bulk charge: refused like a single one, and its item keys are not kept, so
    the same spans are charged once there is room."""
    ledger.create_budget(draft("team", limit="1000000000", period="rolling_24h", on_exceed=OnExceed.WARN))
    fill_to_the_edge(ledger)
    now = ledger.clock.now_ms()
    group = UsageGroup(scopes=SEARCH, provider="openai", model="gpt-4o", occurred_ms=now)
    items = [(now, b"span-1", 0, 10**15, 10, 5, 0, 0, 0, 0), (now, b"span-2", 0, 1, 10, 5, 0, 0, 0, 0)]
    batch = UsageBatch(groups=(group,), items=items)  # type: ignore[arg-type]
    with pytest.raises(FailedPreconditionError, match=r"budget 'team' cannot take this amount"):
        ledger.record_usage_batch(batch)
    small = UsageBatch(groups=(group,), items=[(now, b"span-2", 0, 1, 10, 5, 0, 0, 0, 0)])  # type: ignore[arg-type]
    assert ledger.record_usage_batch(small).charged_micros == (1,)  # span-2 was not remembered


def test_holds_that_would_pass_the_exact_range_are_refused(ledger: Ledger) -> None:
    ledger.create_budget(draft("team", limit="1000000000", on_exceed=OnExceed.WARN))
    count = MAX_TOTAL_MICROS // 10**15
    now = ledger.clock.now_ms()

    def hold(i: int) -> object:
        command = ReserveCommand(scopes=SEARCH, estimate_usd=BILLION)
        return ledger.store.reserve(command, reservation_id=f"r{i}", expires_ms=now + 60_000, now_ms=now)

    for i in range(count):
        hold(i)
    with pytest.raises(FailedPreconditionError, match=r"budget 'team' cannot take this amount: its holds"):
        hold(count)
    assert ledger.budget_status("team").reserved_usd == D(count * 10**15).scaleb(-6)


# -- reports -----------------------------------------------------------------------------------------
def test_report_sums_stay_exact_past_the_int64_range(ledger: Ledger, clock: ManualClock) -> None:
    """Rows written before the bounds existed (straight to the store here) may carry 2^63 - 1 tokens;
    their sums are exact integers, never an overflow."""
    big = 2**63 - 1
    for usage_id in ("a", "b"):
        ledger.store.record_usage(
            RecordUsageCommand(
                usage_id=usage_id, scopes=SEARCH, cost_usd=D(1), total_tokens=big,
                usage=UsageFacts(input_tokens=big, output_tokens=big),
            ),
            now_ms=clock.now_ms(),
        )  # fmt: skip
    total = ledger.usage(UsageQuery()).total
    assert (total.input_tokens, total.output_tokens, total.total_tokens) == (2 * big, 2 * big, 2 * big)
    assert (total.cost_usd, total.records) == (2, 2)


# -- timestamps --------------------------------------------------------------------------------------
def test_usage_that_happened_before_1970_is_refused(ledger: Ledger) -> None:
    for occurred in (-1, -(2**62) * 1000):
        with pytest.raises(InvalidRequestError, match=r"^occurred_at: must not be before 1970"):
            record(ledger, "old", D(1), occurred_ms=occurred)


def test_report_bounds_outside_the_years_1_to_9999_are_refused(ledger: Ledger) -> None:
    for query, field in (
        (UsageQuery(start_ms=-(2**63)), "start"),
        (UsageQuery(end_ms=2**63 - 1), "end"),
        (UsageQuery(start_ms=0, end_ms=2**70), "end"),
    ):
        with pytest.raises(InvalidRequestError) as info:
            ledger.usage(query)
        assert info.value.field == field


# -- configuration -----------------------------------------------------------------------------------
def test_the_maxima_are_read_from_the_ledger_section_of_the_config_file() -> None:
    settings = parse_config(
        "[ledger]\nmax_amount_usd = 2500.5\nmax_tokens = 5000000\n", source="cfg.toml"
    ).ledger_settings()
    assert (settings.max_amount_usd, settings.max_tokens) == (D("2500.5"), 5_000_000)
    defaults = parse_config("", source="cfg.toml").ledger_settings()
    assert (defaults.max_amount_usd, defaults.max_tokens) == (D(1_000_000), 10**12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_amount_usd = 0", "cfg.toml: ledger.max_amount_usd: must be from 0.000001 to 1000000000, got 0"),
        (
            "max_amount_usd = 1000000001",
            "cfg.toml: ledger.max_amount_usd: must be from 0.000001 to 1000000000",
        ),
        (
            "max_amount_usd = 'lots'",
            "cfg.toml: ledger.max_amount_usd: must be from 0.000001 to 1000000000, got 'lots'",
        ),
        ("max_tokens = -1", "cfg.toml: ledger.max_tokens: must be a whole number from 1 to 1000000000000000"),
        (
            "max_tokens = 1.5",
            "cfg.toml: ledger.max_tokens: must be a whole number from 1 to 1000000000000000",
        ),
        ("max_tokens = 10000000000000000", "cfg.toml: ledger.max_tokens: must be a whole number from 1 to"),
    ],
)
def test_maxima_out_of_range_in_the_config_file_name_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[ledger]\n{text}\n", source="cfg.toml")
    assert str(info.value).startswith(message), str(info.value)
