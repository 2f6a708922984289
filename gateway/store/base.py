"""The state store and the delivery queue, as the services that use them see them.

``memory`` (one process, nothing to install, not durable) and ``redis`` (durable,
shared by every replica; a single node or a cluster) implement both and pass one
contract suite (tests/store/test_contract.py).

The store is batch-native: ``read_users`` reads many users (profile, arbitration state,
the idempotent answer of their request) in one round trip, and ``commit`` writes many
users' decisions in one round trip, each user's part atomic: the new state (only if
nobody changed it since the read), the message records, the idempotent answers and the
delivery jobs. A single Push is a batch of one. The queue's ``finish`` settles a
delivery (reservation, timeline, status, ack) in one atomic step.

Every method may raise ``gateway.errors.StoreUnavailable`` when the store does not
answer; no other store error escapes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from gateway.store import keys
from gateway.store.codec import DeadLetter, Parked
from gateway.values.campaigns import RELEASED, Campaign, ShardProgress, funnel_field, suppressed_step
from gateway.values.decisions import PushAnswer
from gateway.values.domain import Category, Channel, Reason
from gateway.values.jobs import Job
from gateway.values.profiles import Interaction, OptOut, UserProfile
from gateway.values.records import AuditEntry, Current, KillSwitch, MessageRecord, TimelineEntry
from gateway.values.state import Commit, Release, UserState


class IdemState(StrEnum):
    NEW = "new"  # not decided before (or not under this user)
    SAME = "same"  # decided before with the same body: ``answer`` is the first answer
    CONFLICT = "conflict"  # the request id was used with a different body


class IdemKey(msgspec.Struct, frozen=True, gc=False):
    bu: str
    request_id: str
    fingerprint: str


class UserRead(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    idem: IdemKey | None = None
    # Record the request id's body in the unit-wide index (to refuse its reuse for
    # another user). A campaign's ids name their user, so its reads skip it.
    index: bool = True


class UserView(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    profile: UserProfile | None
    state: UserState
    idem: IdemState = IdemState.NEW
    answer: PushAnswer | None = None


class NewMessage(msgspec.Struct, frozen=True, gc=False):
    """A message decided now: its record, its request's answer, and (accepted) its job."""

    record: MessageRecord
    idem: IdemKey | None = None
    answer: PushAnswer | None = None
    job: Job | None = None


class MessageUpdate(msgspec.Struct, frozen=True, gc=False):
    """A later step of an existing message (a held claim released, carried, ended)."""

    message_id: str
    events: tuple[TimelineEntry, ...]
    current: Current | None = None
    job: Job | None = None


class Change(msgspec.Struct, frozen=True, gc=False):
    """One user's part of a commit. ``state`` is written only if the user's version is
    still ``version``; ``state`` None changes nothing of the user (and checks nothing)."""

    user_id: str
    version: int
    state: UserState | None
    new: tuple[NewMessage, ...] = ()
    updates: tuple[MessageUpdate, ...] = ()
    # The earliest hold this change adds: the user is due in the index by then.
    due: datetime | None = None
    # Campaign funnel counters this change adds one to: (campaign id, field), counted
    # in the same step as the messages they describe, so never twice.
    funnel: tuple[tuple[str, str], ...] = ()


class Committed(StrEnum):
    OK = "ok"
    CONFLICT = "conflict"  # the user changed since the read: nothing was written
    DUPLICATE = "duplicate"  # a request of the change was answered meanwhile: nothing written


class IndexCursor(msgspec.Struct, frozen=True, gc=False):
    """Where a walk of a user's message index stands, newest first: the entries created
    at ``at_ms`` (epoch ms) or earlier, but for the first ``skip`` of those created at
    exactly ``at_ms`` (already listed). ``at_ms`` None: from the newest."""

    at_ms: int | None = None
    skip: int = 0

    def past(self, at_ms: int) -> IndexCursor:
        """The cursor after an entry created at ``at_ms`` (the next one listed)."""
        return IndexCursor(at_ms, self.skip + 1 if at_ms == self.at_ms else 1)


class Erasure(msgspec.Struct, frozen=True, gc=False):
    """What ``delete_user`` removed, as counts (never what it held)."""

    # The user's hash: profile sections, opt-outs, interactions, arbitration state.
    profile: int = 0
    # Audience indexes the user was taken out of: the shard's users, each profile tag's.
    audience_indexes: int = 0
    # The openid -> user entry (when it still named this user).
    openid_index: int = 0
    # The user's message index.
    message_index: int = 0
    # Message records found through the index and the state (with timeline and status).
    messages: int = 0
    # Idempotent answers and request-id marks of those messages' requests.
    answers: int = 0
    # The user's entry in the due index (held claims to release).
    due_index: int = 0
    # Links from a provider's id or a click to one of those messages.
    message_links: int = 0

    def total(self) -> int:
        return sum(msgspec.structs.astuple(self))


def erasable_messages(indexed: Sequence[str], state: UserState) -> list[str]:
    """The message ids a user's erasure looks for: the index's, and any the state still
    names (a reservation or a held claim), each once."""
    found = [*indexed, *(e.message_id for e in state.sent), *(h.message_id for h in state.held)]
    return list(dict.fromkeys(found))


# How a delivery's timeline entry names the provider's id of the send (delivery.walk).
_PROVIDER_ID = re.compile(r"\(id ([^()\s]+)\)$")


def message_links(record: MessageRecord) -> list[tuple[str, str | None]]:
    """The shared names that lead to ``record``, each with the value it must hold to be
    this message's (None: any): its first click, and WeChat's msgid of its template
    send (read from the delivery's timeline entry)."""
    links: list[tuple[str, str | None]] = [(keys.clicked(record.message_id), None)]
    for entry in record.timeline:
        found = _PROVIDER_ID.search(entry.detail) if entry.channel is Channel.WECHAT_TEMPLATE else None
        if found:
            links.append((keys.wechat_message(found.group(1)), f"{record.message_id} {record.user_id}"))
    return links


class Lifetimes(msgspec.Struct, frozen=True, gc=False):
    """How long what a commit writes lives (from the policy's defaults)."""

    idempotency: timedelta
    messages: timedelta


class Store(Protocol):
    kind: str
    shards: int

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    # --- decisions -----------------------------------------------------------------
    async def prepare(self) -> None:
        """Check (or set up, on an empty store) the store's layout; fail with what to do."""
        ...

    async def read_users(self, reads: Sequence[UserRead], idem_ttl: timedelta) -> list[UserView]:
        """Each user's profile and state, and what is known of their request id (which
        is remembered from now on for ``idem_ttl``, to spot its reuse)."""
        ...

    async def commit(self, changes: Sequence[Change], lifetimes: Lifetimes) -> list[Committed]:
        """Write each change atomically (and apart from the others)."""
        ...

    # --- messages ------------------------------------------------------------------
    async def get_messages(self, message_ids: Sequence[str]) -> list[MessageRecord | None]:
        """Several messages in one round trip, in order (None where unknown)."""
        ...

    async def add_events(
        self, message_id: str, events: Sequence[TimelineEntry], current: Current | None, retention: timedelta
    ) -> bool:
        """Append to a message's timeline and, when given, set where it stands now;
        False (and nothing written) for a message the store does not keep."""
        ...

    async def user_messages(
        self, user_id: str, cursor: IndexCursor, since: datetime | None, count: int
    ) -> list[tuple[str, int]]:
        """Up to ``count`` of the user's message ids from ``cursor`` on, newest first
        (those of one millisecond in reverse id order), none created before ``since``;
        each with its creation time in epoch ms. The index is written with each new
        message (``commit``) and keeps the most recent ``keys.USER_MESSAGES_KEEP`` within
        the message retention; an id may outlive its message by a little: read them."""
        ...

    # --- profiles ------------------------------------------------------------------
    async def upsert_user(self, user_id: str, patch: Mapping[str, Any], now: datetime, ttl: timedelta) -> UserProfile:
        """Replace the named profile sections (``values.profiles.PROFILE_SECTIONS``)."""
        ...

    async def get_user(self, user_id: str) -> UserProfile | None: ...

    async def replace_tags(
        self, user_id: str, expected: tuple[str, ...], tags: tuple[str, ...], now: datetime, ttl: timedelta
    ) -> tuple[bool, UserProfile | None]:
        """Set the tags section to ``tags`` (sorted, distinct) only if it still holds
        ``expected``: a compare-and-set, so tags added from two places at once are both
        kept. Whether it was set, and the profile as it is now (None: no such user)."""
        ...

    async def delete_user(self, user_id: str) -> Erasure:
        """Erase what the store keeps of a user (a privacy request): their hash, their
        entries in the audience indexes (all users, the profile's tags), the openid
        index and the due index, their message index, and the messages it and the state
        name with those messages' answers, request-id marks and provider/click links.
        What it removed, as counts. A tag taken off the profile before leaves the
        user's id in that tag's index until an audience scan finds the profile gone."""
        ...

    async def scan_users(self, shard: int, cursor: str, count: int, label: str | None = None) -> tuple[str, list[str]]:
        """About ``count`` users of ``shard`` (all, or those given the tag ``label``)
        from ``cursor`` ("0": the start); the next cursor, "0" at the end. A user in the
        index all the while is returned at least once (maybe more); the index may hold
        users who lost the tag or are gone: read their profiles, and ``forget_users``."""
        ...

    async def forget_users(self, shard: int, user_ids: Sequence[str], label: str | None = None) -> None:
        """Take users out of ``shard``'s index (all users, or tag ``label``)."""
        ...

    async def index_size(self, label: str | None = None) -> int:
        """Users in the index over all shards (all users, or tag ``label``): an upper
        bound, since the index may hold users who lost the tag or are gone."""
        ...

    # --- campaigns -----------------------------------------------------------------
    async def put_campaign(self, campaign: Campaign, expect: int | None) -> Campaign | None:
        """Store ``campaign`` with version ``expect + 1`` if the stored one is still at
        version ``expect`` (None: only if there is none); the stored campaign, or None
        when the version did not match (or it exists)."""
        ...

    async def get_campaigns(self, campaign_ids: Sequence[str]) -> list[Campaign | None]: ...

    async def list_campaigns(self, bu: str, limit: int) -> list[Campaign]:
        """``bu``'s campaigns, the newest first."""
        ...

    async def active_campaigns(self) -> list[Campaign]:
        """The campaigns the runner has work for (``Campaign.active``): running, or
        cancelled with held claims to end."""
        ...

    async def scan_held(self, shard: int, cursor: str, count: int) -> tuple[str, list[str]]:
        """About ``count`` users of ``shard`` with held claims (the due index), from
        ``cursor`` ("0": the start); the cursor to go on from ("0": done). A user held
        all along is returned at least once; one may come twice."""
        ...

    async def lease_campaign_shard(
        self, campaign_id: str, shard: int, owner: str, lease: timedelta, now: datetime
    ) -> ShardProgress | None:
        """Take (or renew, for the same owner) the lease on ``shard``'s scan of the
        campaign; where that scan stands, or None when someone else holds it."""
        ...

    async def save_campaign_shard(
        self, campaign_id: str, owner: str, progress: ShardProgress, lease: timedelta, now: datetime
    ) -> bool:
        """Move the shard's scan to ``progress`` (cursor and counters) and renew the
        lease, only while ``owner`` holds it; False when the lease was lost."""
        ...

    async def campaign_progress(self, campaign_id: str) -> list[ShardProgress]:
        """Every shard's progress (a shard never leased reads as at the start)."""
        ...

    async def funnel(self, campaign_id: str) -> dict[str, int]:
        """The campaign's funnel counters, summed over the shards."""
        ...

    async def add_funnel(self, user_id: str, campaign_id: str, field: str, once: str, by: int = 1) -> bool:
        """Add one to a funnel counter in the user's shard, only the first time the name
        ``once`` is seen for the campaign (a click: user and message); whether it counted."""
        ...

    async def set_opt_out(self, user_id: str, entry: OptOut, opted_out: bool, ttl: timedelta) -> UserProfile | None:
        """Add (or remove) an opt-out; None when the user does not exist."""
        ...

    async def record_interaction(
        self, user_id: str, interaction: Interaction, keep: int, retention: timedelta
    ) -> UserProfile | None:
        """Remember an interaction (most recent ``keep``); None for an unknown user."""
        ...

    # --- kill switches -------------------------------------------------------------
    async def put_kill_switch(self, switch: KillSwitch, audit: AuditEntry) -> None: ...

    async def clear_kill_switch(
        self, switch_id: str, audit_of: Callable[[KillSwitch], AuditEntry]
    ) -> KillSwitch | None:
        """Remove a switch; ``audit_of(switch)`` builds its audit entry. None if unknown."""
        ...

    async def kill_switches(self) -> list[KillSwitch]: ...

    async def watch_kill_switches(self, on_change: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """Call ``on_change`` when another process changes a switch, until ``stopping``."""
        ...

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        """Most recent first."""
        ...

    # --- due index (users whose pending pool has something due) ---------------------
    async def take_due(self, now: datetime, limit: int, lease: timedelta) -> list[tuple[str, datetime]]:
        """Up to ``limit`` users due at ``now`` (per shard), each leased until the
        returned time: no other caller gets the same user until the lease ends or
        ``finish_due``."""
        ...

    async def finish_due(self, done: Sequence[tuple[str, datetime, datetime | None]]) -> None:
        """End leases, each ``(user, leased_until, next_due)``: the user is due again at
        ``next_due`` (or leaves the index). A hold added meanwhile for an earlier time is
        kept."""
        ...

    async def due_count(self) -> int: ...

    # --- shared small state (provider tokens, locks, rate buckets) ------------------
    async def shared_get(self, name: str) -> str | None: ...

    async def shared_put(self, name: str, value: str, ttl: timedelta, *, only_if_absent: bool = False) -> bool:
        """Set ``name`` for ``ttl``; with ``only_if_absent`` a lock: False when held."""
        ...

    async def shared_delete(self, name: str, only_if: str | None = None) -> bool:
        """Remove ``name`` (only while it still holds ``only_if``, when given)."""
        ...

    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: datetime) -> tuple[int, float]:
        """Up to ``want`` tokens from a bucket shared by every replica, refilled at
        ``rate`` a second up to ``burst``: how many were granted (the whole tokens there
        were, up to ``want``) and, when none, the seconds until one will be there."""
        ...

    async def record_outcome(self, key: str, bad: bool, last: int, ttl: timedelta) -> tuple[int, int]:
        """Add one send's outcome to the sliding window of ``key`` (the most recent
        ``last``); returns how many are in it and how many of those were bad."""
        ...


# --- the delivery queue --------------------------------------------------------------


class Lease(msgspec.Struct, frozen=True, gc=False):
    """A job taken from the queue; it stays there until its delivery is finished."""

    entry_id: str
    job: Job
    # How many times the queue handed this entry out (2+: a worker died holding it).
    deliveries: int = 1


class Then(StrEnum):
    DONE = "done"  # delivered, failed, expired, killed: out of the queue
    DEAD = "dead"  # no channel delivered: out of the queue, into the dead letters
    WAIT = "wait"  # back to the queue at ``until`` (a provider down, a throttle)
    PARK = "park"  # kept by a kill switch until cleared or ``until``
    RESUME = "resume"  # a parked job whose switch was cleared: back to the queue now


class Remember(msgspec.Struct, frozen=True, gc=False):
    """A shared name a settlement sets too (WeChat's msgid of a template send, naming
    the message its job report is about), for ``ttl``."""

    name: str
    value: str
    ttl: timedelta


class Settlement(msgspec.Struct, frozen=True, gc=False):
    """The end of one delivery attempt, written in one atomic step: the reservation
    settled, the timeline and where the message stands, and the job acked (and dead-
    lettered, put back later, parked or resumed, as ``then`` says)."""

    job: Job
    then: Then
    lease: Lease | None = None
    settle: Commit | Release | None = None
    events: tuple[TimelineEntry, ...] = ()
    current: Current | None = None
    until: datetime | None = None
    why: str = ""
    # The parked entry this settlement takes out (sweeps of parked jobs).
    parked: Parked | None = None
    # Shared names set in the same store call (not in the settlement's atomic step:
    # on a cluster they live on other nodes).
    remember: tuple[Remember, ...] = ()

    def funnel_step(self) -> str:
        """The campaign funnel counter this ending adds to ("" when none): ``sent`` when
        a provider took the message, ``failed`` when it ended failed (or expired after
        tries), suppressed CANCELLED when its campaign was cancelled before it went out
        (as a held claim released after the cancel). Counted in the same step as the
        ending, once."""
        if not self.job.claim.campaign_id or self.then not in (Then.DONE, Then.DEAD):
            return ""
        if isinstance(self.settle, Commit):
            return funnel_field(self.job.claim.variant, "sent")
        if self.current is not None and self.current.reason is Reason.CANCELLED:
            return funnel_field(self.job.claim.variant, suppressed_step(RELEASED, Reason.CANCELLED.value))
        if self.current is not None and self.current.status in ("failed", "expired"):
            return funnel_field(self.job.claim.variant, "failed")
        return ""


class Queue(Protocol):
    kind: str

    async def take(self, room: Mapping[Category, int], block: float) -> list[Lease]:
        """Up to ``room[lane]`` jobs of each lane named (the Redis queue may hand out a
        few more, see its ``take``), waiting at most ``block`` seconds for the first."""
        ...

    async def stop_taking(self) -> None:
        """No take follows (the dispatcher stops): stop reading ahead, and give back
        what was read and not handed out. Finishing and putting go on."""
        ...

    async def finish(self, settlements: Sequence[Settlement], retention: timedelta) -> None:
        """Write each settlement atomically (one round trip for all)."""
        ...

    async def put(self, jobs: Sequence[Job]) -> None:
        """Queue jobs decided elsewhere (the local spool, a requeue)."""
        ...

    async def wake(self, now: datetime, limit: int) -> int:
        """Put waiting jobs whose time has come back in their queue; how many."""
        ...

    async def parked(self, due_before: datetime | None, limit: int, offset: int = 0) -> list[Parked]:
        """Parked jobs (all, or those whose ``until`` has come), earliest first, up to
        ``limit`` from ``offset`` in each shard, without taking them: a settlement with
        ``parked`` set takes one out."""
        ...

    async def depth(self) -> dict[Category, int]:
        """Jobs waiting or being delivered, by lane."""
        ...

    async def oldest(self, now: datetime) -> dict[Category, float]:
        """Age in seconds of the oldest job still queued, by lane."""
        ...

    async def held_counts(self) -> tuple[int, int]:
        """Jobs parked by a kill switch, and jobs waiting for a provider."""
        ...

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """Most recent first."""
        ...

    async def close(self) -> None: ...


def first_channel(job: Job) -> Channel | None:
    return job.plan[0] if job.plan else None
