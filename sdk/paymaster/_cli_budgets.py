"""The parts of ``paymaster budgets`` for tiered budgets and request budgets.

``--tiers 50:warn,80:downgrade,100:block`` is how the command line writes a budget's tiers (the same
list as ``tiers = [{at = 50, action = "warn"}, ...]`` in ``sidecar.toml`` and ``Budget.tiers`` in the
API), and ``paymaster budgets status --request ID`` prints a live request budget: its limit, what is
spent and held, when it expires, and its spend by service.
"""

from __future__ import annotations

import argparse
from typing import Any

from paymaster.cli import CliError, emit, table

__all__ = ["parse_tiers", "request_status", "tiers_text"]

_ACTIONS = ("warn", "downgrade", "block")


def parse_tiers(pb: Any, text: str, flag: str = "--tiers") -> list[Any]:
    """``50:warn,80:downgrade`` as ``Tier`` messages; an empty string is no tiers."""
    tiers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        at, sep, action = item.partition(":")
        if not sep or not at.strip().isdigit() or action.strip() not in _ACTIONS:
            raise CliError(
                f"{flag}: expected PERCENT:ACTION items separated by commas (action one of "
                f"{', '.join(_ACTIONS)}), e.g. 50:warn,80:downgrade,100:block; got {item!r}",
                2,
            )
        tiers.append(
            pb.Tier(at_percent=int(at), action=pb.OnExceed.Value(f"ON_EXCEED_{action.strip().upper()}"))
        )
    return tiers


def tiers_text(pb: Any, tiers: Any) -> str:
    """``50:warn,80:downgrade,100:block``."""
    return ",".join(
        f"{t.at_percent}:{pb.OnExceed.Name(t.action).removeprefix('ON_EXCEED_').lower()}" for t in tiers
    )


def request_status(args: argparse.Namespace, client: Any) -> None:
    """``paymaster budgets status --request ID``."""
    from google.protobuf.json_format import MessageToDict

    pb = client.pb
    status = client.call("GetBudgetStatus", pb.GetBudgetStatusRequest(request_budget_id=args.request))
    emit(
        args,
        dict(MessageToDict(status, preserving_proto_field_name=True)),
        lambda: _request_table(pb, status),
    )


def _request_table(pb: Any, s: Any) -> str:
    from paymaster.cli import _time

    r = s.request
    rows = [
        ("request budget", f"{r.id} ({r.name})" if r.name and r.name != r.id else r.id),
        ("inside", " < ".join(r.ancestor_ids) or "-"),
        ("limit USD", r.limit_usd),
        ("tiers", tiers_text(pb, s.budget.tiers) or "block at 100%"),
        ("used USD", s.used_usd),
        ("reserved USD", s.reserved_usd),
        ("remaining USD", s.remaining_usd),
        ("used %", s.percentage),
        ("exceeded", "yes" if s.exceeded else "no"),
        ("opened", _time(s.period_start)),
        ("expires if idle", _time(s.period_end)),
        ("idle TTL", f"{r.idle_ttl.ToTimedelta().total_seconds():g} s"),
    ]
    out = table(("FIELD", "VALUE"), rows)
    if r.by_service:
        spend = table(
            ("SERVICE", "USED USD"), [(line.service or "(unnamed)", line.used_usd) for line in r.by_service]
        )
        out += "\n\n" + spend
    return out
