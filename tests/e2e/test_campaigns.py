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
from herald.v1 import campaign_pb2, campaign_pb2_grpc, profile_pb2, push_pb2
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
    gateway.campaign_runner._interval = 3600  # the test drives the runner itself
    await gateway.start()
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


async def test_small_chunks_across_two_tag_indexes_count_each_user_once(campaigns: Campaigns) -> None:
    """Chunks of 10 over two tags' indexes, read one after the other (each page while
    the one before it is decided): every user of the audience is decided and counted
    exactly once (a mother who is also a vip only in the first tag's step)."""
    campaigns.gateway.campaign_runner._chunk_size = 10
    await add_users(campaigns.api, 600)
    expected = sum(1 for n in range(600) if (n % 3 == 0 or n % 5 == 0) and n % 2 == 0)
    await campaigns.create("d11-small", "tags any [mom_baby, vip] and province = 浙江")
    await campaigns.action("start", "d11-small")
    done = await campaigns.finish("d11-small")
    assert done.progress.matched == expected == row(done, "").targeted
    assert done.progress.scanned == sum(1 for n in range(600) if n % 3 == 0) + sum(1 for n in range(600) if n % 5 == 0)


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


async def swept(campaigns: Campaigns, campaign_id: str) -> None:
    """Run the runner until the cancelled campaign's sweep is done (every shard)."""
    runner = campaigns.gateway.campaign_runner
    for _ in range(50):
        await runner.tick()
        await runner.drain()
        [stored] = await campaigns.gateway.store.get_campaigns([campaign_id])
        if stored is not None and stored.swept:
            return
    raise AssertionError(f"campaign {campaign_id} was not swept")


async def test_a_held_claim_of_a_cancelled_campaign_ends_cancelled(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 30)
    await campaigns.create("d11-held", "tags any [vip]")
    await campaigns.action("start", "d11-held")
    done = await campaigns.finish("d11-held")
    held = row(done, "").scheduled
    assert held == 6  # marketing waits in each user's pool for the send window
    await campaigns.action("cancel", "d11-held")
    # Ended at once by the runner's sweep, not when their send window comes.
    await swept(campaigns, "d11-held")
    after = row(await campaigns.get("d11-held"), "")
    assert after.suppressed["CANCELLED"] == held and after.accepted == 0
    [message] = (
        await campaigns.api.push.ListMessages(push_pb2.ListMessagesRequest(user_id="u-0"), metadata=auth("marketing"))
    ).messages
    assert message.status == "suppressed" and "cancelled" in message.detail
    assert await campaigns.gateway.store.active_campaigns() == []  # no more work for the runner
    again = await campaigns.create("d11-held", "tags any [vip]")  # a retried create: the run changed nothing of it
    assert again.state == campaign_pb2.CAMPAIGN_STATE_CANCELLED
    # Their release time comes: nothing left to release, nothing counted twice.
    campaigns.clock.advance(12 * 3600)
    await campaigns.gateway.scheduler.tick()
    later = row(await campaigns.get("d11-held"), "")
    assert later.suppressed["CANCELLED"] == held and later.accepted == 0


async def test_a_held_claim_of_another_campaign_stays_held_through_a_sweep(campaigns: Campaigns) -> None:
    """The sweep ends only the cancelled campaign's claims; a user's claim of another
    campaign waits for its window as before."""
    await add_users(campaigns.api, 30)
    await campaigns.create("keep", "tags any [vip]")
    await campaigns.create("drop", "tags any [vip]", scenario="new.arrivals", params={"category_name": "女装"})
    for name in ("keep", "drop"):
        await campaigns.action("start", name)
        await campaigns.finish(name)
    await campaigns.action("cancel", "drop")
    await swept(campaigns, "drop")
    dropped, kept = row(await campaigns.get("drop"), ""), row(await campaigns.get("keep"), "")
    assert dropped.suppressed.get("CANCELLED") == dropped.scheduled > 0
    assert kept.scheduled == 6 and "CANCELLED" not in kept.suppressed and kept.accepted == 0


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


async def _released_and_sent(campaigns: Campaigns, campaign_id: str, want: int) -> campaign_pb2.Campaign:
    """Move the clock through the morning until the pooled claims are released, then
    wait for the deliveries (in-process, to the sandbox)."""
    got = await campaigns.get(campaign_id)
    for _ in range(40):
        if row(got, "").accepted >= want:
            break
        campaigns.clock.advance(300)
        await campaigns.gateway.scheduler.tick()
        got = await campaigns.get(campaign_id)
    for _ in range(200):
        got = await campaigns.get(campaign_id)
        if row(got, "").sent >= want:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"not all sent: {row(got, '')}")


def _outbox_links(campaigns: Campaigns) -> dict[str, str]:
    import json

    path = campaigns.gateway.settings.data_dir / "outbox" / "APP_PUSH.jsonl"
    links = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        links[entry["user_id"]] = entry["payload"]["url"]
    return links


async def test_clicks_count_once_redirect_only_to_the_signed_url_and_conversions_attribute(
    campaigns: Campaigns,
) -> None:
    import aiohttp

    await add_users(campaigns.api, 20)
    content = push_pb2.Content(title="上新", body="春装上新", url="https://m.shop.example.com/new?utm=d11")
    variants = [campaign_pb2.Variant(name="A", weight=1, content=content)]
    await campaigns.create(
        "new-in", "tags any [vip]", scenario="new.arrivals", params={"category_name": "女装"}, variants=variants
    )
    await campaigns.action("start", "new-in")
    await campaigns.finish("new-in")
    sent = await _released_and_sent(campaigns, "new-in", 4)
    assert row(sent, "A").sent == 4 and row(sent, "").reach_rate == 1.0
    links = _outbox_links(campaigns)
    assert set(links) == {"u-0", "u-5", "u-10", "u-15"}
    link = links["u-5"]
    assert "/c/" in link and "m.shop.example.com" not in link  # the user sees Herald's link
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # clicked three times: one click
            async with http.get(link, allow_redirects=False) as answer:
                assert answer.status == 302
                assert answer.headers["Location"] == "https://m.shop.example.com/new?utm=d11"
        forged = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        async with http.get(forged, allow_redirects=False) as answer:
            assert answer.status == 400 and "Location" not in answer.headers
        async with http.get(links["u-10"], allow_redirects=False, headers={"Purpose": "prefetch"}) as answer:
            assert answer.status == 302  # a prefetch goes on but is not a click
    clicked = await campaigns.get("new-in")
    assert row(clicked, "A").clicked == 1 and row(clicked, "").click_rate == 0.25

    async def convert(user: str, order: str, value: int, **at: object) -> campaign_pb2.RecordConversionResponse:
        request = campaign_pb2.RecordConversionRequest(
            user_id=user,
            campaign_id="new-in",
            conversion_id=order,
            value_minor=value,
            **at,  # type: ignore[arg-type]
        )
        return await campaigns.stub.RecordConversion(request, metadata=auth("marketing"))

    first = await convert("u-5", "O-1", 9900)
    assert first.attributed and first.via == "click" and first.variant == "A" and first.counted
    again = await convert("u-5", "O-1", 9900)
    assert again.attributed and not again.counted  # the same order: counted once
    await convert("u-5", "O-2", 100)
    by_send = await convert("u-10", "O-3", 5000)
    assert by_send.attributed and by_send.via == "delivery"
    outside = await convert("u-1", "O-4", 100)  # not in the audience: no message
    assert not outside.attributed
    campaigns.clock.advance(8 * 24 * 3600)
    late = await convert("u-15", "O-5", 100)
    assert not late.attributed and "1w" in late.detail
    done = await campaigns.get("new-in")
    total = row(done, "")
    assert total.converted == 2 and total.conversion_value == 9900 + 100 + 5000
    assert total.conversion_rate == 2.0  # two converted of one click: conversions also come from deliveries
    assert abs(total.push_effect - 2 / 4) < 1e-9
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await convert("u-5", "", 1)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "conversion_id" in (info.value.details() or "")


async def test_holdout_conversions_give_the_lift(campaigns: Campaigns) -> None:
    await add_users(campaigns.api, 200)
    await campaigns.create("d11-lift", "tags any [vip]", holdout=0.5)  # 40 users
    await campaigns.action("start", "d11-lift")
    done = await campaigns.finish("d11-lift")
    held_out = row(done, "holdout").targeted
    assert 5 < held_out < 35 and held_out + row(done, "").targeted == 40
    now = Campaign("d11-lift", "marketing", "s", "x", (Variant("A", 1),), local(10), local(10), holdout=0.5)
    members = [f"u-{n}" for n in range(0, 200, 5)]
    holdout = [u for u in members if now.share_of(u) == "holdout"]
    assert len(holdout) == held_out  # the split the runner made is the one the hash gives
    for n, user in enumerate(holdout[:2]):
        request = campaign_pb2.RecordConversionRequest(user_id=user, campaign_id="d11-lift", conversion_id=f"H-{n}")
        answer = await campaigns.stub.RecordConversion(request, metadata=auth("marketing"))
        assert answer.attributed and answer.via == "holdout" and answer.variant == "holdout"
    after = await campaigns.get("d11-lift")
    assert row(after, "holdout").converted == 2
    assert abs(after.holdout_conversion_rate - 2 / held_out) < 1e-9
    assert abs(after.lift - (0 - 2 / held_out)) < 1e-9  # nobody treated converted yet


async def test_test_then_winner_sends_the_variant_with_more_clicks_to_the_rest(campaigns: Campaigns) -> None:
    import aiohttp

    await add_users(campaigns.api, 200)  # 40 vip
    variants = [
        campaign_pb2.Variant(
            name=name, weight=1, content=push_pb2.Content(title=name, body=name, url=f"https://m.example.com/{name}")
        )
        for name in ("A", "B")
    ]
    test = campaign_pb2.TestPlan(sample=0.5, metric="click_rate")
    test.wait.FromSeconds(8 * 3600)  # the release takes a couple of hours
    await campaigns.create(
        "d11-test",
        "tags any [vip]",
        scenario="new.arrivals",
        params={"category_name": "童装"},
        variants=variants,
        test=test,
    )
    await campaigns.action("start", "d11-test")
    runner = campaigns.gateway.campaign_runner
    for _ in range(100):
        await runner.tick()
        await runner.drain()
        waiting = await campaigns.get("d11-test")
        if waiting.phase == "waiting":
            break
    assert waiting.phase == "waiting" and waiting.HasField("tested_at") and not waiting.winner
    model = Campaign("d11-test", "marketing", "s", "x", (Variant("A", 1), Variant("B", 1)), local(10), local(10))
    tested = row(waiting, "").targeted
    assert 5 < tested < 35  # about half the audience, by the sample hash
    sent = await _released_and_sent(campaigns, "d11-test", tested)
    links = _outbox_links(campaigns)
    b_users = [u for u, link in links.items() if model.share_of(u) == "B"]
    assert b_users and len(links) == tested
    async with aiohttp.ClientSession() as http:
        for user in b_users[:2]:
            async with http.get(links[user], allow_redirects=False) as answer:
                assert answer.headers["Location"] == "https://m.example.com/B"
    assert row(await campaigns.get("d11-test"), "B").clicked == 2 and sent.winner == ""
    await runner.tick()
    assert (await campaigns.get("d11-test")).winner == ""  # the wait is not over
    campaigns.clock.advance(8 * 3600)
    done = await campaigns.finish("d11-test")
    assert done.winner == "B" and done.phase == "all"
    assert row(done, "").targeted == 40 and done.progress.matched == 40
    a_sample = sum(1 for u in links if model.share_of(u) == "A")
    assert row(done, "A").targeted == a_sample  # A went to its part of the test only
    assert row(done, "B").targeted == 40 - a_sample


async def test_a_user_the_campaign_cannot_claim_is_skipped_not_a_stalled_run(campaigns: Campaigns) -> None:
    from gateway.values.campaigns import request_id_of

    await add_users(campaigns.api, 30)  # vip: u-0, u-5, ..., u-25
    taken = push_pb2.PushRequest(
        request_id=request_id_of("d11-skip", "u-5"),
        user_id="u-5",
        scenario="double11.presale",
        params=PARAMS,
        campaign_id="other",
    )
    await campaigns.api.push.Push(taken, metadata=auth("marketing"))
    await campaigns.create("d11-skip", "tags any [vip]")
    await campaigns.action("start", "d11-skip")
    done = await campaigns.finish("d11-skip")
    assert done.progress.matched == 5 and row(done, "").targeted == 5
    assert done.progress.skipped == 1  # counted, and reported


def test_the_split_is_the_same_in_every_process() -> None:
    """A hash salted per process (Python's hash()) would split users differently on each
    replica and after each restart: the split is pinned to what it was written with."""
    now = local(10)
    campaign = Campaign("c", "marketing", "s", "x", (Variant("A", 1), Variant("B", 1)), now, now, holdout=0.1)
    assert [campaign.share_of(f"u-{n}") for n in range(8)] == ["B", "B", "A", "B", "B", "A", "B", "A"]


async def test_a_pause_stops_a_scan_under_way(campaigns: Campaigns) -> None:
    runner = campaigns.gateway.campaign_runner
    runner._chunk_size = 1  # a chunk a user: the pause lands between two of them
    runner._backlog_poll = 0  # every chunk reads the campaign afresh
    await add_users(campaigns.api, 5000)  # 1,000 vip
    await campaigns.create("d11-midway", "tags any [vip]")
    await campaigns.action("start", "d11-midway")
    await runner.tick()
    for _ in range(10_000):  # until the scan is under way
        if (await campaigns.get("d11-midway")).progress.scanned:
            break
    await campaigns.action("pause", "d11-midway")
    await runner.drain()
    paused = (await campaigns.get("d11-midway")).progress.scanned
    assert 0 < paused < 1000
    await runner.tick()
    await runner.drain()
    assert (await campaigns.get("d11-midway")).progress.scanned == paused  # paused stays paused
    await campaigns.action("resume", "d11-midway")
    done = await campaigns.finish("d11-midway")
    assert done.progress.matched == 1000 and row(done, "").targeted == 1000


async def test_td_and_email_unsubscribes_count_in_the_campaign_they_answer(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A user who answers TD on WeChat after a campaign's message reached them there,
    or unsubscribes through the campaign email's link, counts once as unsubscribed in
    that campaign's funnel; an opt-out with no campaign message behind it counts in
    none."""
    import time

    import aiohttp

    from gateway.unsubscribe import Unsubscribe
    from gateway.values.domain import Category, Channel
    from tests.e2e.channels_setup import CALLBACK_TOKEN
    from tests.e2e.test_webhooks import signed

    redis_url = request.getfixturevalue("clean_redis")
    clock = FixedClock(local(10))
    settings = settings_for(tmp_path, redis_url)
    gateway = Gateway(
        settings, metrics=fresh_metrics(), clock=clock, environ={"HERALD_WECHAT_CALLBACK_TOKEN": CALLBACK_TOKEN}
    )
    gateway.campaign_runner._interval = 3600
    await gateway.start()
    api = await open_api(gateway)
    try:
        campaigns = Campaigns(api, campaign_pb2_grpc.CampaignServiceStub(api.channel), clock, gateway)
        users = [
            profile_pb2.User(
                user_id=f"w-{n}",
                timezone="Asia/Shanghai",
                tags=["news"] if n < 2 else [],
                wechat=profile_pb2.WeChatIdentity(openid=f"oTd{n:025d}", following=True),
            )
            for n in range(3)
        ] + [profile_pb2.User(user_id="e-0", timezone="Asia/Shanghai", tags=["news"], email="e0@example.com")]
        for user in users:
            await api.profiles.UpsertUser(profile_pb2.UpsertUserRequest(user=user), metadata=auth("order"))
        for user in users[:3]:  # each wrote to the account: WeChat's customer-service window is open
            await api.profiles.RecordInteraction(
                profile_pb2.RecordInteractionRequest(user_id=user.user_id, kind=profile_pb2.USER_MESSAGE),
                metadata=auth("order"),
            )
        await campaigns.create("news-td", "tags any [news]", scenario="new.arrivals", params={"category_name": "女装"})
        await campaigns.action("start", "news-td")
        await campaigns.finish("news-td")
        sent = await _released_and_sent(campaigns, "news-td", 3)
        assert row(sent, "A").unsubscribed == 0

        async def td(openid: str, msg_id: str) -> None:
            xml = (
                f"<xml><ToUserName><![CDATA[gh_shop]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
                f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                f"<Content><![CDATA[TD]]></Content><MsgId>{msg_id}</MsgId></xml>"
            )
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{gateway.public_port}/webhooks/wechat", params=signed(), data=xml.encode()
                ) as answer,
            ):
                assert answer.status == 200, await answer.text()

        await td("oTd0000000000000000000000000", "1")
        await td("oTd0000000000000000000000000", "2")  # said twice: one user unsubscribed
        await td("oTd0000000000000000000000002", "3")  # w-2 got no campaign message
        after_td = await campaigns.get("news-td")
        assert row(after_td, "A").unsubscribed == 1

        assert gateway.tokens is not None
        what = Unsubscribe("e-0", Category.MARKETING, Channel.EMAIL, "new.arrivals", "news-td")
        token = gateway.tokens.issue(what, clock.now())
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{gateway.public_port}/unsubscribe/{token}") as answer,
        ):
            assert answer.status == 200
        after_email = await campaigns.get("news-td")
        assert row(after_email, "A").unsubscribed == 2 and row(after_email, "").unsubscribed == 2
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)


async def test_cancel_stops_the_campaigns_queued_sends(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Redis: messages a campaign's users were accepted for wait in the marketing lane
    (here: no process delivers yet); the campaign is cancelled; a worker then takes the
    lane. None of them goes out: each ends SUPPRESSED / CANCELLED, counted so in the
    funnel, and nothing reaches the outbox."""
    redis_url = request.getfixturevalue("clean_redis")
    clock = FixedClock(local(10))
    api_only = settings_for(tmp_path, redis_url).replace(deliver=False)
    gateway = Gateway(api_only, metrics=fresh_metrics(), clock=clock)
    gateway.campaign_runner._interval = 3600
    await gateway.start()
    api = await open_api(gateway)
    try:
        campaigns = Campaigns(api, campaign_pb2_grpc.CampaignServiceStub(api.channel), clock, gateway)
        await add_users(api, 30)
        await campaigns.create("stop-me", "tags any [mom_baby]")
        await campaigns.action("start", "stop-me")
        await campaigns.finish("stop-me")
        got = await campaigns.get("stop-me")
        for _ in range(40):  # the morning comes: the held claims are released and queued
            if row(got, "").accepted >= 10:
                break
            clock.advance(300)
            await gateway.scheduler.tick()
            got = await campaigns.get("stop-me")
        assert row(got, "A").accepted == 10 and row(got, "A").sent == 0
        await campaigns.action("cancel", "stop-me")

        worker = Gateway(settings_for(tmp_path, redis_url), metrics=fresh_metrics(), clock=clock, api=False)
        await worker.start()
        try:
            for _ in range(200):
                got = await campaigns.get("stop-me")
                if row(got, "A").suppressed.get("CANCELLED", 0) >= 10:
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop(grace=1.0)
        assert row(got, "A").suppressed.get("CANCELLED") == 10 and row(got, "A").sent == 0
        assert not (tmp_path / "data" / "outbox" / "APP_PUSH.jsonl").exists()
        listed = await api.push.ListMessages(push_pb2.ListMessagesRequest(user_id="u-0"), metadata=auth("marketing"))
        [message] = listed.messages
        assert message.status == "suppressed" and "cancelled" in message.detail
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)


async def test_a_scan_stops_at_the_campaigns_deadline(campaigns: Campaigns) -> None:
    """Past its deadline no claim of the campaign could be sent: the scan reads no more
    users (none is counted as an error) and the campaign completes with those decided."""
    await add_users(campaigns.api, 30)
    deadline = campaigns.clock.now() + timedelta(hours=1)
    await campaigns.create("late", "tags any [mom_baby]", deadline=ts(deadline))
    await campaigns.action("start", "late")
    campaigns.clock.advance(2 * 3600)
    done = await campaigns.finish("late")
    assert row(done, "").targeted == 0
    assert (done.progress.scanned, done.progress.skipped) == (0, 0)
    assert done.progress.shards_done == done.progress.shards


async def test_a_campaign_the_policy_no_longer_allows_is_paused_with_the_reason(campaigns: Campaigns) -> None:
    """A policy change that refuses every claim of a running campaign (here: the
    scenario now needs a parameter the campaign's variant lacks) pauses it with the
    reason, before a user is read; fixed and resumed, it decides its whole audience.
    Skipping every user instead would have used up the audience for nothing."""
    import msgspec

    await add_users(campaigns.api, 30)
    await campaigns.create("broken", "tags any [mom_baby]")
    store = campaigns.gateway.store
    [made] = await store.get_campaigns(["broken"])
    assert made is not None
    lacking = msgspec.structs.replace(made, variants=(Variant("A", 1, {"deposit": "50"}),))
    stored = await store.put_campaign(lacking, made.version)
    assert stored is not None
    await campaigns.action("start", "broken")
    await campaigns.gateway.campaign_runner.tick()
    await campaigns.gateway.campaign_runner.drain()
    paused = await campaigns.get("broken")
    assert paused.state == campaign_pb2.CAMPAIGN_STATE_PAUSED
    assert "discount" in paused.paused_because and "resume" not in paused.paused_because
    assert (paused.progress.scanned, paused.progress.skipped) == (0, 0)

    [now_stored] = await store.get_campaigns(["broken"])
    assert now_stored is not None
    fixed = msgspec.structs.replace(now_stored, variants=made.variants)
    assert await store.put_campaign(fixed, now_stored.version) is not None
    resumed = await campaigns.action("resume", "broken")
    assert resumed.paused_because == ""
    done = await campaigns.finish("broken")
    assert row(done, "").targeted == 10 and done.progress.skipped == 0
