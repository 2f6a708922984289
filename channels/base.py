"""The one interface every channel adapter implements, and what flows through it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from gateway.values.domain import Category, Channel, PushProvider, UserFact


@dataclass(frozen=True)
class Delivery:
    """One attempt to reach one user on one channel."""

    # Stable for a message on a channel: providers that deduplicate (WeChat
    # client_msg_id) get the same id on every retry.
    delivery_id: str
    message_id: str
    channel: Channel
    category: Category
    scenario: str
    user_id: str
    campaign_id: str = ""
    # The campaign's variant: a mass send goes out per variant (its own counts).
    variant: str = ""
    # APP_PUSH: the service the device token belongs to (FCM, JPUSH, APNS).
    device: PushProvider | None = None
    # openid, phone, email or device token: the adapter's to send, nobody's to log.
    recipient: str = field(default="", repr=False)
    payload: dict[str, Any] = field(default_factory=dict)


class SendStatus(StrEnum):
    DELIVERED = "delivered"  # the provider took it (or reported delivery)
    RETRY = "retry"  # a passing fault: try the same channel again soon
    LATER = "later"  # not now for this user (a per-number throttle): try after ``retry_after``
    FALLBACK = "fallback"  # this channel cannot reach the user: try the next one
    FAILED = "failed"  # the request itself is wrong: no channel will do better


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    # The provider's answer code ("0", "43004", "isv.MOBILE_NUMBER_ILLEGAL", ...).
    code: str
    detail: str = ""
    # RETRY, LATER: wait at least this long (Retry-After, WeChat 45066's minute).
    retry_after: float | None = None
    fact: UserFact | None = None
    # The provider itself is at fault (credentials, quota, balance): open its breaker.
    trip: bool = False
    # What the provider calls this send (WeChat msgid, Alibaba BizId, FCM name), for
    # matching receipts later.
    provider_id: str = ""

    @property
    def code_class(self) -> str:
        """A bounded label for metrics: ok, retry, fallback, failed."""
        return "ok" if self.status is SendStatus.DELIVERED else str(self.status)


__all__ = ["ChannelAdapter", "Delivery", "SendResult", "SendStatus", "UserFact"]


class ChannelAdapter(Protocol):
    # The provider's name in policy ("wechat", "aliyun_sms", ...): a metrics label.
    name: str

    async def send(self, delivery: Delivery) -> SendResult: ...

    async def close(self) -> None: ...
