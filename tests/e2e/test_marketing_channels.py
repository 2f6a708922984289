"""Marketing delivery over gRPC against the fake WeChat: customer-service messages in
an open window, one mass-send call for a campaign's winners, the monthly limit of 4."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gateway.clock import FixedClock
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import Fakes, gateway_on_fakes, policies_for, settled
from tests.e2e.conftest import OPENID, Api, auth
from tests.e2e.test_arbitration import local, marketing
from tests.e2e.test_push import ts

WEEKLY = "{name: weekly, window: week, limit: 3, per_tier: {at_risk: 1, hibernating: 1}}"


def user(user_id: str, openid: str) -> profile_pb2.UpsertUserRequest:
    rfm = profile_pb2.RfmInputs(last_purchase_at=ts(local(10) - timedelta(days=10)), orders_in_period=4)  # loyal
    return profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(
            user_id=user_id,
            wechat=profile_pb2.WeChatIdentity(openid=openid, following=True),
            phone="+8613800138000",
            device_tokens=[
                profile_pb2.DeviceToken(token=f"tok-{user_id}", platform=profile_pb2.ANDROID, provider=profile_pb2.FCM)
            ],
            timezone="Asia/Shanghai",
            rfm=rfm,
        )
    )


async def release(api: Api, clock: FixedClock, moment: object) -> None:
    clock.set(moment)  # type: ignore[arg-type]
    while await api.gateway.scheduler.tick():
        pass


async def test_open_window_gets_a_customer_service_message(tmp_path: Path, fake: Fakes) -> None:
    clock = FixedClock(local(10))
    async with gateway_on_fakes(tmp_path, fake, clock=clock) as api:
        await api.profiles.UpsertUser(user("u-1", OPENID), metadata=auth("order"))
        await api.profiles.RecordInteraction(
            profile_pb2.RecordInteractionRequest(user_id="u-1", kind=profile_pb2.USER_MESSAGE), metadata=auth("order")
        )
        answer = await api.push.Push(marketing("r-1", "double11.presale"), metadata=auth("marketing"))
        assert answer.outcome == types_pb2.SCHEDULED
        await release(api, clock, local(12, 30))
        message = await settled(api, answer.message_id, "marketing")
        assert message.status == "delivered"
        [sent] = fake.wechat.cs_sends
        assert sent["touser"] == OPENID
        assert sent["msgtype"] == "news"
        assert sent["news"]["articles"][0]["title"] == "双11预售开启"
        assert fake.wechat.mass_calls == []


# 5,000 users on the in-memory store; on Redis (slower per release here) 1,000.
@pytest.mark.parametrize(("store", "users"), [("memory", 5000), ("redis", 1000)])
async def test_a_campaign_goes_out_in_one_mass_send(
    tmp_path: Path, fake: Fakes, store: str, users: int, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("clean_redis") if store == "redis" else ""
    clock = FixedClock(local(10))
    policy_dir = policies_for(tmp_path, fake, mass_batch_wait=1.0)
    async with gateway_on_fakes(tmp_path, fake, redis_url, clock=clock, policy_dir=policy_dir) as api:
        for start in range(0, users, 1000):
            await api.profiles.UpsertUsers(
                profile_pb2.UpsertUsersRequest(
                    requests=[user(f"u-{i}", f"oMass{i:06d}xyz") for i in range(start, start + 1000)]
                ),
                metadata=auth("order"),
            )
        ids = []
        for start in range(0, users, 1000):
            batch = [marketing(f"r-{i}", "double11.presale", user_id=f"u-{i}") for i in range(start, start + 1000)]
            answers = await api.push.PushBatch(push_pb2.PushBatchRequest(requests=batch), metadata=auth("marketing"))
            assert {a.outcome for a in answers.responses} == {types_pb2.SCHEDULED}
            ids += [a.message_id for a in answers.responses]
        await release(api, clock, local(12, 30))
        for message_id in ids[:: users // 50]:
            assert (await settled(api, message_id, "marketing", within=60)).status == "delivered"
        await api.gateway.dispatcher.drain(60)
        assert len(fake.wechat.mass_calls) == 1
        [call] = fake.wechat.mass_calls
        assert len(call["touser"]) == users
        assert call["msgtype"] == "mpnews" and call["mpnews"] == {"media_id": "MEDIA_D11_PRESALE"}
        assert len(call["clientmsgid"]) <= 64
        assert fake.wechat.cs_sends == []


async def test_fifth_mass_message_of_the_month_takes_the_next_channel(tmp_path: Path, fake: Fakes) -> None:
    clock = FixedClock(local(10))
    policy_dir = policies_for(tmp_path, fake, edit_categories={WEEKLY: WEEKLY.replace("limit: 3", "limit: 7")})
    async with gateway_on_fakes(tmp_path, fake, clock=clock, policy_dir=policy_dir) as api:
        for n in (1, 2):
            await api.profiles.UpsertUser(user(f"u-{n}", f"oMonthly{n}xyz"), metadata=auth("order"))
        delivered_on = []
        for day in range(11, 16):
            clock.set(local(10, day=day))
            ids = []
            for n in (1, 2):
                request = marketing(f"r-{day}-{n}", "double11.presale", user_id=f"u-{n}", campaign_id=f"d{day}")
                answer = await api.push.Push(request, metadata=auth("marketing"))
                assert answer.outcome == types_pb2.SCHEDULED, answer.detail
                ids.append(answer.message_id)
            await release(api, clock, local(12, 30, day=day))
            messages = [await settled(api, i, "marketing") for i in ids]
            assert {m.status for m in messages} == {"delivered"}
            delivered_on.append({e.channel for m in messages for e in m.timeline if e.kind == "delivered"})
        assert delivered_on[:4] == [{types_pb2.WECHAT_MASS}] * 4
        assert delivered_on[4] == {types_pb2.APP_PUSH}
        assert len(fake.wechat.mass_calls) == 4
        fifth = await api.push.GetMessage(push_pb2.GetMessageRequest(message_id=ids[0]), metadata=auth("marketing"))
        assert any("WECHAT_MASS per user a month" in line for line in fifth.trace) or "APP_PUSH" in fifth.detail


async def test_a_campaigns_variants_go_out_in_one_mass_send_each(tmp_path: Path, fake: Fakes) -> None:
    import asyncio

    from herald.v1 import campaign_pb2, campaign_pb2_grpc

    clock = FixedClock(local(10))
    policy_dir = policies_for(tmp_path, fake, mass_batch_wait=1.0)
    async with gateway_on_fakes(tmp_path, fake, clock=clock, policy_dir=policy_dir) as api:
        requests = [user(f"u-{i}", f"oMass{i:06d}xyz") for i in range(400)]
        for request in requests:
            request.user.tags.append("vip")
        await api.profiles.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=requests), metadata=auth("order"))
        stub = campaign_pb2_grpc.CampaignServiceStub(api.channel)
        spec = campaign_pb2.CampaignSpec(
            campaign_id="d11-mass",
            scenario="double11.presale",
            audience="tags any [vip]",
            params={"deposit": "50", "discount": "150"},
            variants=[campaign_pb2.Variant(name="A", weight=1), campaign_pb2.Variant(name="B", weight=1)],
        )
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=spec), metadata=auth("marketing"))
        action = campaign_pb2.CampaignAction(campaign_id="d11-mass")
        await stub.StartCampaign(action, metadata=auth("marketing"))
        get = campaign_pb2.GetCampaignRequest(campaign_id="d11-mass")
        for _ in range(200):
            got = await stub.GetCampaign(get, metadata=auth("marketing"))
            if got.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED:
                break
            await asyncio.sleep(0.05)
        by_variant = {row.variant: row for row in got.funnel}
        assert by_variant[""].scheduled == 400
        await release(api, clock, local(12, 30))
        await api.gateway.dispatcher.drain(60)
        calls = fake.wechat.mass_calls
        assert len(calls) == 2 and sorted(len(c["touser"]) for c in calls) == sorted(
            [by_variant["A"].scheduled, by_variant["B"].scheduled]
        )
        assert len({c["clientmsgid"] for c in calls}) == 2
        after = {row.variant: row for row in (await stub.GetCampaign(get, metadata=auth("marketing"))).funnel}
        assert after["A"].sent + after["B"].sent == 400
