"""App push against fake FCM (with its OAuth endpoint) and JPush."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herald.v1 import profile_pb2, types_pb2
from tests.e2e.channels_setup import Fakes, gateway_on_fakes, settled
from tests.e2e.conftest import Api, auth
from tests.e2e.test_push import shipped


@pytest.fixture
async def api(tmp_path: Path, fake: Fakes) -> AsyncIterator[Api]:
    async with gateway_on_fakes(tmp_path, fake) as client:
        yield client


def device(token: str, provider: int = profile_pb2.FCM) -> profile_pb2.DeviceToken:
    return profile_pb2.DeviceToken(token=token, platform=profile_pb2.ANDROID, provider=provider)  # type: ignore[arg-type]


def order(n: int) -> dict[str, str]:
    return {"order_id": f"O-{n}", "carrier": "SF", "tracking_no": f"T{n}"}


async def test_fcm_delivers_with_one_oauth_token(api: Api, fake: Fakes) -> None:
    await api.add_user("u-1", device_tokens=[device("fcm-token-1")], phone="+8613800138000")
    for n in range(3):
        answer = await api.push.Push(shipped(f"r-{n}", params=order(n)), metadata=auth("order"))
        assert next(iter(answer.channel_plan)) == types_pb2.APP_PUSH
        message = await settled(api, answer.message_id)
        assert message.status == "delivered"
    assert len(fake.fcm.sends) == 3
    sent = fake.fcm.sends[0]
    assert sent["token"] == "fcm-token-1"
    assert sent["notification"] == {"title": "订单已发货", "body": "SF T0"}
    assert sent["android"]["priority"] == "HIGH"
    assert fake.fcm.token_requests == 1
    assert fake.sms.sends == []


async def test_unregistered_token_is_dropped_and_sms_takes_over(api: Api, fake: Fakes) -> None:
    await api.add_user("u-1", device_tokens=[device("dead-token")], phone="+8613800138000")
    fake.fcm.unregistered.add("dead-token")
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert message.status == "delivered"
    assert next((e.kind, e.provider_code) for e in message.timeline if e.channel == types_pb2.APP_PUSH) == (
        "attempt",
        "UNREGISTERED",
    )
    assert len(fake.sms.sends) == 1
    user = await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))
    assert list(user.device_tokens) == []


async def test_fcm_outage_is_retried_with_retry_after(api: Api, fake: Fakes) -> None:
    await api.add_user("u-1", device_tokens=[device("fcm-token-1")])
    fake.fcm.inject("send", (503, "UNAVAILABLE", "The service is currently unavailable."))
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert [(e.kind, e.provider_code) for e in message.timeline][-2:] == [
        ("attempt", "UNAVAILABLE"),
        ("delivered", "200"),
    ]


async def test_jpush_devices_go_to_jpush(api: Api, fake: Fakes) -> None:
    await api.add_user("u-1", device_tokens=[device("1a0018970a1b2c3d", profile_pb2.JPUSH)])
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    message = await settled(api, answer.message_id)
    assert message.status == "delivered"
    [sent] = fake.jpush.sends
    assert sent["audience"] == {"registration_id": ["1a0018970a1b2c3d"]}
    assert sent["notification"]["android"]["title"] == "订单已发货"
    assert fake.fcm.sends == []


async def test_the_users_locale_picks_the_content(api: Api, fake: Fakes) -> None:
    """order.shipped has English content (`locales: {en: ...}`): en-GB picks it through
    `en`; a user without a locale, or with one the scenario does not write, gets the
    default."""
    await api.add_user("u-en", device_tokens=[device("fcm-en")], locale="en-GB")
    await api.add_user("u-none", device_tokens=[device("fcm-none")])
    await api.add_user("u-fr", device_tokens=[device("fcm-fr")], locale="fr-FR")
    for n, user in enumerate(("u-en", "u-none", "u-fr")):
        answer = await api.push.Push(shipped(f"r-{n}", user, params=order(n)), metadata=auth("order"))
        assert (await settled(api, answer.message_id)).status == "delivered"
    sent = {send["token"]: send["notification"] for send in fake.fcm.sends}
    assert sent["fcm-en"] == {"title": "Your order is on its way", "body": "SF T0"}
    assert sent["fcm-none"] == {"title": "订单已发货", "body": "SF T1"}
    assert sent["fcm-fr"] == {"title": "订单已发货", "body": "SF T2"}
