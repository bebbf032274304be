"""Stores behind the ledger: the ``LedgerStore`` interface and the embedded SQLite store."""

from __future__ import annotations

from collector_processor.store.base import (
    USAGE_COLUMNS,
    BudgetSpend,
    EntitySpend,
    LedgerStore,
    UsageFilter,
    UsageRow,
)
from collector_processor.store.sqlite import SqliteStore

__all__ = [
    "USAGE_COLUMNS",
    "BudgetSpend",
    "EntitySpend",
    "LedgerStore",
    "SqliteStore",
    "UsageFilter",
    "UsageRow",
]
