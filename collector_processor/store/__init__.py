"""Stores behind the ledger: the ``LedgerStore`` interface, and the two stores that implement it.

``base`` states the interface and its contract (every money-changing operation is one atomic call);
``sqlite/`` is the embedded default and ``redis/`` the store for clusters; ``index`` (scope ids to the
budgets that match them) and ``shared`` (status and answers built from a standing, config
reconciliation) are what both stores use alike; ``instrumented`` times and counts any store's calls.
A store decides with ``collector_processor.domain.decisions`` and imports nothing above ``domain/``.
"""

from __future__ import annotations

from collector_processor.store.base import (
    USAGE_COLUMNS,
    BudgetSpend,
    EntitySpend,
    LedgerStore,
    UsageFilter,
    UsageRow,
)
from collector_processor.store.sqlite.store import SqliteStore

__all__ = [
    "USAGE_COLUMNS",
    "BudgetSpend",
    "EntitySpend",
    "LedgerStore",
    "SqliteStore",
    "UsageFilter",
    "UsageRow",
]
