"""The campaign parts of the store contract, on memory, Redis and a Redis Cluster:
versioned campaign writes, the running set, shard leases and their progress, and the
funnel counters (once-only ones included)."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from gateway.clock import FixedClock
from gateway.store.base import Store
from gateway.values.campaigns import Campaign, CampaignState, ShardProgress, Variant

LEASE = timedelta(seconds=30)


def campaign(clock: FixedClock, campaign_id: str = "d11", bu: str = "marketing") -> Campaign:
    now = clock.now()
    return Campaign(campaign_id, bu, "double11.presale", "tags any [vip]", (Variant("A", 1),), now, now)


async def test_a_campaign_is_written_only_at_the_version_read(store: Store, clock: FixedClock) -> None:
    first = await store.put_campaign(campaign(clock), None)
    assert first is not None and first.version == 0
    assert await store.put_campaign(campaign(clock), None) is None  # exists already
    running = msgspec.structs.replace(first, state=CampaignState.RUNNING)
    moved = await store.put_campaign(running, 0)
    assert moved is not None and moved.version == 1
    assert await store.put_campaign(msgspec.structs.replace(first, description="stale"), 0) is None
    [got] = await store.get_campaigns(["d11"])
    assert got == moved
    assert [c.campaign_id for c in await store.active_campaigns()] == ["d11"]
    paused = await store.put_campaign(msgspec.structs.replace(moved, state=CampaignState.PAUSED), 1)
    assert paused is not None and await store.active_campaigns() == []
    # Cancelled after it started: work for the runner (the claims it holds) until swept.
    cancelled = msgspec.structs.replace(paused, state=CampaignState.CANCELLED, started_at=clock.now())
    cancelled_stored = await store.put_campaign(cancelled, 2)
    assert cancelled_stored is not None
    assert [c.campaign_id for c in await store.active_campaigns()] == ["d11"]
    done = await store.put_campaign(msgspec.structs.replace(cancelled_stored, swept=True), 3)
    assert done is not None and await store.active_campaigns() == []
    never = await store.put_campaign(campaign(clock, "d10"), None)  # cancelled before it started
    assert never is not None
    await store.put_campaign(msgspec.structs.replace(never, state=CampaignState.CANCELLED), 0)
    assert await store.active_campaigns() == []
    clock.advance(60)
    await store.put_campaign(campaign(clock, "d12"), None)
    await store.put_campaign(campaign(clock, "other", bu="growth"), None)
    assert [c.campaign_id for c in await store.list_campaigns("marketing", 10)] == ["d12", "d11", "d10"]
    assert [c.campaign_id for c in await store.list_campaigns("marketing", 1)] == ["d12"]
    assert await store.get_campaigns(["nope"]) == [None]


async def test_a_shard_lease_keeps_others_out_until_it_runs_out(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    mine = await store.lease_campaign_shard("d11", 0, "p1", LEASE, now)
    assert mine == ShardProgress(0)
    assert await store.lease_campaign_shard("d11", 0, "p2", LEASE, now) is None
    moved = ShardProgress(0, "0:42", False, 500, 120, 3, 1)
    assert await store.save_campaign_shard("d11", "p1", moved, LEASE, now)
    assert not await store.save_campaign_shard("d11", "p2", moved, LEASE, now)
    assert (await store.campaign_progress("d11"))[0] == moved
    later = now + LEASE + timedelta(seconds=1)
    taken = await store.lease_campaign_shard("d11", 0, "p2", LEASE, later)
    assert taken == moved  # the next owner goes on from the saved cursor
    assert not await store.save_campaign_shard("d11", "p1", moved, LEASE, later)  # p1 lost it
    assert len(await store.campaign_progress("d11")) == store.shards


async def test_funnel_counters_sum_over_shards_and_once_counts_once(store: Store, clock: FixedClock) -> None:
    users = [f"u-{n}" for n in range(40)]
    for user in users:
        assert await store.add_funnel(user, "d11", "A|clicked", f"click:m-{user}")
        assert not await store.add_funnel(user, "d11", "A|clicked", f"click:m-{user}")
    await store.add_funnel("u-1", "d11", "A|value", "value:O-1", by=9900)
    await store.add_funnel("u-1", "d11", "A|value", "value:O-1", by=9900)
    assert await store.funnel("d11") == {"A|clicked": 40, "A|value": 9900}
    assert await store.funnel("other") == {}
