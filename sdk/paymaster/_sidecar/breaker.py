"""A circuit breaker, so that a dead sidecar costs one deadline, not one per step.

Closed: calls go through; ``failure_threshold`` consecutive failures open it. Open: calls fail at
once, without touching the network, until ``reset_after_s`` has passed. Half-open: one call at a time
goes through as a probe; its success closes the breaker, its failure opens it again for twice as long
(up to ``max_reset_after_s``). Thread-safe: runners in several threads share one breaker per sidecar.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Literal

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

State = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


class CircuitBreaker:
    """See the module docstring. ``on_change(state)`` is called (outside the lock) on every transition."""

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_after_s: float = 5.0,
        max_reset_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.max_reset_after_s = max(max_reset_after_s, reset_after_s)
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state: State = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._cooldown = reset_after_s
        self._probing = False

    @property
    def state(self) -> State:
        """``closed``, ``open`` or ``half_open`` (an open breaker whose cooldown has passed)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self._cooldown:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one probe at a time is allowed."""
        changed: State | None = None
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self._cooldown:
                    return False
                self._state = changed = HALF_OPEN
            if self._probing:
                return False
            self._probing = True
        if changed is not None and self._on_change is not None:
            self._on_change(changed)
        return True

    def seconds_until_probe(self) -> float:
        """How long until a probe may go out (0 when calls may go out now)."""
        with self._lock:
            if self._state != OPEN:
                return 0.0
            return max(0.0, self._cooldown - (self._clock() - self._opened_at))

    def success(self) -> None:
        """A call reached the sidecar."""
        changed = False
        with self._lock:
            self._failures = 0
            self._probing = False
            if self._state != CLOSED:
                self._state = CLOSED
                self._cooldown = self.reset_after_s
                changed = True
        if changed and self._on_change is not None:
            self._on_change(CLOSED)

    def failure(self) -> None:
        """A call could not reach the sidecar (after its retries)."""
        opened = False
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN:
                self._cooldown = min(self._cooldown * 2, self.max_reset_after_s)
                opened = True
            elif self._state == CLOSED and self._failures >= self.failure_threshold:
                self._cooldown = self.reset_after_s
                opened = True
            if opened:
                self._state = OPEN
                self._opened_at = self._clock()
            self._probing = False
        if opened and self._on_change is not None:
            self._on_change(OPEN)
