"""Releases scheduled claims when their time comes, on whichever replica takes them
first (the store hands each due claim to exactly one caller)."""

from __future__ import annotations

import asyncio

from gateway.clock import Clock
from gateway.core.pipeline import PushPipeline
from gateway.errors import HeraldError
from gateway.logs import get_logger
from gateway.loops import every
from gateway.metrics import Metrics
from gateway.store.base import Store

log = get_logger(__name__)


class Scheduler:
    def __init__(
        self,
        store: Store,
        pipeline: PushPipeline,
        clock: Clock,
        metrics: Metrics,
        interval: float = 0.5,
        batch: int = 200,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._batch = batch

    async def tick(self) -> int:
        """Release what is due now; returns how many claims were released."""
        released = 0
        while True:
            due = await self._store.take_due(self._clock.now(), self._batch)
            for message_id in due:
                try:
                    await self._pipeline.release(message_id)
                except HeraldError as exc:
                    # Put it back so another tick (or replica) tries again.
                    log.error("release_failed", message_id=message_id, error=exc.message)
                    await self._store.schedule(message_id, self._clock.now())
                    return released
            released += len(due)
            if len(due) < self._batch:
                break
        self._metrics.scheduled.set(await self._store.scheduled_count())
        return released

    async def run(self, stopping: asyncio.Event) -> None:
        await every(self._interval, self.tick, stopping, "scheduler")
