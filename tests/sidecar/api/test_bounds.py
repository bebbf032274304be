"""Adversarial values over the wire, on both stores: every one is refused with the status that says
what is wrong (INVALID_ARGUMENT naming the field, FAILED_PRECONDITION for a total out of range) and a
short message, never INTERNAL, and the server serves the next caller."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.types import RecordUsageCommand, UsageFacts
from collector_processor.ledger import Ledger
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar, pb_budget, rpc_error

ALL = pb.ScopeIds(organization="acme", team="search")
HUGE = "9" * 1_000_000
Call = Callable[[Any], Any]


def healthy(server: RunningSidecar) -> None:
    assert server.stub.ListBudgets(pb.ListBudgetsRequest()).budgets is not None


def refused(server: RunningSidecar, call: Call, code: grpc.StatusCode, starts: str) -> str:
    err = rpc_error(lambda: call(server.stub))
    assert (err.code(), err.details()[: len(starts)]) == (code, starts), err.details()[:300]
    healthy(server)
    return err.details()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda s: s.RecordUsage(
                pb.RecordUsageRequest(
                    usage_id="u",
                    scopes=ALL,
                    cost_usd="1",
                    occurred_at=timestamp_pb2.Timestamp(seconds=-(2**62)),
                )
            ),
            "occurred_at:",
        ),
        (
            lambda s: s.RecordUsage(
                pb.RecordUsageRequest(
                    usage_id="u", scopes=ALL, cost_usd="1", occurred_at=timestamp_pb2.Timestamp(seconds=-1)
                )
            ),
            "occurred_at: must not be before 1970",
        ),
        (lambda s: s.GetUsage(pb.GetUsageRequest(start=timestamp_pb2.Timestamp(seconds=-(2**63)))), "start:"),
        (lambda s: s.GetUsage(pb.GetUsageRequest(end=timestamp_pb2.Timestamp(seconds=2**63 - 1))), "end:"),
        (
            lambda s: s.GetUsage(pb.GetUsageRequest(end=timestamp_pb2.Timestamp(seconds=1, nanos=-5))),
            "end: nanos",
        ),
        (
            lambda s: list(s.WatchAlerts(pb.WatchAlertsRequest(after_sequence=2**64 - 1), timeout=10)),
            "after_sequence:",
        ),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="1", estimate_tokens=2**63 - 1)),
            "estimate_tokens: must be at most 1,000,000,000,000 tokens per request",
        ),
        (
            lambda s: s.RecordUsage(
                pb.RecordUsageRequest(
                    usage_id="u", scopes=ALL, cost_usd="1", usage=pb.UsageFacts(input_tokens=2**63 - 1)
                )
            ),
            "usage.input_tokens: must be at most",
        ),
        (
            lambda s: s.RecordUsage(pb.RecordUsageRequest(usage_id="u", scopes=ALL, cost_usd="1000000000")),
            "cost_usd: must be at most 1,000,000 dollars per request (ledger.max_amount_usd)",
        ),
        (lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="1_000")), "estimate_usd: must be a"),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="\u0661\u0662\u0663")),
            "estimate_usd: must be a",
        ),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="\uff15")),
            "estimate_usd: must be a",
        ),
        (lambda s: s.CreateBudget(pb_budget("b", limit=" 5")), "budget.limit_usd: must be a decimal number"),
    ],
)
def test_out_of_range_values_are_invalid_argument_naming_the_field(
    server: RunningSidecar, call: Call, field: str
) -> None:
    refused(server, call, grpc.StatusCode.INVALID_ARGUMENT, field)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd=HUGE)), "estimate_usd"),
        (lambda s: s.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="x" * 100_000)), "estimate_usd"),
        (lambda s: s.CreateBudget(pb_budget("b" * 100_000)), "budget.id"),
        (lambda s: s.CreateBudget(pb_budget("b", period="p" * 100_000)), "budget.period"),
        (lambda s: s.CreateBudget(pb_budget("b", time_zone="Z" * 100_000)), "budget.time_zone"),
        (lambda s: s.CreateBudget(pb_budget("b", limit="1" * 100_000)), "budget.limit_usd"),
        (lambda s: s.GetUsage(pb.GetUsageRequest(time_zone="Z" * 1_000_000)), "time_zone"),
        (lambda s: s.GetBudget(pb.GetBudgetRequest(id="é" * 100_000)), "id"),
        (lambda s: s.Release(pb.ReleaseRequest(reservation_id="r" * 100_000)), "reservation_id"),
        (
            lambda s: s.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="t" * 100_000), estimate_usd="1")),
            "scopes.team",
        ),
    ],
)
def test_a_huge_bad_value_gets_a_short_message_quoting_at_most_80_characters_of_it(
    server: RunningSidecar, call: Call, field: str
) -> None:
    """gRPC drops a status message larger than its metadata limit and answers RESOURCE_EXHAUSTED; a
    refusal quotes a bounded part of the value, so the client sees INVALID_ARGUMENT and the field."""
    details = refused(server, call, grpc.StatusCode.INVALID_ARGUMENT, field)
    assert len(details) < 400, details


def test_an_amount_finer_than_any_precision_is_rounded_up_to_a_micro_dollar(server: RunningSidecar) -> None:
    server.stub.CreateBudget(pb_budget("b", scope_id="search"))
    r = server.stub.Reserve(pb.ReserveRequest(scopes=ALL, estimate_usd="1e-1000000000"))
    assert (r.decision, r.reserved_usd) == (pb.DECISION_ALLOW, "0.000001")
    done = server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="0.1e-999999"))
    assert done.charged_usd == "0.000001"


def test_a_report_whose_token_sums_pass_int64_is_failed_precondition_not_internal(
    server: RunningSidecar,
) -> None:
    """Rows written before the bounds existed (by another process on the same store) may carry
    2^63 - 1 tokens each; their exact sum does not fit UsageTotals' int64 and the report says so."""
    other = Ledger(server.backing.open())
    big = 2**63 - 1
    for usage_id in ("a", "b"):
        other.store.record_usage(
            RecordUsageCommand(
                usage_id=usage_id, scopes=ScopeSet(organization="acme", team="search"),
                cost_usd=Decimal(1), usage=UsageFacts(input_tokens=big),
            ),
            now_ms=server.clock.now_ms(),
        )  # fmt: skip
    details = refused(
        server,
        lambda s: s.GetUsage(pb.GetUsageRequest()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "the report's input_tokens add up to",
    )
    assert "narrower filter" in details
    # A report that leaves those rows out is served.
    assert server.stub.GetUsage(pb.GetUsageRequest(model="none")).total.records == 0
