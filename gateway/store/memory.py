"""In-memory store: the embedded default. One process, nothing to install, not durable.

It keeps the same encoded values as the Redis store (``codec``), so that both behave
alike down to what survives a round trip.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from gateway.clock import Clock, SystemClock
from gateway.core.state import Commit, Held, Hold, MarkDedup, Mutation, Release, Reserve, SentEntry, Unhold, UserState
from gateway.profiles import Interaction, OptOut, UserProfile
from gateway.store import codec
from gateway.store.base import IdemKey, IdemResult, IdemState
from gateway.store.records import AuditEntry, Final, KillSwitch, MessageRecord, TimelineEntry

V = TypeVar("V")
_SWEEP_EVERY = 10_000


class _Expiring(Generic[V]):
    """A dict whose entries vanish after their deadline (read lazily, swept now and then)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._items: dict[str, tuple[V, float]] = {}
        self._writes = 0

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._now():
            del self._items[key]
            return None
        return item[0]

    def set(self, key: str, value: V, ttl: timedelta) -> None:
        self._items[key] = (value, self._now() + ttl.total_seconds())
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = self._now()
            for stale in [k for k, (_, exp) in self._items.items() if exp <= now]:
                del self._items[stale]

    def touch(self, key: str, ttl: timedelta) -> None:
        item = self.get(key)
        if item is not None:
            self._items[key] = (item, self._now() + ttl.total_seconds())

    def delete(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class MemoryStore:
    kind = "memory"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._idem: _Expiring[tuple[str, bytes | None]] = _Expiring(self._clock)
        self._messages: _Expiring[tuple[str, list[str], str, str | None]] = _Expiring(self._clock)
        self._profiles: _Expiring[dict[str, str]] = _Expiring(self._clock)
        self._interactions: _Expiring[list[str]] = _Expiring(self._clock)
        self._switches: dict[str, str] = {}
        self._audit: list[str] = []
        self._due: list[tuple[int, str]] = []
        self._due_members: dict[str, int] = {}
        self._sent: dict[str, dict[str, SentEntry]] = {}
        self._held: dict[str, dict[str, datetime]] = {}
        self._shared: _Expiring[str] = _Expiring(self._clock)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._outcomes: dict[str, list[bool]] = {}
        self._versions: dict[str, int] = {}
        self._dedup: _Expiring[bool] = _Expiring(self._clock)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # --- idempotency ---------------------------------------------------------------
    async def idem_begin(self, key: IdemKey, ttl: timedelta) -> IdemResult:
        name = f"{key.bu}\0{key.request_id}"
        seen = self._idem.get(name)
        if seen is None:
            self._idem.set(name, (key.fingerprint, None), ttl)
            return IdemResult(IdemState.NEW)
        fingerprint, answer = seen
        if fingerprint != key.fingerprint:
            return IdemResult(IdemState.CONFLICT)
        if answer is None:
            return IdemResult(IdemState.PENDING)
        return IdemResult(IdemState.SAME, answer)

    async def idem_abort(self, key: IdemKey) -> None:
        name = f"{key.bu}\0{key.request_id}"
        seen = self._idem.get(name)
        if seen is not None and seen == (key.fingerprint, None):
            self._idem.delete(name)

    # --- messages ------------------------------------------------------------------
    async def save_decision(
        self,
        record: MessageRecord,
        idem: IdemKey | None,
        answer: bytes,
        idem_ttl: timedelta,
        retention: timedelta,
    ) -> None:
        events = [codec.encode_event(e) for e in record.timeline]
        self._messages.set(record.message_id, (codec.encode_message(record), events, record.status, None), retention)
        if idem is not None:
            self._idem.set(f"{idem.bu}\0{idem.request_id}", (idem.fingerprint, answer), idem_ttl)

    async def add_events(
        self,
        message_id: str,
        events: Sequence[TimelineEntry],
        status: str | None,
        retention: timedelta,
        final: Final | None = None,
    ) -> None:
        stored = self._messages.get(message_id)
        if stored is None:
            return
        raw, old_events, old_status, old_final = stored
        new_events = old_events + [codec.encode_event(e) for e in events]
        new_final = codec.encode_final(final) if final is not None else old_final
        self._messages.set(message_id, (raw, new_events, status or old_status, new_final), retention)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        stored = self._messages.get(message_id)
        if stored is None:
            return None
        raw, events, status, final = stored
        return codec.decode_message(raw, events, status, final)

    # --- users ---------------------------------------------------------------------
    def _profile(self, user_id: str) -> UserProfile | None:
        fields = self._profiles.get(user_id)
        if fields is None:
            return None
        return codec.decode_profile(user_id, fields, self._interactions.get(user_id) or [])

    async def upsert_user(self, user_id: str, patch: Mapping[str, Any], now: datetime, ttl: timedelta) -> UserProfile:
        fields = dict(self._profiles.get(user_id) or {})
        fields.update(codec.encode_patch(patch, now))
        self._profiles.set(user_id, fields, ttl)
        profile = self._profile(user_id)
        assert profile is not None
        return profile

    async def get_user(self, user_id: str) -> UserProfile | None:
        return self._profile(user_id)

    async def set_opt_out(self, user_id: str, entry: OptOut, opted_out: bool, ttl: timedelta) -> UserProfile | None:
        fields = self._profiles.get(user_id)
        if fields is None:
            return None
        fields = dict(fields)
        if opted_out:
            name, value = codec.encode_opt_out(entry)
            fields[name] = value
        else:
            fields.pop(codec.opt_out_field(entry.key), None)
        self._profiles.set(user_id, fields, ttl)
        return self._profile(user_id)

    async def record_interaction(
        self, user_id: str, interaction: Interaction, keep: int, retention: timedelta
    ) -> UserProfile | None:
        if self._profiles.get(user_id) is None:
            return None
        kept = [codec.encode_interaction(interaction), *(self._interactions.get(user_id) or [])][:keep]
        self._interactions.set(user_id, kept, retention)
        return self._profile(user_id)

    # --- kill switches -------------------------------------------------------------
    async def put_kill_switch(self, switch: KillSwitch, audit: AuditEntry) -> None:
        self._switches[switch.switch_id] = codec.encode_switch(switch)
        self._push_audit(audit)

    def _push_audit(self, audit: AuditEntry) -> None:
        from gateway.store.keys import KILL_AUDIT_KEEP

        self._audit.insert(0, codec.encode_audit(audit))
        del self._audit[KILL_AUDIT_KEEP:]

    async def clear_kill_switch(
        self, switch_id: str, audit_of: Callable[[KillSwitch], AuditEntry]
    ) -> KillSwitch | None:
        raw = self._switches.pop(switch_id, None)
        if raw is None:
            return None
        switch = codec.decode_switch(raw)
        self._push_audit(audit_of(switch))
        return switch

    async def watch_kill_switches(self, on_change: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """One process: a change is seen by the process that made it at once."""
        await stopping.wait()

    async def kill_switches(self) -> list[KillSwitch]:
        return [codec.decode_switch(raw) for raw in self._switches.values()]

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        return [codec.decode_audit(raw) for raw in self._audit[:limit]]

    async def get_messages(self, message_ids: Sequence[str]) -> list[MessageRecord | None]:
        return [await self.get_message(m) for m in message_ids]

    # --- arbitration state ---------------------------------------------------------
    async def load_user(
        self, user_id: str, dedup: tuple[str, str] | None, since: datetime
    ) -> tuple[UserProfile | None, UserState]:
        sent = tuple(sorted((e for e in self._sent.get(user_id, {}).values() if e.at >= since), key=lambda e: e.at))
        held = tuple(Held(m, due) for m, due in sorted(self._held.get(user_id, {}).items(), key=lambda i: i[1]))
        seen = dedup is not None and self._dedup.get(f"{user_id}\0{dedup[0]}\0{dedup[1]}") is not None
        state = UserState(self._versions.get(user_id, 0), sent, held, seen)
        return self._profile(user_id), state

    async def apply(
        self,
        user_id: str,
        expected_version: int | None,
        mutations: Sequence[Mutation],
        now: datetime,
        retention: timedelta,
    ) -> bool:
        version = self._versions.get(user_id, 0)
        if expected_version is not None and expected_version != version:
            return False
        sent = self._sent.setdefault(user_id, {})
        held = self._held.setdefault(user_id, {})
        for change in mutations:
            if isinstance(change, Reserve):
                sent[change.entry.message_id] = change.entry
            elif isinstance(change, Release):
                sent.pop(change.message_id, None)
            elif isinstance(change, Commit):
                if change.message_id in sent:
                    sent[change.message_id] = replace(sent[change.message_id], channel=change.channel, committed=True)
            elif isinstance(change, MarkDedup):
                self._dedup.set(f"{user_id}\0{change.bu}\0{change.key}", True, change.ttl)
            elif isinstance(change, Hold):
                held[change.message_id] = change.due
                self._due_earlier(user_id, _ms(change.due))
            elif isinstance(change, Unhold):
                held.pop(change.message_id, None)
        cutoff = now - retention
        for message_id in [m for m, e in sent.items() if e.at < cutoff]:
            del sent[message_id]
        self._versions[user_id] = version + 1
        return True

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

    async def finish_due(self, user_id: str, leased_until: datetime, next_due: datetime | None) -> None:
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

    async def take_token(self, bucket: str, rate: float, burst: int, now: datetime) -> float:
        at = now.timestamp()
        tokens, last = self._buckets.get(bucket, (float(burst), at))
        tokens = min(float(burst), tokens + max(0.0, at - last) * rate)
        if tokens >= 1:
            self._buckets[bucket] = (tokens - 1, at)
            return 0.0
        self._buckets[bucket] = (tokens, at)
        return (1 - tokens) / rate

    async def record_outcome(self, key: str, bad: bool, last: int, ttl: timedelta) -> tuple[int, int]:
        window = self._outcomes.setdefault(key, [])
        window.insert(0, bad)
        del window[last:]
        return len(window), sum(window)

    def next_due(self) -> datetime | None:
        """The earliest due time in the index (simulation steps its clock by it)."""
        if not self._due_members:
            return None
        return datetime.fromtimestamp(min(self._due_members.values()) / 1000, UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
