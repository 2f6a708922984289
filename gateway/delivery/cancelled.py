"""Which campaigns are cancelled, as a delivery about to send one of their messages
asks: read from the store at most once a second per campaign and process, so a cancel
stops the campaign's queued sends on every replica within about a second.

Cancelled is for good: once seen, a campaign is not read again. A store that does not
answer is no reason to hold a send back: the campaign is taken as not cancelled (its
held claims still end CANCELLED when released, and a kill switch stops everything).
"""

from __future__ import annotations

import time

from gateway.errors import HeraldError
from gateway.store.base import Store
from gateway.values.campaigns import CampaignState

# How old a reading may be before the store is asked again.
FRESH = 1.0
# Campaigns remembered (a handful run at a time; this only bounds a flood of ids).
KEPT = 1024


class CancelledCampaigns:
    def __init__(self, store: Store, fresh: float = FRESH) -> None:
        self._store = store
        self._fresh = fresh
        self._read: dict[str, tuple[float, bool]] = {}  # campaign id: (monotonic time, cancelled)

    async def cancelled(self, campaign_id: str) -> bool:
        now = time.monotonic()
        read = self._read.get(campaign_id)
        if read is not None and (read[1] or now - read[0] < self._fresh):
            return read[1]
        try:
            [campaign] = await self._store.get_campaigns([campaign_id])
        except HeraldError:
            return False if read is None else read[1]
        cancelled = campaign is not None and campaign.state is CampaignState.CANCELLED
        if len(self._read) >= KEPT:
            self._read.clear()
        self._read[campaign_id] = (now, cancelled)
        return cancelled
