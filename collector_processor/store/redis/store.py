"""The Redis store: one ledger shared by any number of sidecar replicas, with no overspend.

Every operation that changes money or alert state is one Redis function (``scripts``), so Redis
runs it as one atomic step: a reservation reads the standing of every matching budget, decides and holds on all
of them or none; a commit swaps the hold for the actual spend, charges every budget and fires each
threshold once per period; releases, expiries and recorded usage likewise. No replica keeps a balance:
each function reads the standing it decides on inside Redis. Replicas cache only budget *definitions*,
and every call carries the version of the definitions it was built from; a replica whose cache is
stale is refused (``STALE``), reloads and tries again, so a budget created through any replica is
enforced by all of them from the next request on. Replicas also remember the (immutable) scopes of
reservations they made, to commit them in one round trip; the function checks them.

Expired reservations need no timer: a function that finds reservations whose TTL has passed answers
``RECLAIM`` before it reads anything, and the replica releases them (``expire_due``, one function handed
their keys) and runs it again, so whichever replica touches the ledger next reclaims them; each
replica's sweeper does so between requests. Every function is handed every key it touches (see
``scripts``).

The decision itself is ``collector_processor.domain.decisions``: the function applies the same rule to the
standing it read, returns that standing, and the store re-runs ``plan_reservation`` on it to build the
answer (reason, warnings, budget info), refusing to answer if the two disagree. The key layout is in
``codec``; Redis being unreachable is ``StoreUnavailableError`` (see ``link``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from redis.exceptions import ResponseError

from collector_processor.domain.access import AuditEvent, TokenRecord
from collector_processor.domain.budgets import Budget, BudgetPatch, Scope, ScopeSet
from collector_processor.domain.decisions import BudgetState, charged_infos, estimate_infos, plan_reservation
from collector_processor.domain.money import micros_to_usd, usd_to_micros
from collector_processor.domain.requests import (
    RequestBudget,
    RequestDraft,
    RequestStatus,
    by_service,
    closed_plan,
    not_open,
    opened,
)
from collector_processor.domain.types import (
    Alert,
    BudgetInfo,
    BudgetStatus,
    CheckOutcome,
    CommitCommand,
    CommitOutcome,
    Decision,
    RecordUsageCommand,
    RecordUsageOutcome,
    ReleaseOutcome,
    ReservationState,
    ReserveCommand,
    ReserveOutcome,
    UsageBatch,
    UsageBatchOutcome,
    UsageFacts,
)
from collector_processor.domain.usage import UsageRecord
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailableError,
)
from collector_processor.store.base import BudgetSpend, EntitySpend, UsageFilter, UsageRow
from collector_processor.store.index import BudgetIndex, LiveBudget
from collector_processor.store.redis import answers, housekeeping, reports
from collector_processor.store.redis.access import AccessRows
from collector_processor.store.redis.budgets import BudgetRows
from collector_processor.store.redis.codec import (
    REQUEST_PREFIX,
    SEP,
    FixedKeys,
    check_namespace,
    facts_args,
    hold_key,
    hold_keys,
    request_hold_key,
    request_json,
    scope_args,
    spec,
    state_keys,
)
from collector_processor.store.redis.link import RedisLink
from collector_processor.store.redis.requests import Chain, RequestBook, open_states, request_keys, states_of
from collector_processor.store.redis.schema import SCHEMA_VERSION, adopt_alerts, ensure_schema
from collector_processor.store.redis.scripts import SPEC_FIELDS
from collector_processor.store.shared import (
    check_fingerprint,
    check_outcome,
    deciding,
    entity_for,
    not_owner,
    reserve_outcome,
    status_from_state,
    total_out_of_range,
)
from paymaster.exceptions import quote

__all__ = ["SCHEMA_VERSION", "RedisStore", "check_namespace"]

log = logging.getLogger("paymaster.sidecar.store.redis")

_ATTEMPTS = 8
_REMEMBERED = 100_000
_EXACT_LIMIT = 2**53 - 1
"""The largest sum the batch function adds exactly (Lua numbers are doubles)."""
_SPEND_CHUNK = 500
"""(budget, entity) pairs read per call by ``budget_spend``, and reservations per pipeline."""
_RECLAIM = 1000
"""Overdue reservations released per call when a function finds some."""
Matched = list[tuple[LiveBudget, str]]
Build = Callable[[BudgetIndex, list[str]], list[str]]


class RedisStore:
    """``LedgerStore`` on Redis 7 (or a Redis Cluster with ``cluster=True``); ``namespace`` keeps
    several ledgers apart on one server and is the hash tag that puts a ledger in one slot. With
    ``wait_replicas``, a change is answered only once that many replicas have it (``WAIT``)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "paymaster",
        cluster: bool = False,
        socket_timeout_s: float = 2.0,
        connect_timeout_s: float = 1.0,
        max_connections: int = 64,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        health_interval_s: float = 1.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        try:
            check_namespace(namespace)
        except ValueError as exc:
            raise InvalidRequestError("namespace", str(exc)) from None
        self._link = RedisLink(
            url,
            namespace=namespace,
            cluster=cluster,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            health_interval_s=health_interval_s,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            on_reconnect=self._after_reconnect,
        )
        self.where = self._link.where
        self.namespace = namespace
        self._p = self._link.prefix
        self._client = self._link.client
        self._budgets = BudgetRows(self._link)
        self._access = AccessRows(self._link)
        self._k = FixedKeys.of(self._p)
        self._index = BudgetIndex((), version=-1)
        self._spec_cache: dict[tuple[int, str, int, int, int], tuple[LiveBudget, list[str], list[str]]] = {}
        self._remembered: dict[str, ScopeSet] = {}
        self._held_requests: dict[str, tuple[tuple[str, ...], str]] = {}
        """Reservations this replica made with request budgets: their hold keys and service."""
        self._remember_lock = threading.Lock()
        self._requests = RequestBook(self._link)
        self._config: list[Budget] | None = None
        try:
            self._link.call(self._init_meta)
        except StoreUnavailableError as exc:
            self._link.close()
            if self._link.available:  # reached, but refused: the message says why
                raise
            raise StoreUnavailableError(f"cannot reach Redis at {self.where} ({self._link.reason})") from exc
        self._link.start()

    @property
    def available(self) -> bool:
        """False while Redis cannot be reached; the sidecar reports NOT_SERVING meanwhile."""
        return self._link.available

    def _init_meta(self) -> None:
        try:
            self._link.load_functions()
        except ResponseError as exc:  # an old server, or an ACL that forbids FUNCTION LOAD
            raise StoreUnavailableError(
                f"Redis at {self.where} refused the ledger's function library ({exc}); Redis 7.0 or newer is "
                "needed, with FUNCTION LOAD allowed (see deploy/redis)"
            ) from None
        meta = f"{self._p}:meta"
        # A version that starts from the clock never repeats one a replica may have cached before the
        # data was lost, so a stale cache is always noticed.
        self._client.hsetnx(meta, "version", time.time_ns() // 1000)
        # A new namespace starts at the current schema; one an older sidecar wrote is upgraded in place.
        ensure_schema(self._link, self.namespace)

    def _after_reconnect(self) -> None:
        """Redis is back. If it came back empty (restarted without persistence), say so loudly and
        declare the config budgets again, so they are enforced even though their spend is lost."""
        if self._client.exists(f"{self._p}:meta"):
            return
        log.error(
            "the Redis store at %s came back without the ledger (namespace %r): spend, reservations and "
            "API-created budgets are lost; see deploy/redis for the persistence it needs",
            self.where,
            self.namespace,
        )
        self._init_meta()
        self._forget_index()
        if self._config is not None:
            self.sync_config_budgets(self._config, now_ms=time.time_ns() // 1_000_000)

    # -- plumbing --------------------------------------------------------------------------------
    def batch(self) -> AbstractContextManager[None]:
        """Each operation is its own atomic script; there is nothing to share."""
        return contextlib.nullcontext()

    def after_commit(self, fn: Callable[[], None]) -> None:
        fn()  # each script is durable when it returns

    def _forget_index(self) -> None:
        self._index = BudgetIndex((), version=-1)

    def _refresh(self) -> BudgetIndex:
        version, budgets = self._budgets.load()
        self._index = BudgetIndex(budgets, version=version)
        return self._index

    def _current(self) -> BudgetIndex:
        index = self._index
        return self._refresh() if index.version < 0 else index

    def _money(
        self, script: str, build: Build, now_ms: int, keys: Sequence[str] = ()
    ) -> tuple[BudgetIndex, list[Any]]:
        """Run a function built from the budget index, with ``keys`` and the keys ``build`` adds declared.
        Rebuild and retry while the index is stale; release overdue reservations and retry when the
        function says some are due; declare a reservation's holds and retry when it names them."""
        index = self._current()
        extra: list[str] = []
        for _ in range(_ATTEMPTS):
            declared = [*keys, *extra]
            reply: list[Any] = self._link.script(
                script, [str(index.version), *build(index, declared)], declared
            )
            kind = reply[0]
            if kind == "STALE":
                index = self._refresh()
            elif kind == "RECLAIM":
                while self.expire_due(now_ms=now_ms, limit=_RECLAIM) >= _RECLAIM:
                    pass
            elif kind == "KEYS":
                extra = hold_keys(self._p, reply[1])
            elif kind == "REQUEST":  # an id reopened since this replica read it
                self._requests.forget(reply[1])
            elif kind == "OVERFLOW":
                raise total_out_of_range(reply[1], reply[2])
            else:
                return index, reply
        raise StoreUnavailableError("the ledger kept changing while this request was tried; retry")

    def _specs(
        self, matched: Matched, now_ms: int, at_ms: int, keys: list[str], requests: Sequence[str] = ()
    ) -> list[str]:
        """What the functions need of each matched budget; the keys of its state are added to ``keys``.
        A spec changes only with the budget, the entity and the buckets read and charged, so most
        requests find theirs made already. ``requests``: request budgets' specs, appended."""
        out = [str(len(matched) + len(requests) // SPEC_FIELDS)]
        cache = self._spec_cache
        if len(cache) > 20_000:
            cache.clear()
        for live, entity in matched:
            period, tz = live.budget.period, live.tz
            # A rolling window's alerts name the window ending now, so their specs are good for one ms.
            moment = now_ms if period.is_rolling and live.budget.alert_points else 0
            key = (id(live), entity, period.lowest_bucket(now_ms, tz), period.bucket_of(at_ms, tz), moment)
            found = cache.get(key)
            if found is None or found[0] is not live:  # an id is only unique while its object lives
                made = spec(live, entity, now_ms=now_ms, at_ms=at_ms)
                found = cache[key] = (live, made, state_keys(self._p, live, entity))
            out += found[1]
            keys += found[2]
        out += requests
        return out

    @staticmethod
    def _states(
        matched: Matched, reply: Sequence[Any], offset: int, *, now_ms: int, at_ms: int
    ) -> list[BudgetState]:
        states = []
        for i, (live, entity) in enumerate(matched):
            period = live.budget.period
            states.append(
                BudgetState(
                    budget=live.budget,
                    entity=entity,
                    limit=live.limit,
                    used=int(reply[offset + 2 * i]),
                    reserved=int(reply[offset + 2 * i + 1]),
                    window=period.window(now_ms if period.is_rolling else at_ms, live.tz),
                )
            )
        return states

    def _remember(self, reservation_id: str, scopes: ScopeSet) -> None:
        with self._remember_lock:
            if len(self._remembered) >= _REMEMBERED:
                del self._remembered[next(iter(self._remembered))]
            self._remembered[reservation_id] = scopes

    def _scopes_of(self, reservation_id: str, *, fresh: bool = False) -> ScopeSet | None:
        """The scopes a reservation was made for (immutable), or ``None`` if it is unknown."""
        if not fresh:
            with self._remember_lock:
                known = self._remembered.get(reservation_id)
            if known is not None:
                return known
        packed = self._link.call(lambda: self._client.hget(f"{self._p}:r:{reservation_id}", "sc"))
        if packed is None:
            return None
        scopes = answers.unpack_scopes(packed)
        self._remember(reservation_id, scopes)
        return scopes

    def _requests_of(self, reservation_id: str, *, fresh: bool = False) -> tuple[tuple[str, ...], str]:
        """The request budgets a reservation holds on (hold keys) and the service it was made for."""
        if not fresh:
            with self._remember_lock:
                known = self._held_requests.get(reservation_id)
            if known is not None:
                return known
            if self._scopes_of_known(reservation_id) is not None:
                return (), ""  # made here without request budgets
        holds, service = self._link.call(
            lambda: self._client.hmget(f"{self._p}:r:{reservation_id}", "holds", "svc")
        )
        return tuple(request_keys(holds or "")), service or ""

    def _remember_requests(self, reservation_id: str, held: tuple[str, ...], service: str) -> None:
        with self._remember_lock:
            if len(self._held_requests) >= _REMEMBERED:
                del self._held_requests[next(iter(self._held_requests))]
            self._held_requests[reservation_id] = (held, service)

    def _scopes_of_known(self, reservation_id: str) -> ScopeSet | None:
        """The scopes of a reservation this replica remembers, without asking Redis."""
        with self._remember_lock:
            return self._remembered.get(reservation_id)

    # -- budgets ---------------------------------------------------------------------------------
    def create_budget(self, budget: Budget, *, audit: AuditEvent | None = None) -> Budget:
        created = self._budgets.create(budget, audit)
        self._forget_index()
        return created

    def get_budget(self, budget_id: str) -> Budget:
        return self._budgets.get(budget_id)

    def list_budgets(
        self, *, scope: Scope | None, scope_id: str | None, after_id: str, limit: int
    ) -> list[Budget]:
        return self._budgets.list(scope=scope, scope_id=scope_id, after_id=after_id, limit=limit)

    def update_budget(
        self,
        budget_id: str,
        patch: BudgetPatch,
        *,
        now_ms: int,
        allow_config: bool = False,
        audit: AuditEvent | None = None,
    ) -> Budget:
        updated = self._budgets.update(
            budget_id, patch, now_ms=now_ms, allow_config=allow_config, audit=audit
        )
        self._forget_index()
        return updated

    def delete_budget(
        self, budget_id: str, *, allow_config: bool = False, audit: AuditEvent | None = None
    ) -> None:
        self._budgets.delete(budget_id, allow_config=allow_config, audit=audit)
        self._forget_index()

    def sync_config_budgets(self, budgets: Sequence[Budget], *, now_ms: int) -> None:
        self._budgets.sync(budgets, now_ms=now_ms)
        self._config = list(budgets)
        self._forget_index()

    # -- money -----------------------------------------------------------------------------------
    def check(
        self, scopes: ScopeSet, estimate_micros: int, *, now_ms: int, request_budget: str = ""
    ) -> CheckOutcome:
        chain: Chain = []

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            chain[:] = self._requests.chain(request_budget) if request_budget else []
            specs = self._requests.specs(chain, "", keys) if chain else []
            return [
                str(now_ms),
                "",
                *self._specs(index.match(scopes, enabled_only=True), now_ms, now_ms, keys, specs),
            ]

        index, reply = self._money("standing", build, now_ms, self._k.due)
        matched = index.match(scopes, enabled_only=True)
        states = self._states(matched, reply, 1, now_ms=now_ms, at_ms=now_ms)
        found = states_of(chain, reply, 1 + 2 * len(matched), now_ms)
        if isinstance(found, str):
            return check_outcome(states, estimate_micros, closed=found)
        return check_outcome(states + found, estimate_micros)

    def reserve(
        self, command: ReserveCommand, *, reservation_id: str, expires_ms: int, now_ms: int
    ) -> ReserveOutcome:
        if command.downgrade_of:
            return self._resend(command, expires_ms, now_ms)
        estimate = usd_to_micros(command.estimate_usd)
        cheaper = command.downgrade_estimate_usd
        downgrade = None if cheaper is None else usd_to_micros(cheaper)
        scopes, model = command.scopes, command.model or UsageFacts()
        chain: Chain = []

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            chain[:] = self._requests.chain(command.request_budget) if command.request_budget else []
            requests = self._requests.specs(chain, command.service, keys) if chain else []
            return [
                str(now_ms), reservation_id, str(expires_ms), str(estimate), "" if downgrade is None else str(downgrade),
                command.idempotency_key, *scope_args(scopes), model.provider, model.model, str(command.estimate_tokens),
                command.owner, command.fingerprint, command.service,
                *self._specs(index.match(scopes, enabled_only=True), now_ms, now_ms, keys, requests),
            ]  # fmt: skip

        index, reply = self._money(
            "reserve", build, now_ms, (*self._k.due, *self._k.reserve, self._link.key("r", reservation_id))
        )
        if reply[0] == "REPLAY":
            return self._replay(reply[1], now_ms, fingerprint=command.fingerprint)
        matched = index.match(scopes, enabled_only=True)
        states = self._states(matched, reply, 4, now_ms=now_ms, at_ms=now_ms)
        found = states_of(chain, reply, 4 + 2 * len(matched), now_ms)
        if isinstance(found, str):
            plan = closed_plan(states, found, estimate)
            answers.agree(plan, reply)
            return reserve_outcome(plan, states, "", 0)
        states += found
        plan = plan_reservation(states, estimate, downgrade_estimate=downgrade, resend=False)
        answers.agree(plan, reply)
        if plan.decision is Decision.DENY:
            return reserve_outcome(plan, states, "", 0)
        self._remember(reservation_id, scopes)
        held = tuple(request_hold_key(b) for b in chain if not isinstance(b, str))
        self._remember_requests(reservation_id, held, command.service)
        return reserve_outcome(plan, states, reservation_id, expires_ms)

    def _resend(self, command: ReserveCommand, expires_ms: int, now_ms: int) -> ReserveOutcome:
        """The second half of the downgrade exchange: swap the held estimate for the cheaper path's."""
        rid = command.downgrade_of
        scopes = self._scopes_of(rid)
        if scopes is None:
            raise NotFoundError(f"reservation {quote(rid)} (downgrade_of) is unknown")
        differs = bool(command.scopes.pairs()) and command.scopes != scopes
        estimate = usd_to_micros(command.estimate_usd)
        held, service = self._requests_of(rid)
        chain = self._requests.held(held)

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            requests = self._requests.held_specs(chain, service, keys) if chain else []
            return [
                str(now_ms), rid, str(expires_ms), str(estimate), "1" if differs else "0", command.owner,
                *self._specs(index.match(scopes, enabled_only=True), now_ms, now_ms, keys, requests),
            ]  # fmt: skip

        index, reply = self._money("resend", build, now_ms, (*self._k.settle, self._link.key("r", rid)))
        kind = reply[0]
        if kind == "NOTFOUND":
            raise NotFoundError(f"reservation {quote(rid)} (downgrade_of) is unknown")
        if kind == "OWNER":
            raise not_owner(rid)
        if kind == "STATE":
            state = ReservationState(int(reply[1]))
            raise FailedPreconditionError(
                f"reservation {quote(rid)} is {state.name.lower()}; send a new Reserve for the cheaper path"
            )
        if kind == "SCOPES":
            raise InvalidRequestError(
                "scopes", f"must be omitted or equal to the scopes of reservation {quote(rid)}"
            )
        if kind == "NOTAWAITING":
            raise FailedPreconditionError(f"reservation {quote(rid)} is not awaiting a downgrade estimate")
        if kind == "REPLAY":
            return self._replay(rid, now_ms)
        matched = index.match(scopes, enabled_only=True)
        states = self._states(matched, reply, 4, now_ms=now_ms, at_ms=now_ms)
        found = states_of(chain, reply, 4 + 2 * len(matched), now_ms)
        if isinstance(found, str):
            plan = closed_plan(states, found, estimate)
        else:
            states += found
            plan = plan_reservation(states, estimate, downgrade_estimate=None, resend=True)
        answers.agree(plan, reply)
        if plan.decision is Decision.DENY:
            return reserve_outcome(plan, states, "", 0)
        return reserve_outcome(plan, states, rid, expires_ms)

    def _replay(self, reservation_id: str, now_ms: int, *, fingerprint: str = "") -> ReserveOutcome:
        """The first answer again: its decision and hold as stored, its words rebuilt from the standing
        it was decided on, and the standing of its budgets now (without its own hold). A key used
        for another request (another ``fingerprint``) is refused instead."""
        row: dict[str, str] = self._link.call(lambda: self._client.hgetall(f"{self._p}:r:{reservation_id}"))
        if not row:
            raise NotFoundError(f"reservation {quote(reservation_id)} is unknown")
        check_fingerprint(row.get("fp", ""), fingerprint, "idempotency_key", "Reserve")
        scopes = answers.unpack_scopes(row["sc"])
        chain = self._requests.held(request_keys(row.get("holds", "")))

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            requests = self._requests.held_specs(chain, "", keys) if chain else []
            return [
                str(now_ms),
                "",
                *self._specs(index.match(scopes, enabled_only=True), now_ms, now_ms, keys, requests),
            ]

        index, reply = self._money("standing", build, now_ms, self._k.due)
        matched = index.match(scopes, enabled_only=True)
        states = self._states(matched, reply, 1, now_ms=now_ms, at_ms=now_ms)
        states += open_states(chain, reply, 1 + 2 * len(matched), now_ms)
        held = int(row["held"])
        if row["st"] == str(int(ReservationState.HELD)):
            own = set(row["holds"].split("\n"))
            for s in states:
                if _hold_key_of(s) in own:
                    s.reserved -= held
        original = answers.snapshot_plan(index, row, self._requests)
        return ReserveOutcome(
            decision=Decision(row["dec"]),
            reservation_id=reservation_id,
            reserved_usd=micros_to_usd(held),
            expires_ms=int(row["exp"]),
            budget_info=estimate_infos(states, held),
            deciding_budget_id=deciding(original),
            reason=original.verdict.reason,
            warnings=original.verdict.warnings,
            awaiting_downgrade_estimate=row["aw"] == "1",
            replayed=True,
            deciding_tier=original.verdict.tier,
        )

    def _commit_script(
        self, reservation_id: str, amount: int, total_tokens: int, facts: UsageFacts, now_ms: int, owner: str
    ) -> tuple[BudgetIndex, ScopeSet, Chain, list[Any]] | None:
        """Settle a reservation as committed with ``amount`` and charge its budgets; ``None`` if unknown,
        ``PermissionDeniedError`` (nothing written) if ``owner`` did not make it."""
        total = total_tokens or facts.input_tokens + facts.output_tokens
        scopes = self._scopes_of(reservation_id)
        fresh = False
        for _ in range(2):
            if scopes is None:
                return None
            known = scopes
            held, service = self._requests_of(reservation_id, fresh=fresh)
            chain = self._requests.held(held)

            def build(
                index: BudgetIndex, keys: list[str], known: ScopeSet = known, chain: Chain = chain,
                held: tuple[str, ...] = held, service: str = service,
            ) -> list[str]:  # fmt: skip
                requests = self._requests.held_specs(chain, service, keys) if chain else []
                return [
                    str(now_ms), reservation_id, str(amount), str(total), *facts_args(facts), *scope_args(known),
                    owner, "\n".join(held),
                    *self._specs(index.match(known, enabled_only=False), now_ms, now_ms, keys, requests),
                ]  # fmt: skip

            index, reply = self._money(
                "commit",
                build,
                now_ms,
                (*self._k.settle, *self._k.charge, self._link.key("r", reservation_id)),
            )
            if reply[0] == "NOTFOUND":
                return None
            if reply[0] == "OWNER":
                raise not_owner(reservation_id)
            if reply[0] != "SCOPES":
                return index, known, chain, reply
            scopes = self._scopes_of(reservation_id, fresh=True)
            fresh = True
        raise RuntimeError(f"the scopes of reservation {quote(reservation_id)} do not match what Redis holds")

    def commit(self, command: CommitCommand, *, now_ms: int) -> CommitOutcome:
        amount = usd_to_micros(command.actual_usd)
        done = self._commit_script(
            command.reservation_id, amount, command.actual_tokens, command.usage, now_ms, command.owner
        )
        if done is None:
            raise NotFoundError(
                f"reservation {quote(command.reservation_id)} is unknown (never made, or settled longer ago than the retention period)"
            )
        index, scopes, chain, reply = done
        if reply[0] == "DUP":
            return CommitOutcome(
                charged_usd=micros_to_usd(int(reply[1] or 0)),
                released_usd=micros_to_usd(int(reply[2] or 0)),
                duplicate=True,
                late=reply[3] == "1",
                budget_info=self._standing_infos(index, scopes, reply, 4, now_ms, chain),
            )
        infos, fired = self._charged(index, scopes, reply, 5, now_ms=now_ms, at_ms=now_ms, chain=chain)
        return CommitOutcome(
            charged_usd=micros_to_usd(amount),
            released_usd=micros_to_usd(int(reply[1])),
            duplicate=False,
            late=reply[2] == "1",
            budget_info=infos,
            alerts_fired=fired,
            scopes=scopes,
            usage=_recorded(command.usage, reply),
        )

    def _standing_infos(
        self,
        index: BudgetIndex,
        scopes: ScopeSet,
        reply: Sequence[Any],
        offset: int,
        now_ms: int,
        chain: Chain,
    ) -> tuple[BudgetInfo, ...]:
        enabled = index.match(scopes, enabled_only=True)
        states = self._states(enabled, reply, offset, now_ms=now_ms, at_ms=now_ms)
        states += open_states(chain, reply, offset + 2 * len(enabled), now_ms)
        return charged_infos(states)

    def _charged(
        self,
        index: BudgetIndex,
        scopes: ScopeSet,
        reply: Sequence[Any],
        offset: int,
        *,
        now_ms: int,
        at_ms: int,
        chain: Chain | None = None,
    ) -> tuple[tuple[BudgetInfo, ...], tuple[int, ...]]:
        enabled = index.match(scopes, enabled_only=True)
        states = self._states(enabled, reply, offset, now_ms=now_ms, at_ms=at_ms)
        after = offset + 2 * len(enabled)
        chain = chain or []
        states += open_states(chain, reply, after, now_ms)
        fired = tuple(int(seq) for seq in reply[after + 2 * len(chain) :])
        return charged_infos(states), fired

    def release(self, reservation_id: str, *, now_ms: int, owner: str = "") -> ReleaseOutcome:
        keys = [*self._k.settle, self._link.key("r", reservation_id)]
        scopes = self._scopes_of_known(reservation_id)
        if scopes is not None:  # its holds are most likely on the budgets its scopes match now
            for live, entity in self._current().match(scopes, enabled_only=True):
                keys += state_keys(self._p, live, entity)
        for _ in range(_ATTEMPTS):
            reply = self._link.script("release", [str(now_ms), reservation_id, owner], keys)
            if reply[0] != "KEYS":
                break
            keys += hold_keys(self._p, reply[1])
        else:
            raise StoreUnavailableError(
                f"reservation {quote(reservation_id)} kept changing while it was released; retry"
            )
        if reply[0] == "NOTFOUND":
            raise NotFoundError(f"reservation {quote(reservation_id)} is unknown")
        if reply[0] == "OWNER":
            raise not_owner(reservation_id)
        if reply[0] == "COMMITTED":
            raise FailedPreconditionError(
                f"reservation {quote(reservation_id)} is committed already; it cannot be released"
            )
        return ReleaseOutcome(
            released_usd=micros_to_usd(int(reply[2])), state=ReservationState(int(reply[1]))
        )

    def record_usage(self, command: RecordUsageCommand, *, now_ms: int) -> RecordUsageOutcome:
        cost = usd_to_micros(command.cost_usd)
        if command.reservation_id:
            done = self._commit_script(
                command.reservation_id, cost, command.total_tokens, command.usage, now_ms, command.owner
            )
            if done is not None:
                index, scopes, held, reply = done
                usage = _recorded(command.usage, reply) if reply[0] != "DUP" else command.usage
                return self._recorded(
                    index, scopes, reply, (4, 5), cost, usage, now_ms=now_ms, at_ms=now_ms, chain=held
                )
        occurred = now_ms if command.occurred_ms is None else command.occurred_ms
        f = command.usage
        total = command.total_tokens or f.input_tokens + f.output_tokens
        scopes = command.scopes
        chain: Chain = []

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            chain[:] = self._requests.chain(command.request_budget) if command.request_budget else []
            requests = self._requests.specs(chain, command.service, keys) if chain else []
            return [
                str(now_ms), command.usage_id, str(occurred), str(cost), str(total), *facts_args(f),
                *scope_args(scopes), command.reservation_id, command.fingerprint,
                *self._specs(index.match(scopes, enabled_only=False), now_ms, occurred, keys, requests),
            ]  # fmt: skip

        index, reply = self._money("record", build, now_ms, (*self._k.due, *self._k.charge))
        if reply[0] == "DUP" and command.fingerprint:
            stored = self._link.call(lambda: self._client.hget(f"{self._p}:u", command.usage_id)) or ""
            fields = stored.split(SEP)
            check_fingerprint(
                fields[16] if len(fields) > 16 else "", command.fingerprint, "usage_id", "RecordUsage"
            )
        return self._recorded(
            index, scopes, reply, (1, 1), cost, f, now_ms=now_ms, at_ms=occurred, chain=chain
        )

    def _recorded(
        self,
        index: BudgetIndex,
        scopes: ScopeSet,
        reply: list[Any],
        standing_at: tuple[int, int],
        cost: int,
        usage: UsageFacts,
        *,
        now_ms: int,
        at_ms: int,
        chain: Chain,
    ) -> RecordUsageOutcome:
        """The answer to recorded usage from a function's ``reply``, whose budget standing starts at
        ``standing_at[0]`` for a duplicate and at ``standing_at[1]`` for a charge."""
        if reply[0] == "DUP":
            infos = self._standing_infos(index, scopes, reply, standing_at[0], now_ms, chain)
            return RecordUsageOutcome(charged_usd=micros_to_usd(0), duplicate=True, budget_info=infos)
        infos, fired = self._charged(
            index, scopes, reply, standing_at[1], now_ms=now_ms, at_ms=at_ms, chain=chain
        )
        return RecordUsageOutcome(
            charged_usd=micros_to_usd(cost),
            duplicate=False,
            budget_info=infos,
            alerts_fired=fired,
            scopes=scopes,
            usage=usage,
        )

    def record_usage_batch(self, batch: UsageBatch, *, now_ms: int) -> UsageBatchOutcome:
        """One function call: items and series are checked against what Redis remembers, and each
        group with new usage becomes one usage record and one charge (see ``LedgerStore``)."""
        prefix = f"batch:{secrets.token_hex(8)}"
        tail = [str(len(batch.items))]
        for ts, uid, group, *amounts in batch.items:
            tail += (str(ts), uid.hex(), str(group), *map(str, amounts))
        tail.append(str(len(batch.series)))
        for series_id, group, baseline, *totals in batch.series:
            tail += (series_id.hex(), str(group), "1" if baseline else "0", *map(str, totals))

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            head = [str(now_ms), prefix, str(len(batch.groups))]
            for g in batch.groups:
                head += (*scope_args(g.scopes), g.provider, g.model, str(g.occurred_ms))
                requests = (
                    self._requests.specs(self._requests.chain(g.request_budget), g.service, keys)
                    if g.request_budget
                    else []
                )
                head += self._specs(
                    index.match(g.scopes, enabled_only=False), now_ms, g.occurred_ms, keys, requests
                )
            return head + tail

        _, reply = self._money("batch", build, now_ms, (*self._k.due, *self._k.charge, *self._k.batch))
        if reply[0] == "TOO_LARGE":
            raise InvalidRequestError(
                "batch",
                f"the new amounts of one group add up past {_EXACT_LIMIT:,}, the most the Redis store "
                "sums exactly in one batch; send smaller batches",
            )
        width = len(batch.groups)
        return UsageBatchOutcome(
            charged_items=tuple(int(n) for n in reply[2 : 2 + width]),
            charged_micros=tuple(int(n) for n in reply[2 + width : 2 + 2 * width]),
            duplicates=int(reply[1]),
            alerts_fired=tuple(int(q) for q in reply[2 + 2 * width :]),
        )

    def expire_due(self, *, now_ms: int, limit: int = 500) -> int:
        """Release up to ``limit`` reservations whose TTL has passed: read which are due and what they
        hold, then release them in one function with all of their keys declared."""

        def due() -> tuple[list[str], list[Any]]:
            ids: list[str] = self._client.zrangebyscore(self._k.due[0], "-inf", now_ms, start=0, num=limit)
            if not ids:
                return ids, []
            pipe = self._client.pipeline(transaction=False)
            for rid in ids:
                pipe.hget(self._link.key("r", rid), "holds")
            return ids, pipe.execute()

        ids, holds = self._link.call(due)
        if not ids:
            return 0
        keys = [*self._k.settle, *(self._link.key("r", rid) for rid in ids)]
        for found in holds:
            keys += hold_keys(self._p, found or "")
        return int(self._link.script("expire", [str(now_ms), *ids], keys))

    # -- request budgets -------------------------------------------------------------------------
    def open_request_budget(self, draft: RequestDraft, *, now_ms: int) -> RequestStatus:
        parent = self._request_parent(draft, now_ms)
        budget, clamped = opened(draft, parent, now_ms)
        expires = now_ms + budget.idle_ttl_ms
        rq, rqc, qdue = self._link.key("rq"), self._link.key("rqc"), self._link.key("qdue")
        for _ in range(_ATTEMPTS):
            seen = self._link.call(lambda: self._client.hget(rqc, draft.id))
            ancestors = self._ancestors(budget)
            keys = [rq, rqc, qdue, self._requests.state_key(budget)]
            if seen is not None:
                keys.append(f"{self._p}:s:{REQUEST_PREFIX}{seen}/{draft.id}")
            keys += (self._requests.state_key(a) for a in ancestors)
            args = [
                str(now_ms), draft.id, request_json(budget, draft.fingerprint), draft.fingerprint, seen or "",
                str(expires), *(f"{a.id}@{a.created_ms}@{a.idle_ttl_ms}" for a in ancestors),
            ]  # fmt: skip
            reply = self._link.script("request_open", args, keys)
            if reply[0] == "RETRY":
                continue
            if reply[0] == "SAME":
                return self.request_status(draft.id, now_ms=now_ms)
            if reply[0] == "EXISTS":
                raise AlreadyExistsError(
                    f"request_budget_id: request budget {quote(draft.id)} is open already, for another request"
                )
            if reply[0] == "PARENT":
                self._requests.forget(reply[1])
                raise NotFoundError(not_open(reply[1], "parent_id"))
            self._requests.remember(budget)
            return RequestStatus(
                budget=budget, used_micros=0, reserved_micros=0, expires_ms=expires, clamped=clamped
            )
        raise StoreUnavailableError(
            f"request budget {quote(draft.id)} kept changing while it was opened; retry"
        )

    def _request_parent(self, draft: RequestDraft, now_ms: int) -> RequestStatus | None:
        if not draft.parent_id:
            return None
        try:
            return self.request_status(draft.parent_id, now_ms=now_ms)
        except NotFoundError:
            raise NotFoundError(not_open(draft.parent_id, "parent_id")) from None

    def _ancestors(self, budget: RequestBudget) -> list[RequestBudget]:
        out = []
        for ancestor in budget.chain:
            found = self._requests.get(ancestor)
            if found is None:
                raise NotFoundError(not_open(ancestor, "parent_id"))
            out.append(found)
        return out

    def request_status(self, request_id: str, *, now_ms: int) -> RequestStatus:
        for _ in range(2):
            budget = self._requests.get(request_id)
            if budget is None:
                break

            def build(index: BudgetIndex, keys: list[str], budget: RequestBudget = budget) -> list[str]:
                keys += (self._link.key("rqc"), self._requests.state_key(budget))
                return [str(now_ms), request_id, str(budget.created_ms)]

            _, reply = self._money("request_read", build, now_ms, self._k.due)
            if reply[0] == "OK":
                services = [(str(reply[i]), int(reply[i + 1])) for i in range(4, len(reply), 2)]
                return RequestStatus(
                    budget=budget,
                    used_micros=int(reply[1]),
                    reserved_micros=int(reply[2]),
                    expires_ms=int(reply[3]),
                    by_service=by_service(services),
                )
            self._requests.forget(request_id)  # gone, or reopened since this replica read it
        raise NotFoundError(not_open(request_id))

    # -- reading ---------------------------------------------------------------------------------
    def budget_status(self, budget_id: str, entity: str, *, now_ms: int) -> BudgetStatus:
        if self._current().get(budget_id) is None:
            self._refresh()
        asked: list[tuple[LiveBudget, str]] = []

        def build(index: BudgetIndex, keys: list[str]) -> list[str]:
            live = index.get(budget_id)
            if live is None:
                raise NotFoundError(f"budget {quote(budget_id)} does not exist")
            period = live.budget.period
            key = "0" if period.is_rolling else str(period.window(now_ms, live.tz).start_ms)
            asked[:] = [(live, entity_for(live, entity))]
            return [str(now_ms), key, *self._specs(asked, now_ms, now_ms, keys)]

        _, reply = self._money("standing", build, now_ms, self._k.due)
        (state,) = self._states(asked, reply, 1, now_ms=now_ms, at_ms=now_ms)
        return status_from_state(state, (int(t) for t in reply[3:]), now_ms)

    def budget_spend(self, *, now_ms: int, max_entities: int) -> list[BudgetSpend]:
        index = self._refresh()  # metrics read every budget: take the definitions as they are now
        budgets = sorted(index, key=lambda live: live.budget.id)
        wildcards = [live for live in budgets if live.budget.scope_id is None]
        pipe = self._client.pipeline(transaction=False)
        for live in wildcards:
            pipe.smembers(f"{self._p}:ents:{live.budget.id}@{live.budget.generation}")
        members = dict(zip((id(w) for w in wildcards), self._link.call(pipe.execute), strict=True))
        pairs = [
            (live, entity)
            for live in budgets
            for entity in (
                sorted(members[id(live)]) if live.budget.scope_id is None else [live.budget.scope_id]
            )
        ]
        found: dict[str, list[EntitySpend]] = {}
        for start in range(0, len(pairs), _SPEND_CHUNK):
            chunk = pairs[start : start + _SPEND_CHUNK]

            def build(
                index: BudgetIndex, keys: list[str], chunk: list[tuple[LiveBudget, str]] = chunk
            ) -> list[str]:
                return [str(now_ms), "", *self._specs(chunk, now_ms, now_ms, keys)]

            # The definitions were read just now; a budget changed meanwhile shows next scrape.
            _, reply = self._money("standing", build, now_ms, self._k.due)
            for state in self._states(chunk, reply, 1, now_ms=now_ms, at_ms=now_ms):
                found.setdefault(state.budget.id, []).append(
                    EntitySpend(entity=state.entity, used_micros=state.used, reserved_micros=state.reserved)
                )
        return [_budget_spend(live, found.get(live.budget.id, []), max_entities) for live in budgets]

    def held_reservations(self) -> tuple[int, int]:
        def read() -> tuple[int, int]:
            ids = self._client.zrange(f"{self._p}:due", 0, -1)
            held = 0
            for start in range(0, len(ids), _SPEND_CHUNK):
                pipe = self._client.pipeline(transaction=False)
                for rid in ids[start : start + _SPEND_CHUNK]:
                    pipe.hget(f"{self._p}:r:{rid}", "held")
                held += sum(int(v) for v in pipe.execute() if v is not None)
            return len(ids), held

        return self._link.call(read)

    def usage_rows(self, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool) -> list[UsageRow]:
        return self._link.call(
            lambda: reports.usage_rows(self._client, self._p, flt, columns, by_slot=by_slot)
        )

    def usage_records(
        self, flt: UsageFilter, *, before: tuple[int, str] | None, limit: int
    ) -> list[UsageRecord]:
        return self._link.call(
            lambda: reports.usage_records(self._client, self._p, flt, before=before, limit=limit)
        )

    # -- alerts ----------------------------------------------------------------------------------
    def alerts_after(self, sequence: int, *, limit: int, budget_ids: Sequence[str] = ()) -> list[Alert]:
        seqs = self._link.call(
            lambda: reports.alert_sequences_after(
                self._client, self._p, sequence, limit=limit, budget_ids=budget_ids
            )
        )
        return self._alerts(seqs)

    def last_alert_sequence(self) -> int:
        newest = self._link.call(lambda: self._client.zrevrange(f"{self._p}:alerts", 0, 0))
        return int(newest[0]) if newest else 0

    def claim_alerts(self, *, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Alert]:
        if limit <= 0:
            return []
        seqs = self._link.script(
            "claim_alerts", [owner, str(now_ms), str(now_ms + lease_ms), str(limit), "5000"], self._k.alerts
        )
        return self._alerts([int(s) for s in seqs])

    def _alerts(self, seqs: list[int]) -> list[Alert]:
        """The alerts of ``seqs``. One missing from the log (rare: pruned meanwhile) may have been written
        in the layout of schema 1 by an older sidecar still running on the namespace after it was
        upgraded: such alerts are moved into the log and read again."""
        alerts = self._link.call(lambda: reports.load_alerts(self._client, self._p, seqs))
        if len(alerts) < len(seqs):
            found = {a.sequence for a in alerts}
            if adopt_alerts(self._link, self.namespace, [s for s in seqs if s not in found]):
                alerts = self._link.call(lambda: reports.load_alerts(self._client, self._p, seqs))
        return alerts

    def ack_alerts(self, sequences: Sequence[int], *, now_ms: int) -> None:
        if sequences:
            self._link.script("ack_alerts", [str(now_ms), *(str(s) for s in sequences)], self._k.alerts)

    # -- housekeeping ----------------------------------------------------------------------------
    # -- tokens and audit ------------------------------------------------------------------------
    def create_token(self, token: TokenRecord, *, event: AuditEvent) -> None:
        self._access.create_token(token, event)

    def revoke_token(self, token_id: str, *, now_ms: int, event: AuditEvent) -> TokenRecord:
        return self._access.revoke_token(token_id, now_ms, event)

    def list_tokens(self) -> list[TokenRecord]:
        return self._access.list_tokens()

    def tokens_version(self) -> int:
        return self._access.tokens_version()

    def record_audit(self, event: AuditEvent) -> None:
        self._access.record_audit(event)

    def audit_events(self, *, after: int, limit: int) -> list[AuditEvent]:
        return self._access.audit_events(after, limit)

    def prune(
        self, *, now_ms: int, reservation_retention_ms: int, usage_retention_ms: int, alert_retention_ms: int
    ) -> None:
        housekeeping.prune(
            self._link,
            self._refresh(),
            now_ms=now_ms,
            reservation_retention_ms=reservation_retention_ms,
            usage_retention_ms=usage_retention_ms,
            alert_retention_ms=alert_retention_ms,
        )

    def close(self) -> None:
        self._link.close()


def _hold_key_of(state: BudgetState) -> str:
    """The hold key of a state: a budget's for its entity, or a request budget's incarnation."""
    budget = state.budget
    if budget.scope is Scope.REQUEST:
        return f"{REQUEST_PREFIX}{budget.created_ms}/{budget.id}"
    return hold_key(budget, state.entity)


def _recorded(facts: UsageFacts, reply: Sequence[Any]) -> UsageFacts:
    """The facts a commit recorded: its own, with the reservation's provider and model where it named
    none (the commit function answers with the two it used)."""
    provider, model = reply[3] or "", reply[4] or ""
    if (provider, model) == (facts.provider, facts.model):
        return facts
    return replace(facts, provider=provider, model=model)


def _budget_spend(live: LiveBudget, entities: list[EntitySpend], max_entities: int) -> BudgetSpend:
    """One budget's listing as ``LedgerStore.budget_spend`` defines it: a single-entity budget lists its
    entity even at zero; a wildcard lists its entities with spend or holds, most first, at most
    ``max_entities`` (an entity whose period charged exactly $0 counts as having none)."""
    budget = live.budget
    if budget.scope_id is not None:
        one = (
            entities[0] if entities else EntitySpend(entity=budget.scope_id, used_micros=0, reserved_micros=0)
        )
        return BudgetSpend(budget=budget, entities=(one,), entity_count=1)
    active = [e for e in entities if e.used_micros or e.reserved_micros]
    active.sort(key=lambda e: (-(e.used_micros + e.reserved_micros), e.entity))
    return BudgetSpend(budget=budget, entities=tuple(active[:max_entities]), entity_count=len(active))
