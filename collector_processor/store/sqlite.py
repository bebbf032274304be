"""The embedded SQLite store: every money-changing operation is one ``BEGIN IMMEDIATE`` transaction.

Each operation first releases reservations whose TTL has passed (so an expired hold never counts, even
between sweeps), then reads the standing of the matching budgets, decides with
``collector_processor.decisions`` and writes, all under the database's write lock. That lock is held
across processes too, so several sidecars on one host can share the file. Reads that need no fresh
expiry (budget listings, usage reports, the alert log) use a second connection and never wait for writers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector_processor.budgets import Budget, BudgetPatch, Scope, ScopeSet, apply_patch
from collector_processor.decisions import BudgetState, budget_infos, evaluate
from collector_processor.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailableError,
)
from collector_processor.ledger_types import (
    Alert,
    BudgetInfo,
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
)
from collector_processor.money import micros_to_usd
from collector_processor.store import _sqlite_ops as ops
from collector_processor.store import _sqlite_reports as reports
from collector_processor.store._index import BudgetIndex, LiveBudget
from collector_processor.store._sqlite_schema import BUDGET_COLUMNS, budget_from_row, budget_to_row, connect
from collector_processor.store.base import UsageFilter, UsageRow

__all__ = ["SqliteStore"]


class SqliteStore:
    """``LedgerStore`` on one SQLite file (WAL). ``synchronous``: ``'normal'`` (survives a crash of the
    process) or ``'full'`` (also survives power loss)."""

    def __init__(self, path: Path | str, *, synchronous: str = "normal", busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        try:
            self._conn = connect(self.path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, create=True)
            self._reader = connect(self.path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, create=False)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open the SQLite store at {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._index = BudgetIndex((), version=-1)

    # -- plumbing --------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, with the budget index refreshed and due reservations expired."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"the store at {self.path} is busy: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise StoreUnavailableError(f"the store at {self.path} is busy: {exc}") from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._reader
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"the store at {self.path} could not be read: {exc}") from exc

    def _budgets(self, conn: sqlite3.Connection) -> BudgetIndex:
        version = conn.execute("SELECT value FROM counters WHERE name = 'budgets'").fetchone()[0]
        if version != self._index.version:
            rows = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets").fetchall()
            self._index = BudgetIndex((budget_from_row(r) for r in rows), version=version)
        return self._index

    def _begin_op(self, conn: sqlite3.Connection, now_ms: int) -> BudgetIndex:
        index = self._budgets(conn)
        ops.expire_due(conn, now_ms, limit=256)
        return index

    # -- budgets ---------------------------------------------------------------------------------
    def create_budget(self, budget: Budget) -> Budget:
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM budgets WHERE id = ?", (budget.id,)).fetchone():
                raise AlreadyExistsError(f"budget {budget.id!r} exists already")
            created = ops.insert_budget(conn, budget)
        return created

    def get_budget(self, budget_id: str) -> Budget:
        with self._read() as conn:
            row = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE id = ?", (budget_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"budget {budget_id!r} does not exist")
        return budget_from_row(row)

    def list_budgets(self, *, scope: Scope | None, scope_id: str | None, after_id: str, limit: int) -> list[Budget]:
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

    def update_budget(self, budget_id: str, patch: BudgetPatch, *, now_ms: int, allow_config: bool = False) -> Budget:
        with self._tx() as conn:
            current = ops.load_budget(conn, budget_id)
            _refuse_config(current, allow_config, "changed")
            updated = apply_patch(current, patch, now_ms=now_ms)
            conn.execute("DELETE FROM budgets WHERE id = ?", (budget_id,))
            conn.execute(f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ({', '.join('?' * 14)})", budget_to_row(updated))
            ops.bump_budgets_version(conn)
        return updated

    def delete_budget(self, budget_id: str, *, allow_config: bool = False) -> None:
        with self._tx() as conn:
            current = ops.load_budget(conn, budget_id)
            _refuse_config(current, allow_config, "deleted")
            ops.delete_budget(conn, budget_id)

    def sync_config_budgets(self, budgets: Sequence[Budget], *, now_ms: int) -> None:
        with self._tx() as conn:
            ops.sync_config_budgets(conn, budgets, now_ms=now_ms)

    # -- money -----------------------------------------------------------------------------------
    def check(self, scopes: ScopeSet, estimate_micros: int, *, now_ms: int) -> CheckOutcome:
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            states = ops.read_states(conn, index.match(scopes, enabled_only=True), now_ms)
        verdict = evaluate(states, estimate_micros)
        return CheckOutcome(
            decision=verdict.decision,
            budget_info=budget_infos(states, verdict.exceeded),
            deciding_budget_id=verdict.deciding.budget.id if verdict.deciding else "",
            reason=verdict.reason,
            warnings=verdict.warnings,
        )

    def reserve(self, command: ReserveCommand, *, reservation_id: str, now_ms: int) -> ReserveOutcome:
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            if command.downgrade_of:
                return ops.resend_downgrade(conn, index, command, now_ms)
            if command.idempotency_key:
                replay = ops.replay_reservation(conn, index, command.idempotency_key, now_ms)
                if replay is not None:
                    return replay
            return ops.reserve(conn, index, command, reservation_id, now_ms)

    def commit(self, command: CommitCommand, *, now_ms: int) -> CommitOutcome:
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            row = ops.load_reservation(conn, command.reservation_id)
            if row is None:
                raise NotFoundError(
                    f"reservation {command.reservation_id!r} is unknown (never made, or settled longer ago "
                    "than the retention period)"
                )
            return ops.commit(conn, index, row, command, now_ms)

    def release(self, reservation_id: str, *, now_ms: int) -> ReleaseOutcome:
        with self._tx() as conn:
            self._begin_op(conn, now_ms)
            row = ops.load_reservation(conn, reservation_id)
            if row is None:
                raise NotFoundError(f"reservation {reservation_id!r} is unknown")
            state = ReservationState(row.state)
            if state is ReservationState.COMMITTED:
                raise FailedPreconditionError(f"reservation {reservation_id!r} is committed already; it cannot be released")
            if state is not ReservationState.HELD:
                return ReleaseOutcome(released_usd=micros_to_usd(0), state=state)
            ops.settle_hold(conn, row, ReservationState.RELEASED, now_ms)
            return ReleaseOutcome(released_usd=micros_to_usd(row.held), state=ReservationState.RELEASED)

    def record_usage(self, command: RecordUsageCommand, *, now_ms: int) -> RecordUsageOutcome:
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            if command.reservation_id:
                row = ops.load_reservation(conn, command.reservation_id)
                if row is not None:
                    return ops.record_against_reservation(conn, index, row, command, now_ms)
            return ops.record_usage(conn, index, command, now_ms)

    def expire_due(self, *, now_ms: int, limit: int = 500) -> int:
        with self._tx() as conn:
            return ops.expire_due(conn, now_ms, limit=limit)

    # -- reading ---------------------------------------------------------------------------------
    def budget_status(self, budget_id: str, entity: str, *, now_ms: int) -> BudgetStatus:
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            live = index.get(budget_id)
            if live is None:
                raise NotFoundError(f"budget {budget_id!r} does not exist")
            return reports.budget_status(conn, live, _entity_for(live, entity), now_ms)

    def usage_rows(self, flt: UsageFilter, columns: Sequence[str], *, by_slot: bool) -> list[UsageRow]:
        with self._read() as conn:
            return reports.usage_rows(conn, flt, columns, by_slot=by_slot)

    def budget_infos_for(self, scopes: ScopeSet, *, now_ms: int) -> tuple[BudgetInfo, ...]:
        """The standing of every enabled budget matching ``scopes`` (a read for tools and tests)."""
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            states: list[BudgetState] = ops.read_states(conn, index.match(scopes, enabled_only=True), now_ms)
        return budget_infos(states, [False] * len(states))

    # -- alerts ----------------------------------------------------------------------------------
    def alerts_after(self, sequence: int, *, limit: int, budget_ids: Sequence[str] = ()) -> list[Alert]:
        with self._read() as conn:
            return reports.alerts_after(conn, sequence, limit=limit, budget_ids=budget_ids)

    def last_alert_sequence(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM alerts").fetchone()[0])

    def claim_alerts(self, *, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Alert]:
        with self._tx() as conn:
            return reports.claim_alerts(conn, owner=owner, now_ms=now_ms, lease_ms=lease_ms, limit=limit)

    def ack_alerts(self, sequences: Sequence[int], *, now_ms: int) -> None:
        with self._tx() as conn:
            conn.executemany("UPDATE alerts SET delivered_ms = ? WHERE seq = ?", [(now_ms, s) for s in sequences])

    # -- housekeeping ----------------------------------------------------------------------------
    def prune(self, *, now_ms: int, reservation_retention_ms: int, usage_retention_ms: int, alert_retention_ms: int) -> None:
        with self._tx() as conn:
            index = self._begin_op(conn, now_ms)
            reports.prune(
                conn,
                list(index),
                now_ms=now_ms,
                reservation_retention_ms=reservation_retention_ms,
                usage_retention_ms=usage_retention_ms,
                alert_retention_ms=alert_retention_ms,
            )

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            self._reader.close()


def _refuse_config(budget: Budget, allow_config: bool, verb: str) -> None:
    if budget.declared_in_config and not allow_config:
        raise FailedPreconditionError(
            f"budget {budget.id!r} is declared in the sidecar's config file; it can only be {verb} there"
        )


def _entity_for(live: LiveBudget, entity: str) -> str:
    budget = live.budget
    if budget.scope_id is None:
        if not entity:
            raise InvalidRequestError(
                "scope_id", f"is required: budget {budget.id!r} is a wildcard over every {budget.scope.value}"
            )
        return entity
    if entity and entity != budget.scope_id:
        raise InvalidRequestError(
            "scope_id", f"budget {budget.id!r} governs {budget.scope.value}={budget.scope_id}, not {entity!r}"
        )
    return budget.scope_id
