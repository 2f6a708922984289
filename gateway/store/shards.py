"""Where a user's data lives: one of ``count`` shards, each pinned to one Redis Cluster
slot by its hash tag.

Herald keeps everything a decision touches in the user's shard: the profile and the
arbitration state, the idempotent answer, the message record, and the delivery stream
the job goes to. One Lua script can then commit a decision, its answer and its delivery
job in one atomic step, on one node, which is what makes an ``ACCEPTED`` answer a
promise (docs/guarantees.md) on a single Redis and on a cluster alike.

Each shard's tag is chosen so that the shards' slots are spread evenly over the 16384
slots (shard ``i`` of ``n`` lands in slot range ``[i*16384/n, (i+1)*16384/n)``): a
cluster whose masters own equal slot ranges gets an equal share of shards, so no node
is hot. The count is fixed when a store is first used (kept in ``herald:meta``);
changing it needs a fresh store.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from gateway.ids import MAX_SHARDS, shard_of_message

DEFAULT_SHARDS = 16


@lru_cache(maxsize=8)
def tags(count: int) -> tuple[str, ...]:
    """The hash tag (without braces) of each of ``count`` shards."""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"the shard count must be 1-{MAX_SHARDS}, not {count}")
    out = []
    for shard in range(count):
        low = shard * REDIS_CLUSTER_HASH_SLOTS // count
        high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        n = 0
        while not low <= key_slot(f"h{shard}.{n}".encode()) < high:
            n += 1
        out.append(f"h{shard}.{n}")
    return tuple(out)


def shard_of(user_id: str, count: int) -> int:
    return zlib.crc32(user_id.encode()) % count


def message_shard(message_id: str, count: int) -> int | None:
    """The shard a message id names, when it is one of this store's."""
    shard = shard_of_message(message_id)
    return shard if shard is not None and shard < count else None
