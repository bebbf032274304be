"""The store interface: the few coarse, atomic operations the ledger needs, and nothing that assumes one process.

Every operation that changes money or alert state is *one* call here and must be atomic in the
implementation: reserving across every matching budget, committing, releasing, expiring due
reservations, recording usage (with its idempotency check), and firing alerts (with their
once-per-period de-duplication). Period roll-over needs no operation at all: spend is kept per period
bucket, so a new period is simply a new bucket. Several sidecars may share one store (a SQLite file
on one host, or a cluster store); implementations decide with ``collector_processor.domain.decisions`` so
that every store answers alike.

Operations refuse a request (raise a ``SidecarError``) only before their first write: a refused
operation leaves nothing behind, even when it shares a transaction with others (``batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from collector_processor.domain.access import AuditEvent, TokenRecord
from collector_processor.domain.budgets import Budget, BudgetPatch, Scope, ScopeSet
from collector_processor.domain.requests import RequestDraft, RequestStatus
from collector_processor.domain.types import (
    Alert,
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
)
from collector_processor.domain.usage import USAGE_COLUMNS, UsageRecord, UsageRow

__all__ = ["USAGE_COLUMNS", "BudgetSpend", "EntitySpend", "LedgerStore", "UsageFilter", "UsageRow"]


@dataclass(kw_only=True, frozen=True, slots=True)
class UsageFilter:
    """Which recorded spend a usage report covers."""

    start_ms: int | None
    """Inclusive start; ``None``: all retained history."""
    end_ms: int
    """Exclusive end."""
    scopes: ScopeSet
    """Only spend attributed to every id given."""
    provider: str = ""
    """Only this provider, when given."""
    model: str = ""
    """Only this model, when given."""


@dataclass(kw_only=True, frozen=True, slots=True)
class EntitySpend:
    """One entity's committed spend and holds on one budget in its current period or window."""

    entity: str
    """The entity (the budget's ``scope_id``, or one entity of a wildcard budget)."""
    used_micros: int
    """Committed spend, micro-dollars."""
    reserved_micros: int
    """Held by reservations in flight, micro-dollars."""


@dataclass(kw_only=True, frozen=True, slots=True)
class BudgetSpend:
    """A budget with the spend of its entities in the current period, for metrics."""

    budget: Budget
    """The budget."""
    entities: tuple[EntitySpend, ...]
    """The entities listed, most ``used + reserved`` first (ties by entity)."""
    entity_count: int
    """Entities with spend or holds in the period, including those beyond the listing's limit."""


class LedgerStore(Protocol):
    """Durable budgets, spend, reservations and alerts. Implementations must be safe to call from many threads."""

    # -- budgets ---------------------------------------------------------------------------------
    def create_budget(self, budget: Budget, *, audit: AuditEvent | None = None) -> Budget:
        """Insert; ``AlreadyExistsError`` if the id is taken. Returns it with its generation set.
        With ``audit``, the event (its ``after`` filled with the budget) is logged in the same step."""
        ...

    def get_budget(self, budget_id: str) -> Budget:
        """``NotFoundError`` if unknown."""
        ...

    def list_budgets(
        self, *, scope: Scope | None, scope_id: str | None, after_id: str, limit: int
    ) -> list[Budget]:
        """Budgets ordered by id, after ``after_id``."""
        ...

    def update_budget(
        self,
        budget_id: str,
        patch: BudgetPatch,
        *,
        now_ms: int,
        allow_config: bool = False,
        audit: AuditEvent | None = None,
    ) -> Budget:
        """Apply ``patch`` atomically; ``FailedPreconditionError`` for a config budget unless ``allow_config``.
        With ``audit``, the event (``before`` and ``after`` filled) is logged in the same step."""
        ...

    def delete_budget(
        self, budget_id: str, *, allow_config: bool = False, audit: AuditEvent | None = None
    ) -> None:
        """Delete the budget with its spend, holds and alert marks, atomically (and log ``audit``)."""
        ...

    def sync_config_budgets(self, budgets: Sequence[Budget], *, now_ms: int) -> None:
        """Make the config-declared budgets exactly ``budgets``: create, update, delete, atomically."""
        ...

    # -- money -----------------------------------------------------------------------------------
    def check(
        self, scopes: ScopeSet, estimate_micros: int, *, now_ms: int, request_budget: str = ""
    ) -> CheckOutcome:
        """The decision a reservation would get, reserving nothing (held to ``request_budget`` and its
        ancestors too, when given)."""
        ...

    def reserve(
        self, command: ReserveCommand, *, reservation_id: str, expires_ms: int, now_ms: int
    ) -> ReserveOutcome:
        """Decide and hold on every matching budget, or on none, atomically (including the downgrade re-send);
        a reservation made or renewed holds until ``expires_ms``. It keeps ``command.owner`` and
        ``command.fingerprint``: a repeated idempotency key with another fingerprint is
        ``AlreadyExistsError``, and a re-send by another owner ``PermissionDeniedError``.

        With ``command.request_budget``, the request budget and every ancestor of it are decided on and
        held on too, in the same step (after the matching budgets, innermost first); one that is not
        open denies (``domain.requests.closed_plan``). The reservation remembers which incarnations it
        held on: its commit charges them (with ``command.service``), its release or expiry gives the
        hold back to them, and either skips one that has expired since. A hold keeps its request
        budgets open until it runs out."""
        ...

    def commit(self, command: CommitCommand, *, now_ms: int) -> CommitOutcome:
        """Replace the hold with the actual spend, charge, fire alerts; idempotent. ``PermissionDeniedError``
        (before anything is written) when ``command.owner`` did not make the reservation."""
        ...

    def release(self, reservation_id: str, *, now_ms: int, owner: str = "") -> ReleaseOutcome:
        """Give the hold back; idempotent. ``PermissionDeniedError`` when ``owner`` did not make it."""
        ...

    def record_usage(self, command: RecordUsageCommand, *, now_ms: int) -> RecordUsageOutcome:
        """Charge spend without a reservation, idempotent by usage id; fire alerts. The same usage id
        with another fingerprint is ``AlreadyExistsError``; a reservation it names must be the owner's."""
        ...

    def open_request_budget(self, draft: RequestDraft, *, now_ms: int) -> RequestStatus:
        """Open a request budget, atomically: inside ``draft.parent_id`` (which must be open, else
        ``NotFoundError``) with the limit ``domain.requests.opened`` gives it. The same id opened again
        while open with the same fingerprint returns it as it stands (a retry); another request for an
        open id is ``AlreadyExistsError``. Opening a child is activity on its ancestors."""
        ...

    def request_status(self, request_id: str, *, now_ms: int) -> RequestStatus:
        """An open request budget's standing and spend by service; ``NotFoundError`` when it is not open."""
        ...

    def record_usage_batch(self, batch: UsageBatch, *, now_ms: int) -> UsageBatchOutcome:
        """Record many units of usage in one atomic operation (the OTLP receiver's bulk charge).

        - An item whose key ``(instant_ms, uid)`` was recorded before is a duplicate and charges nothing.
        - A series charges, field by field, how far its totals exceed the largest recorded for its id
          (all of them if the id is new, none if it is new and ``baseline``); the store then keeps the
          larger totals.
        - The new amounts of each group are summed into one usage record (for reports) at the group's
          ``occurred_ms``, and a non-zero cost is charged to every budget matching its scopes at that
          instant, firing thresholds exactly like ``record_usage``; and to the group's request budget
          and its ancestors (with the group's service) while they are open.

        All of it or nothing. Item keys are remembered until ``prune`` forgets those whose instant is
        more than ``reservation_retention_ms`` old, and series ids until they have not grown for that
        long: callers must not send usage older than that and expect it to be recognised.
        """
        ...

    def expire_due(self, *, now_ms: int, limit: int = 500) -> int:
        """Release held reservations whose TTL has passed; return how many."""
        ...

    # -- reading ---------------------------------------------------------------------------------
    def budget_status(self, budget_id: str, entity: str, *, now_ms: int) -> BudgetStatus:
        """The budget's standing for ``entity`` now."""
        ...

    def usage_rows(self, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool) -> list[UsageRow]:
        """Recorded spend grouped by ``columns`` (a subset of ``USAGE_COLUMNS``) and optionally 15-minute slot."""
        ...

    def usage_records(
        self, flt: UsageFilter, *, before: tuple[int, str] | None, limit: int
    ) -> list[UsageRecord]:
        """At most ``limit`` recorded units of spend matching ``flt``, newest first (by time, then id,
        both descending), after ``before`` (the ``(at_ms, id)`` of the last one of the previous page)."""
        ...

    def budget_spend(self, *, now_ms: int, max_entities: int) -> list[BudgetSpend]:
        """Every budget, ordered by id, with its entities' spend and holds in the period containing
        ``now_ms``; read-only, and never waits for writers. A budget for one entity lists it, even at
        zero; a wildcard lists the entities with spend or holds, at most ``max_entities`` of them. Holds
        of reservations whose TTL passed since the last expiry may still count."""
        ...

    def held_reservations(self) -> tuple[int, int]:
        """How many reservations are held, and the micro-dollars they hold; read-only, like ``budget_spend``."""
        ...

    # -- alerts ----------------------------------------------------------------------------------
    def alerts_after(self, sequence: int, *, limit: int, budget_ids: Sequence[str] = ()) -> list[Alert]:
        """Alerts in the log with a larger sequence, ascending."""
        ...

    def last_alert_sequence(self) -> int:
        """The largest sequence in the log (0 when empty)."""
        ...

    def claim_alerts(self, *, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Alert]:
        """Lease undelivered alerts to ``owner`` for notification; an expired lease may be claimed again."""
        ...

    def ack_alerts(self, sequences: Sequence[int], *, now_ms: int) -> None:
        """Mark alerts as notified."""
        ...

    # -- tokens and audit ------------------------------------------------------------------------
    def create_token(self, token: TokenRecord, *, event: AuditEvent) -> None:
        """Store a new token and its audit event in one atomic step; ``AlreadyExistsError`` for a
        taken id. Moves the tokens version."""
        ...

    def revoke_token(self, token_id: str, *, now_ms: int, event: AuditEvent) -> TokenRecord:
        """Mark a token revoked (once; revoking it again changes nothing) with its audit event;
        ``NotFoundError`` for an unknown id. Moves the tokens version."""
        ...

    def list_tokens(self) -> list[TokenRecord]:
        """Every token issued, live or not, oldest first."""
        ...

    def tokens_version(self) -> int:
        """A counter every token change moves; sidecars poll it to refresh what they hold in memory."""
        ...

    def record_audit(self, event: AuditEvent) -> None:
        """Append one event to the audit log."""
        ...

    def audit_events(self, *, after: int, limit: int) -> list[AuditEvent]:
        """Audit events with a sequence above ``after``, oldest first."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """A block in which the calling thread's operations commit together at its end (group commit);
        each stays atomic on its own. Results must not be released before the block exits cleanly.
        ``BatchAbortedError`` on exit means an operation failed part-way and nothing was kept: run each
        operation again alone. A store without batching may return a context that does nothing."""
        ...

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once what the calling thread wrote is durable and visible to every reader: now,
        or inside ``batch()`` when the block commits (never when it is rolled back, since the
        operations are run again and say so again). How the ledger announces fired alerts, so that a
        stream woken by the news (in this process or, relayed, in another) finds them."""
        ...

    # -- housekeeping ----------------------------------------------------------------------------
    def prune(
        self, *, now_ms: int, reservation_retention_ms: int, usage_retention_ms: int, alert_retention_ms: int
    ) -> None:
        """Forget settled reservations, aged usage records, delivered alerts, spend buckets no window reads,
        batch item keys and series older than ``reservation_retention_ms``, and request budgets that
        have expired."""
        ...

    def close(self) -> None: ...
