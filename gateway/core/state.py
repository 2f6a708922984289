"""A user's arbitration state as values, and the changes a decision makes to it.

The store loads a ``UserState`` in one round trip and applies a decision's mutations
in one atomic step, guarded by ``version``: when another decision changed the user in
between, the apply is refused and the decision is made again on fresh state. That is
how caps hold exactly under concurrency, across replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.domain import Category, Channel


@dataclass(frozen=True)
class SentEntry:
    """A reservation against the user's caps: taken when a claim wins, committed when
    delivered, removed when every channel failed or a kill switch stopped it."""

    message_id: str
    at: datetime
    category: Category
    channel: Channel
    bu: str
    committed: bool = False


@dataclass(frozen=True)
class Held:
    """A claim in the user's pending pool, due for release at ``due``."""

    message_id: str
    due: datetime


@dataclass(frozen=True)
class UserState:
    version: int = 0
    sent: tuple[SentEntry, ...] = ()
    held: tuple[Held, ...] = ()
    # Whether the claim's (business unit, dedup_key) was seen inside its window.
    dedup_seen: bool = False

    def next_due(self) -> datetime | None:
        return min((h.due for h in self.held), default=None)


@dataclass(frozen=True)
class Reserve:
    entry: SentEntry


@dataclass(frozen=True)
class Release:
    message_id: str


@dataclass(frozen=True)
class Commit:
    message_id: str
    channel: Channel


@dataclass(frozen=True)
class MarkDedup:
    bu: str
    key: str
    ttl: timedelta


@dataclass(frozen=True)
class Hold:
    message_id: str
    due: datetime


@dataclass(frozen=True)
class Unhold:
    message_id: str


Mutation = Reserve | Release | Commit | MarkDedup | Hold | Unhold
