"""What the store keeps besides profiles: messages, their timelines, kill switches."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from gateway.values.domain import Category, Channel, Outcome, Reason


class Step(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One step of a decision's trace, as data: ``code`` names the rule and ``args``
    carry its figures. ``gateway.core.trace`` turns steps into sentences when someone
    reads them (GetMessage, Explain), never on the hot path."""

    code: str
    args: tuple[Any, ...] = ()


class TimelineEntry(msgspec.Struct, frozen=True, gc=False, array_like=True):
    at: datetime
    kind: str
    channel: Channel | None = None
    provider_code: str = ""
    detail: str = ""


class Current(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Where a message stands now, when a later step changed it: a held claim carried
    to another window, released, or ended, and the delivery's progress."""

    status: str
    outcome: Outcome
    reason: Reason | None = None
    detail: str = ""
    scheduled_at: datetime | None = None


class MessageRecord(msgspec.Struct, frozen=True, gc=False):
    message_id: str
    request_id: str
    user_id: str
    business_unit: str
    scenario: str
    category: Category
    campaign_id: str
    outcome: Outcome
    reason: Reason | None
    detail: str
    channel_plan: tuple[Channel, ...]
    scheduled_at: datetime | None
    created_at: datetime
    status: str
    policy_version: str
    params: dict[str, str] = msgspec.field(default_factory=dict)
    content: dict[str, str] = msgspec.field(default_factory=dict)
    priority: int = 50
    dedup_key: str = ""
    deadline: datetime | None = None
    # How the first decision was made, one step an item.
    trace: tuple[Step, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    variant: str = ""  # the campaign variant (or "holdout")

    def now(self, current: Current | None, later: tuple[TimelineEntry, ...]) -> MessageRecord:
        """The record as it stands: the first decision overlaid with ``current`` (when
        a later step changed it) and the timeline extended by ``later``."""
        if current is None and not later:
            return self
        if current is None:
            return msgspec.structs.replace(self, timeline=self.timeline + later)
        return msgspec.structs.replace(
            self,
            status=current.status,
            outcome=current.outcome,
            reason=current.reason,
            detail=current.detail,
            scheduled_at=current.scheduled_at,
            timeline=self.timeline + later,
        )


class ScopeKind(StrEnum):
    GLOBAL = "global"
    CATEGORY = "category"
    CHANNEL = "channel"
    BU = "bu"
    SCENARIO = "scenario"
    CAMPAIGN = "campaign"


class KillSwitch(msgspec.Struct, frozen=True, gc=False):
    switch_id: str
    scope: ScopeKind
    # Empty for GLOBAL; the category, channel, BU, scenario or campaign otherwise.
    value: str
    reason: str
    actor: str
    created_at: datetime
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def describe(self) -> str:
        scope = "global" if self.scope is ScopeKind.GLOBAL else f"{self.scope}={self.value}"
        return f"kill switch {self.switch_id} ({scope}) by {self.actor}: {self.reason}"


class AuditEntry(msgspec.Struct, frozen=True, gc=False):
    at: datetime
    action: str  # "set" | "clear"
    actor: str
    switch: KillSwitch
    note: str = ""
