"""Profiles: validation of what callers send, and the operations of ProfileService."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec

from gateway.clock import Clock
from gateway.core.locales import LOCALE_RE
from gateway.core.profile_rules import CsWindowState, cs_window, interaction_retention
from gateway.core.validate import check_user_id
from gateway.errors import InvalidArgument, NotFound, Unavailable
from gateway.logs import get_logger
from gateway.masking import user_ref
from gateway.policy.holder import PolicyHolder
from gateway.store import keys
from gateway.store.base import Erasure, IndexCursor, Store, UserRead, erasable_messages
from gateway.values.domain import Category, Channel, InteractionKind, UserFact
from gateway.values.profiles import (
    ATTRIBUTE_KEY_RE,
    MAX_TAGS,
    NOT_A_TAG,
    PROFILE_SECTIONS,
    Interaction,
    OptOut,
    Rfm,
    UserProfile,
    WeChat,
    is_tag,
)
from gateway.values.records import MessageRecord
from gateway.values.state import UserState

log = get_logger(__name__)

PHONE_RE = re.compile(r"^\+[1-9]\d{6,14}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
OPENID_RE = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_VALUE = 256
MAX_DEVICE_TOKENS = 10
INTERACTIONS_KEPT = 20
# Compare-and-set rounds of add_tags before giving up (each lost only to another write
# of the same user's tags in between).
TAG_WRITE_TRIES = 5
CLOCK_SKEW = timedelta(minutes=5)


def validate_patch(patch: Mapping[str, Any], now: datetime, prefix: str = "user") -> None:
    """Check every section a caller sets; errors name the field (``user.phone``)."""
    for name in patch:
        if name not in PROFILE_SECTIONS:
            raise InvalidArgument("update_mask", f"unknown path '{name}'; use {', '.join(PROFILE_SECTIONS)}")
    wechat = patch.get("wechat")
    if isinstance(wechat, WeChat):
        if not OPENID_RE.match(wechat.openid):
            raise InvalidArgument(f"{prefix}.wechat.openid", "must be 6-64 characters of letters, digits, _ and -")
        if wechat.unionid and not OPENID_RE.match(wechat.unionid):
            raise InvalidArgument(f"{prefix}.wechat.unionid", "must be 6-64 characters of letters, digits, _ and -")
    phone = patch.get("phone")
    if phone and not PHONE_RE.match(phone):
        raise InvalidArgument(f"{prefix}.phone", "must be E.164: + then country code and number, e.g. +8613900001111")
    email = patch.get("email")
    if email and (len(email) > 254 or not EMAIL_RE.match(email)):
        raise InvalidArgument(f"{prefix}.email", "is not an email address")
    tokens = patch.get("device_tokens") or ()
    if len(tokens) > MAX_DEVICE_TOKENS:
        raise InvalidArgument(f"{prefix}.device_tokens", f"has {len(tokens)}; at most {MAX_DEVICE_TOKENS}")
    for index, token in enumerate(tokens):
        if not token.token or len(token.token) > 4096 or not token.token.isprintable():
            raise InvalidArgument(f"{prefix}.device_tokens[{index}].token", "must be 1-4096 printable characters")
    timezone = patch.get("timezone")
    if timezone:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(
                f"{prefix}.timezone", "is not an IANA time zone (e.g. Asia/Shanghai, Europe/Berlin)"
            ) from None
    locale = patch.get("locale")
    if locale and not LOCALE_RE.match(locale):
        raise InvalidArgument(f"{prefix}.locale", "must be a BCP 47 tag such as zh-CN")
    rfm = patch.get("rfm")
    if isinstance(rfm, Rfm):
        if rfm.orders_in_period < 0:
            raise InvalidArgument(f"{prefix}.rfm.orders_in_period", "must be 0 or more")
        if rfm.spend_in_period_minor < 0:
            raise InvalidArgument(f"{prefix}.rfm.spend_in_period_minor", "must be 0 or more")
        if rfm.last_purchase_at is not None and rfm.last_purchase_at > now + CLOCK_SKEW:
            raise InvalidArgument(f"{prefix}.rfm.last_purchase_at", "is in the future")
    validate_labels(patch.get("tags") or (), patch.get("attributes") or {}, prefix)


def validate_labels(tags: Collection[str], attributes: Mapping[str, str], prefix: str = "user") -> None:
    """Tags and attributes, as an audience will read them."""
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{prefix}.tags", f"has {len(tags)}; at most {MAX_TAGS}")
    for tag in tags:
        if not is_tag(tag):
            raise InvalidArgument(
                f"{prefix}.tags",
                f"'{tag[:64]}' is not a tag: {NOT_A_TAG}",
            )
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{prefix}.attributes", f"has {len(attributes)}; at most {MAX_ATTRIBUTES}")
    for key, value in attributes.items():
        if not ATTRIBUTE_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"{prefix}.attributes", f"key '{key[:40]}' must be a lowercase name: [a-z][a-z0-9_]{{0,31}}"
            )
        if len(value) > MAX_ATTRIBUTE_VALUE or not value.isprintable():
            raise InvalidArgument(
                f"{prefix}.attributes.{key}", f"must be up to {MAX_ATTRIBUTE_VALUE} printable characters"
            )


class UserExport(msgspec.Struct, frozen=True, gc=False):
    """Everything Herald holds about a user (a privacy access request)."""

    user_id: str
    profile: UserProfile | None
    state: UserState
    # Newest first, of every business unit.
    messages: tuple[MessageRecord, ...]


class Users:
    def __init__(self, store: Store, policies: PolicyHolder, clock: Clock) -> None:
        self._store = store
        self._policies = policies
        self._clock = clock

    async def upsert(self, user_id: str, patch: Mapping[str, Any]) -> UserProfile:
        check_user_id(user_id, "user.user_id")
        now = self._clock.now()
        validate_patch(patch, now)
        retention = self._policies.current.defaults.profile_retention
        profile = await self._store.upsert_user(user_id, patch, now, retention)
        wechat = patch.get("wechat")
        if isinstance(wechat, WeChat) and wechat.openid:
            # WeChat's callbacks name the user by openid only.
            await self._store.shared_put(keys.openid_index(wechat.openid), user_id, retention)
        return profile

    async def by_openid(self, openid: str) -> UserProfile | None:
        user_id = await self._store.shared_get(keys.openid_index(openid))
        if user_id is None:
            return None
        profile = await self._store.get_user(user_id)
        # An openid moved to another user since: the index is stale for this one.
        return profile if profile is not None and profile.wechat and profile.wechat.openid == openid else None

    async def set_following(self, profile: UserProfile, following: bool) -> UserProfile:
        assert profile.wechat is not None
        wechat = WeChat(profile.wechat.openid, profile.wechat.unionid, following=following)
        retention = self._policies.current.defaults.profile_retention
        return await self._store.upsert_user(profile.user_id, {"wechat": wechat}, self._clock.now(), retention)

    async def add_tags(self, profile: UserProfile, tags: Collection[str]) -> tuple[UserProfile, tuple[str, ...]]:
        """Add ``tags`` (valid ones, checked by the caller) to the user's, as a set, while
        the profile has room (MAX_TAGS; the first given go in first). The profile after,
        and the tags that were added. Another write of the tags meanwhile is read and
        added to, never overwritten."""
        ttl = self._policies.current.defaults.profile_retention
        for _ in range(TAG_WRITE_TRIES):
            have = set(profile.tags)
            new = tuple(t for t in dict.fromkeys(tags) if t not in have)[: max(0, MAX_TAGS - len(have))]
            if not new:
                return profile, ()
            merged = tuple(sorted(have.union(new)))
            done, current = await self._store.replace_tags(
                profile.user_id, profile.tags, merged, self._clock.now(), ttl
            )
            if current is None:
                return profile, ()  # forgotten meanwhile
            if done:
                return current, new
            profile = current
        raise Unavailable("the user's tags kept changing while tags were added; try again")

    async def get(self, user_id: str) -> UserProfile:
        check_user_id(user_id)
        profile = await self._store.get_user(user_id)
        if profile is None:
            raise NotFound(f"no user '{user_id}'; create it with UpsertUser")
        return profile

    async def record_interaction(
        self, user_id: str, kind: InteractionKind, at: datetime | None
    ) -> CsWindowState | None:
        check_user_id(user_id)
        now = self._clock.now()
        when = at or now
        if when > now + CLOCK_SKEW:
            raise InvalidArgument("at", "is in the future")
        windows = self._policies.current.channels.get(Channel.WECHAT_CS)
        cs_windows = windows.cs_windows if windows else {}
        profile = await self._store.record_interaction(
            user_id, Interaction(kind, when), INTERACTIONS_KEPT, interaction_retention(cs_windows)
        )
        if profile is None:
            raise NotFound(f"no user '{user_id}'; create it with UpsertUser before recording interactions")
        return cs_window(profile.interactions, cs_windows, now)

    async def set_opt_out(
        self, user_id: str, category: Category | None, channel: Channel | None, opted_out: bool, source: str
    ) -> UserProfile:
        check_user_id(user_id)
        if category is None and channel is None:
            raise InvalidArgument("category", "give a category, a channel, or both")
        if category is Category.BASIC and channel is None and opted_out:
            raise InvalidArgument(
                "category", "basic (transactional) messages cannot be opted out of; opt out of a channel instead"
            )
        if len(source) > 64:
            raise InvalidArgument("source", "at most 64 characters")
        entry = OptOut(category, channel, self._clock.now(), source)
        profile = await self._store.set_opt_out(
            user_id, entry, opted_out, self._policies.current.defaults.profile_retention
        )
        if profile is None:
            raise NotFound(f"no user '{user_id}'; create it with UpsertUser")
        return profile

    async def apply_fact(self, profile: UserProfile, fact: UserFact, recipient: str) -> UserProfile:
        """What a provider said about the user, kept (43004: no longer following; a bad
        number or mailbox cleared; a dead device token removed; an SMS opt-out)."""
        ttl = self._policies.current.defaults.profile_retention
        now = self._clock.now()
        patch: dict[str, Any] = {}
        if fact is UserFact.UNFOLLOWED and profile.wechat is not None:
            patch["wechat"] = WeChat(profile.wechat.openid, profile.wechat.unionid, following=False)
        elif fact is UserFact.BAD_PHONE and profile.phone == recipient:
            patch["phone"] = ""
        elif fact is UserFact.BAD_EMAIL and profile.email == recipient:
            patch["email"] = ""
        elif fact is UserFact.DEAD_DEVICE_TOKEN:
            patch["device_tokens"] = tuple(t for t in profile.device_tokens if t.token != recipient)
        elif fact is UserFact.SMS_OPTED_OUT:
            entry = OptOut(None, Channel.SMS, now, "provider")
            return await self._store.set_opt_out(profile.user_id, entry, True, ttl) or profile
        if not patch:
            return profile
        return await self._store.upsert_user(profile.user_id, patch, now, ttl)

    async def export(self, user_id: str) -> UserExport:
        """The profile, the arbitration state, and the messages still kept (found
        through the user's message index and the state), of every business unit."""
        check_user_id(user_id)
        [view] = await self._store.read_users([UserRead(user_id)], self._policies.current.defaults.idempotency_window)
        indexed = await self._store.user_messages(user_id, IndexCursor(), None, keys.USER_MESSAGES_KEEP)
        ids = erasable_messages([message_id for message_id, _ in indexed], view.state)
        found = [r for r in await self._store.get_messages(ids) if r is not None and r.user_id == user_id]
        messages = tuple(sorted(found, key=lambda r: (r.created_at, r.message_id), reverse=True))
        if view.profile is None and not messages and view.state == UserState():
            # Not named: this answer is logged, and it is what an erased user's id gets.
            raise NotFound("Herald holds nothing of this user (no profile, no message kept)")
        return UserExport(user_id, view.profile, view.state, messages)

    async def delete(self, user_id: str) -> Erasure:
        """Erase the user from the store (a privacy erasure request); what was removed.
        Logged with the user's log id and the counts, never the user id."""
        check_user_id(user_id)
        erased = await self._store.delete_user(user_id)
        log.info("user_deleted", user_ref=user_ref(user_id), removed=msgspec.structs.asdict(erased))
        return erased
