"""Request budgets in the Redis store: what one replica knows of them, and how it names them to the
functions.

A request budget's definition (limit, tiers, idle TTL, ancestors) is fixed for one incarnation of its
id, so a replica reads it once from ``P:rq`` and keeps it; its standing and expiry live in its state
hash and are read only inside the functions. A function that is handed an incarnation the id has left
(reopened since) answers ``REQUEST`` before anything else, and the replica reads the id again
(``forget``). A reservation's request budgets are its hold keys ``~rq@<created>/<id>`` (``codec``), so
its commit, release and expiry need nothing but those.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from collector_processor.domain.decisions import BudgetState
from collector_processor.domain.requests import RequestBudget, request_state
from collector_processor.store.redis.codec import (
    REQUEST_PREFIX,
    gone_spec,
    request_from_json,
    request_hold_key,
    request_spec,
)
from collector_processor.store.redis.link import RedisLink

__all__ = ["Chain", "RequestBook", "open_states", "parse_request_key", "request_keys", "states_of"]

Chain = list[RequestBudget | str]
"""A request budget and its ancestors, innermost first; an id this replica cannot find stands for a
budget that is not open."""
_REMEMBERED = 100_000


def parse_request_key(key: str) -> tuple[str, int] | None:
    """``(id, created)`` of a request budget's hold key, or ``None`` for a budget's."""
    if not key.startswith(REQUEST_PREFIX):
        return None
    created, request_id = key[len(REQUEST_PREFIX) :].split("/", 1)
    return request_id, int(created)


def request_keys(holds: str) -> list[str]:
    """The request-budget hold keys among a reservation's holds (newline-separated), in order."""
    return [h for h in holds.split("\n") if h.startswith(REQUEST_PREFIX)]


class RequestBook:
    """Definitions of request budgets this replica has seen, by id; safe to use from many threads."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._p = link.prefix
        self._known: dict[str, RequestBudget] = {}
        self._lock = threading.Lock()

    @property
    def fixed_keys(self) -> tuple[str, str]:
        """``P:rqc`` (checked for reopened ids) and ``P:qdue`` (expiry): every function handed a
        request budget may touch them."""
        return f"{self._p}:rqc", f"{self._p}:qdue"

    def state_key(self, budget: RequestBudget) -> str:
        return f"{self._p}:s:{request_hold_key(budget)}"

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._known.pop(request_id, None)

    def remember(self, budget: RequestBudget) -> None:
        with self._lock:
            if len(self._known) >= _REMEMBERED:
                del self._known[next(iter(self._known))]
            self._known[budget.id] = budget

    def get(self, request_id: str) -> RequestBudget | None:
        with self._lock:
            known = self._known.get(request_id)
        if known is not None:
            return known
        text = self._link.call(lambda: self._link.client.hget(f"{self._p}:rq", request_id))
        if text is None:
            return None
        found = request_from_json(request_id, text)
        self.remember(found)
        return found

    def chain(self, request_id: str) -> Chain:
        """The request budget and its ancestors as this replica knows them."""
        first = self.get(request_id)
        if first is None:
            return [request_id]
        out: Chain = [first]
        for ancestor in first.chain:
            out.append(self.get(ancestor) or ancestor)
        return out

    def specs(self, chain: Chain, service: str, keys: list[str]) -> list[str]:
        """The functions' specs of ``chain`` (charging ``service``), its state keys added to ``keys``."""
        out: list[str] = []
        for member in chain:
            if isinstance(member, str):
                out += gone_spec(member)
                keys.append(f"{self._p}:s:{REQUEST_PREFIX}0/{member}")
            else:
                out += request_spec(member, service=service)
                keys.append(self.state_key(member))
        keys.extend(self.fixed_keys)
        return out

    def held(self, hold_keys: Sequence[str]) -> Chain:
        """The request budgets a reservation holds on, from its hold keys: each the incarnation it held
        on (one whose definition this replica cannot find any more has expired: it stands as a key)."""
        out: Chain = []
        for key in hold_keys:
            parsed = parse_request_key(key)
            assert parsed is not None
            request_id, created = parsed
            found = self.get(request_id)
            if found is not None and found.created_ms != created:
                self.forget(request_id)  # reopened since: the reservation's is the old one
                found = None
            out.append(found if found is not None else key)
        return out

    def held_specs(self, chain: Chain, service: str, keys: list[str]) -> list[str]:
        """Specs of a reservation's request budgets; one whose definition is gone keeps its own key, so
        the function finds it expired (not open) and leaves it alone."""
        out: list[str] = []
        for member in chain:
            if isinstance(member, str):
                spec = gone_spec(member)
                spec[0] = member
                out += spec
                keys.append(f"{self._p}:s:{member}")
            else:
                out += request_spec(member, service=service)
                keys.append(self.state_key(member))
        keys.extend(self.fixed_keys)
        return out


def states_of(chain: Chain, reply: Sequence[Any], offset: int, now_ms: int) -> list[BudgetState] | str:
    """The standing of ``chain`` a function answered from ``offset`` on (used, reserved pairs; ``-``
    for one that is not open): the states, or the id of the first budget that is not open."""
    out = []
    for i, member in enumerate(chain):
        used, reserved = reply[offset + 2 * i], reply[offset + 2 * i + 1]
        if isinstance(member, str) or used == "-":
            if isinstance(member, str):
                parsed = parse_request_key(member)
                return parsed[0] if parsed is not None else member
            return member.id
        out.append(request_state(member, int(used), int(reserved), now_ms))
    return out


def open_states(chain: Chain, reply: Sequence[Any], offset: int, now_ms: int) -> list[BudgetState]:
    """The states of the budgets of ``chain`` that are open (after a charge: one that expired is left out)."""
    out = []
    for i, member in enumerate(chain):
        used, reserved = reply[offset + 2 * i], reply[offset + 2 * i + 1]
        if isinstance(member, RequestBudget) and used != "-":
            out.append(request_state(member, int(used), int(reserved), now_ms))
    return out
