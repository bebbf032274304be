"""The authorization rules as a table: every role against every action, and every RPC has an action."""

from __future__ import annotations

import pytest

from collector_processor.auth.grants import ALL, parse_grants
from collector_processor.auth.policy import RPC_ACTIONS, Action, authorize, authorize_scopes, authorize_target
from collector_processor.auth.principal import Principal, Role
from collector_processor.domain.budgets import Scope, ScopeSet
from paymaster.v1 import budget_pb2 as pb

ALLOWED: dict[Role, set[Action]] = {
    Role.ADMIN: {
        Action.MANAGE_BUDGETS,
        Action.READ,
        Action.MANAGE_TOKENS,
        Action.READ_AUDIT,
        Action.SCRAPE_METRICS,
    },
    Role.SPENDER: {Action.SPEND},
    Role.INGESTER: {Action.INGEST},
    Role.READER: {Action.READ, Action.SCRAPE_METRICS},
}


def principal(*roles: Role, grants: tuple[str, ...] = ("*",)) -> Principal:
    return Principal(name="p", roles=frozenset(roles), grants=parse_grants(grants))


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", list(Action))
def test_each_role_may_do_exactly_its_actions(role: Role, action: Action) -> None:
    denial = authorize(principal(role), action)
    if action in ALLOWED[role]:
        assert denial is None
    else:
        assert denial is not None and denial.reason == "role"
        assert role.value in denial.message and "needs the role" in denial.message


def test_every_rpc_of_the_proto_has_an_action_and_no_other_name_does() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["BudgetService"].methods}
    assert set(RPC_ACTIONS) == methods


def test_roles_add_up() -> None:
    both = principal(Role.SPENDER, Role.READER)
    assert authorize(both, Action.SPEND) is None and authorize(both, Action.READ) is None
    assert authorize(both, Action.MANAGE_BUDGETS) is not None


def test_a_scope_outside_the_grants_is_named_back() -> None:
    p = principal(Role.SPENDER, grants=("team=search",))
    denial = authorize_scopes(p, ScopeSet(team="billing"))
    assert denial is not None
    assert denial.message.startswith("scopes.team: p is not granted team='billing'")
    assert authorize_scopes(p, ScopeSet(team="search")) is None


def test_a_budget_outside_the_grants_reads_as_unknown() -> None:
    p = principal(Role.READER, grants=("team=search",))
    denial = authorize_target(p, Scope.TEAM, "billing", "budget 'b1'")
    assert denial is not None and denial.not_found and "billing" not in denial.message
    assert authorize_target(principal(Role.READER, grants=("*",)), Scope.TEAM, None, "x") is None
    assert ALL.covers_target(Scope.TEAM, None)
