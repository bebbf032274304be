"""The charging thread: ledger work of the exports in flight, committed together (group commit).

Every export's charge is a few store statements plus a transaction; under load several exports are
waiting at once, so the thread takes all of them (up to ``max_batch``) and runs them inside one
``store.batch()``: one transaction, one commit. Nobody's future resolves before that commit, so an
export is still acknowledged only once its spend is durable. A job refused before writing (a
``SidecarError``) fails alone; a job that fails part-way aborts the shared transaction, and then each
job runs again on its own, so only the failing one fails.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from collector_processor.errors import BatchAbortedError, SidecarError
from collector_processor.store.base import LedgerStore

__all__ = ["Charger"]


class Charger:
    """Runs submitted callables on one thread, sharing a store transaction among those queued together."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        translate: Callable[[Exception], Exception] = lambda exc: exc,
        max_batch: int = 16,
    ) -> None:
        self._store = store
        self._translate = translate
        self._max_batch = max_batch
        self._queue: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="paymaster-otlp-charge", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the charger is closed")
            self._queue.append((fn, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        """Finish everything queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            if len(batch) == 1 or not self._run_shared(batch):
                for fn, future in batch:
                    self._run_alone(fn, future)

    def _run_shared(self, batch: list[tuple[Callable[[], Any], Future[Any]]]) -> bool:
        """One transaction for ``batch``; False when it was aborted and each must run alone."""
        outcomes: list[tuple[Future[Any], Any, Exception | None]] = []
        try:
            with self._store.batch():
                for fn, future in batch:
                    try:
                        outcomes.append((future, fn(), None))
                    except SidecarError as exc:  # refused before writing: the others go on
                        outcomes.append((future, None, exc))
                    except Exception:
                        raise _Abort from None  # may have written part of it: roll everything back
        except (BatchAbortedError, _Abort):
            return False
        except Exception as exc:  # the shared commit failed: nothing in the batch is durable
            for _, future in batch:
                future.set_exception(self._translate(exc))
            return True
        for future, result, error in outcomes:
            if error is not None:
                future.set_exception(self._translate(error))
            else:
                future.set_result(result)
        return True

    def _run_alone(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(self._translate(exc))


class _Abort(Exception):
    """Leaves a shared transaction so that it is rolled back."""
