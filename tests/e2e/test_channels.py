"""Delivery to the fake providers over gRPC: template messages, fallback to SMS, what a
provider says kept on the user, the shared WeChat token, breakers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway.store.redis import scripts
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import Fakes, gateway_on_fakes, policies_for, settled
from tests.e2e.conftest import OPENID, Api, auth
from tests.e2e.test_push import shipped


@pytest.fixture(params=["memory", "redis"])
async def api(request: pytest.FixtureRequest, tmp_path: Path, fake: Fakes) -> AsyncIterator[Api]:
    redis_url = request.getfixturevalue("clean_redis") if request.param == "redis" else ""
    async with gateway_on_fakes(tmp_path, fake, redis_url) as client:
        yield client


def kinds(message: push_pb2.Message) -> list[tuple[str, str, str]]:
    return [(e.kind, types_pb2.Channel.Name(e.channel), e.provider_code) for e in message.timeline]


async def test_shipped_goes_out_as_a_template_message(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    answer = await api.push.Push(shipped(dedup_key="O-1:shipped"), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert message.status == "delivered"
    [sent] = fake.wechat.template_sends
    assert sent["touser"] == OPENID
    assert sent["template_id"] == "TPL_ORDER_SHIPPED_01"
    assert sent["client_msg_id"] == f"{answer.message_id}.wechat_template"
    assert sent["data"]["character_string1"] == {"value": "O-1001"}
    assert ("delivered", "WECHAT_TEMPLATE", "0") in kinds(message)
    assert fake.sms.sends == []


async def test_unfollowed_user_falls_back_to_sms_and_is_marked(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    fake.wechat.unfollowed.add(OPENID)
    first = await api.push.Push(shipped("r-1"), metadata=auth("order"))
    assert list(first.channel_plan) == [types_pb2.WECHAT_TEMPLATE, types_pb2.SMS]
    message = await settled(api, first.message_id)
    assert message.status == "delivered"
    timeline = kinds(message)
    assert ("attempt", "WECHAT_TEMPLATE", "43004") in timeline
    assert ("fallback", "SMS", "") in timeline
    assert ("delivered", "SMS", "OK") in timeline
    [sms] = fake.sms.sends
    assert sms["PhoneNumbers"] == "13800138000"  # mainland numbers go bare
    assert sms["TemplateCode"] == "SMS_100002"
    assert sms["OutId"] == f"{first.message_id}.sms"

    user = await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))
    assert not user.wechat.following

    second = await api.push.Push(
        shipped("r-2", params={"order_id": "O-2", "carrier": "SF", "tracking_no": "SF2"}), metadata=auth("order")
    )
    assert list(second.channel_plan) == [types_pb2.SMS]
    assert (await settled(api, second.message_id)).status == "delivered"
    assert fake.wechat.template_calls == 1  # the second never tried WeChat
    assert len(fake.sms.sends) == 2


async def test_bad_number_is_cleared_and_the_message_fails_with_its_reason(api: Api, fake: Fakes) -> None:
    await api.add_user("u-1", phone="+8613800138000")
    fake.sms.bad_numbers.add("13800138000")
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert message.status == "failed"
    assert ("attempt", "SMS", "isv.MOBILE_NUMBER_ILLEGAL") in kinds(message)
    assert "no channel of the plan delivered" in message.timeline[-1].detail
    user = await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))
    assert user.phone == ""
    dead = await api.gateway.queue.dead_letters(10)
    assert [d.message_id for d in dead] == [answer.message_id]
    assert "isv.MOBILE_NUMBER_ILLEGAL" in dead[0].reason


async def test_expired_token_is_refreshed_once_and_the_send_succeeds(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    first = await api.push.Push(shipped("r-1"), metadata=auth("order"))
    assert (await settled(api, first.message_id)).status == "delivered"
    assert fake.wechat.token_requests == 1
    fake.wechat.expire_tokens()
    second = await api.push.Push(
        shipped("r-2", params={"order_id": "O-2", "carrier": "SF", "tracking_no": "S"}), metadata=auth("order")
    )
    message = await settled(api, second.message_id)
    assert message.status == "delivered"
    assert ("delivered", "WECHAT_TEMPLATE", "0") in kinds(message)
    assert fake.wechat.token_requests == 2
    assert len(fake.wechat.template_sends) == 2


async def test_busy_wechat_is_retried_on_the_same_channel(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    fake.wechat.inject("template", -1)
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert message.status == "delivered"
    assert kinds(message)[-2:] == [("attempt", "WECHAT_TEMPLATE", "-1"), ("delivered", "WECHAT_TEMPLATE", "0")]
    assert fake.sms.sends == []


async def test_malformed_template_fails_without_fallback(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    fake.wechat.inject("template", 40037)
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert message.status == "failed"
    assert ("attempt", "WECHAT_TEMPLATE", "40037") in kinds(message)
    assert fake.sms.sends == []


async def test_outage_opens_the_breaker_and_traffic_returns_after(api: Api, fake: Fakes) -> None:
    for i in range(4):
        await api.add_user(
            f"u-{i}", wechat=profile_pb2.WeChatIdentity(openid=f"{OPENID}{i}", following=True), phone="+8613800138000"
        )
    fake.wechat.outage = True

    async def push(n: int, user: int) -> push_pb2.Message:
        params = {"order_id": f"O-{n}", "carrier": "SF", "tracking_no": f"T{n}"}
        answer = await api.push.Push(shipped(f"r-{n}", f"u-{user}", params=params), metadata=auth("order"))
        return await settled(api, answer.message_id)

    first = await push(1, 0)  # two faults (the test policy's threshold) open the breaker
    assert first.status == "delivered"
    assert ("delivered", "SMS", "OK") in kinds(first)
    calls = fake.wechat.calls["/cgi-bin/token"]
    second = await push(2, 1)
    assert second.status == "delivered"
    # The router puts the channel whose breaker is open last: SMS goes first.
    assert list(second.channel_plan) == [types_pb2.SMS, types_pb2.WECHAT_TEMPLATE]
    assert ("delivered", "SMS", "OK") in kinds(second)
    assert fake.wechat.calls["/cgi-bin/token"] == calls  # WeChat was not called at all

    fake.wechat.outage = False
    await asyncio.sleep(1.1)  # the test policy's cool-down: the next send is the probe
    third = await push(3, 2)
    assert ("delivered", "WECHAT_TEMPLATE", "0") in kinds(third)
    fourth = await push(4, 3)
    assert ("delivered", "WECHAT_TEMPLATE", "0") in kinds(fourth)
    assert len(fake.sms.sends) == 2


async def test_wrong_secret_is_a_configuration_fault(tmp_path: Path, fake: Fakes) -> None:
    async with gateway_on_fakes(tmp_path, fake) as api:
        fake.wechat.secret = "rotated"  # the gateway still has the old one
        await api.add_follower()
        answer = await api.push.Push(shipped(), metadata=auth("order"))
        message = await settled(api, answer.message_id)
        assert ("attempt", "WECHAT_TEMPLATE", "40125") in kinds(message)
        assert ("delivered", "SMS", "OK") in kinds(message)
        assert api.gateway.dispatcher.breaker_states()["wechat"] == 2  # open at once


async def test_two_gateways_share_one_token(tmp_path: Path, fake: Fakes, clean_redis: str) -> None:
    policy_dir = policies_for(tmp_path, fake)
    async with (
        gateway_on_fakes(tmp_path / "a", fake, clean_redis, policy_dir=policy_dir) as one,
        gateway_on_fakes(tmp_path / "b", fake, clean_redis, policy_dir=policy_dir) as two,
    ):
        await one.add_follower()
        answers = await asyncio.gather(
            *(
                (one if i % 2 else two).push.Push(
                    shipped(f"r-{i}", params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"}),
                    metadata=auth("order"),
                )
                for i in range(20)
            )
        )
        for answer in answers:
            assert (await settled(one, answer.message_id)).status == "delivered"
        assert fake.wechat.token_requests == 1
        assert len(fake.wechat.template_sends) == 20


async def test_provider_rate_limit_makes_sends_wait(tmp_path: Path, fake: Fakes) -> None:
    policy_dir = policies_for(tmp_path, fake, rate=5.0, burst=1)
    async with gateway_on_fakes(tmp_path, fake, policy_dir=policy_dir) as api:
        await api.add_follower()
        answers = [
            await api.push.Push(
                shipped(f"r-{i}", params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"}),
                metadata=auth("order"),
            )
            for i in range(4)
        ]
        for answer in answers:
            assert (await settled(api, answer.message_id)).status == "delivered"
        waits = api.gateway.metrics.rate_limit_waits.labels("wechat")._value.get()
        assert waits >= 1  # the bucket holds one token; four sends cannot all go at once
        assert len(fake.wechat.template_sends) == 4


async def test_a_fast_provider_bucket_is_taken_a_lease_at_a_time(tmp_path: Path, fake: Fakes, clean_redis: str) -> None:
    """1,000 sends a second allowed: the gateway takes 50 ms worth of tokens (50) per
    store call, not one per send, so the bucket is no hot key (counted by Redis's
    MONITOR: the bucket script's calls)."""
    policy_dir = policies_for(tmp_path, fake, rate=1000.0, burst=1000)
    seen: list[str] = []
    watching = threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(clean_redis).monitor() as feed:
            watching.set()
            for event in feed.listen():
                command = str(event.get("command", ""))
                if scripts.TAKE_TOKEN.sha in command:
                    seen.append(command)
                if "stop-monitor" in command:
                    return

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    watching.wait(5)
    async with gateway_on_fakes(tmp_path, fake, redis_url=clean_redis, policy_dir=policy_dir) as api:
        await api.add_follower()
        answers = await asyncio.gather(
            *(
                api.push.Push(
                    shipped(f"r-{i}", params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"}),
                    metadata=auth("order"),
                )
                for i in range(50)
            )
        )
        for answer in answers:
            assert (await settled(api, answer.message_id)).status == "delivered"
    redis.Redis.from_url(clean_redis).get("stop-monitor")
    await asyncio.to_thread(watcher.join, 5)
    assert len(fake.wechat.template_sends) == 50
    # 50 sends over a few hundred ms: a call a lease of up to 50 tokens and 50 ms (one
    # call a send would be 50).
    assert 1 <= len(seen) <= 20, seen


async def test_send_log_lines_carry_context_and_no_personal_data(
    api: Api, fake: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    import json as _json

    from gateway.logs import configure

    configure("INFO", json=True)
    await api.add_follower()
    fake.wechat.unfollowed.add(OPENID)
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    assert (await settled(api, answer.message_id)).status == "delivered"
    out = capsys.readouterr().err
    events = [_json.loads(line) for line in out.splitlines() if line.startswith("{")]
    sends = [e for e in events if e.get("event") == "send" and e.get("message_id") == answer.message_id]
    assert {e["channel"] for e in sends} == {"WECHAT_TEMPLATE", "SMS"}
    assert {e["level"] for e in sends} == {"info"}
    assert all(e["bu"] == "order" for e in sends)
    learned = [e for e in events if e.get("event") == "user_updated_from_provider"]
    assert learned and learned[0]["message_id"] == answer.message_id  # bound through contextvars
    for secret in (OPENID, "13800138000", fake.wechat.secret, fake.sms.access_key_secret):
        assert secret not in out
