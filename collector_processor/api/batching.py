"""Group commit for the asyncio server: ledger calls that arrive together share one store transaction.

The gRPC server runs on one event loop. Every request handler hands its ledger call to ``Batcher.run``
and awaits the answer; the calls queued during one turn of the loop run together inside
``store.batch()`` (one transaction) and their answers are released only after that transaction has
committed, so durability is exactly what it would be one call at a time. A refused call leaves nothing
behind; a call that fails part-way aborts the shared transaction and every call is run again alone. A
call that is alone in its turn runs in its own transaction without the batch wrapping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from collector_processor.errors import BatchAbortedError
from collector_processor.store.base import LedgerStore

__all__ = ["Batcher"]

T = TypeVar("T")
PATIENCE = 4
MAX_HOPS = 32


class Batcher:
    """Queue ledger calls from the event loop and run each turn's calls in one transaction."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._hops = self._quiet = self._seen = 0
        self._last_size = 0
        self.batches = 0
        """Transactions run (for metrics and tests)."""
        self.largest = 0
        """Most calls that have shared one transaction."""

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Schedule ``fn()``; the future resolves once its effects are durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, future))
        if not self._scheduled:
            self._scheduled = True
            self._hops = self._quiet = 0
            self._seen = 1
            loop.call_soon(self._hop)
        return future

    def _hop(self) -> None:
        # Each hop is one more turn of the loop, in which more requests can arrive and join. Under
        # load (the last transaction was shared) keep waiting while they do, up to MAX_HOPS turns;
        # a caller that was alone last time is most likely alone again and is served at once.
        self._hops += 1
        if self._last_size <= 1 and len(self._pending) == 1:
            self._flush()
            return
        if len(self._pending) > self._seen:
            self._seen, self._quiet = len(self._pending), 0
        else:
            self._quiet += 1
        if self._quiet < PATIENCE and self._hops < MAX_HOPS:
            asyncio.get_running_loop().call_soon(self._hop)
        else:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        self._last_size = len(batch)
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        if len(batch) > 1 and self._run_shared(batch):
            return
        for fn, future in batch:  # alone, or again after a shared transaction was aborted
            try:
                _settle(future, fn(), None)
            except Exception as exc:
                _settle(future, None, exc)

    def _run_shared(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> bool:
        """Run ``batch`` in one transaction and settle it; False when it must be run call by call."""
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            with self._store.batch():
                for fn, future in batch:
                    try:
                        outcomes.append((future, fn(), None))
                    except Exception as exc:
                        outcomes.append((future, None, exc))
        except BatchAbortedError:
            return False
        except Exception as exc:  # the shared commit failed: nothing in the batch is durable
            for _, future in batch:
                _settle(future, None, exc)
            return True
        for future, result, error in outcomes:
            _settle(future, result, error)
        return True


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and its handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
