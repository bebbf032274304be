"""Group commit: concurrent write operations share one SQLite transaction, each still atomic on its own.

A transaction's fixed cost (taking the write lock, appending its pages to the log) is most of what a
small ledger operation costs. Threads that arrive while a transaction is running queue their
operations; the next thread to take the lock runs the whole queue in one ``BEGIN IMMEDIATE ...
COMMIT``. Nobody gets an answer before the ``COMMIT`` that made it durable. A lone operation runs in
its own transaction with no hand-off to another thread, so a single client pays nothing for batching.

Operations refuse requests (raise ``SidecarError``) only before their first write, so a refused
request leaves nothing behind in a shared transaction and its neighbours carry on without a savepoint
each. Any other exception may have left a half-done write: the whole transaction is rolled back and
every operation in it runs again alone, so only the failing one fails. An operation that finds out
only after a write that it must refuse (the database itself refused a total out of range) raises
``RefusedAfterWrite``: its transaction is rolled back like any other failure's, and its caller gets the
refusal it carries.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from collector_processor.errors import BatchAbortedError, SidecarError, StoreUnavailableError
from collector_processor.store.shared import total_out_of_range
from collector_processor.store.sqlite.schema import TOTAL_OUT_OF_RANGE

__all__ = ["GroupCommitter", "RefusedAfterWrite"]


class RefusedAfterWrite(Exception):
    """A refusal raised after the operation wrote: roll its transaction back, then refuse with ``error``."""

    def __init__(self, error: SidecarError) -> None:
        super().__init__(str(error))
        self.error = error


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
        self._lock = threading.Lock()  # held by the thread running a transaction
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []
        self._local = threading.local()
        self.transaction = 0  # counts transactions begun, so callers can cache what they read in one

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    # -- explicit batches (the asyncio server) ---------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every ``run`` from this thread inside the block shares one transaction, committed at its end.

        The caller must not hand results to anyone before the block has exited without an exception:
        only then are they durable. ``BatchAbortedError`` means an operation failed part-way and
        nothing was kept: run each operation again on its own.
        """
        with self._lock:
            self._begin()
            self._local.open = True
            self._local.aborted = False
            self._local.after = []
            try:
                yield
            except BaseException:
                self._rollback()
                raise
            finally:
                self._local.open = False
                after, self._local.after = self._local.after, []
            if self._local.aborted:
                self._rollback()
                raise BatchAbortedError("an operation failed part-way through a shared transaction")
            self._commit()
        for fn in after:
            fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` now, or, inside this thread's ``batch()``, once it has committed."""
        if getattr(self._local, "open", False):
            self._local.after.append(fn)
        else:
            fn()

    # -- implicit batches (threads) ---------------------------------------------------------------
    def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if getattr(self._local, "open", False):
            try:
                return fn(self._conn)
            except SidecarError:
                raise  # refused before writing anything
            except Exception as exc:
                self._local.aborted = True
                raise self._translate(exc) from exc
        job = _Job(fn)
        with self._queue_lock:
            self._queue.append(job)
        with self._lock:
            if not job.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                try:
                    if len(batch) == 1 or not self._run_shared(batch):
                        for queued in batch:
                            self._run_alone(queued)
                finally:
                    for queued in batch:
                        queued.done = True
        if job.error is not None:
            raise job.error
        return job.result

    def _run_shared(self, batch: list[_Job]) -> bool:
        """Run ``batch`` in one transaction; False when it had to be rolled back and run job by job."""
        try:
            self._begin()
        except StoreUnavailableError as exc:
            for job in batch:
                job.error = exc
            return True
        for job in batch:
            try:
                job.result = job.fn(self._conn)
            except SidecarError as exc:
                job.error = exc
            except Exception:
                self._rollback()
                for other in batch:
                    other.result, other.error = None, None
                return False
        try:
            self._commit()
        except StoreUnavailableError as exc:
            for job in batch:
                job.result, job.error = None, job.error or exc
        return True

    def _run_alone(self, job: _Job) -> None:
        try:
            self._begin()
        except StoreUnavailableError as exc:
            job.error = exc
            return
        try:
            job.result = job.fn(self._conn)
        except Exception as exc:
            job.error = self._translate(exc)
            self._rollback()
            return
        try:
            self._commit()
        except StoreUnavailableError as exc:
            job.result, job.error = None, exc

    # -- transactions ------------------------------------------------------------------------------
    def _begin(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"the store at {self._describe} is busy: {exc}") from exc
        self.transaction += 1

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreUnavailableError(f"the store at {self._describe} could not commit: {exc}") from exc

    def _rollback(self) -> None:
        if self._conn.in_transaction:  # some errors make SQLite roll back by itself
            self._conn.execute("ROLLBACK")
        self._on_rollback()

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, RefusedAfterWrite):
            return exc.error
        if isinstance(exc, sqlite3.IntegrityError) and TOTAL_OUT_OF_RANGE in str(exc):
            return total_out_of_range(None)  # a total no operation checked for itself
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailableError(f"the store at {self._describe} is busy or failing: {exc}")
        return exc
