"""Locale tags and which of a scenario's contents a user's locale picks (pure).

Tags are BCP 47 as people write them (``zh-CN``, ``en-GB``, ``en``, ``zh-Hant-TW``) and
compare without regard to case. A locale picks the content written for it exactly, else
for its shorter forms, subtag by subtag (``en-GB`` -> ``en``; ``zh-Hant-TW`` ->
``zh-Hant`` -> ``zh``), else none: the scenario's default content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def fallbacks(locale: str) -> list[str]:
    """``locale`` and its shorter forms, longest first, in lower case."""
    parts = locale.strip().lower().split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)] if parts[0] else []


def pick(written: Mapping[str, str], locale: str) -> str | None:
    """The key of ``written`` (lower-cased tag -> the tag as written) that ``locale``
    picks, or None for the default."""
    for tag in fallbacks(locale):
        if tag in written:
            return written[tag]
    return None
