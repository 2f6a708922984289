"""Durations as policy files write them: ``90s``, ``5m``, ``24h``, ``7d``, ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_UNITS = tuple(_UNITS)  # what a duration's unit may be (the policy's JSON Schema too)
# ASCII only: ``\d`` would take other scripts' digits and ``\s`` exotic spaces.
_PATTERN = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$", re.ASCII)
# Longer is a typo, and far enough out ``timedelta`` and dates overflow.
LONGEST = timedelta(days=36525)
_SHOWN = 40


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def parse_duration(text: str) -> timedelta:
    """Parse ``<number><unit>``, up to ``LONGEST``; raise ValueError naming the accepted units."""
    match = _PATTERN.match(text)
    if not match:  # not repeated: it could be anything (the admin API passes on what a caller sent)
        raise ValueError("not a duration: write a number and a unit, e.g. 90s, 5m, 24h, 7d")
    digits, unit = match.group(1), match.group(2)
    if unit not in _UNITS:
        raise ValueError(f"unknown unit '{_shown(unit)}' in '{_shown(text)}'; use one of s, m, h, d, w")
    # Compare digit counts before converting: int() of thousands of digits is refused by Python itself.
    significant = digits.lstrip("0") or "0"
    seconds = int(significant) if len(significant) <= 15 else None
    if seconds == 0:
        raise ValueError(f"'{_shown(text)}' is zero; a duration must be positive")
    if seconds is None or seconds * _UNITS[unit] > LONGEST.total_seconds():
        raise ValueError(f"'{_shown(text)}' is longer than {LONGEST.days // 365} years; write a shorter duration")
    return timedelta(seconds=seconds * _UNITS[unit])


@lru_cache(maxsize=256)  # a policy's few durations, in every decision's trace
def format_duration(delta: timedelta) -> str:
    """The duration as policy files write it, in its largest whole unit (``90s``, ``5m``,
    ``7d``, ``2w``), except that one day is ``24h`` as people write it. For messages
    and traces: never ``str(timedelta)``'s ``1 day, 0:00:00``."""
    seconds = int(delta.total_seconds())
    if seconds == 86400:
        return "24h"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
