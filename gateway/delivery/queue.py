"""The delivery queue: what the pipeline puts decided claims into and the dispatcher
takes them from. ``MemoryQueue`` in the embedded mode (one process, not durable);
``streams.StreamQueue`` on Redis (durable, shared by replicas and workers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.delivery.jobs import Job
from gateway.domain import Channel


@dataclass(frozen=True)
class Lease:
    """A job taken from the queue; it stays there until acked (or dead-lettered)."""

    entry_id: str
    job: Job
    # How many times the queue handed this entry out (2+: a worker died holding it).
    deliveries: int = 1


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    reason: str
    at: datetime


class DeliveryQueue(Protocol):
    kind: str

    async def put(self, job: Job) -> None: ...

    async def take(self, count: int, block: float) -> list[Lease]:
        """Up to ``count`` jobs, waiting at most ``block`` seconds for the first."""
        ...

    async def ack(self, lease: Lease) -> None: ...

    async def dead(self, lease: Lease, reason: str, at: datetime) -> None:
        """Keep a job that will never be delivered, with why, and ack it."""
        ...

    async def depth(self) -> int:
        """Jobs waiting or being delivered."""
        ...

    async def depth_by_channel(self) -> dict[Channel, int]:
        """Jobs waiting or being delivered, by the first channel of their plan."""
        ...

    async def oldest_by_channel(self, now: datetime) -> dict[Channel, float]: ...

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """Most recent first."""
        ...

    async def park(self, job: Job, until: datetime, lease: Lease | None = None) -> None:
        """Keep a job a kill switch stopped, out of delivery (and settle the lease it came
        with, if any); it is looked at again when the switches change, and ends at
        ``until``."""
        ...

    async def unpark(self, due_before: datetime | None, limit: int) -> list[tuple[Job, datetime]]:
        """Take parked jobs back: every one (``due_before`` None) or only those whose
        ``until`` has come."""
        ...

    async def parked(self) -> int: ...

    async def close(self) -> None: ...


class MemoryQueue:
    kind = "memory"

    def __init__(self, dead_keep: int = 10_000) -> None:
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._open: dict[str, Job] = {}
        self._seq = 0
        self._dead: deque[DeadLetter] = deque(maxlen=dead_keep)
        self._parked: dict[str, tuple[Job, datetime]] = {}

    async def put(self, job: Job) -> None:
        self._queue.put_nowait(job)

    async def take(self, count: int, block: float) -> list[Lease]:
        leases: list[Lease] = []
        if self._queue.empty():
            with contextlib.suppress(TimeoutError):
                leases.append(self._lease(await asyncio.wait_for(self._queue.get(), block)))
        while len(leases) < count and not self._queue.empty():
            leases.append(self._lease(self._queue.get_nowait()))
        return leases

    def _lease(self, job: Job) -> Lease:
        self._seq += 1
        entry_id = str(self._seq)
        self._open[entry_id] = job
        return Lease(entry_id, job)

    async def ack(self, lease: Lease) -> None:
        self._open.pop(lease.entry_id, None)

    async def dead(self, lease: Lease, reason: str, at: datetime) -> None:
        self._dead.append(DeadLetter(lease.job.message_id, reason, at))
        await self.ack(lease)

    async def depth(self) -> int:
        return self._queue.qsize() + len(self._open)

    def _jobs(self) -> list[Job]:
        return [*self._queue._queue, *self._open.values()]  # type: ignore[attr-defined]

    async def depth_by_channel(self) -> dict[Channel, int]:
        counts = dict.fromkeys(Channel, 0)
        for job in self._jobs():
            if job.plan:
                counts[job.plan[0]] += 1
        return counts

    async def oldest_by_channel(self, now: datetime) -> dict[Channel, float]:
        ages = dict.fromkeys(Channel, 0.0)
        for job in self._jobs():
            if job.plan and job.queued_at is not None:
                ages[job.plan[0]] = max(ages[job.plan[0]], (now - job.queued_at).total_seconds())
        return ages

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return list(reversed(self._dead))[:limit]

    async def park(self, job: Job, until: datetime, lease: Lease | None = None) -> None:
        self._parked[job.message_id] = (job, until)
        if lease is not None:
            await self.ack(lease)

    async def unpark(self, due_before: datetime | None, limit: int) -> list[tuple[Job, datetime]]:
        taken = [
            (message_id, item)
            for message_id, item in self._parked.items()
            if due_before is None or item[1] <= due_before
        ][:limit]
        for message_id, _ in taken:
            del self._parked[message_id]
        return [item for _, item in taken]

    async def parked(self) -> int:
        return len(self._parked)

    async def close(self) -> None:
        return None
