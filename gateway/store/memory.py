"""In-memory store and queue: the embedded default. One process, nothing to install,
not durable.

Profiles are kept encoded as on Redis (``codec``: a partial profile write is a field
write, and both stores agree on what survives a round trip) and decoded once per
write; arbitration state, messages, answers and jobs are kept as the frozen values
themselves (their encoding is covered by the codec's round-trip tests). Both stores
pass the same contract suite.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import msgspec

from gateway.clock import Clock, SystemClock
from gateway.store import codec, keys
from gateway.store.base import (
    Change,
    Committed,
    Erasure,
    IdemState,
    IndexCursor,
    Lease,
    Lifetimes,
    Settlement,
    Then,
    UserRead,
    UserView,
    erasable_messages,
    message_links,
)
from gateway.store.codec import DeadLetter, Parked
from gateway.store.keys import KILL_AUDIT_KEEP
from gateway.values.campaigns import CAMPAIGN_RETENTION, Campaign, ShardProgress
from gateway.values.decisions import PushAnswer
from gateway.values.domain import Category
from gateway.values.jobs import LANES, Job
from gateway.values.profiles import Interaction, OptOut, UserProfile
from gateway.values.records import AuditEntry, Current, KillSwitch, MessageRecord, TimelineEntry
from gateway.values.state import UserState, settle

V = TypeVar("V")
_SWEEP_EVERY = 1_000


class _Expiring(Generic[V]):
    """A dict whose entries vanish after their deadline (read lazily, swept now and then)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # The system clock's time, read cheaply; a test's clock, through it.
        self._now: Callable[[], float] = time.time if isinstance(clock, SystemClock) else self._clock_time
        self._items: dict[Any, tuple[V, float]] = {}
        # Expiry times in a heap: a sweep looks only at what has run out (an entry set
        # again leaves a stale heap item, which the sweep recognises and skips).
        self._expiries: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._writes = 0

    def _clock_time(self) -> float:
        return self._clock.now().timestamp()

    def get(self, key: Any) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._now():
            del self._items[key]
            return None
        return item[0]

    def set(self, key: Any, value: V, ttl: timedelta | None) -> None:
        """``ttl`` None keeps the entry's current lifetime (a new entry: forever)."""
        if ttl is None:
            old = self._items.get(key)
            expires = old[1] if old is not None else float("inf")
        else:
            expires = self._now() + ttl.total_seconds()
            heapq.heappush(self._expiries, (expires, next(self._seq), key))
        self._items[key] = (value, expires)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep()

    def _sweep(self) -> None:
        now = self._now()
        while self._expiries and self._expiries[0][0] <= now:
            expires, _, key = heapq.heappop(self._expiries)
            item = self._items.get(key)
            if item is not None and item[1] == expires:
                del self._items[key]

    def delete(self, key: Any) -> None:
        self._items.pop(key, None)

    def pop(self, key: Any) -> int:
        """Delete ``key``: 1 when it was there (and alive), else 0."""
        alive = self.get(key) is not None
        self._items.pop(key, None)
        return int(alive)

    def __len__(self) -> int:
        return len(self._items)


class _User:
    """One user: the profile's fields as stored (replaced whole on every profile write),
    their decoded form once read, and the arbitration state as a value."""

    __slots__ = ("decoded", "fields", "profile", "state")

    def __init__(self, fields: dict[bytes, bytes], state: UserState) -> None:
        self.fields = fields
        self.profile: UserProfile | None = None
        self.decoded = False
        self.state = state


class _Index:
    """A set that can be scanned with a cursor while it changes: members in insertion
    order, a removed one leaves a hole (so positions never shift), holes dropped when
    they are most of the list."""

    def __init__(self) -> None:
        self._order: list[str | None] = []
        self._at: dict[str, int] = {}

    def add(self, member: str) -> None:
        if member not in self._at:
            self._at[member] = len(self._order)
            self._order.append(member)

    def discard(self, member: str) -> bool:
        at = self._at.pop(member, None)
        if at is not None:
            self._order[at] = None
        return at is not None

    def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        if cursor == 0 and len(self._order) > 2 * len(self._at) + 1024:
            self._order = [m for m in self._order if m is not None]
            self._at = {m: i for i, m in enumerate(self._order) if m is not None}
        end = min(len(self._order), cursor + count)
        found = [m for m in self._order[cursor:end] if m is not None]
        return (0 if end >= len(self._order) else end), found

    def __len__(self) -> int:
        return len(self._at)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class MemoryStore:
    kind = "memory"
    shards = 1

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._users: _Expiring[_User] = _Expiring(self._clock)
        self._idem: _Expiring[tuple[str, PushAnswer]] = _Expiring(self._clock)
        self._rid: _Expiring[str] = _Expiring(self._clock)
        self._messages: _Expiring[tuple[MessageRecord, tuple[TimelineEntry, ...], Current | None]] = _Expiring(
            self._clock
        )
        # Each user's message index: (created ms, message id), newest first.
        self._user_messages: _Expiring[list[tuple[int, str]]] = _Expiring(self._clock)
        self._switches: dict[str, bytes] = {}
        self._audit: list[bytes] = []
        self._due: list[tuple[int, str]] = []
        self._due_members: dict[str, int] = {}
        self._shared: _Expiring[str] = _Expiring(self._clock)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._outcomes: dict[str, tuple[deque[bool], list[int]]] = {}
        self._orphans: list[Job] = []
        self._put: Callable[[Job], None] = self._orphans.append
        # Audience indexes: every user (None), and each profile tag's users.
        self._indexes: dict[str | None, _Index] = {None: _Index()}
        # Campaigns (kept encoded, as on Redis: a caller never shares a stored value).
        self._campaigns: _Expiring[bytes] = _Expiring(self._clock)
        self._campaign_order: dict[str, list[tuple[datetime, str]]] = {}
        self._running: set[str] = set()  # as Redis's herald:{cmp}:run
        self._leases: dict[str, tuple[str, datetime, bytes | None]] = {}
        self._funnels: dict[str, dict[str, int]] = {}
        self._funnel_once: dict[str, set[str]] = {}

    def _user(self, user_id: str) -> tuple[UserProfile | None, UserState]:
        user = self._users.get(user_id)
        if user is None:
            return None, UserState()
        if not user.decoded:
            user.profile, user.decoded = codec.decode_profile(user_id, user.fields), True
        return user.profile, user.state

    def _write_fields(self, user_id: str, fields: dict[bytes, bytes], ttl: timedelta | None) -> None:
        """A profile write: new fields, the state kept (``ttl`` None keeps the lifetime)."""
        old = self._users.get(user_id)
        self._users.set(user_id, _User(fields, old.state if old is not None else UserState()), ttl)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def prepare(self) -> None:
        return None

    # --- decisions -----------------------------------------------------------------
    async def read_users(self, reads: Sequence[UserRead], idem_ttl: timedelta) -> list[UserView]:
        out = []
        for read in reads:
            profile, state = self._user(read.user_id)
            idem, answer = IdemState.NEW, None
            if read.idem is not None:
                key = (read.idem.bu, read.idem.request_id)
                seen = self._rid.get(key)
                stored = self._idem.get((read.user_id, *key))
                if stored is not None and stored[0] == read.idem.fingerprint:
                    idem, answer = IdemState.SAME, stored[1]
                elif (seen is not None and seen != read.idem.fingerprint) or stored is not None:
                    idem = IdemState.CONFLICT
                if seen is None and read.index:
                    self._rid.set(key, read.idem.fingerprint, idem_ttl)
            out.append(UserView(read.user_id, profile, state, idem, answer))
        return out

    async def commit(self, changes: Sequence[Change], lifetimes: Lifetimes) -> list[Committed]:
        return [self._commit(change, lifetimes) for change in changes]

    def _commit(self, change: Change, lifetimes: Lifetimes) -> Committed:
        user = self._users.get(change.user_id)
        if change.state is not None and (
            user is None or b"updated_at" not in user.fields or user.state.version != change.version
        ):
            return Committed.CONFLICT
        for new in change.new:
            if new.idem is not None and self._idem.get((change.user_id, new.idem.bu, new.idem.request_id)):
                return Committed.DUPLICATE
        if change.state is not None and user is not None:
            user.state = msgspec.structs.replace(change.state, version=change.version + 1)
        for new in change.new:
            record = new.record
            self._messages.set(record.message_id, (record, (), None), lifetimes.messages)
            if new.idem is not None and new.answer is not None:
                key = (change.user_id, new.idem.bu, new.idem.request_id)
                self._idem.set(key, (new.idem.fingerprint, new.answer), lifetimes.idempotency)
            if new.job is not None:
                self._put(new.job)
        if change.new:
            self._index_messages(change.user_id, [n.record for n in change.new], lifetimes.messages)
        for update in change.updates:
            self._add_events(update.message_id, update.events, update.current, lifetimes.messages)
            if update.job is not None:
                self._put(update.job)
        if change.due is not None:
            self._due_earlier(change.user_id, _ms(change.due))
        for campaign_id, field in change.funnel:
            self.count_funnel(campaign_id, field)
        return Committed.OK

    def _index_messages(self, user_id: str, records: Sequence[MessageRecord], retention: timedelta) -> None:
        """As the commit script: add, trim by age and length, live on for ``retention``."""
        # Newest first; one millisecond's ids in reverse order, as ZREVRANGEBYSCORE lists them.
        new = sorted({(_ms(r.created_at), r.message_id) for r in records}, reverse=True)
        old = self._user_messages.get(user_id) or []
        oldest = new[0][0] - int(retention.total_seconds() * 1000)
        if old and new[-1] <= old[0]:  # out of order: merged by a sort
            kept = sorted({*old, *new}, reverse=True)[: keys.USER_MESSAGES_KEEP]
        else:  # the usual case, all newer than the index: in front, no sort of ~1,000 entries
            kept = (new + old[: keys.USER_MESSAGES_KEEP])[: keys.USER_MESSAGES_KEEP]
        while kept and kept[-1][0] < oldest:  # newest first: the aged ones are at the end
            kept.pop()
        self._user_messages.set(user_id, kept, retention)

    def count_funnel(self, campaign_id: str, field: str, by: int = 1) -> None:
        counts = self._funnels.setdefault(campaign_id, {})
        counts[field] = counts.get(field, 0) + by

    def attach(self, put: Callable[[Job], None]) -> None:
        """The queue a commit hands its jobs to, in the same step (as the Redis commit
        script adds them to the stream); jobs committed before it was attached go first."""
        early, self._orphans = self._orphans, []
        self._put = put
        for job in early:
            put(job)

    # --- messages ------------------------------------------------------------------
    def _add_events(
        self, message_id: str, events: Sequence[TimelineEntry], current: Current | None, retention: timedelta
    ) -> bool:
        stored = self._messages.get(message_id)
        if stored is None:
            return False
        record, old_events, old_current = stored
        self._messages.set(message_id, (record, old_events + tuple(events), current or old_current), retention)
        return True

    async def add_events(
        self, message_id: str, events: Sequence[TimelineEntry], current: Current | None, retention: timedelta
    ) -> bool:
        return self._add_events(message_id, events, current, retention)

    async def get_messages(self, message_ids: Sequence[str]) -> list[MessageRecord | None]:
        out: list[MessageRecord | None] = []
        for message_id in message_ids:
            stored = self._messages.get(message_id)
            out.append(None if stored is None else stored[0].now(stored[2], stored[1]))
        return out

    async def user_messages(
        self, user_id: str, cursor: IndexCursor, since: datetime | None, count: int
    ) -> list[tuple[str, int]]:
        entries = self._user_messages.get(user_id) or []
        bottom = None if since is None else _ms(since)
        eligible = (
            (message_id, at)
            for at, message_id in entries
            if (cursor.at_ms is None or at <= cursor.at_ms) and (bottom is None or at >= bottom)
        )
        return list(itertools.islice(eligible, cursor.skip, cursor.skip + count))

    # --- profiles ------------------------------------------------------------------
    def _profile(self, user_id: str) -> UserProfile | None:
        return self._user(user_id)[0]

    async def upsert_user(self, user_id: str, patch: Mapping[str, Any], now: datetime, ttl: timedelta) -> UserProfile:
        old = self._users.get(user_id)
        fields = {**(old.fields if old is not None else {}), **codec.encode_patch(patch, now)}
        self._write_fields(user_id, fields, ttl)
        self._indexes[None].add(user_id)
        for label in patch.get("tags") or ():
            self._indexes.setdefault(label, _Index()).add(user_id)
        profile = self._profile(user_id)
        assert profile is not None
        return profile

    async def get_user(self, user_id: str) -> UserProfile | None:
        return self._profile(user_id)

    async def replace_tags(
        self, user_id: str, expected: tuple[str, ...], tags: tuple[str, ...], now: datetime, ttl: timedelta
    ) -> tuple[bool, UserProfile | None]:
        profile = self._profile(user_id)
        if profile is None or profile.tags != expected:
            return False, profile
        return True, await self.upsert_user(user_id, {"tags": tags}, now, ttl)

    async def delete_user(self, user_id: str) -> Erasure:
        profile, state = self._user(user_id)
        indexed = [m for _, m in self._user_messages.get(user_id) or ()]
        ids = erasable_messages(indexed, state)
        records = [r for r in await self.get_messages(ids) if r is not None]
        answers = links = 0
        for record in records:
            for key in ((user_id, record.business_unit, record.request_id), (user_id, "spool", record.message_id)):
                answers += self._idem.pop(key)
            answers += self._rid.pop((record.business_unit, record.request_id))
            for name, value in message_links(record):
                links += int(await self.shared_delete(name, value))
        openid = 0
        if profile is not None and profile.wechat is not None and profile.wechat.openid:
            openid = int(await self.shared_delete(keys.openid_index(profile.wechat.openid), user_id))
        # One process: every audience index is at hand, so stale tag entries go too.
        audience = 0
        for index in self._indexes.values():
            audience += int(index.discard(user_id))
        return Erasure(
            profile=self._users.pop(user_id),
            audience_indexes=audience,
            openid_index=openid,
            message_index=self._user_messages.pop(user_id),
            messages=sum(self._messages.pop(m) for m in ids),
            answers=answers,
            due_index=int(self._due_members.pop(user_id, None) is not None),
            message_links=links,
        )

    async def scan_users(self, shard: int, cursor: str, count: int, label: str | None = None) -> tuple[str, list[str]]:
        index = self._indexes.get(label)
        if index is None:
            return "0", []
        after, found = index.scan(int(cursor), count)
        return str(after), found

    async def forget_users(self, shard: int, user_ids: Sequence[str], label: str | None = None) -> None:
        index = self._indexes.get(label)
        if index is not None:
            for user_id in user_ids:
                index.discard(user_id)

    async def index_size(self, label: str | None = None) -> int:
        index = self._indexes.get(label)
        return 0 if index is None else len(index)

    async def set_opt_out(self, user_id: str, entry: OptOut, opted_out: bool, ttl: timedelta) -> UserProfile | None:
        user = self._users.get(user_id)
        if user is None or b"updated_at" not in user.fields:
            return None
        fields = dict(user.fields)
        if opted_out:
            name, value = codec.encode_opt_out(entry)
            fields[name] = value
        else:
            fields.pop(codec.opt_out_field(entry.key).encode(), None)
        self._write_fields(user_id, fields, ttl)
        return self._profile(user_id)

    async def record_interaction(
        self, user_id: str, interaction: Interaction, keep: int, retention: timedelta
    ) -> UserProfile | None:
        user = self._users.get(user_id)
        if user is None or b"updated_at" not in user.fields:
            return None
        fields = user.fields
        old = codec.INTERACTIONS.decode(fields[b"ix"]) if b"ix" in fields else ()
        kept = (interaction, *old)[:keep]
        self._write_fields(user_id, {**fields, b"ix": codec.INTERACTIONS.encode(kept)}, None)
        return self._profile(user_id)

    # --- campaigns -----------------------------------------------------------------
    async def put_campaign(self, campaign: Campaign, expect: int | None) -> Campaign | None:
        raw = self._campaigns.get(campaign.campaign_id)
        if (raw is None) != (expect is None):
            return None
        if raw is not None and codec.CAMPAIGN.decode(raw).version != expect:
            return None
        stored = msgspec.structs.replace(campaign, version=0 if expect is None else expect + 1)
        self._campaigns.set(campaign.campaign_id, codec.CAMPAIGN.encode(stored), CAMPAIGN_RETENTION)
        if expect is None:
            self._campaign_order.setdefault(campaign.bu, []).append((campaign.created_at, campaign.campaign_id))
        if stored.active:
            self._running.add(campaign.campaign_id)
        else:
            self._running.discard(campaign.campaign_id)
        return stored

    async def get_campaigns(self, campaign_ids: Sequence[str]) -> list[Campaign | None]:
        raws = [self._campaigns.get(c) for c in campaign_ids]
        return [None if raw is None else codec.CAMPAIGN.decode(raw) for raw in raws]

    async def list_campaigns(self, bu: str, limit: int) -> list[Campaign]:
        newest = sorted(self._campaign_order.get(bu, []), reverse=True)
        found = await self.get_campaigns([c for _, c in newest])
        return [c for c in found if c is not None][:limit]

    async def active_campaigns(self) -> list[Campaign]:
        found = await self.get_campaigns(sorted(self._running))
        return [c for c in found if c is not None and c.active]

    async def scan_held(self, shard: int, cursor: str, count: int) -> tuple[str, list[str]]:
        # One shard in memory; the cursor is "@" and the last user returned (ids in order).
        after = "" if cursor == "0" else cursor.removeprefix("@")
        found = sorted(u for u in self._due_members if u > after)[:count]
        return ("0" if len(found) < count else "@" + found[-1]), found

    async def lease_campaign_shard(
        self, campaign_id: str, shard: int, owner: str, lease: timedelta, now: datetime
    ) -> ShardProgress | None:
        held = self._leases.get(campaign_id)
        if held is not None and held[0] != owner and held[1] > now:
            return None
        progress = held[2] if held is not None else None
        self._leases[campaign_id] = (owner, now + lease, progress)
        return ShardProgress(shard) if progress is None else codec.PROGRESS.decode(progress)

    async def save_campaign_shard(
        self, campaign_id: str, owner: str, progress: ShardProgress, lease: timedelta, now: datetime
    ) -> bool:
        held = self._leases.get(campaign_id)
        if held is None or held[0] != owner:
            return False
        self._leases[campaign_id] = (owner, now + lease, codec.PROGRESS.encode(progress))
        return True

    async def campaign_progress(self, campaign_id: str) -> list[ShardProgress]:
        held = self._leases.get(campaign_id)
        return [ShardProgress(0) if held is None or held[2] is None else codec.PROGRESS.decode(held[2])]

    async def funnel(self, campaign_id: str) -> dict[str, int]:
        return dict(self._funnels.get(campaign_id, {}))

    async def add_funnel(self, user_id: str, campaign_id: str, field: str, once: str, by: int = 1) -> bool:
        seen = self._funnel_once.setdefault(campaign_id, set())
        if once in seen:
            return False
        seen.add(once)
        self.count_funnel(campaign_id, field, by)
        return True

    # --- kill switches -------------------------------------------------------------
    async def put_kill_switch(self, switch: KillSwitch, audit: AuditEntry) -> None:
        self._switches[switch.switch_id] = codec.SWITCH.encode(switch)
        self._push_audit(audit)

    def _push_audit(self, audit: AuditEntry) -> None:
        self._audit.insert(0, codec.AUDIT.encode(audit))
        del self._audit[KILL_AUDIT_KEEP:]

    async def clear_kill_switch(
        self, switch_id: str, audit_of: Callable[[KillSwitch], AuditEntry]
    ) -> KillSwitch | None:
        raw = self._switches.pop(switch_id, None)
        if raw is None:
            return None
        switch = codec.SWITCH.decode(raw)
        self._push_audit(audit_of(switch))
        return switch

    async def watch_kill_switches(self, on_change: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """One process: a change is seen by the process that made it at once."""
        await stopping.wait()

    async def kill_switches(self) -> list[KillSwitch]:
        return [codec.SWITCH.decode(raw) for raw in self._switches.values()]

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        return [codec.AUDIT.decode(raw) for raw in self._audit[:limit]]

    # --- due index -----------------------------------------------------------------
    def _due_earlier(self, user_id: str, score: int) -> None:
        current = self._due_members.get(user_id)
        if current is None or score < current:
            self._due_set(user_id, score)

    def _due_set(self, user_id: str, score: int) -> None:
        self._due_members[user_id] = score
        heapq.heappush(self._due, (score, user_id))

    async def take_due(self, now: datetime, limit: int, lease: timedelta) -> list[tuple[str, datetime]]:
        cutoff, leased_until = _ms(now), now + lease
        taken: list[tuple[str, datetime]] = []
        while self._due and self._due[0][0] <= cutoff and len(taken) < limit:
            score, user_id = heapq.heappop(self._due)
            if self._due_members.get(user_id) != score:  # superseded entry
                continue
            self._due_set(user_id, _ms(leased_until))
            taken.append((user_id, leased_until))
        return taken

    async def finish_due(self, done: Sequence[tuple[str, datetime, datetime | None]]) -> None:
        for user_id, leased_until, next_due in done:
            current = self._due_members.get(user_id)
            if current == _ms(leased_until):
                if next_due is None:
                    del self._due_members[user_id]
                else:
                    self._due_set(user_id, _ms(next_due))
            elif next_due is not None:
                self._due_earlier(user_id, _ms(next_due))

    async def due_count(self) -> int:
        return len(self._due_members)

    def next_due(self) -> datetime | None:
        """The earliest due time in the index (simulation steps its clock by it)."""
        if not self._due_members:
            return None
        return datetime.fromtimestamp(min(self._due_members.values()) / 1000, UTC)

    # --- shared small state ----------------------------------------------------------
    async def shared_get(self, name: str) -> str | None:
        return self._shared.get(name)

    async def shared_put(self, name: str, value: str, ttl: timedelta, *, only_if_absent: bool = False) -> bool:
        if only_if_absent and self._shared.get(name) is not None:
            return False
        self._shared.set(name, value, ttl)
        return True

    async def shared_delete(self, name: str, only_if: str | None = None) -> bool:
        current = self._shared.get(name)
        if current is None or (only_if is not None and current != only_if):
            return False
        self._shared.delete(name)
        return True

    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: datetime) -> tuple[int, float]:
        at = now.timestamp()
        tokens, last = self._buckets.get(bucket, (float(burst), at))
        tokens = min(float(burst), tokens + max(0.0, at - last) * rate)
        granted = min(want, int(tokens))
        self._buckets[bucket] = (tokens - granted, at)
        return granted, 0.0 if granted else (1 - tokens) / rate

    async def record_outcome(self, key: str, bad: bool, last: int, ttl: timedelta) -> tuple[int, int]:
        window = self._outcomes.get(key)
        if window is None or window[0].maxlen != last:
            window = self._outcomes[key] = (deque(maxlen=last), [0])
        ring, bad_count = window
        if len(ring) == last and ring[0]:
            bad_count[0] -= 1
        ring.append(bad)
        bad_count[0] += bad
        return len(ring), bad_count[0]

    # --- what the queue changes in place ---------------------------------------------
    def settle(self, user_id: str, change: Any) -> None:
        user = self._users.get(user_id)
        if user is None or not any(e.message_id == change.message_id for e in user.state.sent):
            return
        user.state = msgspec.structs.replace(settle(user.state, [change]), version=user.state.version + 1)


class MemoryQueue:
    """Per-lane in-process queues over the memory store (which it settles in place)."""

    kind = "memory"

    def __init__(self, store: MemoryStore, dead_keep: int = 10_000) -> None:
        self._store = store
        self._clock = store._clock
        self._lanes: dict[Category, deque[tuple[str, bytes]]] = {lane: deque() for lane in LANES}
        self._ready = asyncio.Event()
        self._open: dict[str, tuple[Category, bytes]] = {}
        self._seq = itertools.count(1)
        self._dead: deque[DeadLetter] = deque(maxlen=dead_keep)
        self._waiting: list[tuple[float, int, bytes]] = []
        self._parked: dict[str, tuple[float, bytes]] = {}
        store.attach(self._put_one)

    def _put_one(self, job: Job) -> None:
        self._lanes[job.lane].append((str(next(self._seq)), codec.JOB.encode(job)))
        self._ready.set()

    async def put(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._put_one(job)

    async def take(self, room: Mapping[Category, int], block: float) -> list[Lease]:
        leases = self._take_now(room)
        if not leases and block > 0:
            self._ready.clear()
            try:
                async with asyncio.timeout(block):  # not wait_for: no task of its own per take
                    await self._ready.wait()
            except TimeoutError:
                return []
            leases = self._take_now(room)
        return leases

    def _take_now(self, room: Mapping[Category, int]) -> list[Lease]:
        leases: list[Lease] = []
        for lane, count in room.items():
            queue = self._lanes[lane]
            for _ in range(min(count, len(queue))):
                entry_id, raw = queue.popleft()
                self._open[entry_id] = (lane, raw)
                leases.append(Lease(entry_id, codec.JOB.decode(raw)))
        return leases

    async def finish(self, settlements: Sequence[Settlement], retention: timedelta) -> None:
        for done in settlements:
            job = done.job
            if done.parked is not None and self._parked.pop(job.message_id, None) is None:
                continue  # another sweep took it
            if done.settle is not None:
                self._store.settle(job.claim.user_id, done.settle)
            step = done.funnel_step()
            if step and (done.lease is None or done.lease.entry_id in self._open):
                self._store.count_funnel(job.claim.campaign_id, step)
            self._store._add_events(job.message_id, done.events, done.current, retention)
            if done.lease is not None:
                self._open.pop(done.lease.entry_id, None)
            for remember in done.remember:
                self._store._shared.set(remember.name, remember.value, remember.ttl)
            if done.then is Then.DEAD:
                self._dead.append(DeadLetter(job.message_id, done.why, self._clock.now()))
            elif done.then is Then.WAIT:
                assert done.until is not None
                heapq.heappush(self._waiting, (done.until.timestamp(), next(self._seq), codec.JOB.encode(job)))
            elif done.then is Then.PARK:
                assert done.until is not None
                self._parked[job.message_id] = (
                    done.until.timestamp(),
                    codec.PARKED.encode(Parked(job, done.until, done.why)),
                )
            elif done.then is Then.RESUME:
                self._put_one(job)

    async def wake(self, now: datetime, limit: int) -> int:
        woken = 0
        while self._waiting and self._waiting[0][0] <= now.timestamp() and woken < limit:
            _, _, raw = heapq.heappop(self._waiting)
            self._put_one(codec.JOB.decode(raw))
            woken += 1
        return woken

    async def parked(self, due_before: datetime | None, limit: int, offset: int = 0) -> list[Parked]:
        items = sorted(self._parked.values())
        if due_before is not None:
            items = [i for i in items if i[0] <= due_before.timestamp()]
        return [codec.PARKED.decode(raw) for _, raw in items[offset : offset + limit]]

    async def depth(self) -> dict[Category, int]:
        counts = {lane: len(queue) for lane, queue in self._lanes.items()}
        for lane, _ in self._open.values():
            counts[lane] += 1
        return counts

    async def oldest(self, now: datetime) -> dict[Category, float]:
        ages = dict.fromkeys(LANES, 0.0)
        for lane, queue in self._lanes.items():
            if queue:
                job = codec.JOB.decode(queue[0][1])
                if job.queued_at is not None:
                    ages[lane] = max(0.0, (now - job.queued_at).total_seconds())
        return ages

    async def held_counts(self) -> tuple[int, int]:
        return len(self._parked), len(self._waiting)

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return list(reversed(self._dead))[:limit]

    async def stop_taking(self) -> None:
        return None  # nothing is read ahead

    async def close(self) -> None:
        return None
