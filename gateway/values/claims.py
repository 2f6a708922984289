"""A request as it arrives (``PushInput``) and as Herald understands it (``Claim``)."""

from __future__ import annotations

import hashlib
from datetime import datetime

import msgspec
import orjson

from gateway.values.domain import Category

DEFAULT_PRIORITY = 50


class Content(msgspec.Struct, frozen=True, gc=False, array_like=True):
    title: str = ""
    body: str = ""
    url: str = ""

    def is_empty(self) -> bool:
        return not (self.title or self.body or self.url)


class PushInput(msgspec.Struct, frozen=True, gc=False):
    """A push request's fields, unvalidated, free of any wire format."""

    request_id: str
    user_id: str
    scenario: str
    params: dict[str, str] = msgspec.field(default_factory=dict)
    content: Content | None = None
    campaign_id: str = ""
    dedup_key: str = ""
    not_before: datetime | None = None
    deadline: datetime | None = None
    priority: int | None = None
    variant: str = ""  # a campaign's variant (set by the campaign runner only)

    def fingerprint(self) -> str:
        """A hash of the whole body: the same request_id must come with the same one."""
        return fingerprint_of(self.user_id, self.body_but_user())

    def body_but_user(self) -> bytes:
        """The body the fingerprint hashes, all but the user: one campaign variant's
        claims differ only in their user, so it is made once for all of them."""
        body: tuple[object, ...] = (
            self.scenario,
            sorted(self.params.items()),
            None if self.content is None else (self.content.title, self.content.body, self.content.url),
            self.campaign_id,
            self.dedup_key,
            None if self.not_before is None else self.not_before.timestamp(),
            None if self.deadline is None else self.deadline.timestamp(),
            self.priority,
        )
        if self.variant:
            body = (*body, self.variant)
        return orjson.dumps(body)


def fingerprint_of(user_id: str, body_but_user: bytes) -> str:
    """The fingerprint of the body ``[user_id, *body_but_user]`` (as JSON, the user
    spliced in front of the rest's items: the bytes are those of the whole body's JSON,
    so fingerprints stay what stored answers were written with)."""
    whole = b"[" + orjson.dumps(user_id) + b"," + body_but_user[1:]
    return hashlib.blake2b(whole, digest_size=16).hexdigest()


class Claim(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A validated request to reach one user."""

    bu: str
    request_id: str
    user_id: str
    scenario: str
    category: Category
    params: dict[str, str]
    content: Content | None
    campaign_id: str
    dedup_key: str
    not_before: datetime | None
    deadline: datetime | None
    priority: int
    variant: str = ""
