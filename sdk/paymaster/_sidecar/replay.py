"""The replayer: a background thread that hands the journal's pending spend to the sidecar with
``RecordUsage`` as soon as it answers again, and retries releases that could not be delivered.

It runs only while there is something to send, waking when a runner adds an entry; it also takes
over the journals of processes that ended (``adopt``), so that no file work runs on a runner's event
loop. Its attempts go through the circuit breaker like every other call, so while the sidecar is down
it probes at the breaker's pace (no faster than the breaker's cooldown) and its first success closes
the breaker for every runner. An entry the sidecar refuses for good (a malformed record) is kept in
the journal directory as ``*.rejected`` with the sidecar's message and logged; it is never dropped
silently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from paymaster._sidecar import wire
from paymaster._sidecar.client import Count, Refused, SidecarClient, Unreachable
from paymaster._sidecar.journal import Journal, PendingUsage
from paymaster.v1 import budget_pb2 as pb

__all__ = ["Replayer"]

log = logging.getLogger("paymaster")


class Replayer:
    """See the module docstring. ``count_replay(outcome)`` counts each entry's fate."""

    def __init__(
        self,
        client: SidecarClient,
        journal: Journal,
        *,
        count_call: Count,
        count_replay: Callable[[str], None],
        timeout_s: float,
        max_backoff_s: float = 2.0,
    ) -> None:
        self.client = client
        self.journal = journal
        self._count_call = count_call
        self._count_replay = count_replay
        self._timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self._releases: deque[str] = deque()
        self._adopt: Callable[[], None] | None = None
        self._adopting = False
        """An adoption is running: what it adopts is not in the journal yet, so ``flush`` waits."""
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------------ control
    def wake(self) -> None:
        """There may be work: start the thread if it is not running, else nudge it."""
        with self._cond:
            if self._stopped:
                return
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="paymaster-replay", daemon=True)
                self._thread.start()

    def adopt(self, adopt: Callable[[], None]) -> None:
        """Run ``adopt`` (taking over the journals of ended processes) on this thread, then send."""
        with self._cond:
            if self._stopped:
                return
            self._adopt = adopt
        self.wake()

    def add_release(self, reservation_id: str) -> None:
        """Release ``reservation_id`` once the sidecar answers (its TTL is the backstop)."""
        with self._cond:
            self._releases.append(reservation_id)
        self.wake()

    @property
    def pending_releases(self) -> int:
        with self._cond:
            return len(self._releases)

    def flush(self, timeout_s: float) -> int:
        """Wait until everything is delivered or ``timeout_s`` passes; returns what is still pending."""
        self.wake()
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._busy():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            return len(self.journal) + len(self._releases)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            thread = self._thread
            self._wake.set()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._timeout_s + 1)

    # ------------------------------------------------------------------ the thread
    def _busy(self) -> bool:
        return bool(self._adopt is not None or self._adopting or len(self.journal) or self._releases)

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                adopt, self._adopt = self._adopt, None
                self._adopting = adopt is not None
            if adopt is not None:
                try:
                    adopt()
                finally:
                    with self._cond:
                        self._adopting = False
            with self._cond:
                if self._stopped or not self._busy():
                    self._thread = None
                    self._cond.notify_all()
                    return
                self._wake.clear()
            wait = self.client.breaker.seconds_until_probe()
            if wait > 0:
                self._wake.wait(wait)
                continue
            if self._deliver():
                backoff = 0.05
            else:
                self._wake.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            with self._cond:
                self._cond.notify_all()

    def _deliver(self) -> bool:
        """Send everything pending; False when the sidecar stopped answering part-way."""
        try:
            for entry in self.journal.pending():
                self._replay(entry)
            while True:
                with self._cond:
                    if not self._releases:
                        break
                    reservation_id = self._releases[0]
                self._release(reservation_id)
                with self._cond:
                    self._releases.popleft()
        except Unreachable:
            return False
        return True

    def _replay(self, entry: PendingUsage, *, with_time: bool = True) -> None:
        request = _record_request(entry, with_time=with_time)
        try:
            response = self.client.call_sync(
                "RecordUsage", request, timeout_s=self._timeout_s, count=self._count_call
            )
        except Refused as exc:
            if with_time and "occurred_at" in exc.detail:
                # The sidecar's clock disagrees with ours by more than its skew allowance: charge the
                # spend now rather than lose it.
                self._replay(entry, with_time=False)
                return
            log.error(
                "the sidecar at %s refused replayed usage %s ($%s): %s; kept in the journal's .rejected file",
                self.client.target,
                entry.usage_id,
                wire.wire_usd(entry.cost_usd),
                exc,
            )
            # Counted before the journal lets it go: flush() returns once the journal is empty, and
            # what it returns to must find every outcome counted.
            self._count_replay("rejected")
            self.journal.rejected(entry.usage_id, str(exc))
            return
        self._count_replay("duplicate" if response.duplicate else "replayed")
        self.journal.done(entry.usage_id)

    def _release(self, reservation_id: str) -> None:
        # Refused: already committed, expired or unknown, so nothing is held any more.
        with contextlib.suppress(Refused):
            self.client.call_sync(
                "Release",
                pb.ReleaseRequest(reservation_id=reservation_id),
                timeout_s=self._timeout_s,
                count=self._count_call,
            )


def _record_request(entry: PendingUsage, *, with_time: bool) -> Any:
    request = pb.RecordUsageRequest(
        usage_id=entry.usage_id,
        scopes=pb.ScopeIds(**entry.scopes),
        cost_usd=wire.wire_usd(entry.cost_usd),
        total_tokens=entry.total_tokens,
        usage=pb.UsageFacts(**entry.usage),
        reservation_id=entry.reservation_id,
        request_budget_id=entry.request_budget,
        service=entry.service,
    )
    if with_time and entry.occurred_ms:
        request.occurred_at.seconds = entry.occurred_ms // 1000
        request.occurred_at.nanos = (entry.occurred_ms % 1000) * 1_000_000
    return request
