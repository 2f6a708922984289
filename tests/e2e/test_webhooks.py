"""WeChat callbacks and SMS receipts, posted to the gateway's public routes the way the
providers post them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from channels.wechat_callback import encrypt, signature
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import AES_KEY, CALLBACK_TOKEN, Fakes, gateway_on_fakes, settled
from tests.e2e.conftest import OPENID, Api, auth
from tests.e2e.test_push import shipped


@pytest.fixture(params=["memory", "redis"])
async def api(request: pytest.FixtureRequest, tmp_path: Path, fake: Fakes) -> AsyncIterator[Api]:
    redis_url = request.getfixturevalue("clean_redis") if request.param == "redis" else ""
    async with gateway_on_fakes(tmp_path, fake, redis_url) as client:
        yield client


def url(api: Api, path: str) -> str:
    return f"http://127.0.0.1:{api.gateway.public_port}{path}"


def signed(timestamp: str = "1731300000", nonce: str = "n0nce") -> dict[str, str]:
    return {"timestamp": timestamp, "nonce": nonce, "signature": signature(CALLBACK_TOKEN, timestamp, nonce)}


def event_xml(kind: str, created: int, **extra: str) -> str:
    fields = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in extra.items())
    return (
        f"<xml><ToUserName><![CDATA[gh_shop]]></ToUserName><FromUserName><![CDATA[{OPENID}]]></FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{kind}]]></Event>"
        f"{fields}</xml>"
    )


def text_xml(msg_id: str, created: int) -> str:
    return (
        f"<xml><ToUserName>gh_shop</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>{created}"
        f"</CreateTime><MsgType>text</MsgType><Content>hello</Content><MsgId>{msg_id}</MsgId></xml>"
    )


async def post(api: Api, body: str, params: dict[str, str]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url(api, "/webhooks/wechat"), params=params, data=body.encode()) as answer,
    ):
        return answer.status, await answer.text()


async def profile(api: Api) -> profile_pb2.User:
    return await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))


async def test_url_check_answers_echostr_only_when_signed(api: Api) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(url(api, "/webhooks/wechat"), params={**signed(), "echostr": "e123"}) as ok:
            assert (ok.status, await ok.text()) == (200, "e123")
        bad = {**signed(), "signature": "0" * 40, "echostr": "e123"}
        async with http.get(url(api, "/webhooks/wechat"), params=bad) as refused:
            assert refused.status == 403


async def test_unfollow_and_follow_update_the_user(api: Api) -> None:
    await api.add_follower()
    now = int(time.time())
    assert await post(api, event_xml("unsubscribe", now), signed()) == (200, "success")
    assert not (await profile(api)).wechat.following
    assert await post(api, event_xml("subscribe", now + 1, EventKey="qrscene_42"), signed()) == (200, "success")
    user = await profile(api)
    assert user.wechat.following
    assert [i.kind for i in user.recent_interactions] == [profile_pb2.FOLLOW]


async def test_bad_signature_is_refused_and_nothing_recorded(api: Api) -> None:
    await api.add_follower()
    forged = {**signed(), "signature": signature("not-the-token", "1731300000", "n0nce")}
    status, _ = await post(api, event_xml("unsubscribe", int(time.time())), forged)
    assert status == 403
    assert (await profile(api)).wechat.following


async def test_retried_message_is_recorded_once(api: Api) -> None:
    await api.add_follower()
    now = int(time.time())
    for _ in range(3):  # WeChat tries three times when the answer is slow
        assert await post(api, text_xml("6789000001", now), signed()) == (200, "success")
    assert [i.kind for i in (await profile(api)).recent_interactions] == [profile_pb2.USER_MESSAGE]


async def test_safe_mode_is_decrypted_and_checked(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    encrypted = encrypt(text_xml("6789000002", int(time.time())).encode(), AES_KEY, fake.wechat.appid)
    body = f"<xml><ToUserName>gh_shop</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    params = {
        "timestamp": "1731300000",
        "nonce": "n1",
        "encrypt_type": "aes",
        "msg_signature": signature(CALLBACK_TOKEN, "1731300000", "n1", encrypted),
    }
    assert await post(api, body, params) == (200, "success")
    assert [i.kind for i in (await profile(api)).recent_interactions] == [profile_pb2.USER_MESSAGE]

    other_app = encrypt(text_xml("6789000003", int(time.time())).encode(), AES_KEY, "wx_someone_else")
    body = f"<xml><Encrypt><![CDATA[{other_app}]]></Encrypt></xml>"
    params["msg_signature"] = signature(CALLBACK_TOKEN, "1731300000", "n1", other_app)
    assert (await post(api, body, params))[0] == 403
    params["msg_signature"] = "f" * 40
    assert (await post(api, body, params))[0] == 403
    assert len((await profile(api)).recent_interactions) == 1


@pytest.mark.parametrize(
    "body",
    [
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><FromUserName>&e;</FromUserName></xml>',
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><xml><Content>&b;</Content></xml>',
        "<xml><unclosed>",
        "<html><body>not wechat</body></html>",
    ],
    ids=["xxe", "entity-expansion", "broken", "not-xml-root"],
)
async def test_hostile_or_broken_xml_is_refused(api: Api, body: str) -> None:
    await api.add_follower()
    status, _ = await post(api, body, signed())
    assert status == 400
    assert list((await profile(api)).recent_interactions) == []


async def test_template_job_report_lands_in_the_timeline(api: Api, fake: Fakes) -> None:
    await api.add_follower()
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    assert (await settled(api, answer.message_id)).status == "delivered"
    msgid = str(fake.wechat.template_sends[0]["msgid"])
    report = event_xml("TEMPLATESENDJOBFINISH", int(time.time()), MsgID=msgid, Status="failed:user block")
    assert await post(api, report, signed()) == (200, "success")
    message = await api.push.GetMessage(
        push_pb2.GetMessageRequest(message_id=answer.message_id), metadata=auth("order")
    )
    assert message.status == "failed"
    last = message.timeline[-1]
    assert (last.kind, last.channel, last.provider_code) == ("receipt", types_pb2.WECHAT_TEMPLATE, "failed:user block")
    assert not (await profile(api)).wechat.following


async def test_sms_receipts_are_recorded_once(api: Api, fake: Fakes) -> None:
    await api.add_user("u-1", phone="+8613800138000")
    answer = await api.push.Push(shipped(), metadata=auth("order"))
    assert (await settled(api, answer.message_id)).status == "delivered"
    sent = fake.sms.sends[0]
    receipts = [
        {
            "phone_number": "13800138000",
            "send_time": "2026-11-11 10:00:01",
            "report_time": "2026-11-11 10:00:05",
            "success": True,
            "err_code": "DELIVERED",
            "err_msg": "用户接收成功",
            "biz_id": sent["BizId"],
            "out_id": sent["OutId"],
        }
    ]
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # Alibaba retries
            async with http.post(url(api, "/webhooks/aliyun-sms"), json=receipts) as ok:
                assert ok.status == 200 and await ok.json() == {"code": 0, "msg": "ok"}
        async with http.post(url(api, "/webhooks/aliyun-sms"), data=b"{not json") as bad:
            assert bad.status == 400
    message = await api.push.GetMessage(
        push_pb2.GetMessageRequest(message_id=answer.message_id), metadata=auth("order")
    )
    assert [(e.kind, e.provider_code) for e in message.timeline if e.kind == "receipt"] == [("receipt", "DELIVERED")]
    assert message.status == "delivered"
