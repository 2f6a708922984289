"""Local-time arithmetic for arbitration (pure): quiet periods, send windows, calendar
windows of caps, and the spread that keeps a million releases out of one second.

Every function takes aware datetimes and a time zone and returns aware UTC datetimes;
daylight-saving gaps and folds are resolved by zoneinfo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from gateway.policy.schema import TimeWindow


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _at(day: date, clock: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def _contains(window_start: time, window_end: time, clock: time) -> bool:
    if window_start < window_end:
        return window_start <= clock < window_end
    return clock >= window_start or clock < window_end  # wraps past midnight


def period_around(start: time, end: time, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The occurrence of the daily period [start, end) that contains ``now``, if any."""
    local = now.astimezone(tz)
    if not _contains(start, end, local.time()):
        return None
    day = local.date()
    if start < end:
        return _at(day, start, tz), _at(day, end, tz)
    if local.time() >= start:  # evening part: ends tomorrow
        return _at(day, start, tz), _at(day + timedelta(days=1), end, tz)
    return _at(day - timedelta(days=1), start, tz), _at(day, end, tz)


def calendar_start(unit: str, now: datetime, tz: ZoneInfo) -> datetime:
    """Start of the user's current day, ISO week (Monday) or month."""
    local = now.astimezone(tz)
    day = local.date()
    if unit == "week":
        day = day - timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    return _at(day, time(0, 0), tz)


def spread(key: str, span: timedelta) -> timedelta:
    """A stable offset in [0, span) for ``key``: the same user always lands on the same
    second, different users spread evenly."""
    if span <= timedelta(0):
        return timedelta(0)
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return timedelta(seconds=digest % max(1, int(span.total_seconds())))


def _occurrences(start: time, end: time, first: date, days: int, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    out = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        end_day = day if start < end else day + timedelta(days=1)
        out.append((_at(day, start, tz), _at(end_day, end, tz)))
    return out


def _subtract(
    piece: tuple[datetime, datetime], holes: Sequence[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    pieces = [piece]
    for hole_start, hole_end in holes:
        kept = []
        for start, end in pieces:
            if hole_end <= start or hole_start >= end:
                kept.append((start, end))
                continue
            if start < hole_start:
                kept.append((start, hole_start))
            if hole_end < end:
                kept.append((hole_end, end))
        pieces = kept
    return pieces


def open_windows(
    windows: Sequence[TimeWindow], quiet: tuple[time, time] | None, now: datetime, tz: ZoneInfo, days: int = 4
) -> list[tuple[datetime, datetime]]:
    """The send windows from ``now`` on (over ``days`` local days), minus quiet hours,
    earliest first. A window that overlaps quiet hours keeps only its quiet-free part."""
    first = now.astimezone(tz).date() - timedelta(days=1)
    return [p for p in _windows_from(tuple(windows), quiet, first, tz, days) if p[1] > now]


@lru_cache(maxsize=4096)
def _windows_from(
    windows: tuple[TimeWindow, ...], quiet: tuple[time, time] | None, first: date, tz: ZoneInfo, days: int
) -> tuple[tuple[datetime, datetime], ...]:
    """The windows minus quiet hours from the local day ``first`` on: the same for every
    user of a time zone on a given day, so worked out once (a campaign decides a
    million users against a handful of these)."""
    holes = _occurrences(quiet[0], quiet[1], first - timedelta(days=1), days + 2, tz) if quiet else []
    out: set[tuple[datetime, datetime]] = set()
    for window in windows:
        for occurrence in _occurrences(window.start, window.end, first, days + 1, tz):
            out.update(_subtract(occurrence, holes))
    return tuple(sorted(out))


def release_time(
    windows: Sequence[TimeWindow],
    quiet: tuple[time, time] | None,
    now: datetime,
    tz: ZoneInfo,
    *,
    collection_delay: timedelta,
    spread_key: str,
    spread_span: timedelta,
) -> datetime | None:
    """When a competing claim is released: after the collection delay if a window is
    open and stays open that long, else at the next window's opening plus the user's
    stable spread (at most half the window)."""
    for start, end in open_windows(windows, quiet, now, tz):
        if start <= now:
            if now + collection_delay < end:
                return now + collection_delay
            continue
        return start + spread(spread_key, min(spread_span, (end - start) / 2))
    return None
