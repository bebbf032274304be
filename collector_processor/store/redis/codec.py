"""The Redis store's key layout and the encodings of what it keeps there.

Every key of one ledger starts with the hash tag ``{<namespace>}`` (``{paymaster}`` by default), so on
a Redis Cluster the whole ledger lives in one hash slot and every script can touch every key it needs
atomically. That is deliberate: a request may match any combination of budgets (an organization's, a
team's, a user's), and only a single slot lets Redis hold or charge all of them in one step. Separate
ledgers (namespaces) spread over the cluster's slots. ``P`` below is ``{<namespace>}``.

=================================  ========  ======================================================
key                                type      holds
=================================  ========  ======================================================
``P:meta``                         hash      ``version`` (bumped by every budget change, checked by
                                             every script), ``schema``
``P:budgets``                      hash      budget id -> definition (JSON, with its generation)
``P:s:<id>@<gen>/<entity>``        hash      one budget's state for one entity: ``r`` (reserved),
                                             ``u:<bucket>`` (spend per calendar period or rolling
                                             bucket), ``t`` (rolling total), ``a:<period>:<pct>``
                                             (alert marks: the once-per-period de-duplication)
``P:z:<id>@<gen>/<entity>``        zset      rolling windows: bucket starts, to retire old buckets
``P:ents:<id>@<gen>``              set       entities with state (housekeeping)
``P:dead``                         set       ``<id>@<gen>`` of deleted budgets awaiting collection
``P:r:<reservation id>``           hash      a reservation: state, scopes, held amount, its holds
                                             (state-key suffixes), decision, expiry, what was charged
``P:due``                          zset      held reservations by expiry (ms)
``P:settled``                      zset      settled reservations by settle time (retention)
``P:idem``                         hash      Reserve idempotency key -> reservation id
``P:bk``                           zset      batch item keys ``<instant>:<uid hex>`` by instant (the
                                             per-item idempotency of ``record_usage_batch``)
``P:ser``, ``P:sert``              hash,     batch series id -> largest totals; series ids by last
                                   zset      growth (retention)
``P:u``                            hash      usage id -> usage record (fields joined by ``\\x1f``)
``P:ut``                           zset      usage ids by time (ms): reports and retention
``P:alert``                        hash      the alert log: sequence -> one alert (JSON)
``P:alerts:lease``                 hash      sequence -> ``<owner> <until ms>``: a delivery lease
``P:alerts``                       zset      the alert log by sequence
``P:alerts:pending``               zset      undelivered alerts; ``P:alerts:fired`` by fire time;
                                             ``P:alerts:b:<id>`` one budget's alerts
``P:alerts:seq``                   string    the last alert sequence issued
``P:rq``, ``P:rqc``                hash,     request budget id -> its definition (JSON); -> the
                                   hash      ``created`` of its live incarnation
``P:s:~rq@<created>/<id>``         hash      one request budget's state: ``u:0`` (spend), ``r``,
                                             ``e`` (expires unless renewed), ``v:<service>`` and
                                             ``vn`` (spend per service, how many services)
``P:qdue``                         zset      ``<id>@<created>`` of request budgets by expiry (ms)
=================================  ========  ======================================================

Budget ids cannot contain ``@`` or ``/`` and entities are printable (no newline), so the state-key
suffix ``<id>@<gen>/<entity>`` is unambiguous and a reservation's holds are its suffixes joined by
newlines. The generation keeps a re-created budget apart from the spend and holds of a deleted one.
A request budget's suffix is ``~rq@<created>/<id>`` (``~`` is in no budget id): it reads as a budget
``~rq`` of generation ``<created>`` for the entity ``<id>``, so holds, releases and expiry treat it
like any other, and an id reopened after it expired is a new incarnation its old holds never touch.

Every function is handed the keys it touches (see ``scripts``): ``FixedKeys`` are the ones whose names
never change, ``state_keys`` those of one budget and entity, ``hold_keys`` those of a reservation's holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from collector_processor.domain.budgets import Budget, OnExceed, Scope, ScopeSet, decode_tiers, encode_tiers
from collector_processor.domain.periods import parse_period
from collector_processor.domain.requests import RequestBudget
from collector_processor.domain.types import UsageFacts
from collector_processor.store.index import LiveBudget
from paymaster.exceptions import quote

__all__ = [
    "ACTION_LETTER",
    "FixedKeys",
    "action_code",
    "budget_body",
    "budget_from_json",
    "budget_json",
    "check_namespace",
    "facts_args",
    "gone_spec",
    "hold_key",
    "hold_keys",
    "parse_hold_key",
    "parse_sentinel_url",
    "request_from_json",
    "request_hold_key",
    "request_json",
    "request_spec",
    "scope_args",
    "spec",
    "state_keys",
]

_NAMESPACE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
ACTION_LETTER = {OnExceed.BLOCK: "b", OnExceed.WARN: "w", OnExceed.DOWNGRADE: "d"}
SEP = "\x1f"


_SENTINEL_URL = re.compile(
    r"redis\+sentinel://(?:(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@)?(?P<hosts>[^/@]+)/(?P<service>[^/]+)(?:/(?P<db>[0-9]+))?"
)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the sentinels, the
    monitored service, the database and the primary's credentials; ``ValueError`` otherwise."""
    match = _SENTINEL_URL.fullmatch(url)
    if match is None:
        raise ValueError("must be redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]")
    hosts = []
    for item in match.group("hosts").split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel {quote(item)} must be host:port")
        hosts.append((host, int(port)))
    return (
        hosts,
        match.group("service"),
        int(match.group("db") or 0),
        match.group("user") or None,
        match.group("password"),
    )


def check_namespace(namespace: str) -> str:
    """A namespace is the hash tag of every key: 1-64 characters of A-Z a-z 0-9 . _ : -."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"must be 1-64 characters of A-Z a-z 0-9 . _ : -, got {quote(namespace)}")
    return namespace


def budget_body(b: Budget) -> dict[str, Any]:
    return {
        "id": b.id,
        "name": b.name,
        "scope": b.scope.value,
        "scope_id": b.scope_id,
        "limit_usd": str(b.limit_usd),
        "period": b.period.spec,
        "time_zone": b.time_zone,
        "on_exceed": b.on_exceed.value,
        "alert_thresholds": list(b.alert_thresholds),
        "tiers": encode_tiers(b.tiers),
        "enabled": b.enabled,
        "declared_in_config": b.declared_in_config,
        "created_ms": b.created_ms,
        "updated_ms": b.updated_ms,
    }


def budget_json(b: Budget, *, with_generation: bool) -> str:
    """The stored definition; without the generation, its closing brace is left off for the script
    that assigns the generation to append it."""
    text = json.dumps(budget_body(b), separators=(",", ":"))
    if with_generation:
        return text[:-1] + f',"generation":{b.generation}}}'
    return text[:-1]


def budget_from_json(text: str) -> Budget:
    d = json.loads(text)
    return Budget(
        id=d["id"],
        name=d["name"],
        scope=Scope(d["scope"]),
        scope_id=d["scope_id"],
        limit_usd=Decimal(d["limit_usd"]),
        period=parse_period(d["period"]),
        time_zone=d["time_zone"],
        on_exceed=OnExceed(d["on_exceed"]),
        alert_thresholds=tuple(int(t) for t in d["alert_thresholds"]),
        tiers=decode_tiers(d.get("tiers", "")),
        enabled=bool(d["enabled"]),
        declared_in_config=bool(d["declared_in_config"]),
        generation=int(d["generation"]),
        created_ms=int(d["created_ms"]),
        updated_ms=int(d["updated_ms"]),
    )


def action_code(b: Budget) -> str:
    """How a function reads a budget's action: one letter (``b``, ``w``, ``d``) for a single-action
    budget, its tiers ascending (``50w,80d,100b``) for a tiered one."""
    if not b.tiers:
        return ACTION_LETTER[b.on_exceed]
    return ",".join(f"{t.at}{ACTION_LETTER[t.action]}" for t in b.tiers)


REQUEST_PREFIX = "~rq@"


def request_hold_key(r: RequestBudget) -> str:
    """The state-key suffix of one incarnation of a request budget."""
    return f"{REQUEST_PREFIX}{r.created_ms}/{r.id}"


def request_spec(r: RequestBudget, *, service: str = "") -> list[str]:
    """A request budget as a function's spec: one bucket (``u:0``), never rolling nor alerting;
    ``pk`` carries its idle TTL, ``ws`` when it was opened, ``meta`` the service being charged."""
    return [
        request_hold_key(r), r.id, r.id, str(r.limit_micros), action_code(r.as_budget()), "1", "q", "0", "0",
        "", str(r.idle_ttl_ms), str(r.created_ms), "0", service,
    ]  # fmt: skip


def gone_spec(request_id: str) -> list[str]:
    """The spec of a request budget this replica cannot find: its (empty) key reads as not open."""
    return [
        f"{REQUEST_PREFIX}0/{request_id}",
        request_id,
        request_id,
        "0",
        "b",
        "1",
        "q",
        "0",
        "0",
        "",
        "0",
        "0",
        "0",
        "",
    ]


def request_json(r: RequestBudget, fingerprint: str) -> str:
    """The stored definition of a request budget (``P:rq``)."""
    body = {
        "c": r.created_ms, "n": r.name, "ch": list(r.chain), "l": r.limit_micros, "ti": encode_tiers(r.tiers),
        "o": r.owner, "x": r.idle_ttl_ms, "fp": fingerprint,
    }  # fmt: skip
    return json.dumps(body, separators=(",", ":"))


def request_from_json(request_id: str, text: str) -> RequestBudget:
    d = json.loads(text)
    return RequestBudget(
        id=request_id, name=d["n"], chain=tuple(d["ch"]), limit_micros=int(d["l"]), tiers=decode_tiers(d["ti"]),
        owner=d["o"], created_ms=int(d["c"]), idle_ttl_ms=int(d["x"]),
    )  # fmt: skip


def hold_key(b: Budget, entity: str) -> str:
    return f"{b.id}@{b.generation}/{entity}"


def parse_hold_key(key: str) -> tuple[str, int, str]:
    base, entity = key.split("/", 1)
    bid, gen = base.split("@", 1)
    return bid, int(gen), entity


def spec(live: LiveBudget, entity: str, *, now_ms: int, at_ms: int) -> list[str]:
    """What a script needs to know of one matching budget: its state key, limit and action, the
    bucket its standing is read from (now) and the one a charge made at ``at_ms`` goes into, and its
    alert thresholds with the period they fire once per (and the words of an alert's message)."""
    b = live.budget
    period = b.period
    rolling = period.is_rolling
    points = b.alert_points
    if points and b.enabled:
        window = period.window(now_ms if rolling else at_ms, live.tz)
        alerting = [
            ",".join(str(t) for t in points),
            "0" if rolling else str(window.start_ms),
            str(window.start_ms),
            str(window.end_ms),
            SEP.join(
                (b.name, b.scope.value, b.on_exceed.value, period.spec, b.time_zone, encode_tiers(b.tiers))
            ),
        ]
    else:
        alerting = ["", "0", "0", "0", ""]
    return [
        hold_key(b, entity),
        b.id,
        entity,
        str(live.limit),
        action_code(b),
        "1" if b.enabled else "0",
        "1" if rolling else "0",
        str(period.lowest_bucket(now_ms, live.tz)),
        str(period.bucket_of(at_ms, live.tz)),
        *alerting,
    ]


@dataclass(frozen=True, slots=True)
class FixedKeys:
    """The keys whose names do not depend on a request, grouped by the functions that touch them."""

    due: tuple[str, ...]
    """``P:due``: every money function checks it for overdue reservations."""
    settle: tuple[str, ...]
    """``P:due``, ``P:settled``: settling a reservation."""
    reserve: tuple[str, ...]
    """``P:idem``: Reserve's idempotency keys."""
    charge: tuple[str, ...]
    """Usage records and the alert log: what charging spend (and firing alerts) writes."""
    batch: tuple[str, ...]
    """Batch item keys and series."""
    alerts: tuple[str, ...]
    """Pending alerts and their delivery leases."""

    @classmethod
    def of(cls, p: str) -> FixedKeys:
        return cls(
            due=(f"{p}:due",),
            settle=(f"{p}:due", f"{p}:settled"),
            reserve=(f"{p}:idem",),
            charge=(
                f"{p}:u",
                f"{p}:ut",
                *(f"{p}:{k}" for k in ("alerts:seq", "alert", "alerts", "alerts:pending", "alerts:fired")),
            ),
            batch=(f"{p}:bk", f"{p}:ser", f"{p}:sert"),
            alerts=(f"{p}:alerts:pending", f"{p}:alerts:lease"),
        )


def state_keys(p: str, live: LiveBudget, entity: str) -> list[str]:
    """The keys of one budget's state for one entity: what a function reading, holding on or charging
    it touches (its alert index too, when it has thresholds)."""
    b = live.budget
    key = hold_key(b, entity)
    keys = [f"{p}:s:{key}", f"{p}:z:{key}", f"{p}:ents:{b.id}@{b.generation}"]
    if b.alert_points:
        keys.append(f"{p}:alerts:b:{b.id}")
    return keys


def hold_keys(p: str, holds: str) -> list[str]:
    """The state keys of a reservation's holds (its ``holds`` field: state-key suffixes, one a line)."""
    return [f"{p}:s:{h}" for h in holds.split("\n") if h]


def scope_args(s: ScopeSet) -> list[str]:
    return [s.organization, s.team, s.agent, s.workflow, s.user]


def facts_args(f: UsageFacts) -> list[str]:
    return [
        f.provider,
        f.model,
        str(f.input_tokens),
        str(f.output_tokens),
        str(f.cache_read_tokens),
        str(f.cache_creation_tokens),
        str(f.reasoning_tokens),
    ]
