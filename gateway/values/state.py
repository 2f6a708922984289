"""A user's arbitration state as values, and the changes a decision makes to it.

The store reads a ``UserState`` with the profile in one round trip and writes the new
state in one atomic step guarded by ``version``: when another decision changed the user
in between, the write is refused and the decision is made again on fresh state. That is
how caps hold exactly under concurrency, across replicas. Finishing a delivery settles
its reservation (``Commit``/``Release``) in the store itself, unconditionally, and moves
the version on like any other change.
"""

from __future__ import annotations

import hashlib
from bisect import insort
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from functools import lru_cache

import msgspec

from gateway.values.domain import Category, Channel


class SentEntry(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A reservation against the user's caps: taken when a claim wins, committed when
    delivered, removed when every channel failed or a kill switch stopped it."""

    message_id: str
    at: datetime
    category: Category
    channel: Channel
    bu: str
    committed: bool = False


class Held(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A claim in the user's pending pool, due for release at ``due``. ``pooled``: it
    waits for a send window and competes with the user's other pooled claims."""

    message_id: str
    due: datetime
    pooled: bool = False


class DedupMark(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A (business unit, dedup_key) seen for this user, remembered until ``until``."""

    key: str
    until: datetime


@lru_cache(maxsize=4096)  # a campaign's million claims share one key
def dedup_hash(bu: str, key: str) -> str:
    """A short stable name for (business unit, dedup_key); 64 bits, collisions are moot."""
    return hashlib.blake2b(f"{bu}\0{key}".encode(), digest_size=8).hexdigest()


class UserState(msgspec.Struct, frozen=True, gc=False):
    version: int = 0
    sent: tuple[SentEntry, ...] = ()
    held: tuple[Held, ...] = ()
    dedup: tuple[DedupMark, ...] = ()

    def next_due(self) -> datetime | None:
        return min((h.due for h in self.held), default=None)

    def seen(self, bu: str, key: str, now: datetime) -> bool:
        wanted = dedup_hash(bu, key)
        return any(m.key == wanted and m.until > now for m in self.dedup)

    def pool_due(self, after: datetime) -> datetime | None:
        """When the user's current pool of competing claims is decided, if one is
        collecting (a pooled claim due after ``after``)."""
        return min((h.due for h in self.held if h.pooled and h.due > after), default=None)


class Reserve(msgspec.Struct, frozen=True, gc=False):
    entry: SentEntry


class Release(msgspec.Struct, frozen=True, gc=False):
    message_id: str


class Commit(msgspec.Struct, frozen=True, gc=False):
    message_id: str
    channel: Channel


class MarkDedup(msgspec.Struct, frozen=True, gc=False):
    bu: str
    key: str
    ttl: timedelta


class Hold(msgspec.Struct, frozen=True, gc=False):
    message_id: str
    due: datetime
    pooled: bool = False


class Unhold(msgspec.Struct, frozen=True, gc=False):
    message_id: str


Mutation = Reserve | Release | Commit | MarkDedup | Hold | Unhold


def apply_mutations(
    state: UserState,
    mutations: Iterable[Mutation],
    now: datetime,
    keep: Callable[[SentEntry], timedelta],
) -> UserState:
    """The state after ``mutations`` (same version: the store moves it on), with the
    reservations no cap can count any more (older than ``keep(entry)``) and the dedup
    marks that ran out dropped.

    Reservations stay in time order and held claims in due order; a decision mostly
    appends (a reservation at ``now``, a dedup mark), which is done without rebuilding."""
    sent = list(state.sent)
    held = list(state.held)
    dedup = [m for m in state.dedup if m.until > now]
    for change in mutations:
        if isinstance(change, Reserve):
            entry = change.entry
            if any(e.message_id == entry.message_id for e in sent):
                sent = [e for e in sent if e.message_id != entry.message_id]
            if sent and sent[-1].at > entry.at:
                insort(sent, entry, key=_at)
            else:
                sent.append(entry)
        elif isinstance(change, Release):
            sent = [e for e in sent if e.message_id != change.message_id]
        elif isinstance(change, Commit):
            sent = [
                msgspec.structs.replace(e, channel=change.channel, committed=True)
                if e.message_id == change.message_id
                else e
                for e in sent
            ]
        elif isinstance(change, MarkDedup):
            key = dedup_hash(change.bu, change.key)
            dedup = [m for m in dedup if m.key != key]
            dedup.append(DedupMark(key, now + change.ttl))
        elif isinstance(change, Hold):
            held = [h for h in held if h.message_id != change.message_id]
            insort(held, Held(change.message_id, change.due, change.pooled), key=_due_key)
        elif isinstance(change, Unhold):
            held = [h for h in held if h.message_id != change.message_id]
    if sent and sent[0].at < now - MIN_KEEP:  # something may have aged out
        sent = [e for e in sent if e.at >= now - keep(e)]
    return UserState(state.version, tuple(sent), tuple(held), tuple(dedup))


def _at(entry: SentEntry) -> datetime:
    return entry.at


def _due_key(held: Held) -> tuple[datetime, str]:
    return held.due, held.message_id


# No reservation is kept for less than this (caps.keep_for gives each kind its time,
# at least this).
MIN_KEEP = timedelta(days=1)


def settle(state: UserState, changes: Sequence[Commit | Release]) -> UserState:
    """A delivery's settlement applied to ``state`` (what the store does in place)."""
    sent = {e.message_id: e for e in state.sent}
    for change in changes:
        entry = sent.get(change.message_id)
        if entry is None:
            continue
        if isinstance(change, Release):
            del sent[change.message_id]
        else:
            sent[change.message_id] = msgspec.structs.replace(entry, channel=change.channel, committed=True)
    return msgspec.structs.replace(state, sent=tuple(sorted(sent.values(), key=lambda e: e.at)))
