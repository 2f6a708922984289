"""What the store keeps besides profiles: messages, their timelines, kill switches."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gateway.domain import Category, Channel, Outcome, Reason


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str
    channel: Channel | None = None
    provider_code: str = ""
    detail: str = ""


@dataclass(frozen=True)
class MessageRecord:
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
    params: dict[str, str] = field(default_factory=dict)
    content: dict[str, str] = field(default_factory=dict)
    priority: int = 50
    dedup_key: str = ""
    deadline: datetime | None = None
    # How the decision was made, one step a line (DESIGN.md "explained").
    trace: tuple[str, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()


@dataclass(frozen=True)
class Final:
    """The final outcome of a message decided later than its request (held claims)."""

    outcome: Outcome
    reason: Reason | None
    detail: str


class ScopeKind(StrEnum):
    GLOBAL = "global"
    CATEGORY = "category"
    CHANNEL = "channel"
    BU = "bu"
    SCENARIO = "scenario"
    CAMPAIGN = "campaign"


@dataclass(frozen=True)
class KillSwitch:
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


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    action: str  # "set" | "clear"
    actor: str
    switch: KillSwitch
    note: str = ""
