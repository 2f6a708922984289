"""The durable delivery queue on Redis Streams.

Every replica and ``herald worker`` reads the stream through one consumer group. An
entry stays pending until the worker that took it acks it after the delivery (XACK and
XDEL, so the stream holds only what is not done). A worker that dies leaves its entries
pending; after ``reclaim_after`` seconds idle another worker takes them over with
XAUTOCLAIM. Provider dedup ids (WeChat's client_msg_id is the delivery id) make a
second attempt harmless. An entry handed out ``max_deliveries`` times goes to the
dead-letter stream with its reason instead of looping forever.

When Redis does not answer a put, the job is kept in this process's memory queue and
delivered from there: the decision was made, losing it would be worse.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.delivery.jobs import BadJob, Job, decode_job, encode_job
from gateway.delivery.queue import DeadLetter, Lease, MemoryQueue
from gateway.domain import Channel
from gateway.errors import StoreUnavailable
from gateway.logs import get_logger
from gateway.store import keys
from gateway.store.redis import execute, redacted

log = get_logger(__name__)


# KEYS[1] parked zset; ARGV[1] until ms; ARGV[2] limit. Pops the members whose time has
# come, with their scores.
_POP_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #items, 2 do redis.call('ZREM', KEYS[1], items[i]) end
return items
"""


def first_channel(job: Job) -> Channel:
    """A job waits in the stream of its plan's first channel, so each channel's backlog
    and age show on their own."""
    return job.plan[0] if job.plan else Channel.WECHAT_TEMPLATE


def split(entry: str) -> tuple[str, str]:
    """A lease's entry id is '<stream>/<id>'."""
    stream, _, entry_id = entry.rpartition("/")
    return stream, entry_id


def _done(pipe: Any, entry_id: str) -> None:
    """Add to ``pipe`` what takes an entry out of its stream for good (ack and delete);
    nothing for a job held in this process's memory."""
    if entry_id.startswith("local:"):
        return
    stream, entry = split(entry_id)
    pipe.xack(stream, keys.DELIVERY_GROUP, entry)
    pipe.xdel(stream, entry)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamQueue:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        reclaim_after: float = 60.0,
        max_deliveries: int = 5,
        consumer: str | None = None,
    ) -> None:
        self._where = redacted(url)
        # Its own connections: blocking reads must not wait behind the store's calls.
        # A bounded pool callers wait on: hundreds of deliveries acking at once must
        # not open hundreds of connections.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=30, socket_timeout=10, socket_connect_timeout=2
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._pop_due = self._redis.register_script(_POP_DUE)
        self._reclaim_ms = int(reclaim_after * 1000)
        self._max_deliveries = max_deliveries
        self.consumer = consumer or consumer_name()
        self._group_ready = False
        self._local = MemoryQueue()
        self._next_claim: dict[str, str] = {}
        self._next_reclaim = 0.0
        self._pending: list[tuple[Job, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"delivery stream on {self._where} did not answer ({type(exc).__name__})")

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        for channel in Channel:
            try:
                await self._redis.xgroup_create(keys.deliveries(channel), keys.DELIVERY_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    async def put(self, job: Job) -> None:
        """Puts made in the same turn of the event loop (a PushBatch's winners) go to
        Redis in one pipeline."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other puts of this turn join
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            try:
                pipe = self._redis.pipeline(transaction=False)
                for job, _ in batch:
                    pipe.xadd(keys.deliveries(first_channel(job)), {"job": encode_job(job)})
                await execute(pipe)
            except (RedisError, OSError) as exc:
                log.error(
                    "delivery_stream_put_failed",
                    jobs=len(batch),
                    error=str(self._unavailable(exc)),
                    detail="kept in this process's memory queue",
                )
                for job, _ in batch:
                    await self._local.put(job)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def take(self, count: int, block: float) -> list[Lease]:
        local = await self._local.take(count, 0) if await self._local.depth() else []
        if local:
            return [Lease("local:" + lease.entry_id, lease.job) for lease in local]
        try:
            await self._ensure_group()
            # Idle entries are looked for now and then, not on every read: that is one
            # XAUTOCLAIM per channel stream.
            if time.monotonic() >= self._next_reclaim:
                self._next_reclaim = time.monotonic() + max(0.5, self._reclaim_ms / 4000)
                leases = await self._reclaim(count)
                if leases:
                    return leases
            answer: Any = await self._redis.xreadgroup(
                keys.DELIVERY_GROUP,
                self.consumer,
                {keys.deliveries(channel): ">" for channel in Channel},
                count=count,
                block=max(1, int(block * 1000)),
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        leases = []
        for stream, entries in answer or []:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            for entry_id, fields in entries:
                lease = await self._lease(name, entry_id, fields, 1)
                if lease is not None:
                    leases.append(lease)
        return leases

    async def _reclaim(self, count: int) -> list[Lease]:
        """Entries another worker took and left idle too long (it died): ours now."""
        leases: list[Lease] = []
        for channel in Channel:
            stream = keys.deliveries(channel)
            result: Any = await self._redis.xautoclaim(
                stream,
                keys.DELIVERY_GROUP,
                self.consumer,
                min_idle_time=self._reclaim_ms,
                start_id=self._next_claim.get(stream, "0-0"),
                count=count,
            )
            next_start, entries = result[0], result[1]
            self._next_claim[stream] = next_start.decode() if isinstance(next_start, bytes) else str(next_start)
            for entry_id, fields in entries:
                if fields is None:  # deleted meanwhile
                    continue
                pending = await self._redis.xpending_range(
                    stream, keys.DELIVERY_GROUP, min=entry_id, max=entry_id, count=1
                )
                times = int(pending[0]["times_delivered"]) if pending else 2
                lease = await self._lease(stream, entry_id, fields, times)
                if lease is not None:
                    log.warning("delivery_reclaimed", message_id=lease.job.message_id, deliveries=times)
                    leases.append(lease)
        return leases

    async def _lease(self, stream: str, entry_id: bytes | str, fields: dict[bytes, bytes], times: int) -> Lease | None:
        entry = f"{stream}/" + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        try:
            job = decode_job(fields[b"job"])
        except (BadJob, KeyError) as exc:
            await self._dead_raw(entry, "?", f"undecodable entry: {exc}", datetime.now(UTC))
            return None
        lease = Lease(entry, job, times)
        if times > self._max_deliveries:
            await self.dead(
                lease, f"handed out {times} times without finishing (workers dying on it?)", datetime.now(UTC)
            )
            return None
        return lease

    async def ack(self, lease: Lease) -> None:
        if lease.entry_id.startswith("local:"):
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            _done(pipe, lease.entry_id)
            await execute(pipe)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def _dead_raw(self, entry_id: str, message_id: str, reason: str, at: datetime) -> None:
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.xadd(
                keys.DEAD_LETTERS,
                {"message_id": message_id, "reason": reason, "at": at.isoformat()},
                maxlen=keys.DEAD_LETTERS_KEEP,
                approximate=True,
            )
            _done(pipe, entry_id)
            await execute(pipe)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def dead(self, lease: Lease, reason: str, at: datetime) -> None:
        await self._dead_raw(lease.entry_id, lease.job.message_id, reason, at)

    async def depth(self) -> int:
        return sum((await self.depth_by_channel()).values())

    async def depth_by_channel(self) -> dict[Channel, int]:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for channel in Channel:
                pipe.xlen(keys.deliveries(channel))
            lengths = await execute(pipe)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        local = await self._local.depth_by_channel()
        return {channel: int(n) + local[channel] for channel, n in zip(Channel, lengths, strict=True)}

    async def oldest_by_channel(self, now: datetime) -> dict[Channel, float]:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for channel in Channel:
                pipe.xrange(keys.deliveries(channel), count=1)
            firsts = await execute(pipe)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        ages = await self._local.oldest_by_channel(now)
        for channel, first in zip(Channel, firsts, strict=True):
            if first:
                entry_id = first[0][0].decode()
                ages[channel] = max(ages[channel], now.timestamp() - int(entry_id.split("-")[0]) / 1000)
        return ages

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        try:
            entries: Any = await self._redis.xrevrange(keys.DEAD_LETTERS, count=limit)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return [
            DeadLetter(f[b"message_id"].decode(), f[b"reason"].decode(), datetime.fromisoformat(f[b"at"].decode()))
            for _, f in entries
        ]

    async def park(self, job: Job, until: datetime, lease: Lease | None = None) -> None:
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(keys.PARKED, {encode_job(job): int(until.timestamp() * 1000)})
            if lease is not None:
                _done(pipe, lease.entry_id)
            await execute(pipe)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def unpark(self, due_before: datetime | None, limit: int) -> list[tuple[Job, datetime]]:
        try:
            if due_before is None:
                popped: Any = await self._redis.zpopmin(keys.PARKED, limit)
            else:
                popped = await self._pop_due(keys=[keys.PARKED], args=[int(due_before.timestamp() * 1000), limit])
                popped = list(zip(popped[::2], popped[1::2], strict=True))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        out = []
        for member, score in popped:
            try:
                out.append((decode_job(member), datetime.fromtimestamp(float(score) / 1000, UTC)))
            except BadJob as exc:
                log.error("parked_job_undecodable", error=str(exc))
        return out

    async def parked(self) -> int:
        try:
            return int(await self._redis.zcard(keys.PARKED))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        await self._redis.aclose()
