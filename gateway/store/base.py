"""The state store interface. ``memory.MemoryStore`` and ``redis.RedisStore`` implement
it and pass one contract suite (tests/store/test_contract.py).

Every method may raise ``gateway.errors.StoreUnavailable`` when the store does not
answer; no other store error escapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from gateway.core.state import Mutation, UserState
from gateway.profiles import Interaction, OptOut, UserProfile
from gateway.store.records import AuditEntry, Final, KillSwitch, MessageRecord, TimelineEntry


class IdemState(StrEnum):
    NEW = "new"  # first time: the caller now owns the request id
    SAME = "same"  # decided before with the same body: ``answer`` is the first answer
    PENDING = "pending"  # the same body is being decided right now by another call
    CONFLICT = "conflict"  # seen before with a different body


@dataclass(frozen=True)
class IdemResult:
    state: IdemState
    answer: bytes | None = None


@dataclass(frozen=True)
class IdemKey:
    bu: str
    request_id: str
    fingerprint: str


class Store(Protocol):
    kind: str

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    # --- idempotency ---------------------------------------------------------------
    async def idem_begin(self, key: IdemKey, ttl: timedelta) -> IdemResult:
        """Claim a request id, or tell what is known of it."""
        ...

    async def idem_abort(self, key: IdemKey) -> None:
        """Give back a claimed request id (the decision failed) so a retry can run."""
        ...

    # --- messages ------------------------------------------------------------------
    async def save_decision(
        self,
        record: MessageRecord,
        idem: IdemKey | None,
        answer: bytes,
        idem_ttl: timedelta,
        retention: timedelta,
    ) -> None:
        """Keep a decided message (with its first timeline entries) and the answer to
        its request id, together."""
        ...

    async def add_events(
        self,
        message_id: str,
        events: Sequence[TimelineEntry],
        status: str | None,
        retention: timedelta,
        final: Final | None = None,
    ) -> None:
        """Append to a message's timeline and, when given, set its status and its
        final outcome."""
        ...

    async def get_message(self, message_id: str) -> MessageRecord | None: ...

    # --- users ---------------------------------------------------------------------
    async def upsert_user(self, user_id: str, patch: Mapping[str, Any], now: datetime, ttl: timedelta) -> UserProfile:
        """Replace the named profile sections (``profiles.PROFILE_SECTIONS``)."""
        ...

    async def get_user(self, user_id: str) -> UserProfile | None: ...

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

    async def clear_kill_switch(self, switch_id: str, audit_of: Any) -> KillSwitch | None:
        """Remove a switch; ``audit_of(switch)`` builds its audit entry. None if unknown."""
        ...

    async def kill_switches(self) -> list[KillSwitch]: ...

    async def watch_kill_switches(self, on_change: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """Call ``on_change`` when another process changes a switch, until ``stopping``."""
        ...

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        """Most recent first."""
        ...

    async def get_messages(self, message_ids: Sequence[str]) -> list[MessageRecord | None]:
        """Several messages in one round trip, in order (None where unknown)."""
        ...

    # --- arbitration state ---------------------------------------------------------
    async def load_user(
        self, user_id: str, dedup: tuple[str, str] | None, since: datetime
    ) -> tuple[UserProfile | None, UserState]:
        """The profile and the arbitration state (reservations at or after ``since``,
        the pending pool, whether ``(bu, dedup_key)`` was seen), in one round trip."""
        ...

    async def apply(
        self,
        user_id: str,
        expected_version: int | None,
        mutations: Sequence[Mutation],
        now: datetime,
        retention: timedelta,
    ) -> bool:
        """Apply a decision's mutations atomically, only if the user's state is still
        at ``expected_version`` (None: unconditionally). False when it moved on.
        Holds also bring the user forward in the due index."""
        ...

    # --- due index (users whose pending pool has something due) ---------------------
    async def take_due(self, now: datetime, limit: int, lease: timedelta) -> list[tuple[str, datetime]]:
        """Up to ``limit`` users due at ``now``, each leased until the returned time:
        no other caller gets the same user until the lease ends or ``finish_due``."""
        ...

    async def finish_due(self, user_id: str, leased_until: datetime, next_due: datetime | None) -> None:
        """End a lease: the user is due again at ``next_due`` (or leaves the index).
        A hold added meanwhile for an earlier time is kept."""
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

    async def take_token(self, bucket: str, rate: float, burst: int, now: datetime) -> float:
        """One token from a bucket shared by every replica, refilled at ``rate`` a second
        up to ``burst``: 0 when granted, else the seconds until one will be there."""
        ...

    async def record_outcome(self, key: str, bad: bool, last: int, ttl: timedelta) -> tuple[int, int]:
        """Add one send's outcome to the sliding window of ``key`` (the most recent
        ``last``); returns how many are in it and how many of those were bad."""
        ...
