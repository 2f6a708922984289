from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gateway.clock import FixedClock
from gateway.store.base import Store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.cluster import Cluster
from tests.cluster import redis_cluster as start_redis_cluster
from tests.helpers import redis_server

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).flushall()
    return redis_url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """A real Redis Cluster (3 masters, 1 replica each, cluster-node-timeout 2000 ms),
    started once per session on first use."""
    with start_redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def clean_cluster(redis_cluster: Cluster) -> Iterator[str]:
    """The session's cluster, put back together if a test broke it (nodes restarted or
    resumed), with every master flushed; yields a seed URL (one master's)."""
    redis_cluster.heal()
    redis_cluster.flushall()
    yield redis_cluster.seed_url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 11, 2, 0, tzinfo=UTC))  # 10:00 in Shanghai


@pytest.fixture(params=["memory", "redis", pytest.param("cluster", marks=pytest.mark.cluster)])
async def store(request: pytest.FixtureRequest, clock: FixedClock) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock)
        return
    cluster = request.param == "cluster"
    url = request.getfixturevalue("clean_cluster" if cluster else "clean_redis")
    redis_store = RedisStore(url, cluster=cluster)
    await redis_store.prepare()
    try:
        yield redis_store
    finally:
        await redis_store.close()
