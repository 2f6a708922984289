"""Herald's vocabulary as plain Python enums (docs/design.md, "Vocabulary").

The names equal the protobuf enum names of ``herald.v1`` so that conversion at the API
edge is by name, and the values are what appears in policy files, logs and metric
labels.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    BASIC = "basic"
    REMINDER = "reminder"
    MARKETING = "marketing"


class Channel(StrEnum):
    WECHAT_TEMPLATE = "WECHAT_TEMPLATE"
    WECHAT_CS = "WECHAT_CS"
    WECHAT_MASS = "WECHAT_MASS"
    SMS = "SMS"
    EMAIL = "EMAIL"
    APP_PUSH = "APP_PUSH"

    @property
    def content_key(self) -> str:
        """The key of this channel's content block in a scenario (``wechat_template``)."""
        return self.value.lower()


class Outcome(StrEnum):
    ACCEPTED = "ACCEPTED"
    SCHEDULED = "SCHEDULED"
    SUPPRESSED = "SUPPRESSED"


class Reason(StrEnum):
    KILL_SWITCH = "KILL_SWITCH"
    OPTED_OUT = "OPTED_OUT"
    DUPLICATE = "DUPLICATE"
    QUIET_HOURS = "QUIET_HOURS"
    FREQUENCY_CAP = "FREQUENCY_CAP"
    LOST_ARBITRATION = "LOST_ARBITRATION"
    NO_REACHABLE_CHANNEL = "NO_REACHABLE_CHANNEL"
    EXPIRED = "EXPIRED"
    SAFETY_CAP = "SAFETY_CAP"
    HOLDOUT = "HOLDOUT"
    CANCELLED = "CANCELLED"


class InteractionKind(StrEnum):
    USER_MESSAGE = "USER_MESSAGE"
    MENU_CLICK = "MENU_CLICK"
    FOLLOW = "FOLLOW"
    QR_SCAN = "QR_SCAN"
    PAYMENT = "PAYMENT"


class Platform(StrEnum):
    IOS = "IOS"
    ANDROID = "ANDROID"
    HARMONY = "HARMONY"


class PushProvider(StrEnum):
    FCM = "FCM"
    APNS = "APNS"
    JPUSH = "JPUSH"


class UserFact(StrEnum):
    """What a provider's answer tells about the user; the dispatcher updates the profile."""

    UNFOLLOWED = "unfollowed"  # WeChat 43004/40003/user block: no longer reachable there
    BAD_PHONE = "bad_phone"  # the number does not exist or is malformed
    BAD_EMAIL = "bad_email"  # 5.1.x: the mailbox does not exist
    DEAD_DEVICE_TOKEN = "dead_device_token"  # UNREGISTERED, 410, BadDeviceToken
    SMS_OPTED_OUT = "sms_opted_out"  # replied STOP / on the provider's blacklist
    REFUSED_TEMPLATE = "refused_template"  # WeChat 43101: refuses this template (profile unchanged)
