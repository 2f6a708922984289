"""Settlements written together: every delivery that ends while a write is on its way
joins the next one, so a busy process writes its endings in one store call (one
pipeline on Redis) rather than one each.

A delivery waits until its own settlement is written (or given up on), as before; the
write runs in the settler's task, so cancelling the delivery does not interrupt it
(what was sent is recorded). A write is retried while the store does not answer, for
``FINISH_PATIENCE`` seconds; after that the entries stay pending and another worker
takes them over (and sends again: the providers' dedup ids keep that harmless where
they have them).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from gateway.errors import HeraldError
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.store.base import Settlement, Then

log = get_logger(__name__)
FINISH_PATIENCE = 60.0
# Settlements a write carries at most (the rest go in the next write).
MOST = 256


Write = Callable[[Sequence[Settlement], timedelta], Awaitable[None]]


class Settler:
    def __init__(
        self, write: Write, retention: Callable[[], timedelta], metrics: Metrics, stopping: Callable[[], bool]
    ) -> None:
        """``write``: the queue's ``finish``."""
        self._write_many = write
        self._retention = retention
        self._metrics = metrics
        self._stopping = stopping
        self._pending: list[tuple[Settlement, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self._writer is not None

    async def settle(self, settlement: Settlement) -> None:
        """Write ``settlement`` with the others ending now; returns once it is written
        or given up on (logged)."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        self._pending.append((settlement, written))
        if self._writer is None:
            self._writer = loop.create_task(self._write_all(), name="settler")
        await written

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MOST], self._pending[MOST:]
                try:
                    await self._write([settlement for settlement, _ in batch])
                finally:
                    for _, written in batch:
                        if not written.done():
                            written.set_result(None)
        finally:
            self._writer = None

    async def _write(self, settlements: list[Settlement]) -> None:
        try:
            await self._finish(settlements)
        except Exception:
            # Not the store being down (that is retried): a settlement the store cannot
            # take. Written one by one, so that only that one is left pending.
            if len(settlements) > 1:
                for settlement in settlements:
                    await self._write([settlement])
                return
            log.exception("delivery_finish_crashed", message_id=settlements[0].job.message_id)

    async def _finish(self, settlements: list[Settlement]) -> None:
        began = time.monotonic()
        attempt = 0
        while True:
            try:
                await self._write_many(settlements, self._retention())
                for settlement in settlements:
                    self._count(settlement)
                return
            except HeraldError as exc:
                attempt += 1
                self._metrics.store_errors.labels("delivery_finish").inc()
                if time.monotonic() - began > FINISH_PATIENCE or (self._stopping() and attempt > 3):
                    for settlement in settlements:
                        log.error("delivery_finish_failed", message_id=settlement.job.message_id, error=exc.message)
                    return
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))

    def _count(self, settlement: Settlement) -> None:
        if settlement.then is Then.DEAD:
            plan = settlement.job.plan
            self._metrics.dead_letters.labels(plan[0].value if plan else "none").inc()
        elif settlement.then is Then.WAIT:
            self._metrics.delivery_waits.labels(settlement.job.lane.value).inc()
