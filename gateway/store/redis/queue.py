"""The durable delivery queue on Redis Streams: one stream per shard and lane.

A decision's commit adds its job to the stream of the user's shard and the job's lane
(basic, reminder, marketing) in the same script, so an accepted job is in the queue
before anyone is told ``ACCEPTED``. Every replica and ``herald worker`` reads through
one consumer group, asking only for the lanes it has room for, so a flood of marketing
never holds up an order notice. An entry stays pending until its delivery is finished
(``finish``: one script that settles the reservation, writes the timeline and acks).
A worker that dies leaves its entries pending; after ``reclaim_after`` seconds another
worker takes them over (XAUTOCLAIM). An entry handed out ``max_deliveries`` times goes
to the dead letters with its reason instead of looping forever.

On a single node a take first reads without blocking, each lane at most its room:
COUNT applies to each stream of an XREADGROUP, so a lane's room r over its S streams is
read as r // S from some streams and one more from r % S others (which ones turns with
every take). Only when that finds nothing does it block, in one XREADGROUP over every
stream. A cluster cannot read streams of several slots in one command: there each
stream is watched by a blocking read of its own (``watch.StreamWatch``), and a take
hands out what the watch has brought.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway.errors import StoreUnavailable
from gateway.logs import get_logger
from gateway.store import codec, keys
from gateway.store.base import Lease, Settlement, Then
from gateway.store.codec import DeadLetter, Parked
from gateway.store.redis import scripts
from gateway.store.redis.connection import Command, client
from gateway.store.redis.store import RedisStore, epoch_ms, ms, shared_set
from gateway.store.redis.watch import Read, StreamWatch, group_command
from gateway.values.campaigns import CAMPAIGN_RETENTION
from gateway.values.domain import Category
from gateway.values.jobs import LANES, Job
from gateway.values.state import Release

log = get_logger(__name__)
LANE_LETTER = {Category.BASIC: "b", Category.REMINDER: "r", Category.MARKETING: "m"}
IDLE_POLL = 0.05
# A cluster's job that waited longer than this in the watch's buffer has its idle time
# set back to 0 as it is handed out (``_refresh``).
REFRESH_AFTER = 1.0


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def split(entry: str) -> tuple[str, str]:
    """A lease's entry id is '<stream>/<id>'."""
    stream, _, entry_id = entry.rpartition("/")
    return stream, entry_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQueue:
    kind = "redis"

    def __init__(
        self,
        store: RedisStore,
        *,
        reclaim_after: float = 60.0,
        max_deliveries: int = 5,
        consumer: str | None = None,
    ) -> None:
        self._store = store
        self._run = store.connection.run
        self._cluster = store.connection.cluster
        # Its own connections: blocking reads must not wait behind the store's calls.
        self._reader: Any = (
            None if self._cluster else client(store.connection.url, False, timeout=10.0, max_connections=4)
        )
        self._reclaim_ms = int(reclaim_after * 1000)
        self._max_deliveries = max_deliveries
        self.consumer = consumer or consumer_name()
        self._groups_ready = False
        self._next_claim: dict[str, str] = {}
        self._next_reclaim = 0.0
        self._turn = 0
        self._watch = (
            StreamWatch(
                store.connection,
                {lane: self.streams([lane]) for lane in LANES},
                self.consumer,
                stale_after=reclaim_after / 2,
            )
            if self._cluster
            else None
        )

    def streams(self, lanes: Sequence[Category]) -> list[str]:
        return [keys.stream(tag, lane) for tag in self._store.tags for lane in lanes]

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return self._store.connection.unavailable(exc, "delivery stream on")

    async def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        commands = [group_command(stream) for stream in self.streams(LANES)]
        for reply in await self._run("queue_groups", commands, errors=True):
            if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                raise StoreUnavailable(f"cannot create the delivery consumer group: {reply}")
        self._groups_ready = True

    # --- taking --------------------------------------------------------------------
    async def take(self, room: Mapping[Category, int], block: float) -> list[Lease]:
        room = {lane: count for lane, count in room.items() if count > 0}
        if not room:
            await asyncio.sleep(min(block, IDLE_POLL))
            return []
        await self._ensure_groups()
        if time.monotonic() >= self._next_reclaim:
            # Idle entries are looked for now and then, not on every read.
            self._next_reclaim = time.monotonic() + max(0.5, self._reclaim_ms / 4000)
            leases = await self._reclaim(list(room), sum(room.values()))
            if leases:
                return leases
        if self._watch is not None:
            return await self._take_watched(self._watch, room, block)
        answer = await self._read_now(room)
        if not answer and block > 0:
            answer = await self._read_blocking(self.streams(list(room)), min(room.values()), block)
        leases = []
        for stream, entries in answer:
            for entry_id, fields in entries:
                lease = await self._lease(_text(stream), entry_id, fields, 1)
                if lease is not None:
                    leases.append(lease)
        return leases

    async def _take_watched(self, watch: StreamWatch, room: Mapping[Category, int], block: float) -> list[Lease]:
        watch.want(room)
        reads = watch.pop(room)
        if not reads and block > 0:
            await watch.arrival(block)
            reads = watch.pop(room)
        waited_since = time.monotonic() - REFRESH_AFTER
        waited = [read for read in reads if read.at < waited_since]
        if waited:
            await self._refresh(waited)
        leases = []
        for read in reads:
            lease = await self._lease(read.stream, read.entry_id, read.fields, 1)
            if lease is not None:
                leases.append(lease)
        return leases

    async def _refresh(self, reads: Sequence[Read]) -> None:
        """Entries that waited in the watch's buffer have been idle (pending, not worked
        on) meanwhile: their idle time starts again as they are handed out (XCLAIM
        JUSTID, which does not count a delivery), so that another worker's reclaim
        leaves their delivery the whole ``reclaim_after``."""
        by_stream: dict[str, list[Any]] = {}
        for read in reads:
            by_stream.setdefault(read.stream, []).append(read.entry_id)
        commands: list[Command] = [
            ("XCLAIM", stream, keys.DELIVERY_GROUP, self.consumer, 0, *ids, "JUSTID", {"parse_justid": True})
            for stream, ids in by_stream.items()
        ]
        try:
            await self._run("queue_claim", commands)
        except StoreUnavailable as exc:  # handed out all the same: a reclaim comes later, not sooner
            log.warning("delivery_claim_refresh_failed", error=exc.message, entries=len(reads))

    async def _read_blocking(self, streams: list[str], count: int, block: float) -> list[Any]:
        """One XREADGROUP over every stream; COUNT is per stream, so each gets its share
        of ``count`` (rounded up: a read may hand out a few more)."""
        self._store.connection.count_round_trip("queue_read")
        try:
            answer: Any = await self._reader.xreadgroup(
                keys.DELIVERY_GROUP,
                self.consumer,
                dict.fromkeys(streams, ">"),
                count=-(-count // len(streams)),
                block=max(1, int(block * 1000)),
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return list(answer or [])

    async def _read_now(self, room: Mapping[Category, int]) -> list[Any]:
        """Without blocking, at most each lane's room, in one round trip (one or two
        commands a lane; a single node's)."""
        commands: list[Command] = []
        self._turn += 1
        for lane, count in room.items():
            streams = self.streams([lane])
            turn = self._turn % len(streams)
            streams = streams[turn:] + streams[:turn]
            each, extra = divmod(count, len(streams))
            for group, per in ((streams[:extra], each + 1), (streams[extra:], each)):
                if not group or per == 0:
                    continue
                head = ("XREADGROUP", "GROUP", keys.DELIVERY_GROUP, self.consumer, "COUNT", per, "STREAMS")
                commands.append((*head, *group, *[">"] * len(group)))
        if not commands:
            return []
        replies = await self._run("queue_read", commands)
        return [item for reply in replies if reply for item in reply]

    async def _reclaim(self, lanes: Sequence[Category], count: int) -> list[Lease]:
        """Entries another worker took and left idle too long (it died): ours now."""
        streams = self.streams(lanes)
        commands: list[Command] = [
            (
                "XAUTOCLAIM",
                stream,
                keys.DELIVERY_GROUP,
                self.consumer,
                self._reclaim_ms,
                self._next_claim.get(stream, "0-0"),
                "COUNT",
                count,
            )
            for stream in streams
        ]
        replies = await self._run("queue_reclaim", commands)
        claimed: list[tuple[str, Any, Any]] = []
        for stream, reply in zip(streams, replies, strict=True):
            self._next_claim[stream] = _text(reply[0])
            claimed += [(stream, entry_id, fields) for entry_id, fields in reply[1] if fields]
        if not claimed:
            return []
        pending = await self._run(
            "queue_reclaim",
            [
                ("XPENDING", s, keys.DELIVERY_GROUP, _text(i), _text(i), 1, {"parse_detail": True})
                for s, i, _ in claimed
            ],
        )
        leases = []
        for (stream, entry_id, fields), info in zip(claimed, pending, strict=True):
            times = int(info[0]["times_delivered"]) if info else 2
            lease = await self._lease(stream, entry_id, fields, times)
            if lease is not None:
                log.warning("delivery_reclaimed", message_id=lease.job.message_id, deliveries=times)
                leases.append(lease)
        return leases

    async def _lease(self, stream: str, entry_id: Any, fields: Any, times: int) -> Lease | None:
        entry = f"{stream}/{_text(entry_id)}"
        raw = fields.get(b"j") if isinstance(fields, dict) else None
        try:
            if raw is None:
                raise codec.Undecodable("no job field")
            job = codec.JOB.decode(raw)
        except codec.Undecodable as exc:
            await self._dead_raw(stream, entry, f"undecodable entry: {exc}")
            return None
        lease = Lease(entry, job, times)
        if times > self._max_deliveries:
            reason = f"handed out {times} times without finishing (workers dying on it?)"
            await self.finish([Settlement(job, Then.DEAD, lease=lease, why=reason)], timedelta(days=7))
            return None
        return lease

    async def _dead_raw(self, stream: str, entry: str, reason: str) -> None:
        tag = stream.split("{", 1)[1].split("}", 1)[0]
        letter = codec.DEAD.encode(DeadLetter("?", reason, datetime.now(UTC)))
        _, entry_id = split(entry)
        await self._run(
            "queue_dead",
            [
                ("XADD", keys.dead(tag), "MAXLEN", "~", keys.DEAD_LETTERS_KEEP, "*", "d", letter),
                ("XACK", stream, keys.DELIVERY_GROUP, entry_id),
                ("XDEL", stream, entry_id),
            ],
        )

    # --- finishing -------------------------------------------------------------------
    def _finish_command(self, done: Settlement, retention: timedelta) -> Command:
        job = done.job
        tag = self._store.tag_of(job.claim.user_id)
        stream, entry_id = split(done.lease.entry_id) if done.lease is not None else (keys.dead(tag), "")
        payload: bytes = b""
        score: int | str = ""
        if done.then is Then.DEAD:
            payload = codec.DEAD.encode(DeadLetter(job.message_id, done.why, datetime.now(UTC)))
        elif done.then is Then.WAIT:
            assert done.until is not None
            payload = LANE_LETTER[job.lane].encode() + codec.JOB.encode(job)
            score = epoch_ms(done.until)
        elif done.then is Then.PARK:
            assert done.until is not None
            payload = codec.PARKED.encode(Parked(job, done.until, done.why))
            score = epoch_ms(done.until)
        elif done.then is Then.RESUME:
            payload = codec.JOB.encode(job)
        step = done.funnel_step()
        funnel_key = keys.funnel(tag, job.claim.campaign_id) if step else keys.user(tag, job.claim.user_id)
        settle, channel = "", ""
        if isinstance(done.settle, Release):
            settle = "release"
        elif done.settle is not None:
            settle, channel = "commit", str(done.settle.channel)
        return scripts.FINISH.call(
            [
                keys.user(tag, job.claim.user_id),
                keys.message_events(tag, job.message_id),
                keys.message_current(tag, job.message_id),
                stream,
                keys.dead(tag),
                keys.later(tag),
                keys.parked(tag),
                keys.stream(tag, job.lane),
                funnel_key,
            ],
            [
                settle,
                job.message_id,
                channel,
                codec.encode_events(done.events),
                b"" if done.current is None else codec.CURRENT.encode(done.current),
                ms(retention),
                entry_id,
                str(done.then),
                payload,
                score,
                b"" if done.parked is None else codec.PARKED.encode(done.parked),
                step,
                ms(CAMPAIGN_RETENTION),
            ],
        )

    async def finish(self, settlements: Sequence[Settlement], retention: timedelta) -> None:
        commands: list[Command] = []
        for done in settlements:
            commands.append(self._finish_command(done, retention))
            commands += [shared_set(r.name, r.value, r.ttl) for r in done.remember]
        await self._run("finish", commands)

    async def put(self, jobs: Sequence[Job]) -> None:
        await self._run(
            "queue_put",
            [
                ("XADD", keys.stream(self._store.tag_of(j.claim.user_id), j.lane), "*", "j", codec.JOB.encode(j))
                for j in jobs
            ],
        )

    async def wake(self, now: datetime, limit: int) -> int:
        calls = [
            scripts.WAKE.call([keys.later(tag), *(keys.stream(tag, lane) for lane in LANES)], [epoch_ms(now), limit])
            for tag in self._store.tags
        ]
        return sum(int(n) for n in await self._run("queue_wake", calls))

    async def parked(self, due_before: datetime | None, limit: int, offset: int = 0) -> list[Parked]:
        top = "+inf" if due_before is None else epoch_ms(due_before)
        commands: list[Command] = [
            ("ZRANGEBYSCORE", keys.parked(tag), "-inf", top, "LIMIT", offset, limit) for tag in self._store.tags
        ]
        out = []
        for members in await self._run("queue_parked", commands):
            for member in members:
                try:
                    out.append(codec.PARKED.decode(member))
                except codec.Undecodable as exc:
                    log.error("parked_job_undecodable", error=str(exc))
        return sorted(out, key=lambda p: p.until)

    # --- gauges ----------------------------------------------------------------------
    async def depth(self) -> dict[Category, int]:
        streams = self.streams(LANES)
        lengths = await self._run("queue_depth", [("XLEN", s) for s in streams])
        counts = dict.fromkeys(LANES, 0)
        for index, length in enumerate(lengths):
            counts[LANES[index % len(LANES)]] += int(length)
        return counts

    async def oldest(self, now: datetime) -> dict[Category, float]:
        streams = self.streams(LANES)
        firsts = await self._run("queue_depth", [("XRANGE", s, "-", "+", "COUNT", 1) for s in streams])
        ages = dict.fromkeys(LANES, 0.0)
        for index, first in enumerate(firsts):
            if first:
                lane = LANES[index % len(LANES)]
                stamp = int(_text(first[0][0]).split("-")[0]) / 1000
                ages[lane] = max(ages[lane], now.timestamp() - stamp)
        return ages

    async def held_counts(self) -> tuple[int, int]:
        commands: list[Command] = []
        for tag in self._store.tags:
            commands += [("ZCARD", keys.parked(tag)), ("ZCARD", keys.later(tag))]
        replies = await self._run("queue_depth", commands)
        return sum(int(n) for n in replies[::2]), sum(int(n) for n in replies[1::2])

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        replies = await self._run(
            "dead_letters", [("XREVRANGE", keys.dead(t), "+", "-", "COUNT", limit) for t in self._store.tags]
        )
        letters = [codec.DEAD.decode(fields[b"d"]) for entries in replies for _, fields in entries]
        return sorted(letters, key=lambda d: d.at, reverse=True)[:limit]

    async def stop_taking(self) -> None:
        if self._watch is not None:
            await self._watch.close()

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()
        if self._reader is not None:
            await self._reader.aclose()
