"""Scope grants: what ``team=search``, ``agent=support-*``, ``team=*`` and ``*`` cover, read and write."""

from __future__ import annotations

import pytest

from collector_processor.auth.grants import ALL, Grants, parse_grant, parse_grants
from collector_processor.domain.budgets import Scope, ScopeSet
from collector_processor.errors import InvalidRequestError

TEAM, AGENT, USER = Scope.TEAM, Scope.AGENT, Scope.USER


@pytest.mark.parametrize(
    ("grant", "scope", "scope_id", "covered"),
    [
        ("team=search", TEAM, "search", True),
        ("team=search", TEAM, "search-2", False),
        ("team=search", TEAM, "Search", False),
        ("team=search", AGENT, "search", False),
        ("agent=support-*", AGENT, "support-bot", True),
        ("agent=support-*", AGENT, "support-", True),
        ("agent=support-*", AGENT, "supporter", False),
        ("team=*", TEAM, "anything", True),
        ("team=*", USER, "anything", False),
        ("*", USER, "anyone", True),
    ],
)
def test_a_grant_covers_exactly_its_ids(grant: str, scope: Scope, scope_id: str, covered: bool) -> None:
    assert parse_grant(grant).covers(scope, scope_id) is covered


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("search", "must be <scope>=<id>"),
        ("tenant=search", "unknown scope 'tenant'"),
        ("team=", "the id pattern must be"),
        ("team=se*ch", "the id pattern must be"),
        ("team=a b", "the id pattern must be"),
        ("team=" + "x" * 300, "the id pattern must be"),
    ],
)
def test_a_malformed_grant_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_grants(["team=ok", text])
    assert str(info.value).startswith("grants[1]: ")
    assert message in str(info.value)
    assert len(str(info.value)) < 300  # a huge value is not echoed whole


def test_a_request_is_inside_only_when_every_id_it_names_is_granted() -> None:
    grants = parse_grants(["team=search", "user=*"])
    assert grants.outside(ScopeSet(team="search", user="u1")) is None
    assert grants.outside(ScopeSet(team="search", user="u1", agent="planner")) == (AGENT, "planner")
    assert grants.outside(ScopeSet(team="billing")) == (TEAM, "billing")


def test_a_record_is_visible_through_a_named_id_or_when_all_its_ids_are_granted() -> None:
    grants = parse_grants(["team=search"])
    assert grants.sees(ScopeSet(team="search", user="someone"))
    assert not grants.sees(ScopeSet(team="billing", user="someone"))
    assert not grants.sees(ScopeSet())
    service = parse_grants(["team=search", "user=*"])
    assert service.sees(ScopeSet(team="search", user="u1"))
    assert not service.sees(ScopeSet(team="billing", user="u1"))  # user=* alone does not reveal billing
    assert service.sees(ScopeSet(user="u1"))  # nothing in it is outside the grants
    assert parse_grants(["agent=support-*"]).sees(ScopeSet(agent="support-bot", team="x"))
    assert ALL.sees(ScopeSet(team="anything"))


def test_a_wildcard_budget_is_covered_only_by_a_wildcard_grant() -> None:
    assert parse_grants(["team=*"]).covers_target(TEAM, None)
    assert not parse_grants(["team=search"]).covers_target(TEAM, None)
    assert parse_grants(["team=search"]).covers_target(TEAM, "search")
    assert ALL.covers_target(USER, None)


@pytest.mark.parametrize(
    ("inner", "outer", "within"),
    [
        (["team=search"], ["team=search"], True),
        (["team=search"], ["team=*"], True),
        (["agent=support-bot"], ["agent=support-*"], True),
        (["agent=support-*"], ["agent=sup*"], True),
        (["agent=sup*"], ["agent=support-*"], False),
        (["team=*"], ["team=search"], False),
        (["team=search-*"], ["team=search"], False),
        (["*"], ["team=*"], False),
        (["team=search", "user=*"], ["*"], True),
        (["team=search", "team=billing"], ["team=search"], False),
    ],
)
def test_delegation_never_widens(inner: list[str], outer: list[str], within: bool) -> None:
    assert parse_grants(inner).within(parse_grants(outer)) is within


def test_unrestricted_means_every_id_of_every_scope() -> None:
    assert ALL.unrestricted
    assert parse_grants([f"{s.value}=*" for s in Scope]).unrestricted
    assert not parse_grants(["team=*", "user=*"]).unrestricted
    assert not Grants().unrestricted
