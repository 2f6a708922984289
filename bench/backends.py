"""The Redis behind a bench target, a single redis-server or a Redis Cluster, and what
bench/compare.py reads from it around a phase: CPU seconds and INFO commandstats calls.

The cluster is the tests' fixture (tests/cluster.py: 3 masters, one replica each, local
processes), started once per bench run. Its masters are fixed when it starts: a phase is
read against the same nodes before and after, and a failover between targets is an error
rather than figures drawn from the wrong processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from common import RedisServer, child_env, redis_command_calls, redis_flush
from common import tree_cpu_seconds as cpu_of
from redis.crc import key_slot

from gateway.config import from_env
from gateway.store.shards import tags
from tests.cluster import Cluster, ClusterError, Node, redis_cluster

# Redis's default cluster-node-timeout (the tests use 2 s to see failovers quickly): on a
# busy 2-core machine a node starved of CPU for a moment must not be failed over mid-run.
NODE_TIMEOUT_MS = 15_000


@dataclass(frozen=True)
class NodeSample:
    cpu: float  # CPU seconds of the node's redis-server
    commands: int  # INFO commandstats calls, all commands but the bench's own


@dataclass(frozen=True)
class RedisSample:
    cpu: float = 0.0  # every redis-server behind the target (a cluster's masters and replicas)
    commands: dict[str, int] = field(default_factory=dict)  # calls per command (a cluster's masters summed)
    masters: tuple[NodeSample, ...] = ()  # a cluster's, by first slot; empty for a single node


class Backend(Protocol):
    @property
    def url(self) -> str: ...

    def flush(self) -> None: ...

    def sample(self) -> RedisSample: ...


@dataclass(frozen=True)
class SingleRedis:
    server: RedisServer

    @property
    def url(self) -> str:
        return self.server.url

    def flush(self) -> None:
        redis_flush(self.server.url)

    def sample(self) -> RedisSample:
        return RedisSample(cpu_of(self.server.pid), redis_command_calls(self.server.url))


@dataclass(frozen=True)
class Master:
    port: int
    server: RedisServer
    slots: list[tuple[int, int]]  # inclusive ranges
    shards: int  # how many of Herald's shards its slots hold


@dataclass(frozen=True)
class ClusterRedis:
    cluster: Cluster
    url: str  # a seed: Herald discovers the other nodes from it
    masters: tuple[Master, ...]  # by first slot
    replicas: tuple[RedisServer, ...]
    shard_count: int  # HERALD_REDIS_SHARDS as the gateways the bench starts read it

    def flush(self) -> None:
        if [node.port for node in self.cluster.masters] != [m.port for m in self.masters]:
            raise RuntimeError("the cluster's masters changed since it started (a failover?)")
        self.cluster.flushall()

    def sample(self) -> RedisSample:
        per_master = [redis_command_calls(m.server.url) for m in self.masters]
        cpus = [cpu_of(m.server.pid) for m in self.masters]
        masters = tuple(NodeSample(cpu, sum(calls.values())) for cpu, calls in zip(cpus, per_master, strict=True))
        replicas = sum(cpu_of(r.pid) for r in self.replicas)
        commands: dict[str, int] = {}
        for calls in per_master:
            for name, n in calls.items():
                commands[name] = commands.get(name, 0) + n
        return RedisSample(sum(m.cpu for m in masters) + replicas, commands, masters)


def _server(node: Node) -> RedisServer:
    assert node.pid is not None, f"{node} is not running"
    return RedisServer(f"redis://{node.address}", node.pid)


def shards_in(slots: list[tuple[int, int]], count: int) -> int:
    """How many of `count` shards have their hash tag's slot in these slot ranges."""
    return sum(any(low <= key_slot(tag.encode()) <= high for low, high in slots) for tag in tags(count))


def _cluster_redis(cluster: Cluster) -> ClusterRedis:
    count = from_env(child_env()).redis_shards
    masters = tuple(Master(m.port, _server(m), list(m.slots), shards_in(m.slots, count)) for m in cluster.masters)
    replicas = tuple(_server(r) for r in cluster.replicas)
    return ClusterRedis(cluster, cluster.seed_url, masters, replicas, count)


@contextmanager
def cluster_redis() -> Iterator[ClusterRedis]:
    """A 3-master Redis Cluster (one replica each) for the run, stopped on exit."""
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(redis_cluster(node_timeout_ms=NODE_TIMEOUT_MS))
        except ClusterError as exc:
            raise SystemExit(f"bench: the Redis Cluster did not start: {exc}") from None
        yield _cluster_redis(cluster)
