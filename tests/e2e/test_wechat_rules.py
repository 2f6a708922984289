"""The policy's wechat_events rules through the gateway's webhook, as WeChat posts:
tags from QR scenes, keywords and menu clicks, TD/退订 opt-outs, passive replies in
plain and safe mode. The rules are the sample policy's (policies/channels.yaml)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from channels.wechat_callback import check_signature, decrypt, encrypt, parse_xml, signature
from gateway.clock import FixedClock
from gateway.core.profile_rules import opted_out as opt_out_of
from gateway.values.domain import Category, Channel
from gateway.values.profiles import MAX_TAGS
from herald.v1 import profile_pb2, types_pb2
from tests.e2e.channels_setup import AES_KEY, CALLBACK_TOKEN, Fakes, gateway_on_fakes, settled
from tests.e2e.conftest import OPENID, Api, auth
from tests.e2e.test_arbitration import local, marketing
from tests.e2e.test_marketing_channels import release, user
from tests.e2e.test_webhooks import event_xml, profile, signed, url

WECHAT = {types_pb2.WECHAT_TEMPLATE, types_pb2.WECHAT_CS, types_pb2.WECHAT_MASS}
OPT_OUT_REPLY = "您已退订营销消息。回复 订阅 可重新订阅。"
FLASH_REPLY = "已为您开启秒杀提醒，开抢前通知您。回复 TD 可退订营销消息。"


@pytest.fixture(params=["memory", "redis"])
async def api(request: pytest.FixtureRequest, tmp_path: Path, fake: Fakes) -> AsyncIterator[Api]:
    redis_url = request.getfixturevalue("clean_redis") if request.param == "redis" else ""
    async with gateway_on_fakes(tmp_path, fake, redis_url) as client:
        yield client


def message_xml(content: str, msg_id: str, created: int | None = None, openid: str = OPENID) -> str:
    return (
        f"<xml><ToUserName><![CDATA[gh_shop]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
        f"<CreateTime>{created or int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )


def safe(xml: str, appid: str, nonce: str = "n1") -> tuple[str, dict[str, str]]:
    """``xml`` as WeChat posts it in safe mode: encrypted, with msg_signature."""
    encrypted = encrypt(xml.encode(), AES_KEY, appid)
    params = {
        "timestamp": "1731300000",
        "nonce": nonce,
        "encrypt_type": "aes",
        "msg_signature": signature(CALLBACK_TOKEN, "1731300000", nonce, encrypted),
    }
    return f"<xml><ToUserName>gh_shop</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>", params


async def post(api: Api, body: str, params: dict[str, str]) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url(api, "/webhooks/wechat"), params=params, data=body.encode()) as answer,
    ):
        return answer.status, answer.content_type, await answer.text()


def rules_metric(api: Api, action: str) -> float:
    return api.gateway.metrics.registry.get_sample_value("herald_wechat_event_rules_total", {"action": action}) or 0


async def tags(api: Api) -> list[str]:
    return list((await profile(api)).tags)


async def get(api: Api, user_id: str) -> profile_pb2.User:
    return await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id=user_id), metadata=auth("order"))


def assert_text_reply(xml: str, content: str, before: int) -> None:
    reply = parse_xml(xml)
    assert set(reply) == {"ToUserName", "FromUserName", "CreateTime", "MsgType", "Content"}
    assert reply["ToUserName"] == OPENID  # back to the user who wrote
    assert reply["FromUserName"] == "gh_shop"  # from the account written to (the event's ToUserName)
    assert before <= int(reply["CreateTime"]) <= int(time.time()) + 1
    assert reply["MsgType"] == "text"
    assert reply["Content"] == content


# --- QR scenes ---------------------------------------------------------------------------
async def test_a_store_qr_code_tags_on_follow_and_on_scan(api: Api) -> None:
    await api.add_user("u-1", wechat=profile_pb2.WeChatIdentity(openid=OPENID), tags=["vip"])
    now = int(time.time())
    follow = event_xml("subscribe", now, EventKey="qrscene_store_hz_01", Ticket="gQH47joAAAAAAAAAASxodHRw")
    assert await post(api, follow, signed()) == (200, "text/plain", "success")
    assert await tags(api) == ["offline_store", "qr:store_hz_01", "vip"]  # added to, not replaced
    user_now = await profile(api)
    assert user_now.wechat.following

    scan = event_xml("SCAN", now + 1, EventKey="store_sh_02", Ticket="gQH47joAAAAAAAAAASxodHRw")
    assert (await post(api, scan, signed()))[2] == "success"
    assert await tags(api) == ["offline_store", "qr:store_hz_01", "qr:store_sh_02", "vip"]

    exact = event_xml("SCAN", now + 2, EventKey="d11_poster")
    await post(api, exact, signed())
    assert "campaign:d11" in await tags(api)
    other = event_xml("SCAN", now + 3, EventKey="d11_poster_2")  # an exact rule is not a prefix
    await post(api, other, signed())
    assert await tags(api) == ["campaign:d11", "offline_store", "qr:store_hz_01", "qr:store_sh_02", "vip"]
    assert [i.kind for i in (await profile(api)).recent_interactions][:1] == [profile_pb2.QR_SCAN]


async def test_a_scene_that_makes_a_bad_tag_is_skipped_and_logged(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.logs import configure

    configure("INFO", json=True)
    await api.add_follower()
    long_scene = "store_" + "9" * 58  # a valid 64-character scene; qr:{scene} would be 67 characters
    scan = event_xml("SCAN", int(time.time()), EventKey=long_scene)
    assert await post(api, scan, signed()) == (200, "text/plain", "success")
    assert await tags(api) == ["offline_store"]
    out = capsys.readouterr().err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    [bad] = [e for e in events if e.get("event") == "wechat_rule_bad_tag"]
    assert (bad["level"], bad["user_id"], bad["rule"]) == ("warning", "u-1", "tags_from_qr_scene[0].tags[0]")
    [added] = [e for e in events if e.get("event") == "wechat_tags_added"]
    assert added["count"] == 1
    for personal in (OPENID, long_scene, "13800138000"):
        assert personal not in out
    assert rules_metric(api, "bad_tag") == 1


async def test_a_full_profile_keeps_its_tags(api: Api) -> None:
    full = [f"t{n:03d}" for n in range(MAX_TAGS - 1)]
    await api.add_user("u-1", wechat=profile_pb2.WeChatIdentity(openid=OPENID, following=True), tags=full)
    scan = event_xml("SCAN", int(time.time()), EventKey="store_hz_01")
    assert (await post(api, scan, signed()))[2] == "success"
    assert await tags(api) == sorted([*full, "qr:store_hz_01"])  # the first tag of the rule fits
    assert rules_metric(api, "profile_full") == 1  # offline_store did not


# --- keywords and menu clicks ------------------------------------------------------------
async def test_a_keyword_tags_and_gets_its_reply(api: Api) -> None:
    await api.add_follower()
    before = int(time.time())
    status, content_type, body = await post(api, message_xml(" 秒杀\n", "6789100001"), signed())
    assert (status, content_type) == (200, "application/xml")
    assert_text_reply(body, FLASH_REPLY, before)
    assert await tags(api) == ["flash_sale_alerts"]
    # Any case, another keyword of the rule: nothing more to add, the reply all the same.
    status, _, body = await post(api, message_xml("ms", "6789100002"), signed())
    assert parse_xml(body)["Content"] == FLASH_REPLY
    assert await tags(api) == ["flash_sale_alerts"]
    # Anything else: no reply.
    assert (await post(api, message_xml("秒杀什么时候开始", "6789100003"), signed()))[2] == "success"
    assert rules_metric(api, "tagged") == 1 and rules_metric(api, "replied") == 2


async def test_a_keyword_in_safe_mode_gets_an_encrypted_signed_reply(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    before = int(time.time())
    body, params = safe(message_xml("秒杀", "6789100011"), fake.wechat.appid)
    status, content_type, answer = await post(api, body, params)
    assert (status, content_type) == (200, "application/xml")
    outer = parse_xml(answer)
    assert set(outer) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert before <= int(outer["TimeStamp"]) <= int(time.time()) + 1
    check_signature(outer["MsgSignature"], CALLBACK_TOKEN, outer["TimeStamp"], outer["Nonce"], outer["Encrypt"])
    assert_text_reply(decrypt(outer["Encrypt"], AES_KEY, fake.wechat.appid).decode(), FLASH_REPLY, before)
    assert await tags(api) == ["flash_sale_alerts"]


async def test_a_menu_click_tags_without_a_reply(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    body, params = safe(event_xml("CLICK", int(time.time()), EventKey="MENU_MOM_BABY"), fake.wechat.appid)
    assert await post(api, body, params) == (200, "text/plain", "success")
    assert await tags(api) == ["mom_baby"]
    await post(api, event_xml("CLICK", int(time.time()), EventKey="MENU_UNKNOWN"), signed())
    assert await tags(api) == ["mom_baby"]


async def test_a_retried_callback_tags_once_and_gets_the_same_reply(api: Api) -> None:
    await api.add_follower()
    before = int(time.time())
    answers = [await post(api, message_xml("秒杀", "6789100021", before), signed()) for _ in range(3)]
    for status, _, body in answers:  # WeChat retries when it did not get the answer
        assert status == 200
        assert_text_reply(body, FLASH_REPLY, before)
    assert await tags(api) == ["flash_sale_alerts"]
    assert rules_metric(api, "tagged") == 1
    assert [i.kind for i in (await profile(api)).recent_interactions] == [profile_pb2.USER_MESSAGE]
    # A retried follow through a QR code (no MsgId: keyed by user, time and event).
    follow = event_xml("subscribe", before, EventKey="qrscene_store_hz_01")
    for _ in range(2):
        assert (await post(api, follow, signed()))[2] == "success"
    assert rules_metric(api, "tagged") == 2


async def test_an_unknown_user_is_neither_tagged_nor_answered(api: Api) -> None:
    stranger = "oZzZzZzZzZzZzZzZzZzZzZzZzZz9"
    for content, msg_id in (("秒杀", "6789100031"), ("TD", "6789100032")):
        assert await post(api, message_xml(content, msg_id, openid=stranger), signed()) == (
            200,
            "text/plain",
            "success",
        )
    follow = event_xml("subscribe", int(time.time()), EventKey="qrscene_store_hz_01").replace(OPENID, stranger)
    assert (await post(api, follow, signed()))[2] == "success"
    assert rules_metric(api, "tagged") == 0 and rules_metric(api, "opted_out") == 0


# --- TD / 退订 ---------------------------------------------------------------------------
@pytest.mark.parametrize(("store", "word", "mode"), [("memory", "TD", "plain"), ("redis", "退订", "safe")])
async def test_td_opts_out_of_wechat_marketing_and_a_push_avoids_wechat(
    tmp_path: Path, fake: Fakes, request: pytest.FixtureRequest, store: str, word: str, mode: str
) -> None:
    redis_url = request.getfixturevalue("clean_redis") if store == "redis" else ""
    clock = FixedClock(local(10))
    created = int(clock.now().timestamp()) - 1
    async with gateway_on_fakes(tmp_path, fake, redis_url, clock=clock) as api:
        for user_id, openid in (("u-1", OPENID), ("u-2", "oControlUserXxXxXxXxXxXxXxX2")):
            await api.profiles.UpsertUser(user(user_id, openid), metadata=auth("order"))
        xml = message_xml(word, "6789100041", created)
        body, params = safe(xml, fake.wechat.appid) if mode == "safe" else (xml, signed())
        status, _, answer = await post(api, body, params)
        assert status == 200
        if mode == "safe":
            answer = decrypt(parse_xml(answer)["Encrypt"], AES_KEY, fake.wechat.appid).decode()
        assert_text_reply(answer, OPT_OUT_REPLY, int(clock.now().timestamp()) - 1)
        opted = (await get(api, "u-1")).opt_outs
        assert sorted((o.category, o.channel, o.source) for o in opted) == [
            (types_pb2.MARKETING, types_pb2.WECHAT_TEMPLATE, "wechat-reply"),
            (types_pb2.MARKETING, types_pb2.WECHAT_CS, "wechat-reply"),
            (types_pb2.MARKETING, types_pb2.WECHAT_MASS, "wechat-reply"),
        ]
        # The control user wrote too, so both have the customer-service window open.
        await post(api, message_xml("你好", "6789100042", created, "oControlUserXxXxXxXxXxXxXxX2"), signed())

        opted_out = await api.push.Push(marketing("r-1", "double11.presale"), metadata=auth("marketing"))
        control = await api.push.Push(marketing("r-2", "double11.presale", user_id="u-2"), metadata=auth("marketing"))
        assert opted_out.outcome == control.outcome == types_pb2.SCHEDULED
        assert types_pb2.WECHAT_CS in control.channel_plan
        assert not WECHAT & set(opted_out.channel_plan)
        assert list(opted_out.channel_plan) == [types_pb2.APP_PUSH, types_pb2.SMS]

        await release(api, clock, local(12, 30))
        done = await settled(api, opted_out.message_id, "marketing")
        assert done.status == "delivered"
        assert {e.channel for e in done.timeline if e.channel} == {types_pb2.APP_PUSH}
        assert (await settled(api, control.message_id, "marketing")).status == "delivered"
        assert [s["touser"] for s in fake.wechat.cs_sends] == ["oControlUserXxXxXxXxXxXxXxX2"]
        assert all(OPENID not in str(call) for call in fake.wechat.mass_calls)
        # Basic messages still use WeChat: only marketing was opted out of.
        profile_now = await api.gateway.users.get("u-1")
        assert opt_out_of(profile_now, Category.BASIC, Channel.WECHAT_TEMPLATE) is None
        assert opt_out_of(profile_now, Category.MARKETING, Channel.WECHAT_CS) is not None


async def test_subscribe_word_opts_back_in(api: Api) -> None:
    await api.add_follower()
    before = int(time.time())
    await post(api, message_xml("td", "6789100051"), signed())
    assert len((await profile(api)).opt_outs) == 3
    assert rules_metric(api, "opted_out") == 1
    _, _, body = await post(api, message_xml("订阅", "6789100052"), signed())
    assert_text_reply(body, "您已重新订阅营销消息。回复 TD 可退订。", before)
    assert list((await profile(api)).opt_outs) == []
    assert rules_metric(api, "opted_in") == 1
