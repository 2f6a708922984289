"""Frequency caps over a user's reservations (pure).

A category's rules all hold at once; a rule may be narrowed to a channel or a business
unit, and its limit may depend on the user's RFM tier. Channels' per-user limits (SMS a
day, WeChat mass sends a month) are rules over every category. Windows are rolling
(``24h``) or calendar (``day``, ``week``, ``month`` in the user's time zone).

The rules of a (category, business unit, tier) and how long each kind of reservation
must be kept are derived from the policy once per loaded version (``Policy.derived``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.core.times import calendar_start
from gateway.policy.model import Policy
from gateway.policy.schema import CapWindow
from gateway.values.domain import Category, Channel
from gateway.values.state import SentEntry

# How far back a calendar window can reach, whatever the user's time zone.
CALENDAR_REACH = {"day": timedelta(days=2), "week": timedelta(days=8), "month": timedelta(days=32)}
MIN_KEEP = timedelta(days=1)


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

    def reach(self) -> timedelta:
        """The longest time back this rule can count."""
        if self.window.calendar is not None:
            return CALENDAR_REACH[self.window.calendar]
        assert self.window.rolling is not None
        return self.window.rolling

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


def _channel_rules(policy: Policy) -> list[Rule]:
    rules = []
    for channel, settings in policy.channels.items():
        if settings.per_user_daily_limit is not None:
            daily = settings.per_user_daily_limit
            rules.append(Rule(f"{channel} per user a day", CapWindow(calendar="day"), daily, None, channel, None))
        if settings.per_user_monthly_limit is not None:
            monthly = settings.per_user_monthly_limit
            rules.append(Rule(f"{channel} per user a month", CapWindow(calendar="month"), monthly, None, channel, None))
    return rules


def _build_rules(policy: Policy, category: Category, bu: str, tier: str) -> tuple[Rule, ...]:
    rules = []
    for index, cap in enumerate(policy.categories[category].caps):
        if cap.bu is not None and cap.bu != bu:
            continue
        rules.append(
            Rule(f"{category}.{cap.label(index)}", cap.window, cap.limit_for(tier), category, cap.channel, cap.bu)
        )
    return (*rules, *policy.derived("channel-rules", lambda: tuple(_channel_rules(policy))))


def rules_for(policy: Policy, category: Category, bu: str, tier: str) -> tuple[Rule, ...]:
    """The rules a claim of ``bu`` in ``category`` must fit, channel limits included."""
    return policy.derived(("rules", category, bu, tier), lambda: _build_rules(policy, category, bu, tier))


def all_rules(policy: Policy, tier: str) -> tuple[Rule, ...]:
    """Every rule of every category for a user of ``tier`` (business-unit rules
    included), for explaining a user's counters."""

    def build() -> tuple[Rule, ...]:
        rules = []
        for category, settings in policy.categories.items():
            for index, cap in enumerate(settings.caps):
                label = f"{category}.{cap.label(index)}" + (f" ({cap.bu} only)" if cap.bu else "")
                rules.append(Rule(label, cap.window, cap.limit_for(tier), category, cap.channel, cap.bu))
        return (*rules, *_channel_rules(policy))

    return policy.derived(("all-rules", tier), build)


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


def _build_keep(policy: Policy) -> Callable[[SentEntry], timedelta]:
    """How long a reservation of (category, channel) must be kept: the longest reach of
    any rule that can count it (at least a day; the customer-service window's quota
    counts WECHAT_CS entries over its longest window)."""
    rules = [r for tier in policy.tiers.names for r in all_rules(policy, tier)]
    cs = policy.channels.get(Channel.WECHAT_CS)
    cs_reach = max((w.window for w in cs.cs_windows.values()), default=MIN_KEEP) if cs else MIN_KEEP
    table: dict[tuple[Category, Channel], timedelta] = {}
    for category in Category:
        for channel in Channel:
            reach = [r.reach() for r in rules if r.category in (None, category) and r.channel in (None, channel)]
            if channel is Channel.WECHAT_CS:
                reach.append(cs_reach)
            table[category, channel] = max([MIN_KEEP, *reach]) + timedelta(minutes=5)

    def keep(entry: SentEntry) -> timedelta:
        return table[entry.category, entry.channel]

    return keep


def keep_for(policy: Policy) -> Callable[[SentEntry], timedelta]:
    return policy.derived("keep", lambda: _build_keep(policy))


def retention(policy: Policy) -> timedelta:
    """The longest any reservation is kept (how long a user's state must live)."""
    return policy.cap_retention
