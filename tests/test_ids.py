"""Identifiers: unique, time-ordered, naming their shard, and never shared with a fork."""

from __future__ import annotations

import os
import time

from gateway.ids import MAX_SHARDS, new_id, new_message_id, shard_of_message


def test_message_ids_are_unique_ordered_and_name_their_shard() -> None:
    first = [new_message_id(shard) for shard in range(MAX_SHARDS)]
    time.sleep(0.002)
    later = new_message_id(3)
    assert len(set(first)) == MAX_SHARDS
    assert all(len(i) == 28 and i.startswith("m_") for i in first)
    assert [shard_of_message(i) for i in first] == list(range(MAX_SHARDS))
    assert max(first) < later  # a later millisecond sorts after
    assert shard_of_message("m_not-one-of-ours") is None
    assert shard_of_message("m_" + "I" * 26) is None  # not a Crockford character


def test_random_part_is_spread_over_the_alphabet() -> None:
    chars = "".join(new_id("r")[13:] for _ in range(4000))  # 64,000 random characters
    counts = {c: chars.count(c) for c in set(chars)}
    assert len(counts) == 32
    assert min(counts.values()) > 1600 and max(counts.values()) < 2400  # 2,000 each expected


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_message_id()  # the parent has drawn randomness it has not used up
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, " ".join(new_message_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    parent = [new_message_id() for _ in range(50)]
    assert len(child) == 50
    assert not {i[12:26] for i in child} & {i[12:26] for i in parent}
