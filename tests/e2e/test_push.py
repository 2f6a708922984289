"""PushService end to end: a real server, a real client, both stores."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from gateway.values.records import ScopeKind
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.conftest import KEYS, OPENID, Api, auth, open_api, settings_for

SHIPPED = {"order_id": "O-1001", "carrier": "SF", "tracking_no": "SF123456"}


def shipped(request_id: str = "r-1", user_id: str = "u-1", **changes: object) -> push_pb2.PushRequest:
    request = push_pb2.PushRequest(request_id=request_id, user_id=user_id, scenario="order.shipped", params=SHIPPED)
    for name, value in changes.items():
        if name == "params":
            request.ClearField("params")
            request.params.update(value)  # type: ignore[arg-type]
        elif isinstance(value, Timestamp | push_pb2.Content):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def wait_status(
    api: Api, message_id: str, status: str, bu: str = "order", within: float = 5.0
) -> push_pb2.Message:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        message = await api.push.GetMessage(push_pb2.GetMessageRequest(message_id=message_id), metadata=auth(bu))
        if message.status == status or asyncio.get_running_loop().time() > deadline:
            return message
        await asyncio.sleep(0.05)


async def test_shipped_notice_is_accepted_and_written_to_the_sandbox(api: Api) -> None:
    await api.add_follower()
    response = await api.push.Push(shipped(), metadata=auth("order"))
    assert response.outcome == types_pb2.ACCEPTED
    assert response.category == types_pb2.BASIC
    assert list(response.channel_plan) == [types_pb2.WECHAT_TEMPLATE, types_pb2.SMS]
    assert response.policy_version == api.gateway.policies.current.version
    assert response.message_id.startswith("m_")

    message = await wait_status(api, response.message_id, "delivered")
    assert message.status == "delivered"
    assert [e.kind for e in message.timeline] == ["queued", "delivered"]
    assert message.timeline[1].channel == types_pb2.WECHAT_TEMPLATE
    assert message.timeline[1].provider_code == "SANDBOX"

    outbox = api.gateway.settings.data_dir / "outbox" / "WECHAT_TEMPLATE.jsonl"
    line = json.loads(outbox.read_text(encoding="utf-8").splitlines()[-1])
    assert line["message_id"] == response.message_id
    assert line["payload"]["template_id"] == "TPL_ORDER_SHIPPED_01"
    assert line["payload"]["fields"]["character_string3"] == "SF123456"
    assert line["payload"]["url"] == "https://m.shop.example.com/orders/O-1001/tracking"
    assert OPENID not in outbox.read_text(encoding="utf-8")  # the recipient is masked


async def test_same_request_id_and_body_returns_the_first_answer(api: Api) -> None:
    await api.add_follower()
    first = await api.push.Push(shipped(), metadata=auth("order"))
    again = await api.push.Push(shipped(), metadata=auth("order"))
    assert again == first


async def test_a_retry_finds_its_answer_when_the_request_index_forgot_it(clean_redis: str, tmp_path: Path) -> None:
    """Redis: a first read learns from the unit's request-id index whether the id was
    seen, and reads the stored answer only when it was. An answer can outlive its index
    entry (written a moment later, or by the fail-open handover, which writes no index):
    the retry must still get that answer, not a second message, nor contention. (Its
    first round puts the id back in the index and decides anew; the commit finds the
    answer written and refuses; the next round learns from the index that the id was
    seen and reads the answer.)"""
    import redis.asyncio as aioredis

    from gateway.store import keys

    gateway = Gateway(settings_for(tmp_path, clean_redis), metrics=fresh_metrics())
    await gateway.start()
    api = await open_api(gateway)
    direct = aioredis.Redis.from_url(clean_redis)
    try:
        await api.add_follower()
        first = await api.push.Push(shipped(), metadata=auth("order"))
        assert await direct.delete(keys.request_index("order", "r-1")) == 1
        began = time.monotonic()
        again = await api.push.Push(shipped(), metadata=auth("order"))
        assert again == first and time.monotonic() - began < 2
        # The index entry ran out and another body took the id: the retry still gets its answer.
        await direct.set(keys.request_index("order", "r-1"), "f" * 32)
        assert await api.push.Push(shipped(), metadata=auth("order")) == first
        await direct.delete(keys.request_index("order", "r-1"))
        assert await api.push.Push(shipped(), metadata=auth("order")) == first
        # The index has it again (the first round wrote it): a reuse with another body is refused.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.push.Push(shipped(params={**SHIPPED, "carrier": "JD"}), metadata=auth("order"))
        assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
    finally:
        await direct.aclose()
        await api.channel.close()
        await gateway.stop(grace=1.0)


async def test_same_request_id_with_another_body_is_already_exists(api: Api) -> None:
    await api.add_follower()
    await api.push.Push(shipped(), metadata=auth("order"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(shipped(params={**SHIPPED, "carrier": "JD"}), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "request_id 'r-1'" in (info.value.details() or "")


async def test_concurrent_duplicates_get_one_message(api: Api) -> None:
    await api.add_follower()
    answers = await asyncio.gather(*(api.push.Push(shipped(), metadata=auth("order")) for _ in range(10)))
    assert len({a.message_id for a in answers}) == 1


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        ((), "missing 'authorization"),
        ((("authorization", "Bearer nope"),), "unknown API key"),
        ((("authorization", f"Basic {KEYS['order']}"),), "must be 'Bearer <api key>'"),
    ],
)
async def test_unauthenticated(api: Api, metadata: tuple[tuple[str, str], ...], needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(shipped(), metadata=metadata)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert needle in (info.value.details() or "")


async def test_scenario_not_granted_is_permission_denied(api: Api) -> None:
    request = push_pb2.PushRequest(
        request_id="r-1", user_id="u-1", scenario="order.paid", params={"order_id": "1", "amount": "9"}
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(request, metadata=auth("logistics"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "'logistics' may not send scenario 'order.paid'" in (info.value.details() or "")


NOW = datetime.now(UTC)
BAD_REQUESTS = [
    ("missing request_id", shipped(request_id=""), "request_id: is required"),
    ("request_id charset", shipped(request_id="r 1"), "request_id: must be 1-128 characters"),
    ("request_id length", shipped(request_id="r" * 129), "request_id: must be 1-128 characters"),
    ("missing user_id", shipped(user_id=""), "user_id: is required"),
    ("user_id hash tag", shipped(user_id="u{1}"), "user_id: must be 1-128 characters"),
    ("missing scenario", push_pb2.PushRequest(request_id="r", user_id="u"), "scenario: is required"),
    ("unknown scenario", push_pb2.PushRequest(request_id="r", user_id="u", scenario="nope"), "unknown scenario 'nope'"),
    (
        "missing param",
        shipped(params={"order_id": "1", "carrier": "SF"}),
        "params: scenario 'order.shipped' needs tracking_no",
    ),
    ("empty param", shipped(params={**SHIPPED, "carrier": ""}), "needs carrier (missing or empty)"),
    ("unknown param", shipped(params={**SHIPPED, "colour": "red"}), "does not take colour"),
    ("param too long", shipped(params={**SHIPPED, "carrier": "x" * 513}), "params.carrier: is 513 characters"),
    (
        "control characters",
        shipped(params={**SHIPPED, "carrier": "S\x07F"}),
        "params.carrier: contains control characters",
    ),
    (
        "free text not allowed",
        shipped(content=push_pb2.Content(body="hi")),
        "content: scenario 'order.shipped' takes no free text",
    ),
    ("deadline in the past", shipped(deadline=ts(NOW - timedelta(minutes=1))), "deadline: is in the past"),
    (
        "deadline before not_before",
        shipped(not_before=ts(NOW + timedelta(hours=2)), deadline=ts(NOW + timedelta(hours=1))),
        "deadline: must be after not_before",
    ),
    ("not_before too far", shipped(not_before=ts(NOW + timedelta(days=31))), "not_before: is more than 30 days ahead"),
    ("priority", shipped(priority=101), "priority: is 101; it must be between 0 and 100"),
    ("dedup_key length", shipped(dedup_key="d" * 257), "dedup_key: is 257 characters"),
    ("campaign on basic", shipped(campaign_id="d11"), "campaign_id: only marketing scenarios carry a campaign"),
]


@pytest.mark.parametrize(("name", "request_", "needle"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_invalid_argument(api: Api, name: str, request_: push_pb2.PushRequest, needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(request_, metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


FREE_TEXT = [
    (
        "guard zh",
        "account.security",
        {"event": "登录", "device": "iPhone"},
        push_pb2.Content(body="限时秒杀，快来抢购"),
        "content.body: reads as marketing ('限时', '秒杀', '抢购')",
    ),
    (
        "guard en",
        "account.security",
        {"event": "login", "device": "web"},
        push_pb2.Content(title="Big SALE today"),
        "content.title: reads as marketing ('sale')",
    ),
    (
        "guard in every field",
        "account.security",
        {"event": "login", "device": "web"},
        push_pb2.Content(title="Big SALE today", body="限时秒杀，快来抢购"),
        "content: reads as marketing (content.title: 'sale'; content.body: '限时', '秒杀', '抢购'); basic messages",
    ),
    (
        "bad url",
        "account.security",
        {"event": "login", "device": "web"},
        push_pb2.Content(url="javascript:alert(1)"),
        "content.url: must be an absolute http(s) URL",
    ),
    (
        "long title",
        "account.security",
        {"event": "login", "device": "web"},
        push_pb2.Content(title="t" * 65),
        "content.title: is 65 characters; at most 64",
    ),
]


@pytest.mark.parametrize(("name", "scenario", "params", "content", "needle"), FREE_TEXT, ids=[f[0] for f in FREE_TEXT])
async def test_free_text_rules(
    api: Api, name: str, scenario: str, params: dict[str, str], content: push_pb2.Content, needle: str
) -> None:
    request = push_pb2.PushRequest(request_id="r", user_id="u-1", scenario=scenario, params=params, content=content)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(request, metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


async def test_wholesale_is_not_sale(api: Api) -> None:
    await api.add_follower()
    request = push_pb2.PushRequest(
        request_id="r",
        user_id="u-1",
        scenario="account.security",
        params={"event": "login", "device": "web"},
        content=push_pb2.Content(body="Your wholesale account signed in"),
    )
    response = await api.push.Push(request, metadata=auth("order"))
    assert response.outcome == types_pb2.ACCEPTED


async def test_marketing_needs_a_campaign(api: Api) -> None:
    request = push_pb2.PushRequest(
        request_id="r", user_id="u-1", scenario="coupon.flash", params={"amount": "10", "expires": "11-12"}
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(request, metadata=auth("marketing"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "campaign_id: is required" in (info.value.details() or "")


async def test_unknown_user_is_no_reachable_channel(api: Api) -> None:
    response = await api.push.Push(shipped(user_id="ghost"), metadata=auth("order"))
    assert response.outcome == types_pb2.SUPPRESSED
    assert response.reason == types_pb2.NO_REACHABLE_CHANNEL
    assert "herald users import" in response.detail


async def test_user_without_usable_contact_is_no_reachable_channel(api: Api) -> None:
    await api.add_user("u-2", wechat=profile_pb2.WeChatIdentity(openid=OPENID, following=False))
    response = await api.push.Push(shipped(user_id="u-2"), metadata=auth("order"))
    assert response.reason == types_pb2.NO_REACHABLE_CHANNEL
    assert "WECHAT_TEMPLATE not_following" in response.detail


async def test_kill_switch_suppresses(api: Api) -> None:
    await api.add_follower()
    await api.gateway.switches.set(ScopeKind.SCENARIO, "order.shipped", "wrong tracking links", "sre-alice")
    response = await api.push.Push(shipped(), metadata=auth("order"))
    assert response.outcome == types_pb2.SUPPRESSED
    assert response.reason == types_pb2.KILL_SWITCH
    assert "wrong tracking links" in response.detail
    message = await api.push.GetMessage(
        push_pb2.GetMessageRequest(message_id=response.message_id), metadata=auth("order")
    )
    assert message.status == "suppressed"


async def test_channel_kill_switch_moves_to_the_fallback(api: Api) -> None:
    await api.add_follower()
    await api.gateway.switches.set(ScopeKind.CHANNEL, "WECHAT_TEMPLATE", "template interface blocked", "sre")
    response = await api.push.Push(shipped(), metadata=auth("order"))
    assert list(response.channel_plan) == [types_pb2.SMS]


async def test_opted_out_of_a_channel_and_of_marketing(api: Api) -> None:
    await api.add_user("u-3", phone="+8613800138000")
    await api.profiles.SetOptOut(
        profile_pb2.SetOptOutRequest(user_id="u-3", channel=types_pb2.SMS, opted_out=True, source="sms-stop"),
        metadata=auth("order"),
    )
    response = await api.push.Push(shipped(user_id="u-3"), metadata=auth("order"))
    assert response.reason == types_pb2.OPTED_OUT

    await api.add_follower("u-4")
    await api.profiles.SetOptOut(
        profile_pb2.SetOptOutRequest(user_id="u-4", category=types_pb2.MARKETING, opted_out=True),
        metadata=auth("order"),
    )
    request = push_pb2.PushRequest(
        request_id="r-m",
        user_id="u-4",
        scenario="coupon.flash",
        params={"amount": "10", "expires": "11-12"},
        campaign_id="winback-11",
    )
    response = await api.push.Push(request, metadata=auth("marketing"))
    assert response.reason == types_pb2.OPTED_OUT


async def test_not_before_is_scheduled_then_released(api: Api) -> None:
    await api.add_follower()
    when = datetime.now(UTC) + timedelta(seconds=1)
    response = await api.push.Push(shipped(not_before=ts(when)), metadata=auth("order"))
    assert response.outcome == types_pb2.SCHEDULED
    assert abs(response.scheduled_at.ToDatetime(tzinfo=UTC) - when) < timedelta(milliseconds=1)
    message = await wait_status(api, response.message_id, "delivered", within=6)
    assert [e.kind for e in message.timeline] == ["scheduled", "released", "delivered"]
    released = message.timeline[1].at.ToDatetime(tzinfo=UTC)
    assert released >= when


async def test_get_message_is_private_to_its_business_unit(api: Api) -> None:
    await api.add_follower()
    response = await api.push.Push(shipped(), metadata=auth("order"))
    request = push_pb2.GetMessageRequest(message_id=response.message_id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.GetMessage(request, metadata=auth("logistics"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.GetMessage(push_pb2.GetMessageRequest(), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_policy_info_lists_the_callers_scenarios(api: Api) -> None:
    info = await api.push.GetPolicyInfo(push_pb2.GetPolicyInfoRequest(), metadata=auth("logistics"))
    assert info.version == api.gateway.policies.current.version
    assert info.business_unit == "logistics"
    assert [s.name for s in info.scenarios] == ["delivery.arrived", "order.shipped"]
    arrived = info.scenarios[0]
    assert list(arrived.required_params) == ["order_id"] and list(arrived.optional_params) == ["pickup_code"]
