"""Audience expressions as values: frozen nodes, each of which says whether it holds
for a user, prints itself canonically and plans an index scan. ``gateway.core.audience``
reads them from text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.durations import format_duration
from gateway.values.domain import Channel
from gateway.values.profiles import KNOWN_ATTRIBUTES, UserProfile

TagMode = Literal["any", "all", "none"]
TAG_MODES: tuple[TagMode, ...] = ("any", "all", "none")
# What a bare (unquoted) word may hold: anything but spaces, ( ) [ ] , = ! and ".
WORD_CHARS = r'[^\s()\[\],="!]'
# Punctuation a Chinese input method types in place of the ASCII the syntax needs. In a
# bare word it would pass silently (city in [杭州，上海] is one value, matching no one).
FULL_WIDTH = {
    "，": ",",
    "（": "(",
    "）": ")",
    "［": "[",
    "］": "]",
    "【": "[",
    "】": "]",
    "＝": "=",
    "！": "!",
    "“": '"',
    "”": '"',
}
FULL_WIDTH_RE = re.compile("[" + "".join(FULL_WIDTH) + "]")


@dataclass(frozen=True, slots=True)
class Subject:
    """What a condition reads: the profile, its RFM tier, the time, and the tags as a set."""

    profile: UserProfile
    tier: str
    now: datetime
    tags: frozenset[str]


class Node:
    """A condition. ``plan(negated)``: tags one of which every user the condition (or,
    when ``negated``, its negation) holds for must carry; None when there is no such set."""

    __slots__ = ()

    def holds(self, subject: Subject) -> bool:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError

    def plan(self, negated: bool) -> tuple[str, ...] | None:
        return None


@dataclass(frozen=True, slots=True)
class Tags(Node):
    mode: TagMode
    tags: tuple[str, ...]

    def holds(self, subject: Subject) -> bool:
        if self.mode == "any":
            return not subject.tags.isdisjoint(self.tags)
        if self.mode == "all":
            return subject.tags.issuperset(self.tags)
        return subject.tags.isdisjoint(self.tags)

    def render(self) -> str:
        return f"tags {self.mode} {_list_text(self.tags)}"

    def plan(self, negated: bool) -> tuple[str, ...] | None:
        if self.mode == "any" and not negated:
            return self.tags
        if self.mode == "all" and not negated:
            return self.tags[:1]  # every one is carried: any single tag's members will do
        if self.mode == "none" and negated:
            return self.tags  # not (none of them) = at least one of them
        return None


@dataclass(frozen=True, slots=True)
class Tier(Node):
    tiers: tuple[str, ...]
    negated: bool = False

    def holds(self, subject: Subject) -> bool:
        return (subject.tier in self.tiers) != self.negated

    def render(self) -> str:
        return f"tier {_choice_text(self.tiers, self.negated)}"


@dataclass(frozen=True, slots=True)
class Attribute(Node):
    """A missing attribute reads as "": ``city = ""`` is a user with no city."""

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def holds(self, subject: Subject) -> bool:
        return (subject.profile.attributes.get(self.key, "") in self.values) != self.negated

    def render(self) -> str:
        name = self.key if self.key in KNOWN_ATTRIBUTES else f"attr.{self.key}"
        return f"{name} {_choice_text(self.values, self.negated)}"


@dataclass(frozen=True, slots=True)
class FollowsWechat(Node):
    def holds(self, subject: Subject) -> bool:
        wechat = subject.profile.wechat
        return wechat is not None and wechat.following

    def render(self) -> str:
        return "follows wechat"


def has_contact(profile: UserProfile, channel: Channel) -> bool:
    """A contact point for ``channel`` is on the profile (whether the channel is
    configured, opted out of or within its window is the router's concern)."""
    if channel is Channel.SMS:
        return bool(profile.phone)
    if channel is Channel.EMAIL:
        return bool(profile.email)
    if channel is Channel.APP_PUSH:
        return bool(profile.device_tokens)
    wechat = profile.wechat
    if wechat is None or not wechat.openid:
        return False
    # Customer-service messages go to an openid; template and mass messages reach followers only.
    return channel is Channel.WECHAT_CS or wechat.following


@dataclass(frozen=True, slots=True)
class HasChannel(Node):
    """A contact point for the channel is on the profile (whether the channel is
    configured, opted out of or within its window is the router's concern)."""

    channel: Channel

    def holds(self, subject: Subject) -> bool:
        return has_contact(subject.profile, self.channel)

    def render(self) -> str:
        return f"has channel {self.channel.value}"


@dataclass(frozen=True, slots=True)
class InteractedWithin(Node):
    within: timedelta

    def holds(self, subject: Subject) -> bool:
        return any(subject.now - i.at <= self.within for i in subject.profile.interactions)

    def render(self) -> str:
        return f"interacted within {format_duration(self.within)}"


@dataclass(frozen=True, slots=True)
class PurchasedWithin(Node):
    within: timedelta

    def holds(self, subject: Subject) -> bool:
        last = subject.profile.rfm.last_purchase_at
        return last is not None and subject.now - last <= self.within

    def render(self) -> str:
        return f"purchased within {format_duration(self.within)}"


@dataclass(frozen=True, slots=True)
class Not(Node):
    inner: Node

    def holds(self, subject: Subject) -> bool:
        return not self.inner.holds(subject)

    def render(self) -> str:
        return f"not {_grouped(self.inner, (And, Or))}"

    def plan(self, negated: bool) -> tuple[str, ...] | None:
        return self.inner.plan(not negated)


@dataclass(frozen=True, slots=True)
class And(Node):
    parts: tuple[Node, ...]

    def holds(self, subject: Subject) -> bool:
        return all(part.holds(subject) for part in self.parts)

    def render(self) -> str:
        return " and ".join(_grouped(part, (And, Or)) for part in self.parts)

    def plan(self, negated: bool) -> tuple[str, ...] | None:
        plans = [part.plan(negated) for part in self.parts]
        # Every part holds: any one part's tags will do. Negated, one part fails: every one's are needed.
        return _union(plans) if negated else _narrowest(plans)


@dataclass(frozen=True, slots=True)
class Or(Node):
    parts: tuple[Node, ...]

    def holds(self, subject: Subject) -> bool:
        return any(part.holds(subject) for part in self.parts)

    def render(self) -> str:
        return " or ".join(_grouped(part, (Or,)) for part in self.parts)

    def plan(self, negated: bool) -> tuple[str, ...] | None:
        plans = [part.plan(negated) for part in self.parts]
        return _narrowest(plans) if negated else _union(plans)


def _narrowest(plans: Iterable[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    """The plan with the fewest tags (the first of equals), None when none has one."""
    known = [plan for plan in plans if plan is not None]
    return min(known, key=len) if known else None


def _union(plans: Iterable[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    """Every plan's tags, each once; None when any part has no plan (it may match anyone)."""
    out: dict[str, None] = {}
    for plan in plans:
        if plan is None:
            return None
        out.update(dict.fromkeys(plan))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Audience:
    root: Node

    def matches(self, profile: UserProfile, tier: str, now: datetime) -> bool:
        """Whether the user, in RFM tier ``tier`` (``compute_tier``), is in the audience at ``now``."""
        return self.root.holds(Subject(profile, tier, now, frozenset(profile.tags)))

    @property
    def text(self) -> str:
        """The canonical form: ``parse(text)`` gives this audience back."""
        return self.root.render()

    def __str__(self) -> str:
        return self.text

    def index_tags(self) -> tuple[str, ...] | None:
        """Tags one of which every matching user carries, so only their members need
        reading; None: any user may match, scan them all."""
        return self.root.plan(False)

    def scan_steps(self) -> tuple[str | None, ...]:
        """The indexes a scan reads, one after the other: each planned tag's, or every
        user's (None)."""
        return self.index_tags() or (None,)

    @staticmethod
    def indexed(profile: UserProfile | None, label: str | None) -> bool:
        """Whether a user read from the index of ``label`` (a scan step) still belongs
        there: the index is a superset, keeping users gone or untagged since until a
        scan drops them."""
        return profile is not None and (label is None or label in profile.tags)


# -- printing ---------------------------------------------------------------------------

_BARE_RE = re.compile(WORD_CHARS + "+")


def _value_text(value: str) -> str:
    if _BARE_RE.fullmatch(value) and not FULL_WIDTH_RE.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list_text(values: Iterable[str]) -> str:
    return "[" + ", ".join(_value_text(v) for v in values) + "]"


def _choice_text(values: tuple[str, ...], negated: bool) -> str:
    if len(values) == 1:
        return f"{'!=' if negated else '='} {_value_text(values[0])}"
    return f"{'not in' if negated else 'in'} {_list_text(values)}"


def _grouped(node: Node, kinds: tuple[type[Node], ...]) -> str:
    return f"({node.render()})" if isinstance(node, kinds) else node.render()
