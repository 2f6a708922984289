"""Releases held claims when their time comes.

The store's due index lists users whose pending pool has something due. A tick leases
due users (no other replica gets the same user while the lease runs), decides their
due claims, and puts each user back at its next due time. A replica that dies mid-way
loses nothing: its leases run out and another replica takes the users.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from gateway.clock import Clock
from gateway.core.pipeline import PushPipeline
from gateway.errors import HeraldError
from gateway.logs import get_logger
from gateway.loops import every
from gateway.metrics import Metrics
from gateway.store.base import Store

log = get_logger(__name__)
LEASE = timedelta(seconds=60)


class Scheduler:
    def __init__(
        self,
        store: Store,
        pipeline: PushPipeline,
        clock: Clock,
        metrics: Metrics,
        interval: float = 0.5,
        batch: int = 500,
        concurrency: int = 4,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._batch = batch
        self._gate = asyncio.Semaphore(concurrency)

    async def _release(self, due: list[tuple[str, datetime]]) -> int:
        """Decide a batch of leased users' due claims (one read, one commit), then end
        their leases (one round trip)."""
        async with self._gate:
            try:
                nexts = await self._pipeline.release_users([user for user, _ in due])
            except HeraldError as exc:
                # The leases run out and these users are taken again, here or elsewhere.
                log.error("release_failed", users=len(due), error=exc.message)
                return 0
            await self._store.finish_due([(user, until, nexts.get(user)) for user, until in due])
            return len(due)

    async def tick(self) -> int:
        """Release what is due now; returns how many users were handled."""
        handled = 0
        while True:
            due = await self._store.take_due(self._clock.now(), self._batch, LEASE)
            chunks = [due[i : i + self._batch] for i in range(0, len(due), self._batch)]
            handled += sum(await asyncio.gather(*(self._release(chunk) for chunk in chunks)))
            if len(due) < self._batch:
                break
        self._metrics.scheduled.set(await self._store.due_count())
        return handled

    async def run(self, stopping: asyncio.Event) -> None:
        await every(self._interval, self.tick, stopping, "scheduler")
