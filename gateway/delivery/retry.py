"""How long to wait before trying the same channel again (pure)."""

from __future__ import annotations

import random

BASE = 0.2
CAP = 10.0


def backoff(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter after ``attempt`` (1-based) failures; a
    provider's ``Retry-After`` is a floor."""
    ceiling = min(CAP, BASE * 2 ** (attempt - 1))
    wait = (rng or random).uniform(ceiling / 2, ceiling)
    return max(wait, retry_after or 0.0)
