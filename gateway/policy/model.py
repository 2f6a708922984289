"""The loaded policy: immutable, validated once, read by every decision."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

from gateway.core.audience import Audience, parse
from gateway.policy.providers import Provider
from gateway.policy.schema import (
    AudienceDefinition,
    BusinessUnit,
    CategoryPolicy,
    ChannelPolicy,
    Defaults,
    Scenario,
    TierPolicy,
)
from gateway.policy.wechat_events import WechatEvents
from gateway.values.domain import Category, Channel

PLACEHOLDER_RE = re.compile(r"\{([a-z][a-z0-9_.]*)\}")
CONTENT_PLACEHOLDERS = frozenset({"content.title", "content.body", "content.url"})
T = TypeVar("T")


@dataclass(frozen=True)
class ContentGuard:
    """Words that make free text read as marketing, per language."""

    words: Mapping[str, tuple[str, ...]]
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def build(words: Mapping[str, tuple[str, ...]]) -> ContentGuard:
        alternatives = []
        for word in sorted({w for ws in words.values() for w in ws}, key=len, reverse=True):
            escaped = re.escape(word.casefold())
            # Latin words match whole words only ("sale" must not match "wholesale");
            # CJK text has no spaces, so those match anywhere.
            alternatives.append(rf"\b{escaped}\b" if word.isascii() else escaped)
        pattern = re.compile("|".join(alternatives)) if alternatives else None
        return ContentGuard(words=words, _pattern=pattern)

    def find(self, text: str) -> list[str]:
        """The guard words found in ``text``, in order of appearance, each once."""
        if self._pattern is None or not text:
            return []
        found: list[str] = []
        for match in self._pattern.finditer(text.casefold()):
            if match.group(0) not in found:
                found.append(match.group(0))
        return found


@dataclass(frozen=True)
class Policy:
    version: str
    loaded_at: datetime
    files: tuple[str, ...]
    defaults: Defaults
    content_guard: ContentGuard
    business_units: Mapping[str, BusinessUnit]
    scenarios: Mapping[str, Scenario]
    categories: Mapping[Category, CategoryPolicy]
    tiers: TierPolicy
    channels: Mapping[Channel, ChannelPolicy]
    providers: Mapping[str, Provider]
    audiences: Mapping[str, AudienceDefinition]
    # What WeChat callbacks do to the user (tags, opt-outs, replies).
    wechat_events: WechatEvents = field(default_factory=WechatEvents)
    # What is derived from the policy (cap rules by category, unit and tier; retention
    # per category and channel; ...), built once per loaded version on first use.
    _derived: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def derived(self, key: Any, build: Callable[[], T]) -> T:
        """``build()`` once per policy version and ``key``; the cached value after that."""
        try:
            value: T = self._derived[key]
        except KeyError:
            value = self._derived[key] = build()
        return value

    @cached_property
    def cap_retention(self) -> timedelta:
        """How long reservations must be kept: the longest cap window (at least a
        calendar month, with room for time zones)."""
        longest = timedelta(days=32)
        for category in self.categories.values():
            for cap in category.caps:
                if cap.window.rolling is not None:
                    longest = max(longest, cap.window.rolling + timedelta(days=1))
        return longest

    def arbitrates(self, category: Category) -> bool:
        """Whether claims of this category wait for the user's send window."""
        setting = self.categories[category].arbitrate
        return setting if setting is not None else category is Category.MARKETING

    def audience(self, name: str) -> Audience:
        """The named audience, parsed (once per policy version); KeyError if there is none."""
        definition = self.audiences[name]
        return self.derived(("audience", name), lambda: parse(definition.expression, self.tiers.names))

    def granted(self, bu: str, scenario: str) -> bool:
        unit = self.business_units.get(bu)
        return unit is not None and scenario in unit.scenarios
