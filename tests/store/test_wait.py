"""HERALD_REDIS_WAIT_REPLICAS: a decision's commit waits for the replicas (Redis WAIT on
the same connection as the writes, on each node written to)."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from gateway.clock import FixedClock
from gateway.store.base import Change, Committed, Lifetimes, NewMessage, UserRead
from gateway.store.redis import RedisStore
from gateway.store.redis.connection import Wait
from tests.store.test_queue import job_for, record_of

DAY = timedelta(days=1)


async def commit_for(store: RedisStore, clock: FixedClock, users: int) -> None:
    for n in range(users):
        user = f"u-{n}"
        await store.upsert_user(user, {"phone": "+8613800138000"}, clock.now(), DAY)
        [view] = await store.read_users([UserRead(user)], DAY)
        job = job_for(store, clock, user)
        state = msgspec.structs.replace(view.state)
        change = Change(user, view.state.version, state, (NewMessage(record_of(job, clock), job=job),))
        assert await store.commit([change], Lifetimes(DAY, DAY)) == [Committed.OK]


@pytest.mark.redis
async def test_a_node_without_replicas_makes_each_wait_run_short(clean_redis: str, clock: FixedClock) -> None:
    short: list[int] = []
    store = RedisStore(clean_redis, wait=Wait(1, 20), on_wait_short=short.append)
    try:
        await store.prepare()
        await commit_for(store, clock, 3)
    finally:
        await store.close()
    assert sum(short) == 3  # one WAIT a commit pipeline, each answered 0 replicas after 20 ms


@pytest.mark.redis
async def test_no_wait_unless_asked(clean_redis: str, clock: FixedClock) -> None:
    short: list[int] = []
    store = RedisStore(clean_redis, wait=Wait(0, 20), on_wait_short=short.append)
    try:
        await store.prepare()
        await commit_for(store, clock, 2)
    finally:
        await store.close()
    assert short == []


@pytest.mark.cluster
async def test_on_a_cluster_each_commit_waits_for_its_masters_replica(clean_cluster: str, clock: FixedClock) -> None:
    short: list[int] = []
    store = RedisStore(clean_cluster, cluster=True, wait=Wait(1, 2000), on_wait_short=short.append)
    try:
        await store.prepare()
        await commit_for(store, clock, 12)  # users on every master
    finally:
        await store.close()
    assert short == []  # every master's replica acknowledged in time
    # Two replicas asked for, one each there is: each node's WAIT runs out (so WAIT was
    # sent, to each master written to).
    store = RedisStore(clean_cluster, cluster=True, wait=Wait(2, 20), on_wait_short=short.append)
    try:
        await commit_for(store, clock, 12)
    finally:
        await store.close()
    assert sum(short) >= 12
