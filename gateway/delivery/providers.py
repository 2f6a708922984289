"""Per-provider state in one process: the breaker and the concurrency slots, kept per
lane so that a flood of marketing never takes the slots an order notice needs.

A provider's ``concurrency`` (policy) is the most sends in flight to it from this
process. Marketing may hold at most half of them and reminders with marketing at most
three quarters, so at least a quarter is always there for ``basic``, and a freed slot
goes to a waiting ``basic`` send first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from gateway.delivery.breaker import Breaker
from gateway.policy.holder import PolicyHolder
from gateway.values.domain import Category, Channel

# The share of a provider's slots each lane may hold (basic: all of them).
LANE_SHARE = {Category.BASIC: 1.0, Category.REMINDER: 0.75, Category.MARKETING: 0.5}
ORDER = (Category.BASIC, Category.REMINDER, Category.MARKETING)


class LaneSlots:
    """A semaphore of ``limit`` slots whose lanes may each hold at most their share;
    waiters are served basic first, then reminder, then marketing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = dict.fromkeys(ORDER, 0)
        self._waiters: dict[Category, list[asyncio.Future[None]]] = {lane: [] for lane in ORDER}

    def _cap(self, lane: Category) -> int:
        return max(1, int(self.limit * LANE_SHARE[lane]))

    def _fits(self, lane: Category) -> bool:
        total = sum(self._used.values())
        if lane is Category.BASIC:
            return total < self.limit
        lower = sum(self._used[below] for below in ORDER[ORDER.index(lane) :])
        return total < self.limit and lower < self._cap(lane)

    @asynccontextmanager
    async def hold(self, lane: Category) -> AsyncIterator[None]:
        if not self._fits(lane) or any(self._waiters[ahead] for ahead in ORDER[: ORDER.index(lane) + 1]):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters[lane].append(future)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(lane)  # handed a slot as it was cancelled: give it back
                else:
                    self._waiters[lane].remove(future)
                raise
        else:
            self._used[lane] += 1
        try:
            yield
        finally:
            self._release(lane)

    def _release(self, lane: Category) -> None:
        self._used[lane] -= 1
        for waiting in ORDER:
            queue = self._waiters[waiting]
            while queue and self._fits(waiting):
                future = queue.pop(0)
                if not future.done():
                    self._used[waiting] += 1
                    future.set_result(None)

    def in_use(self) -> dict[Category, int]:
        return dict(self._used)


# A provider's shared rate limit (``rate``, ``burst`` in policy) is one bucket in the
# store for every process. A process takes tokens a lease at a time, as many as the
# rate refills in LEASE_SECONDS (at least one), and spends them locally until they are
# used or that time is up: one store call per lease, not per send, so a provider sent to
# thousands of times a second is not one hot key. (Tokens not spent in time are lost:
# the limit is never exceeded, a busy process may stay a little under it.)
LEASE_SECONDS = 0.05


@dataclass
class TokenLease:
    left: int = 0
    until: float = 0.0
    refilling: asyncio.Lock = field(default_factory=asyncio.Lock)

    def spend(self, now: float) -> bool:
        if self.left > 0 and now < self.until:
            self.left -= 1
            return True
        return False

    def keep(self, tokens: int, now: float) -> None:
        self.left, self.until = tokens, now + LEASE_SECONDS


def lease_size(rate: float, burst: int) -> int:
    return max(1, min(burst, int(rate * LEASE_SECONDS)))


@dataclass
class ProviderState:
    breaker: Breaker
    slots: LaneSlots
    limit: int
    rate: float | None = None
    burst: int | None = None
    tokens: TokenLease = field(default_factory=TokenLease)


class Providers:
    """Breakers and slots of every provider this process sends to."""

    def __init__(self, policies: PolicyHolder) -> None:
        self._policies = policies
        self._states: dict[str, ProviderState] = {}

    def state(self, name: str) -> ProviderState:
        state = self._states.get(name)
        config = self._policies.current.providers.get(name)
        limit = config.concurrency if config is not None else 64
        if state is None or state.limit != limit:
            breaker = state.breaker if state else Breaker()
            state = self._states[name] = ProviderState(breaker, LaneSlots(limit), limit)
        if config is not None:
            state.breaker.threshold, state.breaker.cool_down = config.breaker_faults, config.breaker_cool_down
            state.rate, state.burst = config.rate, config.burst
        return state

    def down_channels(self) -> frozenset[Channel]:
        """Channels whose provider's breaker is open here (the router tries them last)."""
        now = time.monotonic()
        # Once the cool-down is over the provider is up for a probe: routed normally again,
        # or traffic would never go back to it.
        resting = {name for name, p in self._states.items() if p.breaker.resting(now)}
        if not resting:
            return frozenset()
        policy = self._policies.current
        return frozenset(c for c, settings in policy.channels.items() if settings.provider in resting)

    def breaker_states(self) -> dict[str, int]:
        return {name: int(p.breaker.state) for name, p in self._states.items()}
