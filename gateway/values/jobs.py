"""Delivery jobs: a decided claim and its channel plan, as the queue carries them."""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway.values.claims import Claim
from gateway.values.domain import Category, Channel

# A job's lane is its claim's category: queues and provider slots are kept per lane, so
# a flood of marketing never waits in front of an order notice.
LANES: tuple[Category, ...] = (Category.BASIC, Category.REMINDER, Category.MARKETING)


class Job(msgspec.Struct, frozen=True, gc=False, array_like=True):
    message_id: str
    claim: Claim
    plan: tuple[Channel, ...]
    queued_at: datetime | None = None
    # How many times the job came back from waiting (a provider down, a throttle).
    waits: int = 0

    @property
    def lane(self) -> Category:
        return self.claim.category
