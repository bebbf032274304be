"""Where the sidecar reads the time: a small protocol, the system clock, and a manual clock for tests.

Periods, reservation TTLs and alert de-duplication all depend on "now"; reading it through one
injectable object lets tests roll a period over or expire a reservation without sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "ms_to_datetime"]


class Clock(Protocol):
    """Anything with ``now_ms()``: milliseconds since the Unix epoch, UTC."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to; thread-safe, for tests and simulations."""

    def __init__(self, start: datetime | int) -> None:
        self._lock = threading.Lock()
        self._now = start if isinstance(start, int) else int(start.timestamp() * 1000)

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def advance(self, *, seconds: float = 0, ms: int = 0) -> int:
        """Move forward; return the new time. Moving backwards is refused: time in the ledger is monotonic."""
        delta = int(seconds * 1000) + ms
        if delta < 0:
            raise ValueError(f"ManualClock.advance: cannot move backwards ({delta} ms)")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (not earlier than now)."""
        target = int(when.timestamp() * 1000)
        with self._lock:
            if target < self._now:
                raise ValueError(f"ManualClock.set: {when.isoformat()} is before the current time")
            self._now = target


def ms_to_datetime(ms: int) -> datetime:
    """An aware UTC datetime for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
