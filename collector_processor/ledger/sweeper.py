"""Housekeeping between requests: release reservations whose TTL has passed, and prune old records.

Every money-changing operation already expires due reservations before it reads, so correctness never
waits for the sweeper; it exists so that an idle sidecar's status reads and reports show freed budget
promptly, and so that settled reservations, old usage records and old alerts do not grow forever.
"""

from __future__ import annotations

import logging
import threading

from collector_processor.errors import StoreUnavailableError
from collector_processor.ledger.ledger import Ledger

__all__ = ["Sweeper"]

log = logging.getLogger("paymaster.sidecar.sweeper")

_PRUNE_EVERY = 300  # sweeps


class Sweeper:
    """A daemon thread calling ``ledger.expire_due()`` every ``interval_s`` and pruning now and then."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        interval_s: float,
        reservation_retention_ms: int,
        usage_retention_ms: int,
        alert_retention_ms: int,
    ) -> None:
        self._ledger = ledger
        self._interval = interval_s
        self._retention = {
            "reservation_retention_ms": reservation_retention_ms,
            "usage_retention_ms": usage_retention_ms,
            "alert_retention_ms": alert_retention_ms,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paymaster-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def sweep(self, *, prune: bool = False) -> int:
        """One pass; returns how many reservations expired."""
        expired = self._ledger.expire_due()
        if prune:
            self._ledger.store.prune(now_ms=self._ledger.clock.now_ms(), **self._retention)
        return expired

    def _run(self) -> None:
        sweeps = 0
        while not self._stop.wait(self._interval):
            sweeps += 1
            try:
                self.sweep(prune=sweeps % _PRUNE_EVERY == 1)
            except StoreUnavailableError as exc:  # said once by the store; no traceback every interval
                log.debug("housekeeping skipped: %s", exc)
            except Exception:  # a locked or briefly unavailable store: try again next time
                log.exception("housekeeping sweep failed; retrying at the next interval")
