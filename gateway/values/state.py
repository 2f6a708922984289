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
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

import msgspec

from gateway.values.domain import Category, Channel


class SentEntry(msgspec.Struct, frozen=True, array_like=True):
    """A reservation against the user's caps: taken when a claim wins, committed when
    delivered, removed when every channel failed or a kill switch stopped it."""

    message_id: str
    at: datetime
    category: Category
    channel: Channel
    bu: str
    committed: bool = False


class Held(msgspec.Struct, frozen=True, array_like=True):
    """A claim in the user's pending pool, due for release at ``due``. ``pooled``: it
    waits for a send window and competes with the user's other pooled claims."""

    message_id: str
    due: datetime
    pooled: bool = False


class DedupMark(msgspec.Struct, frozen=True, array_like=True):
    """A (business unit, dedup_key) seen for this user, remembered until ``until``."""

    key: str
    until: datetime


def dedup_hash(bu: str, key: str) -> str:
    """A short stable name for (business unit, dedup_key); 64 bits, collisions are moot."""
    return hashlib.blake2b(f"{bu}\0{key}".encode(), digest_size=8).hexdigest()


class UserState(msgspec.Struct, frozen=True):
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


class Reserve(msgspec.Struct, frozen=True):
    entry: SentEntry


class Release(msgspec.Struct, frozen=True):
    message_id: str


class Commit(msgspec.Struct, frozen=True):
    message_id: str
    channel: Channel


class MarkDedup(msgspec.Struct, frozen=True):
    bu: str
    key: str
    ttl: timedelta


class Hold(msgspec.Struct, frozen=True):
    message_id: str
    due: datetime
    pooled: bool = False


class Unhold(msgspec.Struct, frozen=True):
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
    marks that ran out dropped."""
    sent = {e.message_id: e for e in state.sent}
    held = {h.message_id: h for h in state.held}
    dedup = {m.key: m for m in state.dedup if m.until > now}
    for change in mutations:
        if isinstance(change, Reserve):
            sent[change.entry.message_id] = change.entry
        elif isinstance(change, Release):
            sent.pop(change.message_id, None)
        elif isinstance(change, Commit):
            entry = sent.get(change.message_id)
            if entry is not None:
                sent[change.message_id] = msgspec.structs.replace(entry, channel=change.channel, committed=True)
        elif isinstance(change, MarkDedup):
            key = dedup_hash(change.bu, change.key)
            dedup[key] = DedupMark(key, now + change.ttl)
        elif isinstance(change, Hold):
            held[change.message_id] = Held(change.message_id, change.due, change.pooled)
        elif isinstance(change, Unhold):
            held.pop(change.message_id, None)
    return UserState(
        version=state.version,
        sent=tuple(sorted((e for e in sent.values() if e.at >= now - keep(e)), key=lambda e: e.at)),
        held=tuple(sorted(held.values(), key=lambda h: (h.due, h.message_id))),
        dedup=tuple(dedup.values()),
    )


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
