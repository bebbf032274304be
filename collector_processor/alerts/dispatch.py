"""Alert delivery: streams for WatchAlerts, and a dispatcher that hands each alert to the notifiers once.

Alerts are *fired* by the store, inside the operation that moved spend past a threshold, into a durable
log; that is what makes them exactly-once per period. Delivery reads the log:

* ``AlertHub`` serves WatchAlerts. Each stream reads the log after its cursor and waits until this
  process fires an alert or the poll interval passes (alerts fired by another sidecar sharing the
  store arrive within one interval). A watcher that reconnects with its last sequence misses nothing.
* ``AlertDispatcher`` leases undelivered alerts from the store and gives each to every sink (an
  OpenTelemetry log record, a webhook); once every sink is done the alert is acknowledged. A sidecar
  that dies mid-delivery leaves its lease to expire and the alert is delivered again, so receivers
  de-duplicate by ``alert_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from collector_processor.domain.clock import Clock
from collector_processor.domain.types import Alert
from collector_processor.errors import StoreUnavailableError
from collector_processor.store.base import LedgerStore

__all__ = ["AlertDispatcher", "AlertHub", "AlertSink"]

log = logging.getLogger("paymaster.sidecar.alerts")


class AlertSink(Protocol):
    """Somewhere alerts are sent. ``submit`` must not block; ``done`` is called once the alert is
    delivered or given up on."""

    def capacity(self) -> int:
        """How many more alerts ``submit`` can take now."""
        ...

    def submit(self, alert: Alert, done: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


class AlertHub:
    """Feeds WatchAlerts streams on the server's event loop; ``notify`` may be called from any thread."""

    def __init__(self, store: LedgerStore, *, poll_interval_s: float = 0.5) -> None:
        self._store = store
        self._poll = poll_interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop the streams run on; called once the server's loop is running."""
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Alerts were fired in this process: wake every stream now rather than at its next poll."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    def close(self) -> None:
        self._closed = True
        self.notify()

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    async def watch(
        self, *, after_sequence: int | None, budget_ids: Sequence[str] = ()
    ) -> AsyncIterator[Alert]:
        """Alerts after ``after_sequence`` (``None``: from now on), until the hub closes or the stream is cancelled."""
        cursor = self._store.last_alert_sequence() if after_sequence is None else after_sequence
        while not self._closed:
            event = self._event
            batch = self._store.alerts_after(cursor, limit=100, budget_ids=budget_ids)
            if batch:
                for alert in batch:
                    cursor = alert.sequence
                    yield alert
                continue
            if event is None:
                await asyncio.sleep(self._poll)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self._poll)


class AlertDispatcher:
    """Leases alerts from the store and delivers each to every sink, in a background thread."""

    def __init__(
        self,
        store: LedgerStore,
        sinks: Sequence[AlertSink],
        *,
        clock: Clock,
        owner: str,
        lease_ms: int,
        poll_interval_s: float = 0.5,
        batch: int = 100,
    ) -> None:
        self._store = store
        self._sinks = list(sinks)
        self._clock = clock
        self._owner = owner
        self._lease_ms = lease_ms
        self._poll = poll_interval_s
        self._batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # sequence -> sinks still working on it
        self._acks: list[int] = []
        self._thread = threading.Thread(target=self._run, name="paymaster-alert-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        for sink in self._sinks:
            sink.close()
        try:
            self._flush_acks()
        except StoreUnavailableError as exc:  # shutting down while the store is away: leases expire
            log.warning("could not acknowledge delivered alerts before stopping: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush_acks()
                claimed = self._claim()
            except StoreUnavailableError as exc:  # the store says so once itself; retry quietly
                log.debug("alert dispatch waits for the store: %s", exc)
                claimed = 0
            except Exception:  # the store may be briefly unavailable; never let delivery die
                log.exception("alert dispatch failed; retrying")
                claimed = 0
            if not claimed:
                self._wake.wait(self._poll)
                self._wake.clear()

    def _claim(self) -> int:
        room = min((sink.capacity() for sink in self._sinks), default=0)
        if room <= 0:
            return 0
        alerts = self._store.claim_alerts(
            owner=self._owner,
            now_ms=self._clock.now_ms(),
            lease_ms=self._lease_ms,
            limit=min(room, self._batch),
        )
        fresh = 0
        for alert in alerts:
            with self._lock:
                if alert.sequence in self._pending:
                    continue  # still with a sink from an earlier lease
                self._pending[alert.sequence] = len(self._sinks)
            fresh += 1
            for sink in self._sinks:
                sink.submit(alert, self._done_callback(alert.sequence))
        return fresh

    def _done_callback(self, sequence: int) -> Callable[[], None]:
        def done() -> None:
            with self._lock:
                left = self._pending[sequence] - 1
                if left:
                    self._pending[sequence] = left
                    return
                del self._pending[sequence]
                self._acks.append(sequence)
            self._wake.set()

        return done

    def _flush_acks(self) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
        if acks:
            try:
                self._store.ack_alerts(acks, now_ms=self._clock.now_ms())
            except Exception:
                with self._lock:  # keep them for the next attempt rather than delivering them again
                    self._acks = acks + self._acks
                raise
