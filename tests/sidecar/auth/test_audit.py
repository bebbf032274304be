"""Every change to budgets and tokens is in the store's audit log (who, when, from where, before and
after), filtered to an admin's grants, and emitted as an OpenTelemetry log record — never a secret."""

from __future__ import annotations

import json
from collections.abc import Callable

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.auth.conftest import Caller
from tests.sidecar.conftest import RunningSidecar, pb_budget


def test_budget_and_token_changes_are_audited_with_before_and_after(
    authed: RunningSidecar, as_: Callable[[str], Caller]
) -> None:
    admin, root = as_("admin"), as_("root")
    admin("CreateBudget", pb_budget("b-search", scope_id="search", limit="5"))
    admin("UpdateBudget", pb.UpdateBudgetRequest(id="b-search", limit_usd="7.5"))
    root("CreateBudget", pb_budget("b-billing", scope_id="billing", limit="9"))
    made = admin("CreateToken", pb.CreateTokenRequest(name="ci", roles=["spender"], grants=["team=search"]))
    admin("RevokeToken", pb.RevokeTokenRequest(id=made.token.id))
    admin("DeleteBudget", pb.DeleteBudgetRequest(id="b-search"))

    events = root("ListAuditEvents", pb.ListAuditEventsRequest()).events
    assert [(e.principal, e.action, e.target) for e in events] == [
        ("admin", "budget.create", "b-search"),
        ("admin", "budget.update", "b-search"),
        ("root", "budget.create", "b-billing"),
        ("admin", "token.create", made.token.id),
        ("admin", "token.revoke", made.token.id),
        ("admin", "budget.delete", "b-search"),
    ]
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert all(e.address.startswith(("ipv4:127.0.0.1:", "ipv6:")) for e in events)
    update = events[1]
    assert (
        json.loads(update.before_json)["limit_usd"] == "5"
        and json.loads(update.after_json)["limit_usd"] == "7.5"
    )
    assert events[0].before_json == "" and events[-1].after_json == ""
    revoke = events[4]
    assert (
        json.loads(revoke.before_json)["revoked_ms"] is None and json.loads(revoke.after_json)["revoked_ms"]
    )
    text = repr(events)
    assert made.secret not in text and "secret" not in text

    # the team admin sees its own team's changes and tokens, not billing's
    mine = admin("ListAuditEvents", pb.ListAuditEventsRequest()).events
    assert "b-billing" not in {e.target for e in mine} and len(mine) == 5
    page = root("ListAuditEvents", pb.ListAuditEventsRequest(after_sequence=events[1].sequence, page_size=2))
    assert [e.target for e in page.events] == ["b-billing", made.token.id]
    assert page.next_after_sequence == events[3].sequence

    records = [
        r.log_record for r in authed.logs.get_finished_logs() if r.log_record.event_name == "paymaster.audit"
    ]
    assert [
        (r.attributes["paymaster.audit.principal"], r.attributes["paymaster.audit.action"]) for r in records
    ] == [(e.principal, e.action) for e in events]
    assert records[0].attributes["paymaster.team"] == "search"
    assert all(made.secret not in str(r.attributes) for r in records)
