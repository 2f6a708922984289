"""The decision over one claim: plain code over values, no I/O, clock passed in.

Applied in DESIGN.md's order; the first rule that suppresses is the reason. This is the
base the arbitration layer (caps, quiet hours, competing claims) builds on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.core.claims import Claim
from gateway.core.killswitch import blocking_switch
from gateway.core.route import Skip, route
from gateway.domain import Channel, Outcome, Reason
from gateway.policy.model import Policy
from gateway.profiles import UserProfile, opted_out
from gateway.store.records import KillSwitch


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: Reason | None
    detail: str
    plan: tuple[Channel, ...] = ()
    scheduled_at: datetime | None = None


def _suppressed(reason: Reason, detail: str) -> Decision:
    return Decision(Outcome.SUPPRESSED, reason, detail)


def decide(
    claim: Claim,
    profile: UserProfile | None,
    policy: Policy,
    switches: Iterable[KillSwitch],
    now: datetime,
) -> Decision:
    switches = list(switches)
    switch = blocking_switch(
        switches,
        now=now,
        category=str(claim.category),
        bu=claim.bu,
        scenario=claim.scenario,
        campaign_id=claim.campaign_id,
    )
    if switch is not None:
        return _suppressed(Reason.KILL_SWITCH, f"stopped by {switch.describe()}")
    if claim.deadline is not None and claim.deadline <= now:
        return _suppressed(Reason.EXPIRED, f"deadline {claim.deadline.isoformat()} has passed")
    if profile is None:
        return _suppressed(
            Reason.NO_REACHABLE_CHANNEL,
            f"user '{claim.user_id}' has no profile; create it with ProfileService.UpsertUser or `herald users import`",
        )
    opt_out = opted_out(profile, claim.category)
    if opt_out is not None:
        source = f" ({opt_out.source})" if opt_out.source else ""
        return _suppressed(Reason.OPTED_OUT, f"user opted out of {claim.category} messages{source}")

    plan = route(claim.scenario, claim.category, profile, policy, switches, now)
    if not plan.plan:
        reasons = {why for _, why in plan.skipped}
        if Skip.KILLED in reasons:
            return _suppressed(Reason.KILL_SWITCH, f"every usable channel is stopped: {plan.explain()}")
        if Skip.OPTED_OUT in reasons:
            return _suppressed(Reason.OPTED_OUT, f"user opted out of every usable channel: {plan.explain()}")
        return _suppressed(Reason.NO_REACHABLE_CHANNEL, f"no channel reaches the user: {plan.explain()}")

    route_text = " then ".join(plan.plan)
    if claim.not_before is not None and claim.not_before > now:
        return Decision(
            Outcome.SCHEDULED,
            None,
            f"held until not_before {claim.not_before.isoformat()}; then {route_text}",
            plan.plan,
            claim.not_before,
        )
    return Decision(Outcome.ACCEPTED, None, f"sending via {route_text}", plan.plan)
