"""Conversions the business reports (orders), attributed to a campaign's message.

A conversion names the message, or the campaign (then the user's message of that
campaign is found through its claim's idempotent answer, which is kept as long as
the attribution window). It counts when it comes within the window after the user
clicked the message, else after the message was sent; for a holdout user, after the
user was decided into the holdout (the lift's baseline). Each conversion id counts its
value once; each user converts once a campaign.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.clock import Clock
from gateway.core.unsubscribes import campaign_message
from gateway.core.validate import REQUEST_ID_RE, check_campaign_id, check_id, check_user_id
from gateway.durations import format_duration
from gateway.errors import InvalidArgument, NotFound
from gateway.policy.holder import PolicyHolder
from gateway.store import keys
from gateway.store.base import Store
from gateway.values.campaigns import HOLDOUT, funnel_field
from gateway.values.domain import Reason
from gateway.values.records import MessageRecord

MAX_VALUE = 10**12  # minor units: ten billion yuan


@dataclass(frozen=True)
class Conversion:
    user_id: str
    campaign_id: str
    message_id: str
    conversion_id: str
    value_minor: int
    at: datetime | None


@dataclass(frozen=True)
class Attribution:
    attributed: bool
    campaign_id: str = ""
    variant: str = ""
    via: str = ""
    detail: str = ""
    counted: bool = False


class Conversions:
    def __init__(self, store: Store, policies: PolicyHolder, clock: Clock) -> None:
        self._store = store
        self._policies = policies
        self._clock = clock

    async def record(self, bu: str, conversion: Conversion) -> Attribution:
        check_user_id(conversion.user_id)
        check_id(
            "conversion_id", conversion.conversion_id, REQUEST_ID_RE, "must be 1-128 characters of [A-Za-z0-9._:-]"
        )
        if bool(conversion.campaign_id) == bool(conversion.message_id):
            raise InvalidArgument("campaign_id", "give the campaign_id or the message_id (one of them)")
        if not 0 <= conversion.value_minor <= MAX_VALUE:
            raise InvalidArgument("value_minor", f"must be 0 to {MAX_VALUE}")
        now = self._clock.now()
        at = conversion.at or now
        if at > now:
            raise InvalidArgument("at", "is in the future")
        record = await self._message(bu, conversion)
        window = self._policies.current.defaults.attribution_window
        if record is None:
            detail = f"the user got no message of this campaign in the attribution window ({format_duration(window)})"
            return Attribution(False, conversion.campaign_id, via="none", detail=detail)
        since, via = await self._touch(record)
        if since is None or not since <= at <= since + window:
            what = "click or send" if via != HOLDOUT else "holdout decision"
            return Attribution(
                False,
                record.campaign_id,
                record.variant,
                "none",
                f"not within {format_duration(window)} after the user's {what}",
            )
        counted = await self._store.add_funnel(
            record.user_id,
            record.campaign_id,
            funnel_field(record.variant, "value"),
            f"value:{conversion.conversion_id}",
            by=conversion.value_minor,
        )
        await self._store.add_funnel(
            record.user_id,
            record.campaign_id,
            funnel_field(record.variant, "converted"),
            f"converted:{record.message_id}",
        )
        return Attribution(True, record.campaign_id, record.variant, via, counted=counted)

    async def _message(self, bu: str, conversion: Conversion) -> MessageRecord | None:
        if conversion.message_id:
            [record] = await self._store.get_messages([conversion.message_id])
            if record is None or record.business_unit != bu or record.user_id != conversion.user_id:
                raise NotFound(f"message '{conversion.message_id[:64]}' of user '{conversion.user_id}' not found")
            if not record.campaign_id:
                raise InvalidArgument("message_id", "is not a campaign's message")
            return record
        check_campaign_id("campaign_id", conversion.campaign_id)
        [campaign] = await self._store.get_campaigns([conversion.campaign_id])
        if campaign is None or campaign.bu != bu:
            raise NotFound(f"campaign '{conversion.campaign_id}' not found")
        return await campaign_message(
            self._store, campaign, conversion.user_id, self._policies.current.defaults.idempotency_window
        )

    async def _touch(self, record: MessageRecord) -> tuple[datetime | None, str]:
        """When the attribution window opens for this message, and through what."""
        if record.reason is Reason.HOLDOUT:
            return record.created_at, HOLDOUT
        clicked = await self._store.shared_get(keys.clicked(record.message_id))
        if clicked:
            return datetime.fromisoformat(clicked), "click"
        # The record as read holds its whole timeline: "delivered" is the provider's yes.
        sent = [e.at for e in record.timeline if e.kind == "delivered"]
        return (sent[0], "delivery") if sent else (None, "none")
