"""What arbitration made of a claim, and the answer a caller gets."""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway.values.domain import Category, Channel, Outcome, Reason
from gateway.values.records import Step
from gateway.values.state import Mutation


class Decision(msgspec.Struct, frozen=True, gc=False):
    outcome: Outcome
    reason: Reason | None
    detail: str
    plan: tuple[Channel, ...] = ()
    scheduled_at: datetime | None = None
    trace: tuple[Step, ...] = ()
    mutations: tuple[Mutation, ...] = ()


class PushAnswer(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The answer to a push request; kept as the idempotent answer to its request_id."""

    message_id: str
    category: Category
    outcome: Outcome
    reason: Reason | None
    detail: str
    plan: tuple[Channel, ...]
    scheduled_at: datetime | None
    policy_version: str
