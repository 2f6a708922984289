"""Per-business-unit request rate limit: a token bucket in this process.

Each replica enforces the policy's limit on its own share of the traffic; with N
replicas behind a balancer the unit may send up to N times the limit in all.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.clock import monotonic


class RateLimiter:
    def __init__(self, now: Callable[[], float] = monotonic) -> None:
        self._now = now
        self._buckets: dict[str, tuple[float, float]] = {}  # bu -> (tokens, last refill)

    def allow(self, key: str, capacity: int, per_seconds: float, cost: int = 1) -> bool:
        now = self._now()
        tokens, last = self._buckets.get(key, (float(capacity), now))
        tokens = min(float(capacity), tokens + (now - last) * capacity / per_seconds)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - cost, now)
        return True
