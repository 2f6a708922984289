"""The dispatcher: takes jobs from the delivery queue, lane by lane, and walks each
job's channel plan (``walk.Walk``); what to do after each try is ``plan.next_move``.

Each lane (basic, reminder, marketing) has its own budget of deliveries in flight, and
the dispatcher asks the queue only for the lanes with room, so a campaign of a million
users never holds up an order notice. The users of a batch of jobs are read in one
round trip. A delivery ends with one settlement (reservation, timeline, status, ack)
written in one atomic step, with the others ending at the same time (``settler``):
not interrupted by cancellation, retried while the store does not answer. What was
sent is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import structlog

from channels.base import ChannelAdapter
from gateway.autostop import AutoStop
from gateway.clock import Clock
from gateway.core.users import Users
from gateway.delivery.providers import Providers
from gateway.delivery.settler import Settler
from gateway.delivery.walk import Walk, stopped
from gateway.errors import HeraldError
from gateway.killswitches import KillSwitches
from gateway.links import LinkMaker
from gateway.logs import get_logger
from gateway.loops import every
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Lease, Queue, Settlement, Store, Then, UserRead, UserView
from gateway.values.domain import Category, Channel, Outcome, PushProvider, Reason
from gateway.values.jobs import LANES
from gateway.values.records import Current, TimelineEntry
from gateway.values.state import Release

log = get_logger(__name__)


class Dispatcher:
    def __init__(
        self,
        queue: Queue,
        store: Store,
        policies: PolicyHolder,
        switches: KillSwitches,
        adapter_for: Callable[[Channel, PushProvider | None], ChannelAdapter],
        users: Users,
        clock: Clock,
        metrics: Metrics,
        in_flight: int = 128,
        auto_stop: AutoStop | None = None,
        lanes: Sequence[Category] = LANES,
    ) -> None:
        self.queue = queue
        # The lanes this process delivers (Redis: others may be left to other workers).
        self._lanes = tuple(lanes)
        self._store = store
        self._policies = policies
        self._switches = switches
        self._clock = clock
        self._metrics = metrics
        self.providers = Providers(policies)
        self._walk = Walk(store, policies, switches, adapter_for, users, clock, metrics, self.providers, auto_stop)
        # Deliveries working at once in this process, per lane.
        self._limit = in_flight
        self._busy = dict.fromkeys(LANES, 0)
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._settler = Settler(
            queue.finish, lambda: policies.current.defaults.message_retention, metrics, self._stopping.is_set
        )

    @property
    def link_for(self) -> LinkMaker | None:
        return self._walk.link_for

    @link_for.setter
    def link_for(self, make: LinkMaker | None) -> None:
        self._walk.link_for = make

    # --- the loop ------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._runner = asyncio.create_task(self._run(), name="dispatcher")

    def _free(self) -> dict[Category, int]:
        return {lane: self._limit - self._busy[lane] for lane in self._lanes if self._busy[lane] < self._limit}

    async def _wait_for_room(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._room.wait()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._room.clear()  # set again by every delivery that ends from here on
            free = self._free()
            if not free:
                await self._wait_for_room(0.5)
                continue
            # A full lane gets room back when one of its deliveries ends: then look again
            # at once rather than block on the other lanes' queues meanwhile.
            crowded = len(free) < len(self._lanes)
            try:
                leases = await self.queue.take(free, 0.0 if crowded else 0.2)
                views = await self._read_users(leases)
                failures = 0
            except HeraldError as exc:
                failures += 1
                self._metrics.store_errors.labels("delivery_take").inc()
                if failures == 1 or failures % 60 == 0:
                    log.error("delivery_queue_unavailable", error=exc.message, failures=failures)
                await asyncio.sleep(min(5.0, 0.2 * failures))
                continue
            if crowded and not leases:
                await self._wait_for_room(0.05)
            for lease in leases:
                self._busy[lease.job.lane] += 1
                task = asyncio.create_task(self._handle(lease, views.get(lease.job.claim.user_id)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read_users(self, leases: list[Lease]) -> dict[str, UserView]:
        if not leases:
            return {}
        users = list(dict.fromkeys(lease.job.claim.user_id for lease in leases))
        window = self._policies.current.defaults.idempotency_window
        return {view.user_id: view for view in await self._store.read_users([UserRead(u) for u in users], window)}

    async def _handle(self, lease: Lease, view: UserView | None) -> None:
        # This task's own context: every log line of the delivery carries these.
        structlog.contextvars.bind_contextvars(message_id=lease.job.message_id, bu=lease.job.claim.bu)
        try:
            try:
                settlement = await self._walk.deliver(lease, view, lambda: self._lend(lease.job.lane))
            except HeraldError as exc:
                # The store did not answer before anything was sent: leave the entry
                # pending; it is taken again after the reclaim time.
                self._metrics.store_errors.labels("delivery").inc()
                log.error("delivery_interrupted", error=exc.message)
                return
            except Exception:
                log.exception("delivery_crashed")
                settlement = self._walk.crashed(lease)
            await self._settler.settle(settlement)
        finally:
            self._busy[lease.job.lane] -= 1
            self._room.set()

    @contextlib.asynccontextmanager
    async def _lend(self, lane: Category) -> AsyncIterator[None]:
        """Give a delivery's place in its lane's budget to others while it waits in a
        provider's batch."""
        self._busy[lane] -= 1
        self._room.set()
        try:
            yield
        finally:
            self._busy[lane] += 1

    async def drain(self, within: float) -> bool:
        """Wait until the queue is empty and nothing is in flight; False on timeout."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if not self._tasks and sum((await self.queue.depth()).values()) == 0:
                    return True
            except HeraldError:
                return False
            await asyncio.sleep(0.002)
        return False

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking jobs; let those in flight finish within ``grace`` seconds."""
        self._stopping.set()
        if self._runner is not None:
            await asyncio.wait([self._runner], timeout=grace)
            if not self._runner.done():
                self._runner.cancel()
            self._runner = None
        # Jobs read ahead go back to the queue now, for the other workers, not after
        # the deliveries in flight.
        await self.queue.stop_taking()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in list(self._tasks):
            task.cancel()

    def down_channels(self) -> frozenset[Channel]:
        return self.providers.down_channels()

    def breaker_states(self) -> dict[str, int]:
        return self.providers.breaker_states()

    # --- jobs put aside ----------------------------------------------------------------
    async def wake(self) -> int:
        """Jobs that waited for a provider and whose time has come, back in the queue."""
        return await self.queue.wake(self._clock.now(), 1000)

    async def sweep_parked(self, everything: bool) -> int:
        """Look at the jobs a kill switch keeps again: every one after the switches
        changed, else only those whose time ran out. Returns how many were resumed or
        ended."""
        now = self._clock.now()
        retention = self._policies.current.defaults.message_retention
        handled, offset = 0, 0
        while True:
            batch = await self.queue.parked(None if everything else now, 1000, offset)
            settlements = []
            for parked in batch:
                job, stop = parked.job, stopped(parked.job, self._switches, self._clock)
                if parked.until <= now:
                    detail = "kept while a kill switch stopped it; its deadline passed"
                    if stop is not None:
                        detail = f"{stop.detail}; kept until {parked.until:%Y-%m-%d %H:%M} UTC and ended"
                    settlements.append(
                        Settlement(
                            job,
                            Then.DONE,
                            settle=Release(job.message_id),
                            events=(TimelineEntry(now, "expired", detail=detail),),
                            current=Current("expired", Outcome.SUPPRESSED, Reason.KILL_SWITCH, detail),
                            parked=parked,
                        )
                    )
                elif stop is None or stop.kind != "killed":
                    detail = "kill switch cleared: sent again"
                    settlements.append(
                        Settlement(
                            job,
                            Then.RESUME,
                            events=(TimelineEntry(now, "resumed", detail=detail),),
                            current=Current("queued", Outcome.ACCEPTED, None, detail),
                            parked=parked,
                        )
                    )
            if settlements:
                await self.queue.finish(settlements, retention)
            handled += len(settlements)
            offset += len(batch) - len(settlements)
            if len(batch) < 1000 or not everything:
                return handled

    async def watch_aside(self, stopping: asyncio.Event, interval: float = 0.5, full_every: float = 30.0) -> None:
        """Wake the waiting jobs whose time has come, and sweep the parked ones: all of
        them when the switches change (and now and then), the expired ones every
        ``interval``."""
        seen = self._switches.generation
        last_full = time.monotonic()

        async def step() -> None:
            nonlocal seen, last_full
            everything = self._switches.generation != seen or time.monotonic() - last_full > full_every
            await self.wake()
            await self.sweep_parked(everything)
            if everything:
                seen, last_full = self._switches.generation, time.monotonic()

        await every(interval, step, stopping, "aside")
