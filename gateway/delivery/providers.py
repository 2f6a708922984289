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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
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
# the limit is never exceeded, a busy process may stay a little under it.) Sends that
# find the lease empty wait in line by lane, like the slots: one refill at a time, its
# tokens handed to the waiting basic sends first, then reminders, then marketing, so
# that a campaign held back by the rate never holds back an order notice.
LEASE_SECONDS = 0.05

Refill = Callable[[], Awaitable[tuple[int, float]]]


class TokenLease:
    def __init__(self) -> None:
        self.left = 0
        self.until = 0.0
        self._waiters: dict[Category, deque[asyncio.Future[None]]] = {lane: deque() for lane in ORDER}
        self._refilling: asyncio.Task[None] | None = None

    def spend(self, now: float) -> bool:
        if self.left > 0 and now < self.until:
            self.left -= 1
            return True
        return False

    def keep(self, tokens: int, now: float) -> None:
        self.left, self.until = tokens, now + LEASE_SECONDS

    async def take(self, lane: Category, refill: Refill) -> bool:
        """A token for a send of ``lane``: from the lease when nobody waits, else in
        line (basic first). ``refill`` takes the next lease from the store: (tokens
        granted, seconds until one is there when none was). True when it waited. The
        store's error, when it does not answer, reaches every send waiting."""
        if not any(self._waiters.values()) and self.spend(time.monotonic()):
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[lane].append(future)
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.create_task(self._refill(refill), name="provider-tokens")
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.left += 1  # handed a token as it was cancelled: the next one's
            raise
        return True

    async def _refill(self, refill: Refill) -> None:
        try:
            while self._hand_out():
                granted, wait = await refill()
                if granted:
                    self.keep(granted, time.monotonic())
                else:
                    await asyncio.sleep(wait)
        except Exception as exc:
            for queue in self._waiters.values():
                while queue:
                    future = queue.popleft()
                    if not future.done():
                        future.set_exception(exc)

    def _hand_out(self) -> bool:
        """Tokens of the lease to the sends waiting, basic first; True while some wait."""
        now = time.monotonic()
        for lane in ORDER:
            queue = self._waiters[lane]
            while queue:
                if queue[0].done():  # cancelled meanwhile
                    queue.popleft()
                elif self.spend(now):
                    queue.popleft().set_result(None)
                else:
                    return True
        return False


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
