"""Kill switches as every replica sees them: the store is the truth, each process keeps
a copy refreshed often enough that a new switch is honoured everywhere within a second.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from gateway.clock import Clock
from gateway.ids import new_id
from gateway.logs import get_logger
from gateway.loops import every
from gateway.metrics import Metrics
from gateway.store.base import Store
from gateway.values.records import AuditEntry, KillSwitch, ScopeKind

log = get_logger(__name__)


class KillSwitches:
    def __init__(self, store: Store, clock: Clock, metrics: Metrics, refresh_seconds: float = 0.5) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._refresh_seconds = refresh_seconds
        self._switches: list[KillSwitch] = []
        self._active_ids: frozenset[str] = frozenset()
        # Bumped whenever the set of active switches changes: the dispatcher looks at
        # the deliveries it keeps for a switch again.
        self.generation = 0

    def current(self) -> list[KillSwitch]:
        now = self._clock.now()
        return [s for s in self._switches if s.active(now)]

    async def refresh(self) -> None:
        self._switches = await self._store.kill_switches()
        active = self.current()
        ids = frozenset(s.switch_id for s in active)
        if ids != self._active_ids:
            self._active_ids = ids
            self.generation += 1
        for scope in ScopeKind:
            self._metrics.kill_switches.labels(str(scope)).set(sum(s.scope is scope for s in active))

    async def run(self, stopping: asyncio.Event) -> None:
        """Pub/sub for changes made elsewhere (milliseconds), polling as the fallback
        and for expiries (``refresh_seconds``)."""
        feed = asyncio.create_task(self._store.watch_kill_switches(self.refresh, stopping), name="kill-switch-feed")
        try:
            await every(self._refresh_seconds, self.refresh, stopping, "kill-switches")
        finally:
            await asyncio.wait([feed], timeout=2)
            feed.cancel()

    async def set(
        self, scope: ScopeKind, value: str, reason: str, actor: str, expires_at: datetime | None = None
    ) -> KillSwitch:
        now = self._clock.now()
        switch = KillSwitch(new_id("ks"), scope, value, reason, actor, now, expires_at)
        await self._store.put_kill_switch(switch, AuditEntry(now, "set", actor, switch))
        await self.refresh()
        log.warning(
            "kill_switch_set", switch_id=switch.switch_id, scope=str(scope), value=value, actor=actor, reason=reason
        )
        return switch

    async def clear(self, switch_id: str, actor: str, note: str = "") -> KillSwitch | None:
        now = self._clock.now()
        cleared = await self._store.clear_kill_switch(switch_id, lambda s: AuditEntry(now, "clear", actor, s, note))
        await self.refresh()
        if cleared:
            log.warning("kill_switch_cleared", switch_id=switch_id, actor=actor)
        return cleared
