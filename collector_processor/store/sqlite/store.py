"""The embedded SQLite store: every money-changing operation is one ``BEGIN IMMEDIATE`` transaction.

Each operation first releases reservations whose TTL has passed (so an expired hold never counts, even
between sweeps), then reads the standing of the matching budgets, decides with
``collector_processor.domain.decisions`` and writes, all under the database's write lock. That lock is held
across processes too, so several sidecars on one host can share the file. Reads that need no fresh
expiry (budget listings, usage reports, the alert log) use a second connection and never wait for writers.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from collector_processor.domain.access import AuditEvent, TokenRecord, budget_record
from collector_processor.domain.budgets import Budget, BudgetPatch, Scope, ScopeSet, apply_patch
from collector_processor.domain.decisions import BudgetState
from collector_processor.domain.money import micros_to_usd
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
    ReservationState,
    ReserveCommand,
    ReserveOutcome,
    UsageBatch,
    UsageBatchOutcome,
)
from collector_processor.domain.usage import UsageRecord
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    StoreUnavailableError,
)
from collector_processor.store.base import BudgetSpend, UsageFilter, UsageRow
from collector_processor.store.index import BudgetIndex
from collector_processor.store.shared import check_outcome, entity_for, refuse_config
from collector_processor.store.sqlite import access as access_sql
from collector_processor.store.sqlite import batch as batch_sql
from collector_processor.store.sqlite import budgets as budgets_sql
from collector_processor.store.sqlite import reports
from collector_processor.store.sqlite import requests as req_sql
from collector_processor.store.sqlite import reservations as holds_sql
from collector_processor.store.sqlite import spend as spend_sql
from collector_processor.store.sqlite.group_commit import GroupCommitter
from collector_processor.store.sqlite.schema import BUDGET_COLUMNS, budget_from_row, connect
from paymaster.exceptions import quote

__all__ = ["SqliteStore"]

log = logging.getLogger("paymaster.sidecar.store")
T = TypeVar("T")

_BEGIN_SQL = (
    "SELECT (SELECT value FROM counters WHERE name = 'budgets'),"
    " EXISTS (SELECT 1 FROM reservations WHERE state = 1 AND expires_ms <= ?)"
)


class SqliteStore:
    """``LedgerStore`` on one SQLite file (WAL). ``synchronous``: ``'normal'`` (survives a crash of the
    process) or ``'full'`` (also survives power loss)."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "normal",
        busy_timeout_ms: int = 5000,
        checkpoint_interval_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        settings = {"synchronous": synchronous, "busy_timeout_ms": busy_timeout_ms}
        try:
            self._conn = connect(self.path, create=True, **settings)  # type: ignore[arg-type]
            self._reader = connect(self.path, create=False, **settings)  # type: ignore[arg-type]
            checkpointer = connect(self.path, create=False, **settings)  # type: ignore[arg-type]
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open the SQLite store at {self.path}: {exc}") from exc
        self._read_lock = threading.Lock()
        self._index = BudgetIndex((), version=-1)
        self._checked: tuple[int, int] | None = None  # (transaction, now_ms) of the last _begin_op check
        self._committer = GroupCommitter(self._conn, describe=str(self.path), on_rollback=self._forget_index)
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(checkpointer, checkpoint_interval_s), name="paymaster-sqlite-checkpoint",
            daemon=True,
        )  # fmt: skip
        self._checkpointer.start()

    def _checkpoint_loop(self, conn: sqlite3.Connection, interval_s: float) -> None:
        """Copy the write-ahead log into the database off the request path; PASSIVE never blocks writers."""
        try:
            while not self._closing.wait(interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed; retrying", exc_info=True)
        finally:
            conn.close()

    # -- plumbing --------------------------------------------------------------------------------
    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` atomically in a write transaction (possibly shared with concurrent operations)."""
        result: T = self._committer.run(fn)
        return result

    def batch(self) -> AbstractContextManager[None]:
        """Operations this thread runs inside the block share one transaction (see ``GroupCommitter.batch``)."""
        return self._committer.batch()

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._committer.after_commit(fn)

    def _forget_index(self) -> None:
        self._index = BudgetIndex((), version=-1)
        self._checked = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._reader
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"the store at {self.path} could not be read: {exc}") from exc

    def _begin_op(self, conn: sqlite3.Connection, now_ms: int) -> BudgetIndex:
        """Refresh the budget index if any process changed a budget, and expire due reservations; one
        query answers both questions, asked once per transaction and millisecond (operations that change
        budgets drop the cache)."""
        key = (self._committer.transaction, now_ms)
        if key == self._checked:
            return self._index
        version, due = conn.execute(_BEGIN_SQL, (now_ms,)).fetchone()
        if version != self._index.version:
            rows = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets").fetchall()
            self._index = BudgetIndex((budget_from_row(r) for r in rows), version=version)
        if due:
            holds_sql.expire_due(conn, now_ms, limit=256)
        self._checked = key
        return self._index

    # -- budgets ---------------------------------------------------------------------------------
    def create_budget(self, budget: Budget, *, audit: AuditEvent | None = None) -> Budget:
        def op(conn: sqlite3.Connection) -> Budget:
            if conn.execute("SELECT 1 FROM budgets WHERE id = ?", (budget.id,)).fetchone():
                raise AlreadyExistsError(f"budget {quote(budget.id)} exists already")
            self._forget_index()
            created = budgets_sql.insert_budget(conn, budget)
            if audit is not None:
                access_sql.insert_audit(conn, replace(audit, after=budget_record(created)))
            return created

        return self._write(op)

    def get_budget(self, budget_id: str) -> Budget:
        with self._read() as conn:
            row = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE id = ?", (budget_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"budget {quote(budget_id)} does not exist")
        return budget_from_row(row)

    def list_budgets(
        self, *, scope: Scope | None, scope_id: str | None, after_id: str, limit: int
    ) -> list[Budget]:
        sql = f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE id > ?"
        args: list[Any] = [after_id]
        if scope is not None:
            sql += " AND scope = ?"
            args.append(scope.value)
        if scope_id is not None:
            sql += " AND scope_id = ?"
            args.append(scope_id)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [budget_from_row(r) for r in rows]

    def update_budget(
        self,
        budget_id: str,
        patch: BudgetPatch,
        *,
        now_ms: int,
        allow_config: bool = False,
        audit: AuditEvent | None = None,
    ) -> Budget:
        def op(conn: sqlite3.Connection) -> Budget:
            current = budgets_sql.load_budget(conn, budget_id)
            refuse_config(current, allow_config, "changed")
            updated = apply_patch(current, patch, now_ms=now_ms)
            self._forget_index()
            budgets_sql.replace_budget(conn, updated)
            if audit is not None:
                event = replace(audit, before=budget_record(current), after=budget_record(updated))
                access_sql.insert_audit(conn, event)
            return updated

        return self._write(op)

    def delete_budget(
        self, budget_id: str, *, allow_config: bool = False, audit: AuditEvent | None = None
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            current = budgets_sql.load_budget(conn, budget_id)
            refuse_config(current, allow_config, "deleted")
            self._forget_index()
            budgets_sql.delete_budget(conn, budget_id)
            if audit is not None:
                access_sql.insert_audit(conn, replace(audit, before=budget_record(current)))

        self._write(op)

    def sync_config_budgets(self, budgets: Sequence[Budget], *, now_ms: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._forget_index()
            budgets_sql.sync_config_budgets(conn, budgets, now_ms=now_ms)

        self._write(op)

    # -- money -----------------------------------------------------------------------------------
    def check(
        self, scopes: ScopeSet, estimate_micros: int, *, now_ms: int, request_budget: str = ""
    ) -> CheckOutcome:
        def op(conn: sqlite3.Connection) -> tuple[list[BudgetState], str]:
            index = self._begin_op(conn, now_ms)
            states = holds_sql.read_states(conn, index.match(scopes, enabled_only=True), now_ms)
            if not request_budget:
                return states, ""
            chain = req_sql.chain_of(conn, request_budget, now_ms)
            if isinstance(chain, str):
                return states, chain
            return states + req_sql.states(chain, now_ms), ""

        states, closed = self._write(op)
        return check_outcome(states, estimate_micros, closed=closed)

    def reserve(
        self, command: ReserveCommand, *, reservation_id: str, expires_ms: int, now_ms: int
    ) -> ReserveOutcome:
        def op(conn: sqlite3.Connection) -> ReserveOutcome:
            index = self._begin_op(conn, now_ms)
            if command.downgrade_of:
                return holds_sql.resend_downgrade(conn, index, command, expires_ms, now_ms)
            if command.idempotency_key:
                replay = holds_sql.replay_reservation(conn, index, command, now_ms)
                if replay is not None:
                    return replay
            return holds_sql.reserve(conn, index, command, reservation_id, expires_ms, now_ms)

        return self._write(op)

    def commit(self, command: CommitCommand, *, now_ms: int) -> CommitOutcome:
        def op(conn: sqlite3.Connection) -> CommitOutcome:
            index = self._begin_op(conn, now_ms)
            return spend_sql.commit(conn, index, command, now_ms)

        return self._write(op)

    def release(self, reservation_id: str, *, now_ms: int, owner: str = "") -> ReleaseOutcome:
        def op(conn: sqlite3.Connection) -> ReleaseOutcome:
            self._begin_op(conn, now_ms)
            row = holds_sql.load_reservation(conn, reservation_id)
            if row is None:
                raise NotFoundError(f"reservation {quote(reservation_id)} is unknown")
            holds_sql.check_owner(row, owner)
            state = ReservationState(row.state)
            if state is ReservationState.COMMITTED:
                raise FailedPreconditionError(
                    f"reservation {quote(reservation_id)} is committed already; it cannot be released"
                )
            if state is not ReservationState.HELD:
                return ReleaseOutcome(released_usd=micros_to_usd(0), state=state)
            holds_sql.settle_hold(conn, row, ReservationState.RELEASED, now_ms)
            return ReleaseOutcome(released_usd=micros_to_usd(row.held), state=ReservationState.RELEASED)

        return self._write(op)

    def record_usage(self, command: RecordUsageCommand, *, now_ms: int) -> RecordUsageOutcome:
        def op(conn: sqlite3.Connection) -> RecordUsageOutcome:
            index = self._begin_op(conn, now_ms)
            if command.reservation_id:
                outcome = spend_sql.record_against_reservation(conn, index, command, now_ms)
                if outcome is not None:
                    return outcome
            return spend_sql.record_usage(conn, index, command, now_ms)

        return self._write(op)

    def record_usage_batch(self, batch: UsageBatch, *, now_ms: int) -> UsageBatchOutcome:
        def op(conn: sqlite3.Connection) -> UsageBatchOutcome:
            index = self._begin_op(conn, now_ms)
            return batch_sql.record_batch(conn, index, batch, now_ms)

        return self._write(op)

    def expire_due(self, *, now_ms: int, limit: int = 500) -> int:
        return self._write(lambda conn: holds_sql.expire_due(conn, now_ms, limit=limit))

    # -- request budgets -------------------------------------------------------------------------
    def open_request_budget(self, draft: RequestDraft, *, now_ms: int) -> RequestStatus:
        def op(conn: sqlite3.Connection) -> RequestStatus:
            self._begin_op(conn, now_ms)
            return req_sql.open_request(conn, draft, now_ms)

        return self._write(op)

    def request_status(self, request_id: str, *, now_ms: int) -> RequestStatus:
        def op(conn: sqlite3.Connection) -> RequestStatus:
            self._begin_op(conn, now_ms)  # a due reservation's hold must not count
            return req_sql.status(conn, request_id, now_ms)

        return self._write(op)

    # -- reading ---------------------------------------------------------------------------------
    def budget_status(self, budget_id: str, entity: str, *, now_ms: int) -> BudgetStatus:
        def op(conn: sqlite3.Connection) -> BudgetStatus:
            live = self._begin_op(conn, now_ms).get(budget_id)
            if live is None:
                raise NotFoundError(f"budget {quote(budget_id)} does not exist")
            return reports.budget_status(conn, live, entity_for(live, entity), now_ms)

        return self._write(op)

    def usage_rows(self, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool) -> list[UsageRow]:
        with self._read() as conn:
            return reports.usage_rows(conn, flt, columns, by_slot=by_slot)

    def usage_records(
        self, flt: UsageFilter, *, before: tuple[int, str] | None, limit: int
    ) -> list[UsageRecord]:
        with self._read() as conn:
            return reports.usage_records(conn, flt, before=before, limit=limit)

    def budget_spend(self, *, now_ms: int, max_entities: int) -> list[BudgetSpend]:
        with self._read() as conn:
            return reports.budget_spend(conn, now_ms=now_ms, max_entities=max_entities)

    def held_reservations(self) -> tuple[int, int]:
        with self._read() as conn:
            return reports.held_reservations(conn)

    # -- alerts ----------------------------------------------------------------------------------
    def alerts_after(self, sequence: int, *, limit: int, budget_ids: Sequence[str] = ()) -> list[Alert]:
        with self._read() as conn:
            return reports.alerts_after(conn, sequence, limit=limit, budget_ids=budget_ids)

    def last_alert_sequence(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM alerts").fetchone()[0])

    def claim_alerts(self, *, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Alert]:
        return self._write(
            lambda conn: reports.claim_alerts(
                conn, owner=owner, now_ms=now_ms, lease_ms=lease_ms, limit=limit
            )
        )

    def ack_alerts(self, sequences: Sequence[int], *, now_ms: int) -> None:
        rows = [(now_ms, s) for s in sequences]
        self._write(lambda conn: conn.executemany("UPDATE alerts SET delivered_ms = ? WHERE seq = ?", rows))

    # -- tokens and audit ------------------------------------------------------------------------
    def create_token(self, token: TokenRecord, *, event: AuditEvent) -> None:
        self._write(lambda conn: access_sql.insert_token(conn, token, event))

    def revoke_token(self, token_id: str, *, now_ms: int, event: AuditEvent) -> TokenRecord:
        return self._write(lambda conn: access_sql.revoke_token(conn, token_id, now_ms, event))

    def list_tokens(self) -> list[TokenRecord]:
        with self._read() as conn:
            return access_sql.list_tokens(conn)

    def tokens_version(self) -> int:
        with self._read() as conn:
            return access_sql.tokens_version(conn)

    def record_audit(self, event: AuditEvent) -> None:
        self._write(lambda conn: access_sql.insert_audit(conn, event))

    def audit_events(self, *, after: int, limit: int) -> list[AuditEvent]:
        with self._read() as conn:
            return access_sql.audit_events(conn, after, limit)

    # -- housekeeping ----------------------------------------------------------------------------
    def prune(
        self, *, now_ms: int, reservation_retention_ms: int, usage_retention_ms: int, alert_retention_ms: int
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            req_sql.prune(conn, now_ms)
            reports.prune(
                conn,
                list(self._begin_op(conn, now_ms)),
                now_ms=now_ms,
                reservation_retention_ms=reservation_retention_ms,
                usage_retention_ms=usage_retention_ms,
                alert_retention_ms=alert_retention_ms,
            )

        self._write(op)

    def close(self) -> None:
        self._closing.set()
        self._checkpointer.join(10)
        with self._committer.lock, self._read_lock:
            self._conn.close()
            self._reader.close()
