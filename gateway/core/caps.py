"""Frequency caps over a user's reservations (pure).

A category's rules all hold at once; a rule may be narrowed to a channel or a business
unit, and its limit may depend on the user's RFM tier. Channels' per-user limits (SMS a
day, WeChat mass sends a month) are rules over every category. Windows are rolling
(``24h``) or calendar (``day``, ``week``, ``month`` in the user's time zone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.core.state import SentEntry
from gateway.core.times import calendar_start
from gateway.domain import Category, Channel
from gateway.policy.model import Policy
from gateway.policy.schema import CapWindow


@dataclass(frozen=True)
class Rule:
    label: str  # "marketing.daily", "SMS per user a day"
    window: CapWindow
    limit: int
    category: Category | None  # None: every category (channel limits)
    channel: Channel | None
    bu: str | None

    def start(self, now: datetime, tz: ZoneInfo) -> datetime:
        if self.window.calendar is not None:
            return calendar_start(self.window.calendar, now, tz)
        assert self.window.rolling is not None
        return now - self.window.rolling

    def counts(self, entry: SentEntry) -> bool:
        return (
            (self.category is None or entry.category == self.category)
            and (self.channel is None or entry.channel == self.channel)
            and (self.bu is None or entry.bu == self.bu)
        )

    def used(self, entries: Iterable[SentEntry], now: datetime, tz: ZoneInfo) -> int:
        start = self.start(now, tz)
        return sum(1 for e in entries if e.at >= start and self.counts(e))


@dataclass(frozen=True)
class Blocked:
    rule: Rule
    used: int

    def describe(self) -> str:
        return f"cap {self.rule.label} ({self.rule.window}): {self.used} of {self.rule.limit} used"


def rules_for(policy: Policy, category: Category, bu: str, tier: str) -> list[Rule]:
    """The rules a claim of ``bu`` in ``category`` must fit, channel limits included."""
    rules = []
    for index, cap in enumerate(policy.categories[category].caps):
        if cap.bu is not None and cap.bu != bu:
            continue
        rules.append(
            Rule(f"{category}.{cap.label(index)}", cap.window, cap.limit_for(tier), category, cap.channel, cap.bu)
        )
    for channel, settings in policy.channels.items():
        if settings.per_user_daily_limit is not None:
            daily = settings.per_user_daily_limit
            rules.append(Rule(f"{channel} per user a day", CapWindow(calendar="day"), daily, None, channel, None))
        if settings.per_user_monthly_limit is not None:
            rules.append(
                Rule(
                    f"{channel} per user a month",
                    CapWindow(calendar="month"),
                    settings.per_user_monthly_limit,
                    None,
                    channel,
                    None,
                )
            )
    return rules


def first_block(
    rules: Sequence[Rule], channel: Channel, entries: Sequence[SentEntry], now: datetime, tz: ZoneInfo
) -> Blocked | None:
    """The first rule that one more message on ``channel`` would break."""
    for rule in rules:
        if rule.channel is not None and rule.channel != channel:
            continue
        used = rule.used(entries, now, tz)
        if used + 1 > rule.limit:
            return Blocked(rule, used)
    return None


def pick_channel(
    rules: Sequence[Rule], plan: Sequence[Channel], entries: Sequence[SentEntry], now: datetime, tz: ZoneInfo
) -> tuple[Channel | None, list[Blocked]]:
    """The first channel of the plan that every rule allows, and what blocked the ones
    before it. ``None`` when no channel fits."""
    blocked: list[Blocked] = []
    for channel in plan:
        block = first_block(rules, channel, entries, now, tz)
        if block is None:
            return channel, blocked
        blocked.append(block)
    return None, blocked


def retention(policy: Policy) -> timedelta:
    """How long reservations must be kept: the longest window of any rule."""
    return policy.cap_retention
