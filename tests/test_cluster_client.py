"""What Herald can rely on from redis-py's asyncio ``RedisCluster`` (redis==8.1) against
a real Redis 7 cluster: 3 masters, 1 replica each, cluster-node-timeout 2000 ms
(tests/cluster.py). Each test pins one behaviour down; the failover tests also print
what they measured (run with ``-s`` to see the figures). Timings are printed, never
asserted: only behaviour is.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    CrossSlotTransactionError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)

from tests.cluster import Cluster, Node

pytestmark = pytest.mark.cluster


@pytest.fixture
async def rc(clean_cluster: str) -> AsyncIterator[RedisCluster]:
    """A cluster client with redis-py's defaults, from one seed URL."""
    client = RedisCluster.from_url(clean_cluster)
    try:
        yield client
    finally:
        await close_fully(client)


async def close_fully(client: RedisCluster) -> None:
    """aclose() plus what it skips when the client's last command failed with a
    connection error or timeout (see test_aclose_after_a_failed_command_...)."""
    await client.aclose()
    await client.nodes_manager.aclose()
    await client.nodes_manager.aclose("startup_nodes")


def open_connections(client: RedisCluster) -> int:
    nodes = [*client.nodes_manager.nodes_cache.values(), *client.nodes_manager.startup_nodes.values()]
    return sum(conn.is_connected for node in nodes for conn in node._connections)


def channel_on(node: Node, prefix: str = "ch") -> str:
    """A channel name whose hash slot ``node`` serves."""
    return next(f"{prefix}{{{i}}}" for i in range(100_000) if node.owns(key_slot(f"{prefix}{{{i}}}".encode())))


def report(title: str, **figures: object) -> None:
    print(f"\n[cluster] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# -- discovery and pipelines -----------------------------------------------------------


async def test_one_seed_url_discovers_every_node(rc: RedisCluster, redis_cluster: Cluster) -> None:
    await rc.initialize()
    assert {n.port for n in rc.get_primaries()} == {n.port for n in redis_cluster.masters}
    # Replicas are known too (Redis 7 lists a replica in CLUSTER SLOTS once a write has
    # been replicated to it; the fixture's FLUSHALL does that).
    assert {n.port for n in rc.get_replicas()} == {n.port for n in redis_cluster.replicas}
    # Keyless commands (INFO, PING, WAIT, ...) go to the "default node": the first
    # master CLUSTER SLOTS lists, which is the one serving slot 0.
    assert rc.get_default_node().port == redis_cluster.master_for_slot(0).port


async def test_a_pipeline_over_many_slots_runs_in_one_execute_in_order(
    rc: RedisCluster, redis_cluster: Cluster
) -> None:
    keys = [f"item:{{{i}}}" for i in range(100)]
    assert len({redis_cluster.master_for_key(k).port for k in keys}) == 3  # every master is involved
    pipe = rc.pipeline(transaction=False)
    for i, key in enumerate(keys):
        pipe.set(key, i)
    for key in keys:
        pipe.get(key)
    pipe.incr(keys[0])  # "0" -> 1
    pipe.hset(keys[1], "f", "v")  # WRONGTYPE: the key holds a string
    pipe.get(keys[2])
    results = await pipe.execute(raise_on_error=False)

    assert results[:100] == [True] * 100
    assert results[100:200] == [str(i).encode() for i in range(100)]  # in the order queued
    assert results[200] == 1
    assert isinstance(results[201], ResponseError) and "WRONGTYPE" in str(results[201])
    assert results[202] == b"2"  # an error in the middle does not stop the rest

    # With the default raise_on_error=True the first error is raised, naming its
    # position; the other commands have run all the same.
    pipe = rc.pipeline(transaction=False)
    pipe.hset(keys[1], "f", "v")
    pipe.set(keys[3], "after")
    with pytest.raises(ResponseError, match=r"Command # 1 .*WRONGTYPE"):
        await pipe.execute()
    assert await rc.get(keys[3]) == b"after"

    # Multi-key DEL/EXISTS/UNLINK/TOUCH over several slots: the client splits them per
    # slot. Called directly it sums the answers; queued in a pipeline each slot's part
    # gets its own result, which shifts the positions of everything queued after it.
    assert await rc.exists(*keys[:10]) == 10
    pipe = rc.pipeline(transaction=False)
    pipe.delete(*keys[:3])
    pipe.get(keys[4])
    assert await pipe.execute() == [1, 1, 1, b"4"]
    assert await rc.delete(*keys[3:10]) == 7
    # MGET/MSET over several slots are refused; the *_nonatomic variants split them.
    with pytest.raises(RedisClusterException, match="same key slot"):
        await rc.mget(keys[10], keys[11])
    assert await rc.mget_nonatomic(keys[10], keys[11]) == [b"10", b"11"]


async def test_a_transaction_needs_one_slot_and_costs_a_thread_per_command(
    rc: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipeline(transaction=True) on the asyncio RedisCluster runs every queued command
    through asyncio.run() in a new thread (TransactionStrategy.execute_command). So:
    initialize the client first (otherwise it initializes on that thread's throwaway
    event loop, and its connections later fail or cannot be closed: "Event loop is
    closed"), and expect it to be several times slower than a plain pipeline or a Lua
    script; prefer a script for atomic multi-key writes."""
    await rc.initialize()
    threads = 0
    start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        nonlocal threads
        threads += 1
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    pipe = rc.pipeline(transaction=True)
    pipe.set("txn:{u1}:a", 1)
    pipe.incr("txn:{u1}:b")
    pipe.xadd("txn:{u1}:s", {"f": "v"})
    results = await pipe.execute()
    assert results[:2] == [True, 1]
    assert threads == 3  # one per queued command
    monkeypatch.undo()

    pipe = rc.pipeline(transaction=True)
    pipe.set("txn:{u1}:a", 1)
    pipe.incr("txn:{u2}:b")
    with pytest.raises(CrossSlotTransactionError):  # raised by the client, nothing sent
        await pipe.execute()
    assert await rc.get("txn:{u2}:b") is None

    timings = {}
    for transaction in (True, False):
        started = time.monotonic()
        for _ in range(50):
            pipe = rc.pipeline(transaction=transaction)
            pipe.set("txn:{u1}:a", 1)
            pipe.incr("txn:{u1}:b")
            pipe.xadd("txn:{u1}:s", {"f": "v"})
            await pipe.execute()
        timings["transaction" if transaction else "pipeline"] = f"{(time.monotonic() - started) / 50 * 1000:.2f}ms"
    script = rc.register_script(
        "redis.call('SET', KEYS[1], 1); redis.call('INCR', KEYS[2]); return redis.call('XADD', KEYS[3], '*', 'f', 'v')"
    )
    started = time.monotonic()
    for _ in range(50):
        await script(keys=["txn:{u1}:a", "txn:{u1}:b", "txn:{u1}:s"])
    timings["script"] = f"{(time.monotonic() - started) / 50 * 1000:.2f}ms"
    report("3 writes on one slot, per call", **timings)


# -- Lua scripts -------------------------------------------------------------------------

SET_AND_INCR = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"


async def test_a_script_works_when_its_keys_share_a_hash_tag_and_not_across_slots(
    rc: RedisCluster, redis_cluster: Cluster
) -> None:
    script = rc.register_script(SET_AND_INCR)
    assert await script(keys=["a:{u1}", "n:{u1}"], args=["x"]) == 1  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA
    assert await script(keys=["a:{u1}", "n:{u1}"], args=["x"]) == 2
    assert await rc.get("a:{u1}") == b"x"

    # Keys in two slots: refused by the client before anything is sent (even when both
    # slots happen to be on one master).
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        await script(keys=["a:{u1}", "n:{u2}"], args=["x"])
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        await rc.eval("return 1", 2, "a:{u1}", "n:{u2}")

    # A key the script did not declare, served by another master: the server refuses.
    # (Redis 7.0 lets an undeclared key on the same node through; do not rely on it.)
    here = redis_cluster.master_for_key("a:{u1}")
    elsewhere = next(f"x:{{{i}}}" for i in range(10_000) if not here.owns(key_slot(f"x:{{{i}}}".encode())))
    with pytest.raises(ResponseError, match="non local key"):
        await rc.eval(f"return redis.call('GET', '{elsewhere}')", 1, "a:{u1}")


async def test_scripts_in_a_cluster_pipeline_only_as_raw_evalsha(rc: RedisCluster, redis_cluster: Cluster) -> None:
    script = rc.register_script(SET_AND_INCR)
    pipe = rc.pipeline(transaction=False)
    with pytest.raises(RedisClusterException, match="evalsha is blocked"):
        pipe.evalsha(script.sha, 2, "a:{u1}", "n:{u1}", "x")  # refused when queued

    # SCRIPT LOAD goes to every master (not to the replicas).
    assert await rc.script_load(SET_AND_INCR) == script.sha
    for node in redis_cluster.nodes:
        with node.client() as r:
            assert r.script_exists(script.sha) == [node.role == "master"], node

    # A raw EVALSHA is routed by its first key like any keyed command, several slots
    # in one execute.
    pipe = rc.pipeline(transaction=False)
    for user in ("u1", "u2", "u3"):
        pipe.execute_command("EVALSHA", script.sha, 2, f"a:{{{user}}}", f"n:{{{user}}}", "x")
    assert await pipe.execute() == [1, 1, 1]

    # A script the node does not have (SCRIPT FLUSH, or a replica promoted since the
    # SCRIPT LOAD): NoScriptError in its place; the caller loads it and sends again.
    await rc.script_flush()
    pipe = rc.pipeline(transaction=False)
    pipe.execute_command("EVALSHA", script.sha, 2, "a:{u1}", "n:{u1}", "x")
    pipe.get("a:{u1}")
    results = await pipe.execute(raise_on_error=False)
    assert isinstance(results[0], NoScriptError)
    assert results[1] == b"x"


# -- streams -----------------------------------------------------------------------------


async def test_streams_on_a_hash_tagged_key(rc: RedisCluster) -> None:
    stream = "deliveries:{sms}"
    await rc.xgroup_create(stream, "g", id="0", mkstream=True)
    with pytest.raises(ResponseError, match="BUSYGROUP"):
        await rc.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = [await rc.xadd(stream, {"job": str(i)}) for i in range(5)]

    first = await rc.xreadgroup("g", "c1", {stream: ">"}, count=2)
    assert first == [[stream.encode(), [(ids[0], {b"job": b"0"}), (ids[1], {b"job": b"1"})]]]
    # BLOCK with entries waiting: returns them (at once).
    rest = await rc.xreadgroup("g", "c1", {stream: ">"}, count=10, block=2000)
    assert [entry_id for entry_id, _ in rest[0][1]] == ids[2:]
    # BLOCK on an empty stream: [] after the timeout.
    started = time.monotonic()
    assert await rc.xreadgroup("g", "c1", {stream: ">"}, count=10, block=300) == []
    empty_wait = time.monotonic() - started
    # A blocked read takes a connection of its own: an XADD through the same client
    # meanwhile goes through and wakes it.
    reader = asyncio.create_task(rc.xreadgroup("g", "c2", {stream: ">"}, count=10, block=5000))
    await asyncio.sleep(0.2)
    late = await rc.xadd(stream, {"job": "late"})
    woken = await asyncio.wait_for(reader, 3)
    assert woken == [[stream.encode(), [(late, {b"job": b"late"})]]]

    assert await rc.xack(stream, "g", ids[0], ids[1]) == 2
    pending = await rc.xpending_range(stream, "g", min="-", max="+", count=10)
    assert [p["message_id"] for p in pending] == [*ids[2:], late]
    # XAUTOCLAIM answers [next start id, entries, ids deleted meanwhile] (Redis 7).
    next_id, claimed, deleted = await rc.xautoclaim(stream, "g", "c3", min_idle_time=0, start_id="0-0", count=10)
    assert next_id == b"0-0"
    assert [entry_id for entry_id, _ in claimed] == [*ids[2:], late]
    assert deleted == []

    # One XREADGROUP over streams in different slots is refused by the client; streams
    # sharing a hash tag (hence one slot, one master) can be read together.
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        await rc.xreadgroup("g", "c1", {"deliveries:{sms}": ">", "deliveries:{email}": ">"}, count=1)
    for name in ("q:{all}:sms", "q:{all}:email"):
        await rc.xgroup_create(name, "g", id="0", mkstream=True)
    await rc.xadd("q:{all}:email", {"job": "e"})
    both = await rc.xreadgroup("g", "c1", {"q:{all}:sms": ">", "q:{all}:email": ">"}, count=1)
    assert [name for name, _ in both] == [b"q:{all}:email"]

    # BLOCK longer than socket_timeout: the read times out client-side, and the cluster
    # client counts that as retryable: it re-sends the XREADGROUP (retries + 1 times in
    # all) and then raises TimeoutError. Keep block well under socket_timeout.
    short = RedisCluster.from_url(
        f"redis://127.0.0.1:{rc.get_default_node().port}", socket_timeout=0.2, retry=Retry(NoBackoff(), 2)
    )
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await short.xreadgroup("g", "c4", {stream: ">"}, count=1, block=1000)
        timed_out_after = time.monotonic() - started
    finally:
        await close_fully(short)
    report(
        "streams",
        empty_block_300ms_took=f"{empty_wait:.3f}s",
        block_1s_socket_timeout_02_raised_after=f"{timed_out_after:.2f}s",
    )


async def test_aclose_after_a_failed_command_leaves_connections_open(redis_cluster: Cluster) -> None:
    """A ConnectionError/TimeoutError sets the client's "initialize again" flag, and
    aclose() does nothing while that flag is set: until a later command succeeds, the
    client's sockets stay open (ResourceWarning when collected, an error under this
    suite's filterwarnings). Closing the nodes manager as well closes them."""
    client = RedisCluster.from_url(redis_cluster.seed_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    await client.xgroup_create("idle:{1}", "g", id="0", mkstream=True)
    with pytest.raises(TimeoutError):
        await client.xreadgroup("g", "c", {"idle:{1}": ">"}, count=1, block=1000)
    await client.aclose()
    assert open_connections(client) > 0
    await client.nodes_manager.aclose()
    await client.nodes_manager.aclose("startup_nodes")
    assert open_connections(client) == 0


# -- pub/sub -----------------------------------------------------------------------------


async def next_message(pubsub: object, kind: str, within: float = 3.0) -> dict[str, object]:
    """The next message of type ``kind`` ('message', 'smessage'), skipping confirmations."""
    deadline = time.monotonic() + within
    sharded = kind == "smessage"
    while time.monotonic() < deadline:
        if sharded:
            message = await pubsub.get_sharded_message(timeout=0.2)  # type: ignore[attr-defined]
        else:
            message = await pubsub.get_message(timeout=0.2)  # type: ignore[attr-defined]
        if message is not None and message["type"] == kind:
            return message  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind} within {within}s")


async def test_classic_pubsub_is_broadcast_to_every_node(rc: RedisCluster, redis_cluster: Cluster) -> None:
    masters, replicas = redis_cluster.masters, redis_cluster.replicas
    await rc.initialize()
    # RedisCluster.pubsub() exists in 8.1 asyncio: SUBSCRIBE goes to the master serving
    # the channel's hash slot, chosen at the first subscribe and kept.
    cluster_sub = rc.pubsub()
    await cluster_sub.subscribe("events")
    assert cluster_sub.get_pubsub_node().port == redis_cluster.master_for_key("events").port

    # Plain connections to single nodes, a master and a replica, subscribed to the same
    # channel.
    on_master = Redis(host="127.0.0.1", port=masters[0].port)
    on_replica = Redis(host="127.0.0.1", port=replicas[-1].port)
    publisher = Redis(host="127.0.0.1", port=masters[-1].port)
    subs = [cluster_sub, on_master.pubsub(), on_replica.pubsub()]
    try:
        for sub in subs[1:]:
            await sub.subscribe("events")
        for sub in subs:
            assert (await sub.get_message(timeout=1))["type"] == "subscribe"  # type: ignore[index]

        # PUBLISH on any node, even a replica, reaches the subscribers of every node.
        # Its answer counts only the subscribers of the node it was sent to.
        counts = [await publisher.publish("events", "from-a-master")]
        for sub in subs:
            assert (await next_message(sub, "message"))["data"] == b"from-a-master"
        async with Redis(host="127.0.0.1", port=replicas[0].port) as on_a_replica:
            counts.append(await on_a_replica.publish("events", "from-a-replica"))
        for sub in subs:
            assert (await next_message(sub, "message"))["data"] == b"from-a-replica"
        counts.append(await rc.publish("events", "through-the-cluster-client"))  # any master
        for sub in subs:
            assert (await next_message(sub, "message"))["data"] == b"through-the-cluster-client"
        report("classic pub/sub", publish_answers=counts, subscribers=len(subs))
    finally:
        for sub in subs:
            await sub.aclose()
        for client in (on_master, on_replica, publisher):
            await client.aclose()


async def test_sharded_pubsub_stays_in_the_channels_shard(rc: RedisCluster, redis_cluster: Cluster) -> None:
    channel = "shard:{u1}"
    sub = rc.pubsub()
    try:
        # SSUBSCRIBE needs the slot map: on a client not yet initialized it fails.
        with pytest.raises(SlotNotCoveredError):
            await sub.ssubscribe(channel)
        await rc.initialize()
        await sub.ssubscribe(channel)
        assert (await sub.get_sharded_message(timeout=1))["type"] == "ssubscribe"  # type: ignore[index]
        assert await rc.spublish(channel, "hi") == 1  # routed to the channel's master
        assert (await next_message(sub, "smessage"))["data"] == b"hi"
        owner = redis_cluster.master_for_key(channel)
        other = next(m for m in redis_cluster.masters if m is not owner)
        async with Redis(host="127.0.0.1", port=other.port) as wrong:
            with pytest.raises(MovedError):
                await wrong.execute_command("SPUBLISH", channel, "x")
    finally:
        await sub.aclose()


# -- retry options -------------------------------------------------------------------------


class CountingBackoff(AbstractBackoff):
    def __init__(self) -> None:
        self.computed = 0

    def compute(self, failures: int) -> float:
        self.computed += 1
        return 0.0


async def test_retry_options(redis_cluster: Cluster) -> None:
    port = redis_cluster.masters[0].port
    default = RedisCluster(host="127.0.0.1", port=port)
    assert default.retry.get_retries() == 10  # redis._defaults.DEFAULT_RETRY_COUNT
    with pytest.warns(DeprecationWarning, match="cluster_error_retry_attempts"):
        old_style = RedisCluster(host="127.0.0.1", port=port, cluster_error_retry_attempts=3)
    assert old_style.retry.get_retries() == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        both = RedisCluster(host="127.0.0.1", port=port, cluster_error_retry_attempts=3, retry=Retry(NoBackoff(), 1))
    assert both.retry.get_retries() == 1  # `retry` wins
    for client in (default, old_style, both):
        await client.aclose()


# -- failover ----------------------------------------------------------------------------


@dataclass
class Call:
    start: float
    end: float
    error: BaseException | None


@dataclass
class Writer:
    """Calls ``op`` in a loop (10 ms apart) and records every call."""

    name: str
    op: Callable[[int], Awaitable[object]]
    calls: list[Call] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            start = time.monotonic()
            error: BaseException | None = None
            try:
                await self.op(i)
            except Exception as exc:  # not only RedisError: see the SIGKILL test
                error = exc
            self.calls.append(Call(start, time.monotonic(), error))
            await asyncio.sleep(0.01)

    def steady(self, since: float, ok_calls: int = 10) -> bool:
        """At least ``ok_calls`` successes in a row, all started after ``since``."""
        tail = [c for c in self.calls if c.start >= since][-ok_calls:]
        return len(tail) == ok_calls and all(c.error is None for c in tail)

    def errors(self, since: float) -> list[Call]:
        return [c for c in self.calls if c.error is not None and c.end >= since]

    def summary(self, t0: float) -> dict[str, object]:
        errors = self.errors(t0)
        after = [c for c in self.calls if c.end >= t0]
        out: dict[str, object] = {
            "calls": len(after),
            "errors": dict(Counter(type(c.error).__name__ for c in errors)),
            "longest_call": f"{max((c.end - c.start for c in after), default=0):.2f}s",
        }
        if errors:
            last = errors[-1].end
            back = next((c for c in after if c.error is None and c.start >= last), None)
            failed_took = sorted(c.end - c.start for c in errors)
            out.update(
                first_error_at=f"{errors[0].end - t0:+.2f}s",
                last_error_at=f"{last - t0:+.2f}s",
                ok_again_at=f"{back.end - t0:+.2f}s" if back else "never",
                failed_call_took=f"{failed_took[0]:.3f}..{failed_took[-1]:.3f}s",
                example=f"{type(errors[0].error).__name__}: {str(errors[0].error)[:90]}",
            )
        else:
            slow = max(after, key=lambda c: c.end - c.start, default=None)
            if slow is not None:
                out["stalled_from"] = f"{slow.start - t0:+.2f}s"
        return out


RETRYABLE = (ConnectionError, TimeoutError, ClusterDownError)


def check_errors(writers: list[Writer], t0: float) -> dict[str, int]:
    """Every RedisError seen is one of the retryable kinds; returns the count of the
    other exceptions by type (redis-py's race, see the SIGKILL test)."""
    others: Counter[str] = Counter()
    for writer in writers:
        for call in writer.errors(t0):
            if isinstance(call.error, RedisError):
                assert isinstance(call.error, RETRYABLE), (writer.name, repr(call.error))
            else:
                others[type(call.error).__name__] += 1
    return dict(others)


def crowd_summary(writers: list[Writer], t0: float) -> dict[str, object]:
    errors = [c for w in writers for c in w.errors(t0)]
    after = [c for w in writers for c in w.calls if c.end >= t0]
    return {
        "writers": len(writers),
        "calls": len(after),
        "errors": dict(Counter(type(c.error).__name__ for c in errors)),
        "longest_call": f"{max((c.end - c.start for c in after), default=0):.2f}s",
        "last_error_at": f"{max(c.end for c in errors) - t0:+.2f}s" if errors else "-",
    }


async def run_through_failover(
    cluster: Cluster, victim: Node, writers: list[Writer], how: str, during: Callable[[], Awaitable[None]] | None = None
) -> tuple[Node, float, float]:
    """Start the writers, kill (or pause) ``victim``, wait for the failover and until
    every writer succeeds steadily again; returns (new master, failover seconds, t0)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in writers]
    try:
        await asyncio.sleep(0.3)
        assert all(w.calls and w.calls[-1].error is None for w in writers), "writers fail before the kill"
        t0 = cluster.kill(victim) if how == "kill" else cluster.pause(victim)
        if during is not None:
            await during()
        new_master, took = await asyncio.to_thread(cluster.wait_for_failover, victim, 30)
        deadline = t0 + 30
        while not all(w.steady(since=t0 + took) for w in writers):
            assert time.monotonic() < deadline, {w.name: w.summary(t0) for w in writers}
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return new_master, took, t0


async def test_failover_after_a_master_is_killed(rc: RedisCluster, redis_cluster: Cluster) -> None:
    """SIGKILL of the master serving slot 0: connection refused at once, every call.

    The client's own retries (10 by default) are spent in a fraction of a second with no
    backoff, so single commands raise ConnectionError until a replica is promoted; a
    non-transactional pipeline sleeps 0.25 s between its retries and rides through part
    of it. Keys on the other masters are only delayed (CLUSTERDOWN retried) while the
    cluster is in state fail, between the FAIL flag and the promotion.

    Depending on the client's internal state, commands for keys of the healthy masters
    can fail too (see `piped` below). With many coroutines sharing the client, some
    calls also fail with exceptions that are not RedisError (seen: AttributeError "'NoneType' object has no attribute
    'writelines'"): a command that handles CLUSTERDOWN, or a pipeline that retries,
    calls aclose() on the whole client and closes connections other coroutines are
    using at that moment. Herald must treat any exception from a cluster call as
    "Redis did not answer", not only RedisError."""
    cluster = redis_cluster
    victim, other = cluster.master_for_slot(0), cluster.master_for_slot(16383)
    victim_keys = cluster.keys_on(victim, 50, "v")
    other_keys = cluster.keys_on(other, 50, "o")
    await rc.initialize()

    script = rc.register_script("return redis.call('INCR', KEYS[1])")
    assert await script(keys=[victim_keys[0]]) == 1
    # A write the replica has acknowledged (WAIT on the same connection: a pipeline with
    # the WAIT sent to the key's node).
    durable = rc.pipeline(transaction=False)
    durable.set(victim_keys[1], "waited")
    durable.execute_command("WAIT", 1, 1000, target_nodes=rc.get_node_from_key(victim_keys[1]))
    assert await durable.execute() == [True, 1]

    classic = rc.pubsub()
    await classic.subscribe(channel_on(victim))
    assert classic.get_pubsub_node().port == victim.port
    assert (await classic.get_message(timeout=1))["type"] == "subscribe"  # type: ignore[index]

    backoff = CountingBackoff()
    counting = RedisCluster.from_url(cluster.seed_url, retry=Retry(backoff, 2))
    await counting.initialize()
    piped = RedisCluster.from_url(cluster.seed_url, retry=Retry(NoBackoff(), 1))  # fails fast
    await piped.initialize()
    fresh = RedisCluster.from_url(f"redis://127.0.0.1:{other.port}")

    async def set_one(i: int) -> object:
        return await rc.set(victim_keys[2 + i % 40], i)

    async def pipeline_two(i: int) -> object:
        pipe = rc.pipeline(transaction=False)
        pipe.set(victim_keys[2 + i % 40], i)
        pipe.set(other_keys[i % 40], i)
        return await pipe.execute()

    async def set_elsewhere(i: int) -> object:
        return await rc.set(other_keys[i % 40], i)

    spread = [f"crowd:{{{i}}}" for i in range(120)]  # over every master

    def crowd_op(j: int) -> Callable[[int], Awaitable[object]]:
        async def op(i: int) -> object:
            if j % 3 == 0:
                pipe = rc.pipeline(transaction=False)
                for key in spread[j::12][:4]:
                    pipe.set(key, i)
                return await pipe.execute()
            return await rc.set(spread[(i * 12 + j) % 120], i)

        return op

    watched = [
        Writer("victim-set", set_one),
        Writer("victim-pipeline", pipeline_two),
        Writer("other-master-set", set_elsewhere),
    ]
    crowd = [Writer(f"crowd-{j}", crowd_op(j)) for j in range(12)]
    writers = watched + crowd
    seen: dict[str, object] = {}

    async def right_after_the_kill() -> None:
        # The surviving nodes still name the dead master for its slots until the
        # promotion, so the client keeps being sent there (require_full_coverage is
        # satisfied; it changes nothing here).
        with other.client() as r:
            owners = {entry[0]: entry[2][1] for entry in r.execute_command("CLUSTER", "SLOTS")}
        assert owners[0] == victim.port
        # A client created now fails to initialize: it sends COMMAND to its default
        # node, the first master of CLUSTER SLOTS, which is the dead one.
        with pytest.raises(ConnectionError):
            await fresh.initialize()
        # Same for a client whose slot-map refresh was set off by a failed pipeline (a
        # failed single command moves the dead node to the end of the client's node
        # list first; a pipeline does not): until the promotion, every command fails,
        # even for keys of the healthy masters, with ConnectionError naming the dead one.
        with pytest.raises(ConnectionError):
            await piped.pipeline(transaction=False).set(victim_keys[2], "x").execute()
        with pytest.raises(ConnectionError, match=str(victim.port)):
            await piped.set(other_keys[0], "x")
        # Backoff is never consulted by RedisCluster.execute_command nor by a
        # non-transactional pipeline: `retry` only sets how many attempts.
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await counting.set(victim_keys[2], "x")
        seen["retries2_set_failed_in"] = f"{time.monotonic() - started:.3f}s"
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await counting.pipeline(transaction=False).set(victim_keys[2], "x").execute()
        seen["retries2_pipeline_failed_in"] = f"{time.monotonic() - started:.3f}s"
        assert backoff.computed == 0
        assert await counting.set(other_keys[0], "x") is True  # this client only fails the dead master's keys
        # A classic subscription is pinned to the node it was made on.
        with pytest.raises(ConnectionError):
            await classic.get_message(timeout=0.5)

    try:
        new_master, took, t0 = await run_through_failover(cluster, victim, writers, "kill", right_after_the_kill)

        not_redis_errors = check_errors(writers, t0)
        # The victim's keys were refused until the promotion; the same client object
        # works afterwards without being recreated or told anything.
        assert any(isinstance(c.error, ConnectionError) for c in watched[0].errors(t0)), watched[0].summary(t0)
        assert await rc.get(victim_keys[1]) == b"waited"  # acknowledged by the replica: kept
        assert await rc.set(victim_keys[3], "after") is True

        # The promoted replica never had the script (SCRIPT LOAD is not replicated); a
        # registered script reloads itself on NOSCRIPT.
        with new_master.client() as r:
            assert r.script_exists(script.sha) == [False]
        assert await script(keys=[victim_keys[0]]) == 2

        # The classic subscription keeps trying the dead node; a new one made on a live
        # node works (classic PUBLISH is broadcast, any node will do).
        with pytest.raises(ConnectionError):
            await classic.get_message(timeout=0.5)
        replacement = rc.pubsub(node=rc.get_node(host="127.0.0.1", port=new_master.port))
        await replacement.subscribe("after-failover")
        await rc.publish("after-failover", "hello")
        assert (await next_message(replacement, "message"))["data"] == b"hello"
        await replacement.aclose()

        # (A sharded subscription on the victim is moved to the new master by the
        # client itself once its slot map is refreshed; how soon depends on the other
        # callers' errors and the machine's load: under load it took over 10 s. Herald
        # uses classic pub/sub with polling behind it, so that is not pinned here.)

        # Now a new client initializes fine, and the stuck one works again by itself.
        await fresh.initialize()
        assert fresh.get_node_from_key(victim_keys[1]).port == new_master.port
        assert await piped.set(other_keys[0], "y") is True

        report(
            "SIGKILL failover",
            node_timeout_ms=cluster.node_timeout_ms,
            promoted_and_cluster_ok_after=f"{took:.2f}s",
            not_redis_errors=not_redis_errors,
            **seen,
        )
        for writer in watched:
            report(f"  {writer.name}", **writer.summary(t0))
        report("  crowd on the same client", **crowd_summary(crowd, t0))
    finally:
        await classic.aclose()
        for client in (counting, piped, fresh):
            await close_fully(client)


async def test_a_write_acknowledged_without_wait_can_be_lost(rc: RedisCluster, redis_cluster: Cluster) -> None:
    """Replication is asynchronous: a write the master acknowledged but its replica had
    not received is lost when the replica takes over. WAIT 1 <ms> after the write, on
    the same connection, says whether a replica has it (1) or not (0)."""
    cluster = redis_cluster
    victim = cluster.master_for_slot(5461)
    replica = cluster.replicas_of(victim)[0]
    safe, lagging = cluster.keys_on(victim, 2, "w")
    await rc.initialize()
    node = rc.get_node_from_key(safe)

    pipe = rc.pipeline(transaction=False)
    pipe.set(safe, "waited")
    pipe.execute_command("WAIT", 1, 1000, target_nodes=node)
    assert await pipe.execute() == [True, 1]

    # The replica stalls (SIGSTOP) while the master takes 30 MB more than the sockets
    # between them hold, then one more write: acknowledged, but WAIT says 0 replicas.
    cluster.pause(replica)
    try:
        filler = rc.pipeline(transaction=False)
        tag = safe[safe.index("{") :]
        for i in range(300):
            filler.set(f"filler:{i}:{tag}", b"x" * 100_000)
        await filler.execute()
        pipe = rc.pipeline(transaction=False)
        pipe.set(lagging, "acknowledged")
        pipe.execute_command("WAIT", 1, 100, target_nodes=node)
        assert await pipe.execute() == [True, 0]
        cluster.kill(victim)
    finally:
        cluster.resume(replica)
    new_master, took = await asyncio.to_thread(cluster.wait_for_failover, victim, 30)
    assert new_master.port == replica.port

    with new_master.client() as r:
        assert r.get(safe) == "waited"
        assert r.get(lagging) is None  # acknowledged by the old master, gone
        kept = r.dbsize()
    report("lost write", failover_after=f"{took:.2f}s", keys_kept=f"{kept} of 302")


async def test_failover_after_a_master_hangs(clean_cluster: str, redis_cluster: Cluster) -> None:
    """SIGSTOP of a master: connections open, nothing answers (a partition or a stuck
    host). Each attempt now costs socket_timeout, so the same 10 retries outlast the
    failover: calls stall instead of failing, for about the failover time."""
    cluster = redis_cluster
    victim = cluster.master_for_slot(10923)
    victim_keys = cluster.keys_on(victim, 40, "h")
    client = RedisCluster.from_url(clean_cluster, socket_timeout=1, socket_connect_timeout=1)
    await client.initialize()

    async def set_one(i: int) -> object:
        return await client.set(victim_keys[i % 40], i)

    async def pipeline_one(i: int) -> object:
        return await client.pipeline(transaction=False).set(victim_keys[i % 40], i).execute()

    writers = [Writer("victim-set", set_one), Writer("victim-pipeline", pipeline_one)]
    try:
        _, took, t0 = await run_through_failover(cluster, victim, writers, "pause")
        not_redis_errors = check_errors(writers, t0)
        assert await client.set(victim_keys[0], "after") is True
        report(
            "SIGSTOP failover (socket_timeout=1)",
            promoted_and_cluster_ok_after=f"{took:.2f}s",
            not_redis_errors=not_redis_errors,
        )
        for writer in writers:
            report(f"  {writer.name}", **writer.summary(t0))
    finally:
        await close_fully(client)


# -- INFO ----------------------------------------------------------------------------------


async def test_info_commandstats_per_node(rc: RedisCluster, redis_cluster: Cluster) -> None:
    await rc.config_resetstat(target_nodes=RedisCluster.ALL_NODES)
    keys = [f"stat:{{{i}}}" for i in range(30)]
    for key in keys:
        await rc.set(key, 1)
    script = rc.register_script("return redis.call('SET', KEYS[1], 2)")
    await rc.script_load(script.script)  # else the first EVALSHA (NOSCRIPT) counts too
    await script(keys=[keys[0]])
    await script(keys=[keys[0]])
    for master in redis_cluster.masters:  # let the replicas catch up
        with master.client() as r:
            r.execute_command("WAIT", 1, 1000)

    # Without target_nodes INFO goes to the default node alone: a flat dict.
    flat = await rc.info("commandstats")
    assert set(flat["cmdstat_set"]) == {"calls", "usec", "usec_per_call", "rejected_calls", "failed_calls"}
    # With target_nodes: {"host:port": {...}} per node.
    per_master = await rc.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
    assert set(per_master) == {f"127.0.0.1:{m.port}" for m in redis_cluster.masters}
    per_replica = await rc.info("commandstats", target_nodes=RedisCluster.REPLICAS)

    def total(stats: dict[str, dict[str, dict[str, int]]], command: str) -> int:
        return sum(node.get(f"cmdstat_{command}", {}).get("calls", 0) for node in stats.values())

    # Commands run by scripts are counted too (30 SETs + 2 inside EVALSHA). The replicas
    # count the writes they replay: sum over masters only, or writes count twice.
    assert total(per_master, "set") == 32
    assert total(per_master, "evalsha") == 2
    assert total(per_replica, "set") == 32
    # Subcommands are counted under "command|subcommand".
    assert any(name.startswith("cmdstat_config|") for name in flat)

    sections = await rc.info(target_nodes=RedisCluster.PRIMARIES)
    sample = next(iter(sections.values()))
    for name in ("total_commands_processed", "instantaneous_ops_per_sec", "used_memory", "role", "connected_slaves"):
        assert name in sample
    report(
        "INFO per master",
        set_calls={k: v["cmdstat_set"]["calls"] for k, v in per_master.items()},
        total_commands_processed={k: v["total_commands_processed"] for k, v in sections.items()},
    )
