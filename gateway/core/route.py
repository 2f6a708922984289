"""The channel plan: the scenario's channels that can reach this user now, primary
first (pure). See docs/design.md, "Channel routing"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.core.killswitch import killed_channels
from gateway.core.profile_rules import cs_window, opted_out
from gateway.policy.model import Policy
from gateway.values.domain import Category, Channel
from gateway.values.profiles import UserProfile
from gateway.values.records import KillSwitch
from gateway.values.state import SentEntry


class Skip(StrEnum):
    NO_CONTACT = "no_contact"
    NOT_FOLLOWING = "not_following"
    WINDOW_CLOSED = "window_closed"
    WINDOW_USED_UP = "window_used_up"
    OPTED_OUT = "opted_out"
    KILLED = "killed"


@dataclass(frozen=True)
class Route:
    plan: tuple[Channel, ...]
    skipped: tuple[tuple[Channel, Skip], ...]

    def explain(self) -> str:
        return ", ".join(f"{channel} {why}" for channel, why in self.skipped)


_WECHAT = frozenset({Channel.WECHAT_TEMPLATE, Channel.WECHAT_CS, Channel.WECHAT_MASS})


def reachable(
    channel: Channel, profile: UserProfile, policy: Policy, now: datetime, sent: Sequence[SentEntry] = ()
) -> Skip | None:
    """Why ``channel`` cannot reach the user now (None: it can). ``sent``: the user's
    reservations, which count against the customer-service window's quota."""
    if channel in _WECHAT:
        if profile.wechat is None or not profile.wechat.openid:
            return Skip.NO_CONTACT
        if not profile.wechat.following:
            return Skip.NOT_FOLLOWING
        if channel is Channel.WECHAT_CS:
            windows = policy.channels[channel].cs_windows
            window = cs_window(profile.interactions, windows, now)
            if window is None:
                return Skip.WINDOW_CLOSED
            if window.quota is not None and window.opened_at is not None:
                used = sum(1 for e in sent if e.channel is Channel.WECHAT_CS and e.at >= window.opened_at)
                if used >= window.quota:
                    return Skip.WINDOW_USED_UP
        return None
    if channel is Channel.SMS:
        return None if profile.phone else Skip.NO_CONTACT
    if channel is Channel.EMAIL:
        return None if profile.email else Skip.NO_CONTACT
    return None if profile.device_tokens else Skip.NO_CONTACT


def route(
    scenario_name: str,
    category: Category,
    profile: UserProfile,
    policy: Policy,
    switches: Sequence[KillSwitch],
    now: datetime,
    sent: Sequence[SentEntry] = (),
    down: frozenset[Channel] = frozenset(),
) -> Route:
    scenario = policy.scenarios[scenario_name]
    killed = killed_channels(switches, now)
    plan: list[Channel] = []
    skipped: list[tuple[Channel, Skip]] = []
    for channel in scenario.channels:
        why = reachable(channel, profile, policy, now, sent)
        if why is None and opted_out(profile, category, channel) is not None:
            why = Skip.OPTED_OUT
        if why is None and channel in killed:
            why = Skip.KILLED
        if why is None:
            plan.append(channel)
        else:
            skipped.append((channel, why))
    if not scenario.keep_order and len(plan) > 1:
        plan.sort(key=lambda c: policy.channels[c].cost > 0)  # stable: free first
    # A channel whose provider is down (breaker open) stays in the plan, last: it may
    # be back by the time the others have failed.
    if down and len(plan) > 1:
        plan.sort(key=lambda c: c in down)
    return Route(tuple(plan), tuple(skipped))
