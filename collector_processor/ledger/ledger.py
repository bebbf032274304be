"""The ledger: live spend per scope and period, reservations with TTLs, and threshold alerts.

``Ledger`` is the one entry point for everything that reads or changes budgets and spend: the gRPC
servicer, the CLI's embedded mode and later receivers call it with domain commands. It validates
what a store should never see (negative amounts, amounts and token counts above the per-request
maxima, timestamps and TTLs out of range, unknown scopes), fills the defaults, reads the clock, and
hands each operation to the store as one atomic call. It holds no state of its own, so any number of
ledgers in any number of processes can share one store.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from collector_processor.domain.access import Actor, AuditEvent, budget_record
from collector_processor.domain.budgets import (
    Budget,
    BudgetDraft,
    BudgetPatch,
    Scope,
    ScopeSet,
    build_budget,
    check_budget_id,
    check_scope_id,
    check_thresholds,
    check_tiers,
)
from collector_processor.domain.clock import Clock, SystemClock
from collector_processor.domain.idempotency import (
    owned_key,
    record_fingerprint,
    request_fingerprint,
    reserve_fingerprint,
)
from collector_processor.domain.money import MAX_USD, usd_to_micros
from collector_processor.domain.periods import zone
from collector_processor.domain.requests import (
    OpenRequestCommand,
    RequestDraft,
    RequestStatus,
    check_request_id,
    check_service,
    generate_request_id,
)
from collector_processor.domain.types import (
    BudgetStatus,
    CheckOutcome,
    CommitCommand,
    CommitOutcome,
    RecordUsageCommand,
    RecordUsageOutcome,
    ReleaseOutcome,
    ReserveCommand,
    ReserveOutcome,
    UsageBatch,
    UsageBatchOutcome,
    UsageFacts,
    UsageGroup,
)
from collector_processor.domain.usage import (
    SCOPE_COLUMNS,
    UsageQuery,
    UsageRecord,
    UsageReport,
    build_report,
    check_group_by,
    columns_for,
)
from collector_processor.errors import InvalidRequestError
from collector_processor.store.base import LedgerStore, UsageFilter
from paymaster.exceptions import quote

__all__ = ["Ledger", "LedgerSettings"]

_MAX_KEY = 256
_MAX_BATCH_KEY = 64
_FUTURE_SKEW_MS = 60_000
MAX_TOKENS_CEILING = 10**15
"""The most ``ledger.max_tokens`` may be set to."""
MIN_TIME_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z, the earliest instant a ``google.protobuf.Timestamp`` may carry."""
MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the latest."""


@dataclass(kw_only=True, frozen=True, slots=True)
class LedgerSettings:
    """Defaults and bounds the ledger applies to requests."""

    time_zone: str = "UTC"
    """Zone for budgets that name none, and for usage reports."""
    default_ttl_ms: int = 300_000
    """TTL of a reservation that asks for none."""
    max_ttl_ms: int = 3_600_000
    """Longest TTL a reservation may ask for."""
    default_alert_thresholds: tuple[int, ...] = (80, 100)
    """Thresholds of a budget created without any."""
    max_amount_usd: Decimal = Decimal(1_000_000)
    """The largest amount one request may carry in any money field but a budget's limit (an
    estimate, an actual cost, recorded usage)."""
    max_tokens: int = 10**12
    """The largest token count one request may carry in any token field."""
    request_idle_ttl_ms: int = 600_000
    """Idle TTL of a request budget opened without one."""
    max_request_idle_ttl_ms: int = 86_400_000
    """Longest idle TTL a request budget may ask for."""

    def validate(self) -> LedgerSettings:
        zone(self.time_zone)
        if not 0 < self.default_ttl_ms <= self.max_ttl_ms:
            raise ValueError("default_ttl must be positive and at most max_ttl")
        check_thresholds(self.default_alert_thresholds, "default_alert_thresholds")
        if not 0 < self.max_amount_usd <= MAX_USD:
            raise ValueError(f"max_amount_usd must be above 0 and at most {MAX_USD:,}")
        if not 0 < self.max_tokens <= MAX_TOKENS_CEILING:
            raise ValueError(f"max_tokens must be above 0 and at most {MAX_TOKENS_CEILING:,}")
        if not 0 < self.request_idle_ttl_ms <= self.max_request_idle_ttl_ms:
            raise ValueError("request_idle_ttl must be positive and at most max_request_idle_ttl")
        return self


class Ledger:
    """Budgets and spend over a ``LedgerStore``. ``on_alert`` is called after an operation fired alerts."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        clock: Clock | None = None,
        settings: LedgerSettings | None = None,
        on_alert: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.settings = (settings or LedgerSettings()).validate()
        self._on_alert = on_alert
        self._on_audit: Callable[[AuditEvent], None] | None = None

    def set_alert_listener(self, on_alert: Callable[[], None] | None) -> None:
        self._on_alert = on_alert

    # -- budgets ---------------------------------------------------------------------------------
    def set_audit_listener(self, on_audit: Callable[[AuditEvent], None] | None) -> None:
        """Called with every change a caller made (its state before and after as this ledger saw it),
        once it is durable; the store's own log, written in the same step as the change, is the record."""
        self._on_audit = on_audit

    def create_budget(self, draft: BudgetDraft, *, actor: Actor | None = None) -> Budget:
        budget = self._build(draft, field_prefix="budget.")
        audit = self._audit(actor, "budget.create", budget)
        created = self.store.create_budget(budget, audit=audit)
        self._audited(audit, after=created)
        return created

    def get_budget(self, budget_id: str) -> Budget:
        return self.store.get_budget(check_budget_id(budget_id))

    def list_budgets(
        self,
        *,
        scope: Scope | None = None,
        scope_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Budget], str]:
        """One page of budgets ordered by id, and the token of the next page ('' on the last)."""
        if not 0 <= page_size <= 500:
            raise InvalidRequestError("page_size", f"must be between 1 and 500 (0 means 50), got {page_size}")
        if scope_id is not None:
            check_scope_id(scope_id)
        size = page_size or 50
        budgets = self.store.list_budgets(
            scope=scope, scope_id=scope_id, after_id=_decode_token(page_token), limit=size + 1
        )
        if len(budgets) > size:
            return budgets[:size], _encode_token(budgets[size - 1].id)
        return budgets, ""

    def update_budget(self, budget_id: str, patch: BudgetPatch, *, actor: Actor | None = None) -> Budget:
        if patch.is_empty():
            raise InvalidRequestError(
                "update",
                "names no field to change (name, limit_usd, on_exceed, alert_thresholds, tiers, enabled)",
            )
        now = self.clock.now_ms()
        budget = self.store.get_budget(check_budget_id(budget_id)) if actor is not None else None
        audit = self._audit(actor, "budget.update", budget, now_ms=now)
        updated = self.store.update_budget(budget_id, patch, now_ms=now, audit=audit)
        self._audited(audit, before=budget, after=updated)
        return updated

    def delete_budget(self, budget_id: str, *, actor: Actor | None = None) -> None:
        budget = self.store.get_budget(check_budget_id(budget_id)) if actor is not None else None
        audit = self._audit(actor, "budget.delete", budget)
        self.store.delete_budget(budget_id, audit=audit)
        self._audited(audit, before=budget)

    def _audited(
        self, event: AuditEvent | None, *, before: Budget | None = None, after: Budget | None = None
    ) -> None:
        if event is not None and self._on_audit is not None:
            self._on_audit(
                replace(
                    event,
                    before=budget_record(before) if before is not None else "",
                    after=budget_record(after) if after is not None else "",
                )
            )

    def _audit(
        self, actor: Actor | None, action: str, budget: Budget | None, *, now_ms: int | None = None
    ) -> AuditEvent | None:
        """The audit event of a change by ``actor`` (the store fills in before and after)."""
        if actor is None or budget is None:
            return None
        return AuditEvent(
            sequence=0,
            at_ms=self.clock.now_ms() if now_ms is None else now_ms,
            principal=actor.principal,
            address=actor.address,
            action=action,
            target=budget.id,
            scope=budget.scope.value,
            scope_id=budget.scope_id or "",
            before="",
            after="",
        )

    def load_config_budgets(
        self, drafts: Sequence[BudgetDraft], *, field_prefix: str = "budgets"
    ) -> list[Budget]:
        """Validate the budgets a config file declares and make the store's config budgets exactly these."""
        budgets = []
        seen: set[str] = set()
        for i, draft in enumerate(drafts):
            budget = self._build(
                replace(draft, declared_in_config=True), field_prefix=f"{field_prefix}[{i}]."
            )
            if budget.id in seen:
                raise InvalidRequestError(f"{field_prefix}[{i}].id", f"{quote(budget.id)} is declared twice")
            seen.add(budget.id)
            budgets.append(budget)
        self.store.sync_config_budgets(budgets, now_ms=self.clock.now_ms())
        return budgets

    def _build(self, draft: BudgetDraft, *, field_prefix: str) -> Budget:
        return build_budget(
            draft,
            default_time_zone=self.settings.time_zone,
            default_thresholds=self.settings.default_alert_thresholds,
            generated_id=f"b-{secrets.token_hex(6)}",
            now_ms=self.clock.now_ms(),
            field_prefix=field_prefix,
        )

    # -- decisions and spend ---------------------------------------------------------------------
    def check(
        self, scopes: ScopeSet, estimate_usd: Decimal = Decimal(0), *, request_budget: str = ""
    ) -> CheckOutcome:
        scopes.validate()
        self._amount(estimate_usd, "estimate_usd")
        if request_budget:
            check_request_id(request_budget)
        return self.store.check(
            scopes, usd_to_micros(estimate_usd), now_ms=self.clock.now_ms(), request_budget=request_budget
        )

    # -- request budgets -------------------------------------------------------------------------
    def open_request_budget(self, command: OpenRequestCommand) -> RequestStatus:
        """Open a request budget (``domain.requests``): validated here, opened atomically by the store."""
        c = command
        request_id = check_request_id(c.request_id, "id") if c.request_id else generate_request_id()
        name = c.name.strip()
        if len(name) > 256 or not name.isprintable():
            raise InvalidRequestError("name", "must be at most 256 printable characters")
        if c.parent_id:
            check_request_id(c.parent_id, "parent_id")
            if c.parent_id == request_id:
                raise InvalidRequestError("parent_id", "must name another request budget than this one")
        elif c.limit_usd is None:
            raise InvalidRequestError("limit_usd", "is required for a request budget without a parent_id")
        if c.limit_usd is not None:
            self._amount(c.limit_usd, "limit_usd")
        if c.fraction is not None:
            if not c.parent_id:
                raise InvalidRequestError("fraction", "applies to a request budget opened inside a parent_id")
            if not c.fraction.is_finite() or not 0 < c.fraction <= 1:
                raise InvalidRequestError(
                    "fraction", f"must be above 0 and at most 1, got {quote(str(c.fraction))}"
                )
        ttl = self.settings.request_idle_ttl_ms if c.idle_ttl_ms is None else c.idle_ttl_ms
        if not 0 < ttl <= self.settings.max_request_idle_ttl_ms:
            raise InvalidRequestError(
                "idle_ttl",
                f"must be positive and at most {self.settings.max_request_idle_ttl_ms / 1000:g}s "
                f"(ledger.max_request_idle_ttl_seconds), got {ttl / 1000:g}s",
            )
        tiers = check_tiers(c.tiers)
        limit = None if c.limit_usd is None else usd_to_micros(c.limit_usd)
        draft = RequestDraft(
            id=request_id, name=name, parent_id=c.parent_id, limit_micros=limit, fraction=c.fraction,
            tiers=tiers, owner=c.owner, idle_ttl_ms=ttl,
            fingerprint=request_fingerprint(c, tiers, ttl),
        )  # fmt: skip
        return self.store.open_request_budget(draft, now_ms=self.clock.now_ms())

    def request_status(self, request_id: str) -> RequestStatus:
        """An open request budget's standing, and its spend by service."""
        check_request_id(request_id)
        return self.store.request_status(request_id, now_ms=self.clock.now_ms())

    def reserve(self, command: ReserveCommand) -> ReserveOutcome:
        ttl = self._validate_reserve(command)
        now = self.clock.now_ms()
        command = replace(
            command,
            idempotency_key=owned_key(command.owner, command.idempotency_key),
            fingerprint=reserve_fingerprint(command),
        )
        return self.store.reserve(
            command, reservation_id=_reservation_id(now), expires_ms=now + ttl, now_ms=now
        )

    def _validate_reserve(self, c: ReserveCommand) -> int:
        """Refuse a malformed reservation; return its TTL in milliseconds."""
        c.scopes.validate(required=not c.downgrade_of)
        self._amount(c.estimate_usd, "estimate_usd")
        self._tokens(c.estimate_tokens, "estimate_tokens")
        if c.downgrade_estimate_usd is not None:
            self._amount(c.downgrade_estimate_usd, "downgrade_estimate_usd")
            if c.downgrade_of:
                raise InvalidRequestError(
                    "downgrade_estimate_usd", "must not be set together with downgrade_of"
                )
        _key(c.idempotency_key, "idempotency_key")
        _key(c.downgrade_of, "downgrade_of")
        if c.request_budget:
            check_request_id(c.request_budget)
        check_service(c.service)
        if c.model is not None:
            self._facts(c.model, "model")
        ttl = self.settings.default_ttl_ms if c.ttl_ms is None else c.ttl_ms
        if not 0 < ttl <= self.settings.max_ttl_ms:
            raise InvalidRequestError(
                "ttl",
                f"must be positive and at most {self.settings.max_ttl_ms / 1000:g}s, got {ttl / 1000:g}s",
            )
        return ttl

    def commit(self, command: CommitCommand) -> CommitOutcome:
        _required_key(command.reservation_id, "reservation_id")
        self._amount(command.actual_usd, "actual_usd")
        self._tokens(command.actual_tokens, "actual_tokens")
        self._facts(command.usage, "usage")
        outcome = self.store.commit(command, now_ms=self.clock.now_ms())
        self._alerted(outcome.alerts_fired)
        return outcome

    def release(self, reservation_id: str, *, owner: str = "") -> ReleaseOutcome:
        _required_key(reservation_id, "reservation_id")
        return self.store.release(reservation_id, now_ms=self.clock.now_ms(), owner=owner)

    def record_usage(self, command: RecordUsageCommand) -> RecordUsageOutcome:
        _required_key(command.usage_id, "usage_id")
        _key(command.reservation_id, "reservation_id")
        if command.request_budget:
            check_request_id(command.request_budget)
        check_service(command.service)
        command.scopes.validate()
        self._amount(command.cost_usd, "cost_usd")
        self._tokens(command.total_tokens, "total_tokens")
        self._facts(command.usage, "usage")
        now = self.clock.now_ms()
        occurred = now if command.occurred_ms is None else command.occurred_ms
        if occurred > now + _FUTURE_SKEW_MS:
            raise InvalidRequestError("occurred_at", "is in the future")
        if occurred < 0:
            raise InvalidRequestError("occurred_at", "must not be before 1970-01-01T00:00:00Z")
        command = replace(
            command,
            usage_id=owned_key(command.owner, command.usage_id),
            fingerprint=record_fingerprint(command),
            occurred_ms=min(occurred, now),
        )
        outcome = self.store.record_usage(command, now_ms=now)
        self._alerted(outcome.alerts_fired)
        return outcome

    def record_usage_batch(self, batch: UsageBatch) -> UsageBatchOutcome:
        """Record many units of usage at once, idempotent per item and charged per group (see
        ``LedgerStore.record_usage_batch``). Groups that happened in the future are refused, as in
        ``record_usage``; a group up to a minute ahead (clock skew) is charged now."""
        now = self.clock.now_ms()
        groups = tuple(self._batch_group(g, i, now) for i, g in enumerate(batch.groups))
        _check_batch_rows(batch, len(groups))
        outcome = self.store.record_usage_batch(replace(batch, groups=groups), now_ms=now)
        self._alerted(outcome.alerts_fired)
        return outcome

    def _batch_group(self, group: UsageGroup, i: int, now: int) -> UsageGroup:
        group.scopes.validate(f"groups[{i}].scopes")
        self._facts(UsageFacts(provider=group.provider, model=group.model), f"groups[{i}]")
        if group.request_budget:
            check_request_id(group.request_budget, f"groups[{i}].request_budget")
        check_service(group.service, f"groups[{i}].service")
        if group.occurred_ms > now + _FUTURE_SKEW_MS:
            raise InvalidRequestError(f"groups[{i}].occurred_ms", "is in the future")
        if group.occurred_ms < 0:
            raise InvalidRequestError(f"groups[{i}].occurred_ms", "must not be before 1970-01-01T00:00:00Z")
        return group if group.occurred_ms <= now else replace(group, occurred_ms=now)

    # -- bounds ----------------------------------------------------------------------------------
    def _amount(self, value: Decimal, field: str) -> None:
        """A money field of a request: finite, not negative, at most the per-request maximum."""
        if not value.is_finite() or value < 0:
            raise InvalidRequestError(field, f"must be a finite amount >= 0, got {quote(str(value))}")
        limit = self.settings.max_amount_usd
        if value > limit:
            raise InvalidRequestError(
                field,
                f"must be at most {limit:,} dollars per request (ledger.max_amount_usd), got {quote(str(value))}",
            )

    def _tokens(self, value: int, field: str) -> None:
        """A token field of a request: not negative, at most the per-request maximum."""
        if value < 0:
            raise InvalidRequestError(field, f"must not be negative, got {value}")
        if value > self.settings.max_tokens:
            raise InvalidRequestError(
                field,
                f"must be at most {self.settings.max_tokens:,} tokens per request (ledger.max_tokens), got {value}",
            )

    def _facts(self, f: UsageFacts, field: str) -> None:
        counts = (
            f.input_tokens,
            f.output_tokens,
            f.cache_read_tokens,
            f.cache_creation_tokens,
            f.reasoning_tokens,
        )
        if (
            min(counts) < 0 or max(counts) > self.settings.max_tokens
        ):  # on every call's path: look closer only then
            for name in _TOKEN_FIELDS:
                self._tokens(getattr(f, name), f"{field}.{name}")
        for name, value in (("provider", f.provider), ("model", f.model)):
            if len(value) > _MAX_KEY or not value.isprintable():
                raise InvalidRequestError(
                    f"{field}.{name}", f"must be at most {_MAX_KEY} printable characters"
                )

    def _alerted(self, fired: Sequence[int]) -> None:
        # Told once the alerts are committed: inside a shared transaction, the listener's streams
        # (and, relayed, other workers') would look before they could see them.
        if fired and self._on_alert is not None:
            self.store.after_commit(self._on_alert)

    # -- reading and housekeeping ----------------------------------------------------------------
    def budget_status(self, budget_id: str, scope_id: str = "") -> BudgetStatus:
        check_budget_id(budget_id, "budget_id")
        if scope_id:
            check_scope_id(scope_id)
        return self.store.budget_status(budget_id, scope_id, now_ms=self.clock.now_ms())

    def usage(self, query: UsageQuery, *, visible: Callable[[ScopeSet], bool] | None = None) -> UsageReport:
        """A usage report; with ``visible``, only the records whose scopes it accepts are counted."""
        group_by = check_group_by(query.group_by)
        query.scopes.validate(required=False)
        try:
            tz = zone(query.time_zone or self.settings.time_zone)
        except ValueError as exc:
            raise InvalidRequestError("time_zone", str(exc)) from None
        flt = self._usage_filter(query)
        columns = columns_for(group_by)
        by_slot = len(columns) != len(group_by)
        if visible is None:
            return build_report(self.store.usage_rows(flt, columns, by_slot=by_slot), group_by, tz)
        # Group by every scope as well, keep the rows whose ids are visible, then fold them back.
        fetched = tuple(dict.fromkeys((*SCOPE_COLUMNS, *columns)))
        rows = [
            row
            for row in self.store.usage_rows(flt, fetched, by_slot=by_slot)
            if visible(ScopeSet(**dict(zip(SCOPE_COLUMNS, row.keys, strict=False))))
        ]
        return build_report(rows, group_by, tz, columns=fetched)

    def usage_records(
        self,
        query: UsageQuery,
        *,
        offset: int = 0,
        limit: int = 50,
        visible: Callable[[ScopeSet], bool] | None = None,
    ) -> tuple[list[UsageRecord], int]:
        """One page of the recorded units of spend ``query`` covers, newest first, and how many there
        are in all; with ``visible``, only those whose scopes it accepts."""
        query.scopes.validate(required=False)
        flt = self._usage_filter(query)
        page: list[UsageRecord] = []
        skipped, cursor = 0, None
        while len(page) < limit:
            batch = self.store.usage_records(flt, before=cursor, limit=max(limit, 100))
            for record in batch:
                if visible is not None and not visible(record.scopes):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                page.append(record)
                if len(page) == limit:
                    break
            if len(batch) < max(limit, 100):
                break
            cursor = (batch[-1].at_ms, batch[-1].id)
        if visible is None:
            total = sum(row.records for row in self.store.usage_rows(flt, (), by_slot=False))
        else:
            rows = self.store.usage_rows(flt, SCOPE_COLUMNS, by_slot=False)
            total = sum(
                row.records
                for row in rows
                if visible(ScopeSet(**dict(zip(SCOPE_COLUMNS, row.keys, strict=True))))
            )
        return page, total

    def _usage_filter(self, query: UsageQuery) -> UsageFilter:
        for field, at in (("start", query.start_ms), ("end", query.end_ms)):
            if at is not None and not MIN_TIME_MS <= at <= MAX_TIME_MS:
                raise InvalidRequestError(field, "must be between 0001-01-01 and 9999-12-31")
        # Without an end, everything up to and including this millisecond.
        end = self.clock.now_ms() + 1 if query.end_ms is None else query.end_ms
        if query.start_ms is not None and query.start_ms >= end:
            raise InvalidRequestError("start", "must be before end")
        return UsageFilter(
            start_ms=query.start_ms,
            end_ms=end,
            scopes=query.scopes,
            provider=query.provider,
            model=query.model,
        )

    def expire_due(self) -> int:
        """Release every reservation whose TTL has passed; the sweeper calls this between requests."""
        total = 0
        while (n := self.store.expire_due(now_ms=self.clock.now_ms())) > 0:
            total += n
        return total


def _reservation_id(now_ms: int) -> str:
    """32 hex digits: the time first, then 80 random bits. Ids that grow with time are appended to the
    end of the store's indexes instead of landing on a random page each, which keeps every commit small."""
    return f"{now_ms:012x}{secrets.token_hex(10)}"


def _check_batch_rows(batch: UsageBatch, groups: int) -> None:
    """Refuse items and series a store must never see, column by column (a batch has thousands)."""
    for name, rows, key_at, group_at, amounts_at in (
        ("items", batch.items, 1, 2, 3),
        ("series", batch.series, 0, 1, 3),
    ):
        if not rows:
            continue
        columns = list(zip(*rows, strict=True))
        if min(columns[group_at]) < 0 or max(columns[group_at]) >= groups:  # type: ignore[type-var]
            raise InvalidRequestError(f"{name}.group", f"must index one of the {groups} groups")
        for offset, column in enumerate(columns[amounts_at:]):
            if min(column) < 0:  # type: ignore[type-var]
                raise InvalidRequestError(f"{name}.amounts[{offset}]", "must not be negative")
        sizes = list(map(len, columns[key_at]))  # type: ignore[arg-type]
        if min(sizes) < 1 or max(sizes) > _MAX_BATCH_KEY:
            raise InvalidRequestError(f"{name}.key", f"must be 1 to {_MAX_BATCH_KEY} bytes")
        keys = set(zip(columns[0], columns[1], strict=True)) if name == "items" else set(columns[0])
        if len(keys) != len(rows):
            raise InvalidRequestError(f"{name}.key", "appears twice in one batch")


_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)


def _key(value: str, field: str) -> None:
    if value and (len(value) > _MAX_KEY or not value.isprintable()):
        raise InvalidRequestError(field, f"must be at most {_MAX_KEY} printable characters")


def _required_key(value: str, field: str) -> None:
    if not value:
        raise InvalidRequestError(field, "is required")
    _key(value, field)


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        last_id = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
        return check_budget_id(last_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("page_token", "is not a token this service issued") from None
