"""A circuit breaker per provider (pure, clock-injected through ``now`` arguments).

Closed: sends go through; ``threshold`` provider faults in a row open it (a fault the
provider names as its own, such as a refused credential or an empty balance, opens it
at once). Open: nothing is sent to the provider until ``cool_down`` seconds have
passed; then one probe send is let through (half-open): success closes the breaker,
another fault opens it again. While a probe is out, other sends wait for its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# How long a send waits before asking again while a probe is out.
PROBE_WAIT = 1.0


class BreakerState(IntEnum):
    # Numbers are what the herald_breaker_state gauge exports.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class Breaker:
    threshold: int = 5
    cool_down: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    faults: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def allow(self, now: float) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cool_down:
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        if self.state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a send may be let through (0: now)."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.cool_down - now)
        return PROBE_WAIT if self.probing else 0.0

    def resting(self, now: float) -> bool:
        """Open and still cooling down: nothing will be let through yet."""
        return self.state is BreakerState.OPEN and now - self.opened_at < self.cool_down

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.faults = 0
        self.probing = False

    def fault(self, now: float, *, trip: bool = False) -> None:
        self.faults += 1
        if trip or self.state is BreakerState.HALF_OPEN or self.faults >= self.threshold:
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.probing = False

    def release_probe(self) -> None:
        """The probe let through never reached the provider (the delivery stopped
        first): let another one go."""
        if self.state is BreakerState.HALF_OPEN:
            self.probing = False
