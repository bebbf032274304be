"""A ``LedgerStore`` wrapper that times every operation and counts its failures, for any store.

``InstrumentedStore(store, metrics)`` forwards each call to the wrapped store and records its duration
in ``paymaster_store_operation_seconds{operation}``. A call that fails for a reason other than
refusing the request (the store is unavailable, a shared transaction was aborted, anything
unexpected) also counts in ``paymaster_store_errors_total{operation, kind}``; refusals such as an
unknown id or an exhausted precondition are answers, not store errors. The wrapper adds no behaviour,
so the SQLite store, a cluster store and any later one are measured alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from time import perf_counter
from typing import Any, Protocol, TypeVar

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
)
from collector_processor.domain.usage import UsageRecord
from collector_processor.errors import BatchAbortedError, SidecarError, StoreUnavailableError
from collector_processor.store.base import BudgetSpend, LedgerStore, UsageFilter, UsageRow

__all__ = ["STORE_ERRORS", "STORE_SECONDS", "InstrumentedStore", "OperationMeter", "error_kind"]

STORE_SECONDS = "paymaster_store_operation_seconds"
STORE_ERRORS = "paymaster_store_errors_total"
Labels = tuple[tuple[str, str], ...]
_OPERATION_KEYS: dict[str, Labels] = {}  # operations are the store's method names: a fixed set
T = TypeVar("T")


class OperationMeter(Protocol):
    """What the wrapper counts on: the sidecar's ``SelfMetrics`` (in ``telemetry/``, above the store)
    has these methods, and a store needs nothing else of it."""

    def describe(self, name: str, help_text: str) -> None: ...

    def inc(self, name: str, value: float = 1.0, labels: Mapping[str, str] | None = None) -> None: ...

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None: ...

    def observe_key(self, name: str, key: Labels, value: float) -> None: ...


def error_kind(exc: BaseException) -> str | None:
    """The ``kind`` label of a store failure, or ``None`` for a refusal of the request."""
    if isinstance(exc, StoreUnavailableError):
        return "unavailable"
    if isinstance(exc, BatchAbortedError):
        return "batch_aborted"
    if isinstance(exc, SidecarError):
        return None
    return "internal"


class InstrumentedStore:
    """Times and counts the operations of ``inner``; every other attribute is the inner store's."""

    def __init__(self, inner: LedgerStore, metrics: OperationMeter) -> None:
        self.inner = inner
        self._metrics = metrics
        metrics.describe(STORE_SECONDS, "Duration of ledger store operations, by operation.")
        metrics.describe(
            STORE_ERRORS,
            "Ledger store operations that failed (not refusals of a request), by operation and kind "
            "(unavailable, batch_aborted, internal).",
        )

    def __getattr__(self, name: str) -> Any:
        # Store-specific attributes (a SQLite store's path) stay reachable through the wrapper.
        return getattr(self.inner, name)

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        start = perf_counter()
        try:
            return call()
        except BaseException as exc:
            self._failed(operation, exc)
            raise
        finally:
            key = _OPERATION_KEYS.get(operation)
            if key is None:
                key = _OPERATION_KEYS[operation] = (("operation", operation),)
            self._metrics.observe_key(STORE_SECONDS, key, perf_counter() - start)

    def _failed(self, operation: str, exc: BaseException) -> None:
        kind = error_kind(exc)
        if kind is not None:
            self._metrics.inc(STORE_ERRORS, 1, {"operation": operation, "kind": kind})

    # -- budgets ---------------------------------------------------------------------------------
    def create_budget(self, budget: Budget, *, audit: AuditEvent | None = None) -> Budget:
        return self._timed("create_budget", lambda: self.inner.create_budget(budget, audit=audit))

    def get_budget(self, budget_id: str) -> Budget:
        return self._timed("get_budget", lambda: self.inner.get_budget(budget_id))

    def list_budgets(
        self, *, scope: Scope | None, scope_id: str | None, after_id: str, limit: int
    ) -> list[Budget]:
        return self._timed(
            "list_budgets",
            lambda: self.inner.list_budgets(scope=scope, scope_id=scope_id, after_id=after_id, limit=limit),
        )

    def update_budget(
        self,
        budget_id: str,
        patch: BudgetPatch,
        *,
        now_ms: int,
        allow_config: bool = False,
        audit: AuditEvent | None = None,
    ) -> Budget:
        return self._timed(
            "update_budget",
            lambda: self.inner.update_budget(
                budget_id, patch, now_ms=now_ms, allow_config=allow_config, audit=audit
            ),
        )

    def delete_budget(
        self, budget_id: str, *, allow_config: bool = False, audit: AuditEvent | None = None
    ) -> None:
        self._timed(
            "delete_budget",
            lambda: self.inner.delete_budget(budget_id, allow_config=allow_config, audit=audit),
        )

    def sync_config_budgets(self, budgets: Sequence[Budget], *, now_ms: int) -> None:
        self._timed("sync_config_budgets", lambda: self.inner.sync_config_budgets(budgets, now_ms=now_ms))

    # -- money -----------------------------------------------------------------------------------
    def check(
        self, scopes: ScopeSet, estimate_micros: int, *, now_ms: int, request_budget: str = ""
    ) -> CheckOutcome:
        return self._timed(
            "check",
            lambda: self.inner.check(scopes, estimate_micros, now_ms=now_ms, request_budget=request_budget),
        )

    def open_request_budget(self, draft: RequestDraft, *, now_ms: int) -> RequestStatus:
        return self._timed(
            "open_request_budget", lambda: self.inner.open_request_budget(draft, now_ms=now_ms)
        )

    def request_status(self, request_id: str, *, now_ms: int) -> RequestStatus:
        return self._timed("request_status", lambda: self.inner.request_status(request_id, now_ms=now_ms))

    def reserve(
        self, command: ReserveCommand, *, reservation_id: str, expires_ms: int, now_ms: int
    ) -> ReserveOutcome:
        return self._timed(
            "reserve",
            lambda: self.inner.reserve(
                command, reservation_id=reservation_id, expires_ms=expires_ms, now_ms=now_ms
            ),
        )

    def commit(self, command: CommitCommand, *, now_ms: int) -> CommitOutcome:
        return self._timed("commit", lambda: self.inner.commit(command, now_ms=now_ms))

    def release(self, reservation_id: str, *, now_ms: int, owner: str = "") -> ReleaseOutcome:
        return self._timed("release", lambda: self.inner.release(reservation_id, now_ms=now_ms, owner=owner))

    def record_usage(self, command: RecordUsageCommand, *, now_ms: int) -> RecordUsageOutcome:
        return self._timed("record_usage", lambda: self.inner.record_usage(command, now_ms=now_ms))

    def expire_due(self, *, now_ms: int, limit: int = 500) -> int:
        return self._timed("expire_due", lambda: self.inner.expire_due(now_ms=now_ms, limit=limit))

    # -- reading ---------------------------------------------------------------------------------
    def budget_status(self, budget_id: str, entity: str, *, now_ms: int) -> BudgetStatus:
        return self._timed(
            "budget_status", lambda: self.inner.budget_status(budget_id, entity, now_ms=now_ms)
        )

    def usage_rows(self, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool) -> list[UsageRow]:
        return self._timed("usage_rows", lambda: self.inner.usage_rows(flt, columns, by_slot=by_slot))

    def usage_records(
        self, flt: UsageFilter, *, before: tuple[int, str] | None, limit: int
    ) -> list[UsageRecord]:
        return self._timed("usage_records", lambda: self.inner.usage_records(flt, before=before, limit=limit))

    def budget_spend(self, *, now_ms: int, max_entities: int) -> list[BudgetSpend]:
        return self._timed(
            "budget_spend", lambda: self.inner.budget_spend(now_ms=now_ms, max_entities=max_entities)
        )

    def held_reservations(self) -> tuple[int, int]:
        return self._timed("held_reservations", self.inner.held_reservations)

    # -- alerts ----------------------------------------------------------------------------------
    def alerts_after(self, sequence: int, *, limit: int, budget_ids: Sequence[str] = ()) -> list[Alert]:
        return self._timed(
            "alerts_after", lambda: self.inner.alerts_after(sequence, limit=limit, budget_ids=budget_ids)
        )

    def last_alert_sequence(self) -> int:
        return self._timed("last_alert_sequence", self.inner.last_alert_sequence)

    def claim_alerts(self, *, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Alert]:
        return self._timed(
            "claim_alerts",
            lambda: self.inner.claim_alerts(owner=owner, now_ms=now_ms, lease_ms=lease_ms, limit=limit),
        )

    def ack_alerts(self, sequences: Sequence[int], *, now_ms: int) -> None:
        self._timed("ack_alerts", lambda: self.inner.ack_alerts(sequences, now_ms=now_ms))

    def batch(self) -> AbstractContextManager[None]:
        """The inner store's batch, timed as one ``batch`` operation from its start to its commit."""
        return self._batch()

    def after_commit(self, fn: Callable[[], None]) -> None:
        self.inner.after_commit(fn)

    @contextmanager
    def _batch(self) -> Iterator[None]:
        start = perf_counter()
        try:
            with self.inner.batch():
                yield
        except BaseException as exc:
            self._failed("batch", exc)
            raise
        finally:
            self._metrics.observe(STORE_SECONDS, perf_counter() - start, {"operation": "batch"})

    # -- tokens and audit ------------------------------------------------------------------------
    def create_token(self, token: TokenRecord, *, event: AuditEvent) -> None:
        self._timed("create_token", lambda: self.inner.create_token(token, event=event))

    def revoke_token(self, token_id: str, *, now_ms: int, event: AuditEvent) -> TokenRecord:
        return self._timed(
            "revoke_token", lambda: self.inner.revoke_token(token_id, now_ms=now_ms, event=event)
        )

    def list_tokens(self) -> list[TokenRecord]:
        return self._timed("list_tokens", self.inner.list_tokens)

    def tokens_version(self) -> int:
        return self._timed("tokens_version", self.inner.tokens_version)

    def record_audit(self, event: AuditEvent) -> None:
        self._timed("record_audit", lambda: self.inner.record_audit(event))

    def audit_events(self, *, after: int, limit: int) -> list[AuditEvent]:
        return self._timed("audit_events", lambda: self.inner.audit_events(after=after, limit=limit))

    # -- housekeeping ----------------------------------------------------------------------------
    def prune(
        self, *, now_ms: int, reservation_retention_ms: int, usage_retention_ms: int, alert_retention_ms: int
    ) -> None:
        self._timed(
            "prune",
            lambda: self.inner.prune(
                now_ms=now_ms,
                reservation_retention_ms=reservation_retention_ms,
                usage_retention_ms=usage_retention_ms,
                alert_retention_ms=alert_retention_ms,
            ),
        )

    def close(self) -> None:
        self.inner.close()
