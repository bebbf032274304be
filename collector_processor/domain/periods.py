"""Budget periods: calendar periods aligned in a time zone, and rolling windows, as integer-millisecond maths.

A calendar period (``daily``, ``weekly``, ``monthly``, ``quarterly``, ``yearly``) starts at local
midnight in the budget's IANA time zone, so "monthly in Europe/Berlin" resets at Berlin midnight on the
1st, across daylight-saving changes. Its spend lives in one bucket keyed by the period start, so a new
period is a new bucket: nothing is ever reset, and a roll-over cannot overwrite concurrent spend.

A rolling window (``rolling_24h``, ``rolling_7d``, ``rolling_90m``) covers the last N minutes, hours
or days. Its spend lives in buckets of 1/240 of the window; a bucket counts while any part of it is
inside the window, so spend leaves the window at most one bucket late and is never forgotten early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from paymaster.exceptions import quote

__all__ = ["CALENDAR_PERIODS", "Period", "Window", "parse_period", "zone"]

CalendarUnit = Literal["daily", "weekly", "monthly", "quarterly", "yearly"]
CALENDAR_PERIODS: tuple[CalendarUnit, ...] = ("daily", "weekly", "monthly", "quarterly", "yearly")
_ROLLING = re.compile(r"rolling_([1-9][0-9]{0,5})(m|h|d)")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_WINDOW_MS = 366 * 86_400_000
_MIN_WINDOW_MS = 60_000
ROLLING_BUCKETS = 240


@dataclass(frozen=True, slots=True)
class Window:
    """The span a budget's spend is measured over at one instant: ``[start_ms, end_ms)``."""

    start_ms: int
    """Inclusive start, epoch milliseconds UTC."""
    end_ms: int
    """Exclusive end: when a calendar period resets; for a rolling window, the instant of measurement."""


@dataclass(frozen=True, slots=True)
class Period:
    """A parsed period spec. Build with ``parse_period``."""

    spec: str
    """The text it was parsed from (``'monthly'``, ``'rolling_24h'``)."""
    unit: CalendarUnit | None
    """The calendar unit, or ``None`` for a rolling window."""
    window_ms: int
    """Length of a rolling window; 0 for calendar periods."""

    @property
    def is_rolling(self) -> bool:
        return self.unit is None

    @property
    def bucket_ms(self) -> int:
        """Width of one spend bucket of a rolling window."""
        return max(self.window_ms // ROLLING_BUCKETS, 1)

    def window(self, now_ms: int, tz: ZoneInfo) -> Window:
        """The period (or window) that contains ``now_ms``."""
        if self.unit is None:
            return Window(now_ms - self.window_ms, now_ms)
        return _calendar_window(self.unit, now_ms, tz)

    def bucket_of(self, at_ms: int, tz: ZoneInfo) -> int:
        """The key of the spend bucket a charge made at ``at_ms`` goes into."""
        if self.unit is None:
            return at_ms - at_ms % self.bucket_ms
        return _calendar_window(self.unit, at_ms, tz).start_ms

    def lowest_bucket(self, now_ms: int, tz: ZoneInfo) -> int:
        """Spend in the period at ``now_ms`` is the sum of the buckets keyed at or after this."""
        if self.unit is None:
            edge = now_ms - self.window_ms
            return edge - edge % self.bucket_ms
        return _calendar_window(self.unit, now_ms, tz).start_ms

    def alert_key(self, at_ms: int, tz: ZoneInfo) -> int:
        """What an alert threshold fires once per: the period start, or 0 for a rolling window (which re-arms)."""
        return 0 if self.unit is None else _calendar_window(self.unit, at_ms, tz).start_ms


@lru_cache(maxsize=256)
def parse_period(spec: str) -> Period:
    """Parse ``'daily'`` .. ``'yearly'`` or ``'rolling_<N>m|h|d'``; ``ValueError`` says what is accepted."""
    text = spec.strip().lower() if isinstance(spec, str) else spec
    if text in CALENDAR_PERIODS:
        return Period(spec=text, unit=text, window_ms=0)
    match = _ROLLING.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"unknown period {quote(spec)}: expected one of {', '.join(CALENDAR_PERIODS)} "
            "or a rolling window such as 'rolling_24h', 'rolling_7d', 'rolling_90m'"
        )
    window = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if not _MIN_WINDOW_MS <= window <= _MAX_WINDOW_MS:
        raise ValueError(f"rolling window {quote(spec)} must be between 1 minute and 366 days")
    return Period(spec=text, unit=None, window_ms=window)


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name no file system takes
        raise ValueError(
            f"unknown time zone {quote(name)}: expected an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


# The window of the last lookup per (unit, zone): nearly every call falls in the same period as the one
# before, and zone arithmetic is the most expensive part of a reservation's bookkeeping.
_last_window: dict[tuple[str, str], Window] = {}


def _calendar_window(unit: CalendarUnit, at_ms: int, tz: ZoneInfo) -> Window:
    key = (unit, tz.key)
    cached = _last_window.get(key)
    if cached is not None and cached.start_ms <= at_ms < cached.end_ms:
        return cached
    local = datetime.fromtimestamp(at_ms / 1000, tz).date()
    first = _period_first_day(unit, local)
    window = Window(_local_midnight_ms(first, tz), _local_midnight_ms(_next_first_day(unit, first), tz))
    _last_window[key] = window
    return window


def _period_first_day(unit: CalendarUnit, day: date) -> date:
    if unit == "daily":
        return day
    if unit == "weekly":
        return day - timedelta(days=day.weekday())
    if unit == "monthly":
        return day.replace(day=1)
    if unit == "quarterly":
        return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return date(day.year, 1, 1)


def _next_first_day(unit: CalendarUnit, first: date) -> date:
    if unit == "daily":
        return first + timedelta(days=1)
    if unit == "weekly":
        return first + timedelta(days=7)
    months = {"monthly": 1, "quarterly": 3, "yearly": 12}[unit]
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _local_midnight_ms(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)
