"""A channel that is down is a reason to wait, not to drop: a provider down for longer
than its breaker's cool-down, and a per-number SMS throttle, delay deliveries and lose
none of them."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from gateway.clock import FixedClock
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import Fakes, gateway_on_fakes, settled
from tests.e2e.conftest import Api, auth
from tests.e2e.test_arbitration import local
from tests.e2e.test_push import shipped


async def wechat_only(api: Api, count: int) -> list[str]:
    users = [f"u-wx-{i}" for i in range(count)]
    for index, user in enumerate(users):
        await api.add_user(
            user, wechat=profile_pb2.WeChatIdentity(openid=f"oWaiting{index:04d}abcdefgh", following=True)
        )
    return users


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_wechat_down_longer_than_the_cool_down_delays_and_loses_nothing(
    tmp_path: Path, fake: Fakes, store: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("clean_redis") if store == "redis" else ""
    async with gateway_on_fakes(tmp_path, fake, redis_url) as api:
        users = await wechat_only(api, 6)
        fake.wechat.outage = True  # 503s first...
        answers = [
            await api.push.Push(shipped(f"r-{i}", user_id=user), metadata=auth("order")) for i, user in enumerate(users)
        ]
        assert {a.outcome for a in answers} == {types_pb2.ACCEPTED}
        await asyncio.sleep(1.5)
        await fake.wechat.refuse()  # ...then connection refused, longer than the 1 s cool-down
        await asyncio.sleep(3.0)
        for answer in answers:
            message = await api.push.GetMessage(
                push_pb2.GetMessageRequest(message_id=answer.message_id), metadata=auth("order")
            )
            assert message.status not in ("failed", "expired"), message.detail
        fake.wechat.outage = False
        await fake.wechat.resume()
        for answer in answers:
            message = await settled(api, answer.message_id, within=30)
            assert message.status == "delivered", (message.status, message.detail)
        assert sorted(fake.wechat.delivered_ids()) == sorted(f"{a.message_id}.wechat_template" for a in answers)
        assert (
            api.gateway.metrics.registry.get_sample_value("herald_dead_letters_total", {"channel": "WECHAT_TEMPLATE"})
            == 0
        )


async def test_a_throttled_marketing_sms_waits_for_the_window_instead_of_failing(tmp_path: Path, fake: Fakes) -> None:
    clock = FixedClock(local(10))
    async with gateway_on_fakes(tmp_path, fake, clock=clock) as api:
        await api.add_user("u-sms", phone="+8613800138011")  # SMS is the only channel that reaches them
        coupon = push_pb2.PushRequest(
            request_id="r-coupon",
            user_id="u-sms",
            scenario="coupon.flash",
            params={"amount": "20", "expires": "tonight"},
            campaign_id="c-flash",
        )
        answer = await api.push.Push(coupon, metadata=auth("marketing"))
        assert answer.outcome == types_pb2.SCHEDULED
        assert list(answer.channel_plan) == [types_pb2.SMS]
        fake.sms.inject("send", "isv.BUSINESS_LIMIT_CONTROL")  # the number's limit is reached
        clock.set(answer.scheduled_at.ToDatetime(tzinfo=UTC) + timedelta(seconds=1))
        await api.gateway.scheduler.tick()

        async def waiting() -> push_pb2.Message:
            for _ in range(200):
                message = await api.push.GetMessage(
                    push_pb2.GetMessageRequest(message_id=answer.message_id), metadata=auth("marketing")
                )
                if message.status == "waiting":
                    return message
                await asyncio.sleep(0.02)
            raise AssertionError(f"still {message.status}: {message.detail}")

        message = await waiting()
        assert "aliyun_sms unavailable (isv.BUSINESS_LIMIT_CONTROL)" in message.detail
        assert fake.sms.sends == []
        clock.advance(61)  # the throttle's minute has passed
        message = await settled(api, answer.message_id, bu="marketing", within=10)
        assert message.status == "delivered"
        assert [s["PhoneNumbers"] for s in fake.sms.sends] == ["13800138011"]
