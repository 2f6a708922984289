"""A user's identity, contact points and preferences, as values."""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from gateway.values.domain import Category, Channel, InteractionKind, Platform, PushProvider

# The profile fields a caller sets (UpsertUser's update_mask paths).
CONTACT_SECTIONS = ("wechat", "phone", "email", "device_tokens", "timezone", "locale", "rfm")
# What audiences select on; writing them needs the `tag` grant.
LABEL_SECTIONS = ("tags", "attributes")
PROFILE_SECTIONS = (*CONTACT_SECTIONS, *LABEL_SECTIONS)
# The attributes every profile may have a value for (audiences name them bare).
KNOWN_ATTRIBUTES = ("province", "city", "language", "gender")
# A tag: letters of any script, digits, _ - . : @ / (no spaces or commas: tags are
# listed). Use ``is_tag``: ``$`` alone would let a trailing newline through.
TAG_RE = re.compile(r"[\w.:@/-]{1,64}")
MAX_TAGS = 200


# What a tag may be, in words (for errors).
NOT_A_TAG = "1-64 letters (any script), digits and _ - . : @ / (no spaces)"


def is_tag(text: str) -> bool:
    return TAG_RE.fullmatch(text) is not None


# An attribute's name (use ``fullmatch``).
ATTRIBUTE_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class WeChat(msgspec.Struct, frozen=True, gc=False):
    openid: str
    unionid: str = ""
    following: bool = False


class DeviceToken(msgspec.Struct, frozen=True, gc=False):
    token: str
    platform: Platform
    provider: PushProvider


class Rfm(msgspec.Struct, frozen=True, gc=False):
    last_purchase_at: datetime | None = None
    orders_in_period: int = 0
    spend_in_period_minor: int = 0


def opt_out_key(category: Category | None, channel: Channel | None) -> str:
    return f"{category or '*'}:{channel or '*'}"


class OptOut(msgspec.Struct, frozen=True, gc=False):
    """``category`` None: every category; ``channel`` None: every channel."""

    category: Category | None
    channel: Channel | None
    at: datetime
    source: str = ""

    @property
    def key(self) -> str:
        return opt_out_key(self.category, self.channel)


class Interaction(msgspec.Struct, frozen=True, gc=False, array_like=True):
    kind: InteractionKind
    at: datetime


class UserProfile(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    wechat: WeChat | None = None
    phone: str = ""
    email: str = ""
    device_tokens: tuple[DeviceToken, ...] = ()
    timezone: str = ""
    locale: str = ""
    rfm: Rfm = msgspec.field(default_factory=Rfm)
    # Sorted, distinct.
    tags: tuple[str, ...] = ()
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    opt_outs: tuple[OptOut, ...] = ()
    # Most recent first.
    interactions: tuple[Interaction, ...] = ()
    updated_at: datetime | None = None
