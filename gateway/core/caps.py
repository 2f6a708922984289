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
from functools import lru_cache
from zoneinfo import ZoneInfo

from gateway.core.times import calendar_start
from gateway.policy.model import Policy
from gateway.policy.schema import CapWindow
from gateway.values.domain import Category, Channel
from gateway.values.state import MIN_KEEP, SentEntry

# How far back a calendar window can reach, whatever the user's time zone.
CALENDAR_REACH = {"day": timedelta(days=2), "week": timedelta(days=8), "month": timedelta(days=32)}


@dataclass(frozen=True)
class Rule:
    label: str  # "marketing.daily", "SMS per user a day"
    window: CapWindow
    limit: int
    category: Category | None  # None: every category (channel limits)
    channel: Channel | None
    bu: str | None

    @property
    def window_text(self) -> str:
        return _window_text(self.window)

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
        category, channel, bu = self.category, self.channel, self.bu
        return sum(
            1
            for e in entries
            if e.at >= start
            and (category is None or e.category == category)
            and (channel is None or e.channel == channel)
            and (bu is None or e.bu == bu)
        )


@lru_cache(maxsize=256)
def _window_text(window: CapWindow) -> str:
    return str(window)


@dataclass(frozen=True)
class Blocked:
    rule: Rule
    used: int

    def describe(self) -> str:
        return f"cap {self.rule.label} ({self.rule.window_text}): {self.used} of {self.rule.limit} used"


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


class Usage:
    """How much of each rule the user's reservations use, counted once per rule and only
    for the rules asked about (a rule's count does not depend on the channel tried)."""

    def __init__(self, rules: Sequence[Rule], entries: Sequence[SentEntry], now: datetime, tz: ZoneInfo) -> None:
        self.rules = rules
        self._entries, self._now, self._tz = entries, now, tz
        self._counts: list[int | None] = [None] * len(rules)

    def count(self, index: int) -> int:
        known = self._counts[index]
        if known is None:
            known = self._counts[index] = (
                self.rules[index].used(self._entries, self._now, self._tz) if self._entries else 0
            )
        return known


def first_block(used: Usage, channel: Channel) -> Blocked | None:
    """The first rule that one more message on ``channel`` would break."""
    for index, rule in enumerate(used.rules):
        if rule.channel is not None and rule.channel != channel:
            continue
        count = used.count(index)
        if count + 1 > rule.limit:
            return Blocked(rule, count)
    return None


def pick_channel(plan: Sequence[Channel], used: Usage) -> tuple[Channel | None, list[Blocked]]:
    """The first channel of the plan that every rule allows, and what blocked the ones
    before it. ``None`` when no channel fits."""
    blocked: list[Blocked] = []
    for channel in plan:
        block = first_block(used, channel)
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
