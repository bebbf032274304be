"""Budget rows of the SQLite store: create, replace, delete and reconcile with the config, in a caller's transaction.

Every change bumps the ``budgets`` counter, which is how every process sharing the file notices that
its in-memory budget index is stale.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace

from collector_processor.domain.budgets import Budget
from collector_processor.errors import NotFoundError
from collector_processor.store.shared import plan_config_sync
from collector_processor.store.sqlite.schema import BUDGET_COLUMNS, budget_from_row, budget_to_row
from paymaster.exceptions import quote

__all__ = [
    "bump_budgets_version",
    "delete_budget",
    "insert_budget",
    "load_budget",
    "replace_budget",
    "sync_config_budgets",
]


def bump_budgets_version(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'budgets' RETURNING value"
        ).fetchone()[0]
    )


def load_budget(conn: sqlite3.Connection, budget_id: str) -> Budget:
    row = conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE id = ?", (budget_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"budget {quote(budget_id)} does not exist")
    return budget_from_row(row)


def insert_budget(conn: sqlite3.Connection, budget: Budget) -> Budget:
    created = replace(budget, generation=bump_budgets_version(conn))
    conn.execute(
        f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ({', '.join('?' * 15)})", budget_to_row(created)
    )
    return created


def replace_budget(conn: sqlite3.Connection, budget: Budget) -> None:
    conn.execute("DELETE FROM budgets WHERE id = ?", (budget.id,))
    conn.execute(
        f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ({', '.join('?' * 15)})", budget_to_row(budget)
    )
    bump_budgets_version(conn)


def delete_budget(conn: sqlite3.Connection, budget_id: str) -> None:
    for table in ("budgets", "spend", "holds", "alert_marks"):
        column = "id" if table == "budgets" else "budget_id"
        conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (budget_id,))
    bump_budgets_version(conn)


def sync_config_budgets(conn: sqlite3.Connection, budgets: Sequence[Budget], *, now_ms: int) -> None:
    existing = [budget_from_row(r) for r in conn.execute(f"SELECT {BUDGET_COLUMNS} FROM budgets")]
    plan = plan_config_sync(existing, budgets, now_ms=now_ms)
    for old in plan.delete:
        delete_budget(conn, old.id)
    for budget in plan.insert:
        insert_budget(conn, budget)
    for budget in plan.replace:
        replace_budget(conn, budget)
