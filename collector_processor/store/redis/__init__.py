"""The Redis store, for clusters: one ledger shared by any number of sidecar replicas.

``store`` is the ``RedisStore`` itself; ``scripts`` the Lua function library that runs every
money-changing operation as one atomic step; ``codec`` the key layout and encodings; ``link`` the
connection, its availability and reconnection; ``answers`` turns what a function returns into the
ledger's answers with the shared decision rules; ``budgets``, ``reports`` and ``housekeeping`` the
definitions, the reads and the pruning.

``RedisStore`` is loaded on first use, so that reading the key layout (as the config check does)
does not import the Redis client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector_processor.store.redis.store import RedisStore

__all__ = ["RedisStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from collector_processor.store.redis.store import RedisStore

        return RedisStore
    raise AttributeError(f"module 'collector_processor.store.redis' has no attribute {name!r}")
