"""Durations as policy files write them: ``90s``, ``5m``, ``24h``, ``7d``, ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse ``<number><unit>``; raise ValueError naming the accepted units."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a duration; write a number and a unit, e.g. 90s, 5m, 24h, 7d")
    number, unit = int(match.group(1)), match.group(2)
    if unit not in _UNITS:
        raise ValueError(f"unknown unit '{unit}' in '{text}'; use one of s, m, h, d, w")
    if number == 0:
        raise ValueError(f"'{text}' is zero; a duration must be positive")
    return timedelta(seconds=number * _UNITS[unit])


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
