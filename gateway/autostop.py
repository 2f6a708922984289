"""Auto-stop: Herald sets a kill switch on a campaign (or a reminder scenario) by itself
when too many of its recent sends come back blocked or unsubscribed.

Fed by the dispatcher (what a provider answered: unfollowed or blocked on WeChat, an
SMS opt-out, a refused template) and by the webhooks (WeChat's ``failed:user block``
job reports, one-click unsubscribes). The window of recent outcomes lives in the store,
so every replica counts into the same one.
"""

from __future__ import annotations

from datetime import timedelta

from gateway.errors import HeraldError
from gateway.killswitches import KillSwitches
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Store
from gateway.values.claims import Claim
from gateway.values.domain import Category
from gateway.values.records import ScopeKind

log = get_logger(__name__)
ACTOR = "herald auto-stop"
KEEP = timedelta(days=7)


def subject(scenario: str, campaign_id: str) -> tuple[ScopeKind, str]:
    return (ScopeKind.CAMPAIGN, campaign_id) if campaign_id else (ScopeKind.SCENARIO, scenario)


class AutoStop:
    def __init__(self, store: Store, switches: KillSwitches, policies: PolicyHolder, metrics: Metrics) -> None:
        self._store = store
        self._switches = switches
        self._policies = policies
        self._metrics = metrics

    async def record(self, claim: Claim, bad: bool) -> None:
        await self.record_for(claim.category, claim.scenario, claim.campaign_id, bad)

    async def record_for(self, category: Category, scenario: str, campaign_id: str, bad: bool) -> None:
        rule = self._policies.current.defaults.auto_stop
        if rule is None or category not in rule.categories:
            return
        scope, value = subject(scenario, campaign_id)
        try:
            total, blocked = await self._store.record_outcome(f"{scope}:{value}", bad, rule.last, KEEP)
        except HeraldError as exc:
            self._metrics.store_errors.labels("record_outcome").inc()
            log.error("auto_stop_not_counted", error=exc.message)
            return
        if total < rule.min_sends or blocked / total < rule.threshold:
            return
        if any(s.scope is scope and s.value == value for s in self._switches.current()):
            return  # already stopped
        reason = (
            f"auto-stop: {blocked} of the last {total} sends of {scope} '{value}' were blocked or unsubscribed "
            f"({blocked / total:.1%}, threshold {rule.threshold:.1%})"
        )
        try:
            switch = await self._switches.set(scope, value, reason, ACTOR)
        except HeraldError as exc:
            # The next bad outcome tries again; the caller's own work stands.
            self._metrics.store_errors.labels("auto_stop").inc()
            log.error("auto_stop_not_set", scope=str(scope), value=value, error=exc.message)
            return
        self._metrics.auto_stops.labels(str(scope)).inc()
        log.warning("auto_stop", switch_id=switch.switch_id, scope=str(scope), value=value, reason=reason)
