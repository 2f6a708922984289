"""Identifiers: time-ordered, URL-safe, unguessable.

A message id also names the shard of the user it was sent to (its last two
characters), so that a message is found with its user's data (``store.shards``).
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}
MAX_SHARDS = 32 * 32
# Two base32 characters for every 10-bit value: ids are built two characters a step.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_last_millis = -1
_time_part = ""
# Random characters drawn from the OS a few kilobytes at a time (one system call per
# ~250 ids instead of one per id): each random byte becomes one character through a
# table that maps the 256 byte values evenly onto the 32 characters (5 random bits).
_BYTE_TO_CHAR = (_CROCKFORD * 8).encode()
_POOL_BYTES = 4096
_pool = ""
_taken = 0


def _random_chars(count: int) -> str:
    global _pool, _taken
    if _taken + count > len(_pool):
        _pool = os.urandom(_POOL_BYTES).translate(_BYTE_TO_CHAR).decode()
        _taken = 0
    start = _taken
    _taken += count
    return _pool[start:_taken]


def _forget_pool() -> None:
    """A forked child draws its own randomness, never its parent's."""
    global _pool, _taken
    _pool, _taken = "", 0


os.register_at_fork(after_in_child=_forget_pool)


def _base32(value: int, length: int) -> str:
    """``value`` in ``length`` Crockford base32 characters (``length`` even)."""
    out = []
    for _ in range(length // 2):
        out.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(out))


def _time() -> str:
    """10 characters of milliseconds since 1970, computed once per millisecond."""
    global _last_millis, _time_part
    millis = time.time_ns() // 1_000_000
    if millis != _last_millis:
        _last_millis, _time_part = millis, _base32(millis, 10)
    return _time_part


def new_id(prefix: str) -> str:
    """``<prefix>_`` + a 26-character ULID: 48 bits of milliseconds, 80 random bits.

    Sorting ids sorts them by creation time, which keeps timelines and Redis scans
    readable.
    """
    return f"{prefix}_{_time()}{_random_chars(16)}"


def new_message_id(shard: int = 0) -> str:
    """``m_`` + a ULID whose last two characters are ``shard`` (70 random bits left)."""
    if not 0 <= shard < MAX_SHARDS:
        raise ValueError(f"shard {shard} out of range 0-{MAX_SHARDS - 1}")
    return f"m_{_time()}{_random_chars(14)}{_PAIRS[shard]}"


def shard_of_message(message_id: str) -> int | None:
    """The shard a message id names, or None when it is not one of ours."""
    if len(message_id) != 28 or not message_id.startswith("m_"):
        return None
    try:
        return _VALUE[message_id[-2]] * 32 + _VALUE[message_id[-1]]
    except KeyError:
        return None
