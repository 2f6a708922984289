"""On a Redis Cluster the delivery streams are watched, not polled.

A cluster cannot read streams of several slots in one command, and Herald's streams are
spread over every slot range (a stream per shard and lane). Polling them costs a read a
stream for every take, most of them empty, and a lone job on a quiet shard waits for
the next poll. Instead each stream has a reader of its own: a blocking XREADGROUP on a
connection of its own to the node that serves the stream, so a job is read the moment
any process adds it, and an idle stream costs one command every ``BLOCK_MS``.

What the readers bring waits in a buffer by lane until the dispatcher takes it. A lane's
readers ask only for what the lane has room for (the room the dispatcher last asked
with, less what is buffered, split over the lane's streams), so a full lane is not read
at all and never holds up the others. An entry buffered longer than
``stale_after`` (half the reclaim time) is dropped from the buffer and left pending,
for the queue's reclaim to hand out, so no other worker can take it over while it
waits here; one handed out after waiting has its idle time set back (the queue's
``_refresh``). On ``close`` (when the dispatcher stops taking) the reads waiting are
ended (CLIENT UNBLOCK) and what is still buffered is given back to its stream for the
other workers.

A reader whose node moved the slot (MOVED) follows it; one whose node does not answer
asks the cluster client where the stream lives now, with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import MovedError, ResponseError

from gateway.logs import get_logger
from gateway.store import keys
from gateway.store.redis import scripts
from gateway.store.redis.connection import Command, Connection
from gateway.values.domain import Category
from gateway.values.jobs import LANES

log = get_logger(__name__)
# How long a read waits for an entry before it is sent again: the cost of an idle stream.
BLOCK_MS = 2000
# Backoff of a reader whose node does not answer: from this, doubled, up to a second.
RETRY_FIRST = 0.05


@dataclass(frozen=True, slots=True)
class Read:
    """An entry a reader brought: its stream, its id, its fields and when it came."""

    stream: str
    entry_id: Any
    fields: Any
    at: float


def group_command(stream: str) -> Command:
    """Create the delivery group on ``stream`` (and the stream), reading from its start."""
    return ("XGROUP", "CREATE", stream, keys.DELIVERY_GROUP, "0", "MKSTREAM")


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (its scheme, credentials and options) pointed at another node."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return parts._replace(netloc=netloc).geturl()


class StreamWatch:
    def __init__(
        self,
        connection: Connection,
        streams: Mapping[Category, Sequence[str]],
        consumer: str,
        stale_after: float,
    ) -> None:
        self._connection = connection
        self._streams = {lane: tuple(streams[lane]) for lane in LANES}
        self._consumer = consumer
        self._stale_after = stale_after
        self._timeout = connection.timeout
        self._room = dict.fromkeys(LANES, 0)
        self._buffer: dict[Category, deque[Read]] = {lane: deque() for lane in LANES}
        self._arrived = asyncio.Event()
        self._room_grew = asyncio.Event()
        self._readers: dict[str, asyncio.Task[None]] = {}
        # A reader's read waiting: its node (host, port) and its connection's client id.
        self._blocked: dict[str, tuple[tuple[str, int], int]] = {}
        self._closing = False

    # --- the dispatcher's side ---------------------------------------------------------
    def want(self, room: Mapping[Category, int]) -> None:
        """The room the dispatcher has now, by lane (replacing what it said before): the
        lanes named with room get their readers, the readers waiting for room read."""
        grew = False
        for lane in LANES:
            now = max(0, room.get(lane, 0))
            grew = grew or now > self._room[lane]
            self._room[lane] = now
            if now and not self._closing:
                for stream in self._streams[lane]:
                    reader = self._readers.get(stream)
                    if reader is None or reader.done():
                        self._readers[stream] = asyncio.create_task(self._read(stream, lane), name=f"watch {stream}")
        if grew:
            event, self._room_grew = self._room_grew, asyncio.Event()
            event.set()

    def pop(self, room: Mapping[Category, int]) -> list[Read]:
        """What is buffered, up to each lane's room, oldest first."""
        out: list[Read] = []
        fresh_since = self._fresh_since()
        for lane, count in room.items():
            buffer = self._buffer[lane]
            taken = 0
            while buffer and taken < count:
                read = buffer.popleft()
                if read.at < fresh_since:
                    continue  # left pending: the reclaim hands it out
                out.append(read)
                taken += 1
            self._room[lane] = max(0, self._room[lane] - taken)
        if not any(self._buffer.values()):
            self._arrived.clear()
        return out

    async def arrival(self, seconds: float) -> None:
        """Until something is buffered, at most ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._arrived.wait()

    def _fresh_since(self) -> float:
        """Reads that came before this (monotonic) time are left to the reclaim."""
        return time.monotonic() - self._stale_after

    def buffered(self) -> int:
        return sum(len(b) for b in self._buffer.values())

    # --- the readers -------------------------------------------------------------------
    def _share(self, lane: Category) -> int:
        """How many entries a read of one of the lane's streams may ask for now: the
        lane's room split over its streams, at most the room not yet buffered. Every
        stream of a lane with room is read, so the reads waiting at once may bring a
        few more than the room (a stream's share each): they wait in the buffer."""
        free = self._room[lane] - len(self._buffer[lane])
        if free <= 0:
            return 0
        return min(free, max(1, -(-self._room[lane] // len(self._streams[lane]))))

    async def _read(self, stream: str, lane: Category) -> None:
        node: tuple[str, int] | None = None
        client: Any = None
        client_id = 0
        failures = 0
        try:
            while not self._closing:
                grew = self._room_grew
                count = self._share(lane)
                if count == 0:
                    await grew.wait()
                    continue
                try:
                    if client is None:
                        node = node or self._node_of(stream)
                        client = self._client(node)
                        client_id = int(await client.client_id())
                    assert node is not None
                    self._blocked[stream] = (node, client_id)
                    self._connection.count_round_trip("queue_read")
                    reply = await client.xreadgroup(
                        keys.DELIVERY_GROUP, self._consumer, {stream: ">"}, count=count, block=BLOCK_MS
                    )
                    failures = 0
                except MovedError as exc:  # the slot is served elsewhere now: follow it
                    await _close(client)
                    client, node = None, (str(exc.host), int(exc.port))
                    await asyncio.sleep(RETRY_FIRST)
                    continue
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        await self._create_group(stream)
                    else:
                        await _close(client)
                        client, node = None, None
                    failures = await self._fault(stream, failures, exc)
                    continue
                except Exception as exc:  # a reader must not end: its stream would not be read
                    await _close(client)
                    client, node = None, None
                    failures = await self._fault(stream, failures, exc)
                    continue
                finally:
                    self._blocked.pop(stream, None)
                now = time.monotonic()
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        self._buffer[lane].append(Read(stream, entry_id, fields, now))
                if self._buffer[lane]:
                    self._arrived.set()
        finally:
            await _close(client)

    def _node_of(self, stream: str) -> tuple[str, int]:
        node = self._connection.client.get_node_from_key(stream)
        return str(node.host), int(node.port)

    def _client(self, node: tuple[str, int]) -> Any:
        return aioredis.Redis.from_url(
            node_url(self._connection.url, *node),
            single_connection_client=True,
            socket_timeout=BLOCK_MS / 1000 + self._timeout,
            socket_connect_timeout=self._timeout,
        )

    async def _fault(self, stream: str, failures: int, exc: Exception) -> int:
        """A read that failed: counted, logged now and then, and waited out; from the
        second in a row the cluster client looks at the slots again."""
        failures += 1
        if failures == 1 or failures % 30 == 0:
            log.warning("delivery_stream_read_failed", error=type(exc).__name__, failures=failures)
        if failures >= 2:
            with contextlib.suppress(Exception):
                await self._connection.client.nodes_manager.initialize()
        await asyncio.sleep(min(1.0, RETRY_FIRST * 2 ** (failures - 1)))
        return failures

    async def _create_group(self, stream: str) -> None:
        """The group is gone (the store was flushed): made again, from the start."""
        with contextlib.suppress(Exception):
            await self._connection.run("queue_groups", [group_command(stream)], errors=True)

    # --- closing -----------------------------------------------------------------------
    async def close(self) -> None:
        """Stop reading: end the reads waiting, then give back what was read and not
        handed out. Once closed, the watch reads no more (a second close does nothing
        new)."""
        self._closing = True
        self._room_grew.set()
        readers = [task for task in self._readers.values() if not task.done()]
        self._readers.clear()
        await asyncio.gather(*(self._unblock(node, client_id) for node, client_id in set(self._blocked.values())))
        if readers:
            _, late = await asyncio.wait(readers, timeout=BLOCK_MS / 1000 + self._timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._give_back()

    async def _unblock(self, node: tuple[str, int], client_id: int) -> None:
        """End a reader's read waiting on ``node`` (it answers as if its time ran out)."""
        cluster = self._connection.client
        target = cluster.get_node(host=node[0], port=node[1])
        if target is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await cluster.execute_command("CLIENT", "UNBLOCK", client_id, target_nodes=target)

    async def _give_back(self) -> None:
        by_stream: dict[str, list[Any]] = {}
        fresh_since = self._fresh_since()
        for buffer in self._buffer.values():
            for read in buffer:
                job = read.fields.get(b"j") if isinstance(read.fields, dict) else None
                # An entry without a job, or left to the reclaim, stays pending.
                if job is not None and read.at >= fresh_since:
                    by_stream.setdefault(read.stream, []).extend((read.entry_id, job))
            buffer.clear()
        if not by_stream:
            return
        calls = [
            scripts.GIVE_BACK.call([stream], [keys.DELIVERY_GROUP, self._consumer, *pairs])
            for stream, pairs in by_stream.items()
        ]
        try:
            await self._connection.run("queue_give_back", calls)
        except Exception as exc:  # they stay pending: the reclaim hands them out
            log.warning("delivery_give_back_failed", error=type(exc).__name__, entries=len(calls))


async def _close(client: Any) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await client.aclose()
