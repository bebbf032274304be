"""Group commit: concurrent write operations share one SQLite transaction, each still atomic on its own.

A transaction's fixed cost (taking the write lock, appending its pages to the log) is most of what a
small ledger operation costs. Threads that arrive while a transaction is running queue their
operations; the next thread to take the lock runs the whole queue in one ``BEGIN IMMEDIATE ...
COMMIT``, each operation inside its own savepoint, so a refused request rolls back alone and never
takes its neighbours with it. Nobody gets an answer before the ``COMMIT`` that made it durable. A lone
operation runs in its own transaction with no hand-off to another thread, so a single client pays
nothing for the batching.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from collector_processor.errors import StoreUnavailableError

__all__ = ["GroupCommitter"]


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Runs ``fn(conn)`` inside a write transaction shared with whatever else is queued at the time.

    ``on_rollback`` is called whenever anything was rolled back, so that caches built from data read
    inside the transaction can be dropped.
    """

    def __init__(self, conn: sqlite3.Connection, *, describe: str, on_rollback: Callable[[], None]) -> None:
        self._conn = conn
        self._describe = describe
        self._on_rollback = on_rollback
        self._lock = threading.Lock()  # held by the thread running a batch
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []
        self._local = threading.local()
        self.transaction = 0  # counts transactions begun, so callers can cache what they read in one

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every ``run`` from this thread inside the block shares one transaction, committed at its end.

        Each operation still runs in its own savepoint. The caller must not hand results to anyone
        before the block has exited without an exception: only then are they durable.
        """
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"the store at {self._describe} is busy: {exc}") from exc
            self.transaction += 1
            self._local.open = True
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                self._on_rollback()
                raise
            finally:
                self._local.open = False
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                self._on_rollback()
                raise StoreUnavailableError(f"the store at {self._describe} could not commit: {exc}") from exc

    def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if getattr(self._local, "open", False):
            inner = _Job(fn)
            self._run_in_savepoint(inner)
            if inner.error is not None:
                raise inner.error
            return inner.result
        job = _Job(fn)
        with self._queue_lock:
            self._queue.append(job)
        with self._lock:
            if not job.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._run_batch(batch)
        if job.error is not None:
            raise job.error
        return job.result

    def _run_batch(self, batch: list[_Job]) -> None:
        conn = self._conn
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                self._fail(batch, exc)
                return
            self.transaction += 1
            if len(batch) == 1:
                if not self._run_alone(batch[0]):
                    return
            else:
                for job in batch:
                    self._run_in_savepoint(job)
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                self._on_rollback()
                self._fail([j for j in batch if j.error is None], exc)
        finally:
            for job in batch:
                job.done = True

    def _run_alone(self, job: _Job) -> bool:
        """Run the only job of a batch; False when it failed and its transaction was rolled back."""
        try:
            job.result = job.fn(self._conn)
            return True
        except Exception as exc:
            job.error = self._translate(exc)
            self._conn.execute("ROLLBACK")
            self._on_rollback()
            return False

    def _run_in_savepoint(self, job: _Job) -> None:
        conn = self._conn
        conn.execute("SAVEPOINT op")
        try:
            job.result = job.fn(conn)
        except Exception as exc:
            job.error = self._translate(exc)
            conn.execute("ROLLBACK TO op")
            self._on_rollback()
        conn.execute("RELEASE op")

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailableError(f"the store at {self._describe} is busy or failing: {exc}")
        return exc

    def _fail(self, jobs: list[_Job], exc: sqlite3.Error) -> None:
        error = StoreUnavailableError(f"the store at {self._describe} is busy or failing: {exc}")
        for job in jobs:
            job.result = None
            job.error = error
