"""CampaignService end to end: a real gateway (memory and Redis), campaigns created,
started, run over a few thousand users, paused, resumed and cancelled, and their
funnel read back."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from gateway.app import Gateway
from gateway.clock import FixedClock
from gateway.metrics import fresh_metrics
from gateway.values.campaigns import Campaign, Variant
from herald.v1 import campaign_pb2, campaign_pb2_grpc, profile_pb2
from tests.e2e.conftest import Api, auth, open_api, settings_for
from tests.e2e.test_arbitration import local
from tests.e2e.test_push import ts

PARAMS = {"deposit": "50", "discount": "150"}


@dataclass
class Campaigns:
    api: Api
    stub: campaign_pb2_grpc.CampaignServiceStub
    clock: FixedClock
    gateway: Gateway

    async def create(self, campaign_id: str, audience: str, **spec: object) -> campaign_pb2.Campaign:
        variants = spec.pop("variants", [campaign_pb2.Variant(name="A", weight=1)])
        message = campaign_pb2.CampaignSpec(
            campaign_id=campaign_id,
            scenario=str(spec.pop("scenario", "double11.presale")),
            audience=audience,
            variants=variants,  # type: ignore[arg-type]
            params=spec.pop("params", PARAMS),  # type: ignore[arg-type]
            **spec,  # type: ignore[arg-type]
        )
        request = campaign_pb2.CreateCampaignRequest(campaign=message)
        return await self.stub.CreateCampaign(request, metadata=auth("marketing"))

    async def action(self, name: str, campaign_id: str) -> campaign_pb2.Campaign:
        method = getattr(self.stub, f"{name.capitalize()}Campaign")
        result: campaign_pb2.Campaign = await method(
            campaign_pb2.CampaignAction(campaign_id=campaign_id), metadata=auth("marketing")
        )
        return result

    async def get(self, campaign_id: str) -> campaign_pb2.Campaign:
        return await self.stub.GetCampaign(
            campaign_pb2.GetCampaignRequest(campaign_id=campaign_id), metadata=auth("marketing")
        )

    async def finish(self, campaign_id: str, within: float = 60.0) -> campaign_pb2.Campaign:
        """Run the runner until the campaign completes."""
        runner = self.gateway.campaign_runner
        loop = asyncio.get_running_loop()
        ends = loop.time() + within
        while loop.time() < ends:
            await runner.tick()
            await runner.drain()
            got = await self.get(campaign_id)
            if got.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED:
                return got
        raise AssertionError(f"campaign {campaign_id} did not complete: {got}")


@pytest.fixture(params=["memory", "redis"])
async def campaigns(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Campaigns]:
    redis_url = request.getfixturevalue("clean_redis") if request.param == "redis" else ""
    clock = FixedClock(local(10))
    gateway = Gateway(settings_for(tmp_path, redis_url), metrics=fresh_metrics(), clock=clock)
    await gateway.start()
    gateway.campaign_runner._interval = 3600  # the test drives the runner itself
    client = await open_api(gateway)
    try:
        yield Campaigns(client, campaign_pb2_grpc.CampaignServiceStub(client.channel), clock, gateway)
    finally:
        await client.channel.close()
        await gateway.stop(grace=1.0)


async def add_users(api: Api, count: int, start: int = 0) -> None:
    """Users u-<n>: every 3rd a mother (tag mom_baby), every 2nd in 浙江, all reachable
    by app push, recent buyers (tier loyal or better)."""
    batch = []
    for n in range(start, start + count):
        tags = ["mom_baby"] if n % 3 == 0 else []
        if n % 5 == 0:
            tags.append("vip")
        user = profile_pb2.User(
            user_id=f"u-{n}",
            timezone="Asia/Shanghai",
            tags=tags,
            attributes={"province": "浙江" if n % 2 == 0 else "江苏"},
            device_tokens=[
                profile_pb2.DeviceToken(token=f"tok-{n}", platform=profile_pb2.ANDROID, provider=profile_pb2.FCM)
            ],
            rfm=profile_pb2.RfmInputs(
                last_purchase_at=ts(local(10) - timedelta(days=5)), orders_in_period=6, spend_in_period_minor=300_000
            ),
        )
        batch.append(profile_pb2.UpsertUserRequest(user=user))
        if len(batch) == 500:
            await api.profiles.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=batch), metadata=auth("order"))
            batch = []
    if batch:
        await api.profiles.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=batch), metadata=auth("order"))


def row(campaign: campaign_pb2.Campaign, variant: str) -> campaign_pb2.FunnelRow:
    return next(r for r in campaign.funnel if r.variant == variant)


async def test_an_audience_selects_exactly_its_users(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 3000)
    expected = sum(1 for n in range(3000) if n % 3 == 0 and n % 2 == 0)  # mothers in 浙江
    created = await campaigns.create("d11-mothers", "tags any [mom_baby] and province = 浙江")
    assert created.state == campaign_pb2.CAMPAIGN_STATE_DRAFT
    assert created.spec.audience == "tags any [mom_baby] and province = 浙江"
    started = await campaigns.action("start", "d11-mothers")
    assert started.state == campaign_pb2.CAMPAIGN_STATE_RUNNING and started.HasField("started_at")
    done = await campaigns.finish("d11-mothers")
    assert done.progress.matched == expected == row(done, "").targeted
    # Only the tag's index was read, not every user.
    assert done.progress.scanned == 1000
    total = row(done, "")
    assert total.accepted + total.scheduled + sum(total.suppressed.values()) == expected
    assert done.HasField("finished_at")


async def test_variants_and_holdout_split_by_weight(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 2000)
    variants = [
        campaign_pb2.Variant(name="A", weight=3, params={"discount": "150"}),
        campaign_pb2.Variant(name="B", weight=1, params={"discount": "200"}),
    ]
    await campaigns.create("d11-ab", "province = 浙江", variants=variants, holdout=0.2)
    await campaigns.action("start", "d11-ab")
    done = await campaigns.finish("d11-ab")
    audience = 1000
    assert done.progress.matched == audience
    shares = {"A": 0.8 * 0.75, "B": 0.8 * 0.25, "holdout": 0.2}
    for name, share in shares.items():
        n = row(done, name).targeted
        sigma = math.sqrt(audience * share * (1 - share))
        assert abs(n - audience * share) < 4 * sigma, (name, n)
    assert row(done, "").targeted + row(done, "holdout").targeted == audience
    assert row(done, "holdout").accepted == row(done, "holdout").scheduled == 0


def test_the_split_is_stable_per_user_and_follows_the_weights() -> None:
    now = local(10)
    campaign = Campaign("c", "marketing", "s", "x", (Variant("A", 1), Variant("B", 1)), now, now, holdout=0.1)
    first = [campaign.share_of(f"u-{n}") for n in range(10_000)]
    assert first == [campaign.share_of(f"u-{n}") for n in range(10_000)]
    assert abs(first.count("holdout") - 1000) < 120 and abs(first.count("A") - first.count("B")) < 300
    other = Campaign("d", "marketing", "s", "x", (Variant("A", 1), Variant("B", 1)), now, now, holdout=0.1)
    # Another campaign splits the same users another way.
    assert sum(a != b for a, b in zip(first, (other.share_of(f"u-{n}") for n in range(10_000)), strict=True)) > 3000


async def test_pause_resume_cancel_and_the_states_they_need(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 50)
    await campaigns.create("d11-states", "tags any [vip]")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await campaigns.action("pause", "d11-states")
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "is DRAFT; pause needs it RUNNING" in (info.value.details() or "")
    await campaigns.action("start", "d11-states")
    paused = await campaigns.action("pause", "d11-states")
    assert paused.state == campaign_pb2.CAMPAIGN_STATE_PAUSED
    await campaigns.gateway.campaign_runner.tick()
    await campaigns.gateway.campaign_runner.drain()
    assert (await campaigns.get("d11-states")).progress.scanned == 0  # paused: nothing decided
    await campaigns.action("resume", "d11-states")
    done = await campaigns.finish("d11-states")
    assert done.progress.matched == 10
    cancelled = await campaigns.action("cancel", "d11-states")
    assert cancelled.state == campaign_pb2.CAMPAIGN_STATE_CANCELLED
    assert (await campaigns.action("cancel", "d11-states")).state == campaign_pb2.CAMPAIGN_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await campaigns.action("resume", "d11-states")
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_a_scan_waits_while_the_marketing_backlog_is_full(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 50)
    runner = campaigns.gateway.campaign_runner
    assert await campaigns.gateway._marketing_backlog() == 0  # the queue's marketing lane
    backlog = [runner._max_backlog + 1]

    async def queued() -> int:
        return backlog[0]

    runner._backlog = queued
    await campaigns.create("d11-backlog", "tags any [vip]")
    await campaigns.action("start", "d11-backlog")
    await runner.tick()
    await asyncio.sleep(0.3)
    waiting = await campaigns.get("d11-backlog")
    assert waiting.progress.scanned == 0 and row(waiting, "").targeted == 0  # nothing decided meanwhile
    assert runner._tasks  # the scans wait, their shards leased
    backlog[0] = runner._max_backlog
    done = await campaigns.finish("d11-backlog")
    assert done.progress.matched == 10


async def test_a_held_claim_of_a_cancelled_campaign_ends_cancelled(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 30)
    await campaigns.create("d11-held", "tags any [vip]")
    await campaigns.action("start", "d11-held")
    done = await campaigns.finish("d11-held")
    held = row(done, "").scheduled
    assert held == 6  # marketing waits in each user's pool for the send window
    await campaigns.action("cancel", "d11-held")
    campaigns.clock.advance(12 * 3600)
    await campaigns.gateway.scheduler.tick()
    after = row(await campaigns.get("d11-held"), "")
    assert after.suppressed["CANCELLED"] == held and after.accepted == 0


async def test_create_is_idempotent_and_names_what_is_wrong(campaigns: Campaigns) -> None:
    first = await campaigns.create("d11-x", "tags any [vip]")
    again = await campaigns.create("d11-x", "tags any [vip]")
    assert again.created_at == first.created_at
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await campaigns.create("d11-x", "tags any [mom_baby]")
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
    listed = await campaigns.stub.ListCampaigns(campaign_pb2.ListCampaignsRequest(), metadata=auth("marketing"))
    assert [c.spec.campaign_id for c in listed.campaigns] == ["d11-x"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await campaigns.stub.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="d11-x"), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND  # another unit's campaign


BAD = [
    ("audience", {"audience": "tags any [vip"}, "audience:"),
    ("tier", {"audience": "tier in [champ]"}, "champ"),
    ("not marketing", {"scenario": "order.shipped"}, "may not run campaigns"),
    ("weight", {"variants": [campaign_pb2.Variant(name="A", weight=0)]}, "campaign.variants[0].weight"),
    ("holdout name", {"variants": [campaign_pb2.Variant(name="holdout", weight=1)]}, "not 'holdout'"),
    ("no variants", {"variants": []}, "at least one variant"),
    ("holdout share", {"holdout": 0.9}, "campaign.holdout"),
    ("missing param", {"params": {"deposit": "50"}}, "campaign.variants[0].params"),
    ("bad id", {"campaign_id": "a b"}, "campaign.campaign_id"),
]


@pytest.mark.parametrize(("name", "change", "needle"), BAD, ids=[b[0] for b in BAD])
async def test_bad_campaigns_are_refused(
    campaigns: Campaigns, name: str, change: dict[str, object], needle: str
) -> None:
    spec: dict[str, object] = {"audience": "tags any [vip]", **change}
    campaign_id = str(spec.pop("campaign_id", "d11-bad"))
    audience = str(spec.pop("audience"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await campaigns.create(campaign_id, audience, **spec)
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert needle in (info.value.details() or ""), info.value.details()


async def test_preview_counts_and_samples_without_starting(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 300)
    # A tag taken away stays in the index until read: the preview must not count it.
    await campaigns.api.profiles.UpsertUser(
        profile_pb2.UpsertUserRequest(user=profile_pb2.User(user_id="u-0"), update_mask=FieldMask(paths=["tags"])),
        metadata=auth("order"),
    )
    found = await campaigns.stub.PreviewAudience(
        campaign_pb2.PreviewAudienceRequest(audience="tags any [mom_baby] and province = 浙江", sample=3),
        metadata=auth("marketing"),
    )
    assert found.exact and found.estimate == found.matched == 49
    assert len(found.users) == 3 and all("APP_PUSH" in u.channels and "mom_baby" in u.tags for u in found.users)
    listed = await campaigns.stub.ListCampaigns(campaign_pb2.ListCampaignsRequest(), metadata=auth("marketing"))
    assert not listed.campaigns
