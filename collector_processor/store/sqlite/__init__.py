"""The embedded SQLite store, the default: one file, every money-changing operation one transaction.

``store`` is the ``SqliteStore`` itself; ``schema`` holds the tables, connection settings and row
conversions; ``reservations``, ``spend``, ``batch``, ``budgets`` and ``reports`` are the statements of
each kind of operation, run inside a transaction the store holds; ``group_commit`` lets concurrent
operations share one transaction while each stays atomic on its own.
"""

from __future__ import annotations

from collector_processor.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
