"""One vocabulary for the budget API's enums and one JSON shape for its messages, shared by the CLI
and the HTTP/JSON API."""

from __future__ import annotations

import json

import pytest

from paymaster import vocabulary
from paymaster.v1 import budget_pb2 as pb
from paymaster.vocabulary import enum_number, enum_word, to_json, words
from tests.fresh import loads_module


@pytest.mark.parametrize(
    ("enum", "listed"),
    [
        (pb.Scope, vocabulary.SCOPES),
        (pb.OnExceed, vocabulary.ON_EXCEED),
        (pb.Decision, vocabulary.DECISIONS),
        (pb.Dimension, vocabulary.DIMENSIONS),
        (pb.ReservationState, vocabulary.RESERVATION_STATES),
        (pb.AlertKind, vocabulary.ALERT_KINDS),
    ],
)
def test_the_listed_words_are_the_protos_enums_without_their_prefix(
    enum: object, listed: tuple[str, ...]
) -> None:
    assert tuple(words(enum)) == listed
    for word in listed:
        assert enum_word(enum, enum_number(enum, word)) == word


def test_a_word_round_trips_and_an_unknown_one_lists_the_choices() -> None:
    assert enum_word(pb.OnExceed, pb.ON_EXCEED_WARN) == "warn"
    assert enum_word(pb.Scope, pb.SCOPE_ORGANIZATION) == "organization"
    assert enum_word(pb.Scope, pb.SCOPE_UNSPECIFIED) is None
    assert enum_word(pb.Scope, 99) is None  # a value from a newer sidecar
    assert enum_number(pb.Dimension, "model") == pb.DIMENSION_MODEL
    for bad in ("galaxy", "TEAM", "unspecified", "SCOPE_TEAM"):
        with pytest.raises(ValueError, match="expected one of organization, team, agent, workflow, user"):
            enum_number(pb.Scope, bad)


def test_every_field_is_present_under_its_proto_name_null_when_unset() -> None:
    budget = pb.Budget(id="b", scope=pb.SCOPE_TEAM, limit_usd="12.50", on_exceed=pb.ON_EXCEED_DOWNGRADE)
    budget.created_at.FromMilliseconds(1_741_910_400_250)
    shown = to_json(budget)
    assert shown == {
        "id": "b", "name": "", "scope": "team", "scope_id": None, "limit_usd": "12.50", "period": "",
        "time_zone": "", "on_exceed": "downgrade", "alert_thresholds": [], "enabled": None,
        "declared_in_config": False, "created_at": "2025-03-14T00:00:00.250Z", "updated_at": None,
        "tiers": [],
    }  # fmt: skip
    assert json.loads(json.dumps(shown)) == shown


def test_counts_are_numbers_money_strings_and_nested_messages_objects() -> None:
    report = pb.GetUsageResponse(
        total=pb.UsageTotals(cost_usd="0.300000", input_tokens=2**40, records=3),
        rows=[pb.UsageRow(key=["search"], totals=pb.UsageTotals(cost_usd="0.300000", records=3))],
    )
    shown = to_json(report)
    assert shown["total"] == {"cost_usd": "0.300000", "input_tokens": 2**40, "output_tokens": 0,
                              "total_tokens": 0, "records": 3}  # fmt: skip
    assert shown["rows"][0]["key"] == ["search"] and shown["rows"][0]["totals"]["records"] == 3
    status = to_json(pb.BudgetStatus(alerts_fired=[50, 80]))
    assert status["budget"] is None and status["alerts_fired"] == [50, 80] and status["period_start"] is None
    request = to_json(pb.GetUsageRequest(group_by=[pb.DIMENSION_TEAM, pb.DIMENSION_DAY]))
    assert request["group_by"] == ["team", "day"]
    created = to_json(pb.CreateTokenRequest(name="n", expires_in={"seconds": 90}))
    assert created["expires_in"] == 90


def test_importing_the_sdk_loads_no_protobuf() -> None:
    assert not loads_module("import paymaster, paymaster.vocabulary", "google.protobuf")
