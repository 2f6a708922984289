"""Opt-outs counted in the campaign funnel that caused them.

A user who unsubscribes from a campaign's email (the link carries the campaign), or
answers `TD` on WeChat after a campaign's message reached them there, counts once as
`unsubscribed` in that campaign's funnel, under the variant they got. The WeChat reply
names no message: it is put down to the newest campaign message delivered to the user
on WeChat within the attribution window (`defaults.attribution_window`), the one they
most likely answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta

from gateway.core.campaigns import claim_input
from gateway.errors import HeraldError
from gateway.logs import get_logger
from gateway.store import keys
from gateway.store.base import IdemKey, IdemState, IndexCursor, Store, UserRead
from gateway.values.campaigns import Campaign, funnel_field
from gateway.values.domain import Channel
from gateway.values.records import MessageRecord

log = get_logger(__name__)

# Message ids read from the user's index a round trip while looking back.
CHUNK = 50


async def campaign_message(
    store: Store, campaign: Campaign, user_id: str, idempotency_window: timedelta
) -> MessageRecord | None:
    """The user's message of ``campaign``, found through its claim's idempotent answer
    (kept as long as the attribution window); None when the user got none."""
    request = claim_input(campaign, user_id)
    idem = IdemKey(campaign.bu, request.request_id, request.fingerprint())
    # A campaign's request id names its user: not in the unit-wide index (as its claims).
    [view] = await store.read_users([UserRead(user_id, idem, index=False)], idempotency_window)
    if view.idem is not IdemState.SAME or view.answer is None:
        return None
    [record] = await store.get_messages([view.answer.message_id])
    return record


async def last_delivered(
    store: Store, user_id: str, channels: Collection[Channel], since: datetime
) -> MessageRecord | None:
    """The newest campaign message delivered to the user on one of ``channels`` since
    ``since``, looking back through the user's message index."""
    cursor = IndexCursor()
    looked = 0
    while looked < keys.USER_MESSAGES_KEEP:
        entries = await store.user_messages(user_id, cursor, since, CHUNK)
        records = await store.get_messages([message_id for message_id, _ in entries]) if entries else []
        for (_, at_ms), record in zip(entries, records, strict=True):
            cursor = cursor.past(at_ms)
            looked += 1
            if record is not None and record.campaign_id and _delivered_on(record, channels):
                return record
        if len(entries) < CHUNK:
            return None
    return None


def _delivered_on(record: MessageRecord, channels: Collection[Channel]) -> bool:
    return any(e.kind == "delivered" and e.channel in channels for e in record.timeline)


async def count_after_email(store: Store, campaign_id: str, user_id: str, idempotency_window: timedelta) -> None:
    """The one-click unsubscribe of a campaign's email, in that campaign's funnel."""

    async def message() -> MessageRecord | None:
        [campaign] = await store.get_campaigns([campaign_id])
        return None if campaign is None else await campaign_message(store, campaign, user_id, idempotency_window)

    await _count(store, user_id, "email", message)


async def count_after_wechat(store: Store, user_id: str, channels: Collection[Channel], since: datetime) -> None:
    """A WeChat opt-out word, in the funnel of the newest campaign message delivered to
    the user on WeChat since ``since``."""
    await _count(store, user_id, "wechat", lambda: last_delivered(store, user_id, channels, since))


async def _count(store: Store, user_id: str, via: str, message: Callable[[], Awaitable[MessageRecord | None]]) -> None:
    """Best effort: the opt-out is stored before this is asked, and a store fault or a
    damaged record here must not turn it into a failed request."""
    try:
        record = await message()
        if record is not None and await count_unsubscribe(store, record):
            log.info("campaign_unsubscribed", user_id=user_id, campaign_id=record.campaign_id, via=via)
    except Exception as exc:
        error = exc.message if isinstance(exc, HeraldError) else type(exc).__name__
        log.warning("campaign_unsubscribe_not_counted", user_id=user_id, via=via, error=error)


async def count_unsubscribe(store: Store, record: MessageRecord) -> bool:
    """The user's opt-out in the funnel of ``record``'s campaign, once a message (a
    user gets one a campaign); whether it counted now (False: counted before)."""
    return await store.add_funnel(
        record.user_id,
        record.campaign_id,
        funnel_field(record.variant, "unsubscribed"),
        f"unsubscribed:{record.message_id}",  # as a receipt that says the user blocked us
    )
