"""In-memory store: the embedded default. One process, nothing to install, not durable.

It keeps the same encoded values as the Redis store (``codec``), so that both behave
alike down to what survives a round trip.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from gateway.clock import Clock, SystemClock
from gateway.profiles import Interaction, OptOut, UserProfile
from gateway.store import codec
from gateway.store.base import IdemKey, IdemResult, IdemState
from gateway.store.records import AuditEntry, KillSwitch, MessageRecord, TimelineEntry

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
        self._messages: _Expiring[tuple[str, list[str], str]] = _Expiring(self._clock)
        self._profiles: _Expiring[dict[str, str]] = _Expiring(self._clock)
        self._interactions: _Expiring[list[str]] = _Expiring(self._clock)
        self._switches: dict[str, str] = {}
        self._audit: list[str] = []
        self._due: list[tuple[float, str]] = []
        self._due_members: dict[str, float] = {}

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
        self._messages.set(record.message_id, (codec.encode_message(record), events, record.status), retention)
        if idem is not None:
            self._idem.set(f"{idem.bu}\0{idem.request_id}", (idem.fingerprint, answer), idem_ttl)

    async def add_events(
        self, message_id: str, events: Sequence[TimelineEntry], status: str | None, retention: timedelta
    ) -> None:
        stored = self._messages.get(message_id)
        if stored is None:
            return
        raw, old_events, old_status = stored
        new_events = old_events + [codec.encode_event(e) for e in events]
        self._messages.set(message_id, (raw, new_events, status or old_status), retention)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        stored = self._messages.get(message_id)
        if stored is None:
            return None
        raw, events, status = stored
        return codec.decode_message(raw, events, status)

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

    async def kill_switches(self) -> list[KillSwitch]:
        return [codec.decode_switch(raw) for raw in self._switches.values()]

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        return [codec.decode_audit(raw) for raw in self._audit[:limit]]

    # --- scheduled claims ----------------------------------------------------------
    async def schedule(self, message_id: str, at: datetime) -> None:
        score = at.timestamp()
        self._due_members[message_id] = score
        heapq.heappush(self._due, (score, message_id))

    async def take_due(self, now: datetime, limit: int) -> list[str]:
        out: list[str] = []
        cutoff = now.timestamp()
        while self._due and self._due[0][0] <= cutoff and len(out) < limit:
            score, message_id = heapq.heappop(self._due)
            if self._due_members.get(message_id) == score:  # skip superseded entries
                del self._due_members[message_id]
                out.append(message_id)
        return out

    async def scheduled_count(self) -> int:
        return len(self._due_members)
