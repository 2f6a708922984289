"""A request as it arrives (``PushInput``) and as Herald understands it (``Claim``)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from gateway.domain import Category

DEFAULT_PRIORITY = 50


@dataclass(frozen=True)
class Content:
    title: str = ""
    body: str = ""
    url: str = ""

    def is_empty(self) -> bool:
        return not (self.title or self.body or self.url)


@dataclass(frozen=True)
class PushInput:
    """A push request's fields, unvalidated, free of any wire format."""

    request_id: str
    user_id: str
    scenario: str
    params: Mapping[str, str] = field(default_factory=dict)
    content: Content | None = None
    campaign_id: str = ""
    dedup_key: str = ""
    not_before: datetime | None = None
    deadline: datetime | None = None
    priority: int | None = None

    def fingerprint(self) -> str:
        """A hash of the whole body: the same request_id must come with the same one."""
        body = {
            "user_id": self.user_id,
            "scenario": self.scenario,
            "params": dict(sorted(self.params.items())),
            "content": None if self.content is None else [self.content.title, self.content.body, self.content.url],
            "campaign_id": self.campaign_id,
            "dedup_key": self.dedup_key,
            "not_before": None if self.not_before is None else self.not_before.timestamp(),
            "deadline": None if self.deadline is None else self.deadline.timestamp(),
            "priority": self.priority,
        }
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A validated request to reach one user."""

    bu: str
    request_id: str
    user_id: str
    scenario: str
    category: Category
    params: Mapping[str, str]
    content: Content | None
    campaign_id: str
    dedup_key: str
    not_before: datetime | None
    deadline: datetime | None
    priority: int
