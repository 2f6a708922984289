"""The delivery queue's contract, on the memory queue and on Redis Streams: jobs committed
with their decisions, taken by lane, finished in one step (reservation, timeline,
status, ack), put aside to wait or by a kill switch, and taken over when a worker dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from gateway.clock import FixedClock
from gateway.delivery.settler import Settler
from gateway.ids import new_message_id
from gateway.metrics import fresh_metrics
from gateway.store import keys
from gateway.store.base import (
    Change,
    Committed,
    Lease,
    Lifetimes,
    NewMessage,
    Queue,
    Remember,
    Settlement,
    Store,
    Then,
    UserRead,
)
from gateway.store.codec import Parked
from gateway.store.memory import MemoryQueue, MemoryStore
from gateway.store.redis import RedisQueue, RedisStore
from gateway.store.shards import shard_of
from gateway.values.claims import Claim
from gateway.values.domain import Category, Channel, Outcome, Reason
from gateway.values.jobs import LANES, Job
from gateway.values.records import Current, MessageRecord, TimelineEntry
from gateway.values.state import Commit, Release, SentEntry
from tests.cluster import Cluster

DAY = timedelta(days=1)
LIFE = Lifetimes(DAY, DAY)


@pytest.fixture
async def queue(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[Queue]:
    if isinstance(store, MemoryStore):
        yield MemoryQueue(store)
        return
    assert isinstance(store, RedisStore)
    redis_queue = RedisQueue(store, reclaim_after=30, consumer="w1")
    try:
        yield redis_queue
    finally:
        await redis_queue.close()


def job_for(store: Store, clock: FixedClock, user: str = "u-1", category: Category = Category.BASIC) -> Job:
    claim = Claim("order", "r-1", user, "order.shipped", category, {"order_id": "O1"}, None, "", "", None, None, 50)
    message_id = new_message_id(shard_of(user, store.shards))
    return Job(message_id, claim, (Channel.WECHAT_TEMPLATE, Channel.SMS), clock.now())


def record_of(job: Job, clock: FixedClock) -> MessageRecord:
    claim = job.claim
    return MessageRecord(
        job.message_id, claim.request_id, claim.user_id, claim.bu, claim.scenario, claim.category, "",
        Outcome.ACCEPTED, None, "sending", job.plan, None, clock.now(), "queued", "v1",
    )  # fmt: skip


async def accept(store: Store, clock: FixedClock, job: Job) -> None:
    """What the pipeline does: the decision (a reservation), its message and its job."""
    user = job.claim.user_id
    await store.upsert_user(user, {"phone": "+8613800138000"}, clock.now(), DAY)
    [view] = await store.read_users([UserRead(user)], DAY)
    entry = SentEntry(job.message_id, clock.now(), job.lane, job.plan[0], job.claim.bu)
    state = msgspec.structs.replace(view.state, sent=(*view.state.sent, entry))
    change = Change(user, view.state.version, state, (NewMessage(record_of(job, clock), job=job),))
    assert await store.commit([change], LIFE) == [Committed.OK]


async def take_all(queue: Queue, lanes: tuple[Category, ...] = LANES, expect: int = 1) -> list:  # type: ignore[type-arg]
    taken: list = []  # type: ignore[type-arg]
    for _ in range(20):
        taken += await queue.take(dict.fromkeys(lanes, 100), 0.05)
        if len(taken) >= expect:
            break
    return taken


async def test_a_committed_job_is_taken_and_finished_in_one_step(store: Store, queue: Queue, clock: FixedClock) -> None:
    job = job_for(store, clock)
    await accept(store, clock, job)
    assert (await queue.depth())[Category.BASIC] == 1
    [lease] = await take_all(queue)
    assert lease.job == job
    delivered = TimelineEntry(clock.now(), "delivered", Channel.SMS, "OK")
    done = Settlement(
        job,
        Then.DONE,
        lease=lease,
        settle=Commit(job.message_id, Channel.SMS),
        events=(delivered,),
        current=Current("delivered", Outcome.ACCEPTED, None, "delivered via SMS"),
    )
    await queue.finish([done], DAY)
    [view] = await store.read_users([UserRead("u-1")], DAY)
    [entry] = view.state.sent
    assert entry.committed and entry.channel is Channel.SMS
    assert view.state.version == 2  # the commit moved it on: a concurrent decision would read again
    [message] = await store.get_messages([job.message_id])
    assert message is not None and message.status == "delivered" and message.timeline[-1] == delivered
    assert (await queue.depth())[Category.BASIC] == 0
    assert await queue.take(dict.fromkeys(LANES, 10), 0.05) == []


async def test_only_the_lanes_asked_for_are_taken(store: Store, queue: Queue, clock: FixedClock) -> None:
    marketing = job_for(store, clock, "u-m", Category.MARKETING)
    basic = job_for(store, clock, "u-b", Category.BASIC)
    await accept(store, clock, marketing)
    await accept(store, clock, basic)
    taken = await take_all(queue, (Category.BASIC,))
    assert [lease.job.message_id for lease in taken] == [basic.message_id]
    later = await take_all(queue, (Category.MARKETING,))
    assert [lease.job.message_id for lease in later] == [marketing.message_id]


async def test_each_lane_gets_at_most_its_room(store: Store, queue: Queue, clock: FixedClock) -> None:
    """A lane with little room is not handed more, whatever the shards its jobs are in
    (Redis's COUNT is per stream: the room is split over a lane's streams)."""
    for n in range(40):
        await accept(store, clock, job_for(store, clock, f"u-{n}", Category.BASIC))
        await accept(store, clock, job_for(store, clock, f"u-m{n}", Category.MARKETING))
    taken: list[str] = []
    rooms = [(1, 3), (5, 0), (0, 17), (7, 40)] + [(7, 40)] * 40
    for basic, marketing in rooms:
        leases = await queue.take({Category.BASIC: basic, Category.MARKETING: marketing}, 0.05)
        lanes = [lease.job.lane for lease in leases]
        assert lanes.count(Category.BASIC) <= basic and lanes.count(Category.MARKETING) <= marketing
        taken += [lease.job.message_id for lease in leases]
        if len(taken) == 80:
            break
    assert len(taken) == len(set(taken)) == 80  # each job handed out once, none left behind


async def test_a_failed_delivery_gives_the_reservation_back_and_is_dead_lettered(
    store: Store, queue: Queue, clock: FixedClock
) -> None:
    job = job_for(store, clock)
    await accept(store, clock, job)
    [lease] = await take_all(queue)
    await queue.finish([Settlement(job, Then.DEAD, lease=lease, settle=Release(job.message_id), why="no channel")], DAY)
    [view] = await store.read_users([UserRead("u-1")], DAY)
    assert view.state.sent == ()
    [letter] = await queue.dead_letters(10)
    assert (letter.message_id, letter.reason) == (job.message_id, "no channel")


async def test_a_waiting_job_comes_back_when_its_time_comes(store: Store, queue: Queue, clock: FixedClock) -> None:
    job = job_for(store, clock)
    await accept(store, clock, job)
    [lease] = await take_all(queue)
    until = clock.now() + timedelta(seconds=30)
    waiting = msgspec.structs.replace(job, waits=1)
    await queue.finish([Settlement(waiting, Then.WAIT, lease=lease, until=until, why="wechat down")], DAY)
    assert await queue.held_counts() == (0, 1)
    assert await queue.wake(clock.now(), 100) == 0
    assert await queue.take(dict.fromkeys(LANES, 10), 0.05) == []
    assert await queue.wake(until, 100) == 1
    [again] = await take_all(queue)
    assert again.job == waiting
    [view] = await store.read_users([UserRead("u-1")], DAY)
    assert [e.message_id for e in view.state.sent] == [job.message_id]  # the reservation stays


async def test_a_parked_job_is_resumed_once(store: Store, queue: Queue, clock: FixedClock) -> None:
    job = job_for(store, clock)
    await accept(store, clock, job)
    [lease] = await take_all(queue)
    until = clock.now() + DAY
    await queue.finish([Settlement(job, Then.PARK, lease=lease, until=until, why="kill switch")], DAY)
    [parked] = await queue.parked(None, 100)
    assert parked == Parked(job, until, "kill switch")
    assert await queue.parked(clock.now(), 100) == []  # not due yet
    resume = Settlement(
        job, Then.RESUME, events=(TimelineEntry(clock.now(), "resumed"),), parked=parked,
        current=Current("queued", Outcome.ACCEPTED, None, "kill switch cleared"),
    )  # fmt: skip
    await asyncio.gather(queue.finish([resume], DAY), queue.finish([resume], DAY))  # two sweeps at once
    taken = await take_all(queue, expect=2)
    assert [lease.job.message_id for lease in taken] == [job.message_id]
    assert await queue.held_counts() == (0, 0)


async def test_a_parked_job_past_its_time_ends(store: Store, queue: Queue, clock: FixedClock) -> None:
    job = job_for(store, clock)
    await accept(store, clock, job)
    [lease] = await take_all(queue)
    until = clock.now() + timedelta(minutes=1)
    await queue.finish([Settlement(job, Then.PARK, lease=lease, until=until)], DAY)
    [parked] = await queue.parked(until, 100)
    ended = Current("expired", Outcome.SUPPRESSED, Reason.KILL_SWITCH, "kept and ended")
    await queue.finish([Settlement(job, Then.DONE, settle=Release(job.message_id), current=ended, parked=parked)], DAY)
    [message] = await store.get_messages([job.message_id])
    assert message is not None and message.reason is Reason.KILL_SWITCH
    [view] = await store.read_users([UserRead("u-1")], DAY)
    assert view.state.sent == ()


async def test_depth_and_age_by_lane(store: Store, queue: Queue, clock: FixedClock) -> None:
    for index in range(3):
        await accept(store, clock, job_for(store, clock, f"u-{index}", Category.MARKETING))
    depth = await queue.depth()
    assert depth == {Category.BASIC: 0, Category.REMINDER: 0, Category.MARKETING: 3}
    ages = await queue.oldest(clock.now() + timedelta(seconds=5))
    assert ages[Category.BASIC] == 0
    assert ages[Category.MARKETING] >= 0


@pytest.mark.redis
async def test_a_dead_workers_jobs_are_taken_over(clean_redis: str, clock: FixedClock) -> None:
    store = RedisStore(clean_redis)
    await store.prepare()
    job = job_for(store, clock)
    await accept(store, clock, job)
    first = RedisQueue(store, reclaim_after=0.3, consumer="dies")
    second = RedisQueue(store, reclaim_after=0.3, consumer="lives", max_deliveries=2)
    try:
        [taken] = await take_all(first)  # ...and the first worker dies holding it
        await asyncio.sleep(0.4)
        [again] = await take_all(second)
        assert again.job == taken.job and again.deliveries == 2
        await asyncio.sleep(0.4)
        # Handed out once too often: dead-lettered, not looped.
        second._next_reclaim = 0
        assert await second.take(dict.fromkeys(LANES, 10), 0.05) == []
        [letter] = await second.dead_letters(10)
        assert "handed out 3 times" in letter.reason
    finally:
        await first.close()
        await second.close()
        await store.close()


@pytest.fixture
async def cluster_store(clean_cluster: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(clean_cluster, cluster=True)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.cluster
async def test_on_a_cluster_a_take_never_asks_a_node_where_its_keys_are(
    redis_cluster: Cluster, cluster_store: RedisStore, clock: FixedClock
) -> None:
    """redis-py's cluster client places an XREADGROUP (a command whose keys move) by
    asking a node, COMMAND GETKEYS, twice a command, before the read: the queue's reads
    are routed by their stream's hash tag instead. Counted on every master."""
    store = cluster_store
    queue = RedisQueue(store, reclaim_after=30, consumer="w1")
    try:
        await queue.take(dict.fromkeys(LANES, 10), 0.01)  # the client learns the slots
        before = getkeys_calls(redis_cluster)
        jobs = [job_for(store, clock, f"u-{i}") for i in range(20)]
        for job in jobs:
            await accept(store, clock, job)
        taken = await take_all(queue, expect=len(jobs))
        assert sorted(lease.job.message_id for lease in taken) == sorted(job.message_id for job in jobs)
        assert getkeys_calls(redis_cluster) == before
    finally:
        await queue.close()


@pytest.mark.cluster
async def test_on_a_cluster_a_take_that_waits_gets_the_job_added_meanwhile(
    cluster_store: RedisStore, clock: FixedClock
) -> None:
    """A cluster's streams are watched by blocking reads, not polled: a take waiting on
    a quiet cluster hands out a job the moment it is added, whatever its shard."""
    store = cluster_store
    queue = RedisQueue(store, reclaim_after=30, consumer="w1")
    try:
        assert await queue.take(dict.fromkeys(LANES, 10), 0.05) == []
        for n in range(6):
            job = job_for(store, clock, f"u-quiet-{n}", LANES[n % len(LANES)])
            waiting = asyncio.create_task(queue.take(dict.fromkeys(LANES, 10), 30))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            await accept(store, clock, job)
            [lease] = await asyncio.wait_for(waiting, 30)
            assert lease.job == job
    finally:
        await queue.close()


@pytest.mark.cluster
async def test_on_a_cluster_what_was_read_and_not_handed_out_is_given_back_when_taking_stops(
    cluster_store: RedisStore, clock: FixedClock
) -> None:
    """Every stream of a lane with room is read, so a cluster's watch may bring a few
    more jobs than it hands out. When the dispatcher stops taking, those go back:
    another worker takes them at once (not after the reclaim time), nothing is handed
    out twice, and the stopped worker reads no more."""
    store = cluster_store
    first = RedisQueue(store, reclaim_after=30, consumer="w1")
    second = RedisQueue(store, reclaim_after=30, consumer="w2")
    try:
        jobs = [job_for(store, clock, f"u-back-{n}") for n in range(40)]
        for job in jobs:
            await accept(store, clock, job)
        handed = await first.take({Category.BASIC: 2}, 1.0)
        assert 1 <= len(handed) <= 2
        assert await read_ahead(first) > 0
        assert first._watch is not None
        await first.stop_taking()
        assert first._watch.buffered() == 0
        rest = await take_all(second, expect=len(jobs) - len(handed))
        taken = [lease.job.message_id for lease in handed + rest]
        assert sorted(taken) == sorted(job.message_id for job in jobs)
        owners = [(await pending_entry(store, lease))["consumer"].decode() for lease in handed + rest]
        assert owners == ["w1"] * len(handed) + ["w2"] * len(rest)  # pending to the worker it was handed to
        more = job_for(store, clock, "u-back-late")
        await accept(store, clock, more)
        [late] = await take_all(second)
        assert late.job == more and first._watch.buffered() == 0
    finally:
        await first.close()
        await second.close()


@pytest.mark.cluster
async def test_on_a_cluster_a_job_that_waited_in_the_watch_is_handed_out_with_its_idle_time_reset(
    cluster_store: RedisStore, clock: FixedClock
) -> None:
    """A job read ahead is pending (idle) while it waits for room: as it is handed out
    its idle time starts again, so another worker's reclaim gives its delivery the
    whole reclaim time. Its delivery count stays 1."""
    store = cluster_store
    queue = RedisQueue(store, reclaim_after=30, consumer="w1")
    try:
        for n in range(20):
            await accept(store, clock, job_for(store, clock, f"u-idle-{n}"))
        first = await queue.take({Category.BASIC: 1}, 1.0)
        await read_ahead(queue)
        await asyncio.sleep(1.5)  # longer than REFRESH_AFTER
        waited = await queue.take({Category.BASIC: 1}, 0.0)
        assert len(first) == len(waited) == 1
        entry = await pending_entry(store, waited[0])
        assert entry["time_since_delivered"] < 1000 and entry["times_delivered"] == 1
    finally:
        await queue.close()


async def read_ahead(queue: RedisQueue) -> int:
    """How many jobs a cluster queue's watch has read ahead, once it has some (or after
    a second)."""
    for _ in range(50):
        await asyncio.sleep(0.02)
        if queue._watch is not None and queue._watch.buffered() > 0:
            break
    return 0 if queue._watch is None else queue._watch.buffered()


async def pending_entry(store: RedisStore, lease: Lease) -> dict[str, Any]:
    """A lease's entry as XPENDING lists it (consumer, idle time, deliveries)."""
    stream, entry_id = lease.entry_id.rsplit("/", 1)
    [entry] = await store.connection.client.xpending_range(stream, keys.DELIVERY_GROUP, entry_id, entry_id, 1)
    return dict(entry)


def getkeys_calls(cluster: Cluster) -> int:
    total = 0
    for master in cluster.masters:
        with master.client() as r:
            stats = r.info("commandstats")
            total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


async def test_a_settlement_sets_its_shared_names_with_it(store: Store, queue: Queue, clock: FixedClock) -> None:
    job = job_for(store, clock)
    await accept(store, clock, job)
    [lease] = await take_all(queue)
    name = keys.wechat_message("2002283")
    done = Settlement(
        job,
        Then.DONE,
        lease=lease,
        settle=Commit(job.message_id, Channel.WECHAT_TEMPLATE),
        current=Current("delivered", Outcome.ACCEPTED, None, "delivered via WECHAT_TEMPLATE"),
        remember=(Remember(name, f"{job.message_id} u-1", DAY),),
    )
    await queue.finish([done], DAY)
    assert await store.shared_get(name) == f"{job.message_id} u-1"
    [message] = await store.get_messages([job.message_id])
    assert message is not None and message.status == "delivered"


async def accepted_leases(store: Store, queue: Queue, clock: FixedClock, count: int) -> list[Lease]:
    jobs = [job_for(store, clock, user=f"u-{n}") for n in range(count)]
    for job in jobs:
        await accept(store, clock, job)
    return await take_all(queue, expect=count)


def delivered(lease: Lease) -> Settlement:
    return Settlement(
        lease.job,
        Then.DONE,
        lease=lease,
        settle=Commit(lease.job.message_id, Channel.SMS),
        current=Current("delivered", Outcome.ACCEPTED, None, "delivered via SMS"),
    )


class Writes:
    """The queue's finish, counting the settlements of each call."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.sizes: list[int] = []

    async def __call__(self, settlements: Sequence[Settlement], retention: timedelta) -> None:
        self.sizes.append(len(settlements))
        await self.queue.finish(settlements, retention)


async def statuses(store: Store, leases: list[Lease]) -> list[str]:
    return [m.status if m else "" for m in await store.get_messages([lease.job.message_id for lease in leases])]


async def test_deliveries_ending_together_are_settled_in_one_write(
    store: Store, queue: Queue, clock: FixedClock
) -> None:
    leases = await accepted_leases(store, queue, clock, 60)
    writes = Writes(queue)
    settler = Settler(writes, lambda: DAY, fresh_metrics(), lambda: False)
    await asyncio.gather(*(settler.settle(delivered(lease)) for lease in leases))
    assert writes.sizes == [60]
    assert await statuses(store, leases) == ["delivered"] * 60
    assert sum((await queue.depth()).values()) == 0
    # One that ends later, alone: a write of its own.
    [later] = await accepted_leases(store, queue, clock, 1)
    await settler.settle(delivered(later))
    assert writes.sizes == [60, 1]


async def test_a_settlement_the_store_cannot_take_does_not_hold_back_the_others(
    store: Store, queue: Queue, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    bad, *good = await accepted_leases(store, queue, clock, 5)
    writes = Writes(queue)
    settler = Settler(writes, lambda: DAY, fresh_metrics(), lambda: False)
    # WAIT without a time: the queue refuses to write it (a bug's settlement).
    broken = Settlement(bad.job, Then.WAIT, lease=bad, until=None)
    await asyncio.wait_for(
        asyncio.gather(settler.settle(broken), *(settler.settle(delivered(lease)) for lease in good)), 10
    )
    assert writes.sizes[0] == 5 and sorted(writes.sizes[1:]) == [1] * 5  # then one by one
    assert await statuses(store, good) == ["delivered"] * 4
    assert await statuses(store, [bad]) == ["queued"]  # left as it was: taken again later


async def test_a_cancelled_delivery_still_has_its_settlement_written(
    store: Store, queue: Queue, clock: FixedClock
) -> None:
    [lease] = await accepted_leases(store, queue, clock, 1)

    async def slow_write(settlements: Sequence[Settlement], retention: timedelta) -> None:
        await asyncio.sleep(0.05)  # long enough to be cut off, were the write the caller's own
        await queue.finish(settlements, retention)

    settler = Settler(slow_write, lambda: DAY, fresh_metrics(), lambda: False)
    task = asyncio.create_task(settler.settle(delivered(lease)))
    await asyncio.sleep(0.01)  # it has handed its settlement over; the write is under way
    task.cancel()
    for _ in range(200):
        if not settler.busy:
            break
        await asyncio.sleep(0.01)
    assert task.cancelled()
    assert await statuses(store, [lease]) == ["delivered"]
