"""Periods are calendar-aligned in the budget's time zone, or rolling windows measured in buckets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector_processor.domain.periods import ROLLING_BUCKETS, parse_period, zone


def ms(*args: int, tz: str = "UTC") -> int:
    return int(datetime(*args, tzinfo=zone(tz)).timestamp() * 1000)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("daily", (2025, 3, 14, 12), (2025, 3, 14), (2025, 3, 15)),
        ("weekly", (2025, 3, 14, 12), (2025, 3, 10), (2025, 3, 17)),  # ISO weeks start on Monday
        ("weekly", (2025, 3, 10, 0), (2025, 3, 10), (2025, 3, 17)),
        ("monthly", (2025, 2, 28, 23), (2025, 2, 1), (2025, 3, 1)),
        ("quarterly", (2025, 5, 20, 0), (2025, 4, 1), (2025, 7, 1)),
        ("quarterly", (2025, 12, 31, 23), (2025, 10, 1), (2026, 1, 1)),
        ("yearly", (2024, 2, 29, 12), (2024, 1, 1), (2025, 1, 1)),
    ],
)
def test_calendar_periods_start_at_local_midnight_of_their_first_day(
    period: str, now: tuple[int, ...], start: tuple[int, ...], end: tuple[int, ...]
) -> None:
    window = parse_period(period).window(ms(*now), zone("UTC"))
    assert (window.start_ms, window.end_ms) == (ms(*start), ms(*end))


def test_a_berlin_month_resets_at_berlin_midnight_across_the_daylight_saving_change() -> None:
    berlin = zone("Europe/Berlin")
    window = parse_period("monthly").window(ms(2025, 3, 31, 23, 30, tz="Europe/Berlin"), berlin)
    assert window.start_ms == ms(2025, 3, 1, tz="Europe/Berlin")
    assert window.end_ms == ms(2025, 4, 1, tz="Europe/Berlin")
    # March 2025 in Berlin loses an hour to summer time: 31 days minus one hour.
    assert window.end_ms - window.start_ms == (31 * 24 - 1) * 3_600_000
    assert datetime.fromtimestamp(window.start_ms / 1000, UTC).hour == 23  # 00:00 CET is 23:00 UTC


def test_the_same_instant_is_in_different_days_in_different_zones() -> None:
    instant = ms(2025, 3, 14, 23, 30)  # 23:30 UTC is already 08:30 on the 15th in Tokyo
    daily = parse_period("daily")
    assert daily.window(instant, zone("UTC")).start_ms == ms(2025, 3, 14)
    assert daily.window(instant, zone("Asia/Tokyo")).start_ms == ms(2025, 3, 15, tz="Asia/Tokyo")


def test_calendar_spend_lives_in_one_bucket_per_period() -> None:
    daily, utc = parse_period("daily"), zone("UTC")
    assert (
        daily.bucket_of(ms(2025, 3, 14, 1), utc)
        == daily.bucket_of(ms(2025, 3, 14, 23), utc)
        == ms(2025, 3, 14)
    )
    assert daily.bucket_of(ms(2025, 3, 15, 0), utc) == ms(2025, 3, 15)
    assert daily.alert_key(ms(2025, 3, 14, 5), utc) == ms(2025, 3, 14)


def test_rolling_window_counts_a_bucket_while_any_part_of_it_is_inside() -> None:
    rolling, utc = parse_period("rolling_24h"), zone("UTC")
    assert rolling.is_rolling and rolling.window_ms == 86_400_000
    width = rolling.bucket_ms
    assert width == 86_400_000 // ROLLING_BUCKETS
    now = ms(2025, 3, 14, 12) + width // 2
    lowest = rolling.lowest_bucket(now, utc)
    spent_just_inside = now - 86_400_000 + 1
    assert rolling.bucket_of(spent_just_inside, utc) >= lowest
    spent_a_bucket_before = now - 86_400_000 - width
    assert rolling.bucket_of(spent_a_bucket_before, utc) < lowest
    window = rolling.window(now, utc)
    assert (window.start_ms, window.end_ms) == (now - 86_400_000, now)
    assert rolling.alert_key(now, utc) == 0  # rolling windows re-arm instead of resetting


@pytest.mark.parametrize(
    ("spec", "window_ms"),
    [("rolling_7d", 7 * 86_400_000), ("rolling_90m", 90 * 60_000), ("ROLLING_2H", 7_200_000)],
)
def test_rolling_specs(spec: str, window_ms: int) -> None:
    assert parse_period(spec).window_ms == window_ms


@pytest.mark.parametrize(
    "spec", ["", "hourly", "rolling_0h", "rolling_24", "rolling_400d", "rolling_h", "monthly "]
)
def test_unknown_periods_are_refused_with_what_is_accepted(spec: str) -> None:
    if spec == "monthly ":
        assert parse_period(spec).spec == "monthly"  # surrounding space is forgiven
        return
    with pytest.raises(ValueError, match=r"daily|rolling"):
        parse_period(spec)


def test_unknown_time_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
